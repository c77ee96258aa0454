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

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS HWY_SSSE3
#endif
