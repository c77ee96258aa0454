// Highway configuration shared by every kernel translation unit; include before any hwy header so
// all of them compile the same set of targets.
#pragma once

// SSSE3 adds compile time but no speed over SSE4 for these kernels; EMU128 stays as the portable
// fallback for machines without SSE4.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS HWY_SSSE3
#endif
