// Helpers shared by tests: where the shared models are, and running the CLI.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor_types.h"

namespace es::test {
// Directory with the shared test models: $EDGESHARD_TEST_MODELS or ../shared/models.
// Fails the calling test (does not skip) when it is missing.
std::string ModelsDir();
// Full path of a file under ModelsDir(); fails the test if it does not exist.
std::string ModelPath(const std::string& rel);
// Path of the edgeshard binary built with the tests.
std::string BinaryPath();
struct RunResult {
  int exit_code;
  std::string out;
  std::string err;
};
// Runs `edgeshard <args>` through /bin/sh; args are passed verbatim (quote them yourself).
RunResult RunCli(const std::string& args);
// Same, with `input` on standard input.
RunResult RunCliWithInput(const std::string& args, const std::string& input);
std::string ReadFile(const std::string& path);

// n samples of N(0, sigma^2) from std::mt19937(seed).
std::vector<float> Gaussian(size_t n, uint32_t seed, float sigma = 1.0f);
// x (a whole number of blocks) through QuantizeRowRef; n elements of src through DequantizeRowRef.
std::vector<uint8_t> QuantizeRef(TensorType t, const std::vector<float>& x);
std::vector<float> DequantizeRef(TensorType t, const void* src, int64_t n);
// Runs body(target name) once per SIMD target the CPU supports, with kernel dispatch pinned to it
// (and traced in failures); dispatch is free again afterwards.
void ForEachTarget(const std::function<void(const std::string&)>& body);
}  // namespace es::test
