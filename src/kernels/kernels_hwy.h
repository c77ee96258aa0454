// Highway configuration shared by every kernel translation unit; include before any hwy header so
// all of them compile the same set of targets.
#pragma once

// SSSE3 adds compile time but no speed over SSE4 for these kernels; EMU128 stays as the portable
// fallback for machines without SSE4.
// AVX3_DL (AVX-512 VNNI etc.) gets the int8 dot-product kernels; Highway only compiles it on
// request.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif

// Arm: NEON only. The kernels keep tiles of accumulators in arrays of vectors, which GCC refuses
// for SVE's sizeless vector types; SVE CPUs run the NEON code (with the dot-product kernels of
// kernels_matmul_arm.cpp where the CPU has them).
#ifndef HWY_DISABLED_TARGETS
#if defined(__aarch64__)
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)
#else
#define HWY_DISABLED_TARGETS HWY_SSSE3
#endif
#endif
