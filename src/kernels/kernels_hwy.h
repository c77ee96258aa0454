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

// Arm: NEON, SVE and SVE2 (scalable code, which runs at any vector length). Not Highway's 256-bit
// SVE and 128-bit SVE2 specialisations: Highway 1.0.3 (Debian 12) chooses them or not depending on
// which of its functions a process calls first, and they double the SVE compile time.
// kernels_matmul.cpp defines ES_HWY_NEON_ONLY first: its tiles keep accumulators in arrays of
// vectors, which GCC refuses for SVE's sizeless vector types, so matmuls run NEON code on SVE CPUs
// (with the dot-product kernels of kernels_matmul_arm.cpp where the CPU has them). Highway lets
// translation units compile different target sets: each dispatches among its own, and a TU
// without the chosen target falls back to its NEON code.
#ifndef HWY_DISABLED_TARGETS
#if defined(__aarch64__) && defined(ES_HWY_NEON_ONLY)
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)
#elif defined(__aarch64__)
#define HWY_DISABLED_TARGETS (HWY_SVE_256 | HWY_SVE2_128)
#else
#define HWY_DISABLED_TARGETS HWY_SSSE3
#endif
#endif
