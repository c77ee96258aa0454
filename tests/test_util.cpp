#include "test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "kernels/kernels.h"
#include "tensor/tensor_quant.h"

namespace es::test {

std::string ModelsDir() {
  const char* env = std::getenv("EDGESHARD_TEST_MODELS");
  std::string dir = env && *env ? env : EDGESHARD_DEFAULT_MODELS;
  if (!std::filesystem::is_directory(dir)) {
    ADD_FAILURE() << "test models directory '" << dir
                  << "' is missing: set EDGESHARD_TEST_MODELS to the shared models folder";
  }
  return dir;
}

std::string ModelPath(const std::string& rel) {
  std::string p = ModelsDir() + "/" + rel;
  if (!std::filesystem::exists(p)) ADD_FAILURE() << "test model '" << p << "' is missing";
  return p;
}

std::string BinaryPath() {
  return EDGESHARD_BINARY;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

RunResult RunCli(const std::string& args) {
  return RunCliWithInput(args, "");
}

RunResult RunCliWithInput(const std::string& args, const std::string& input) {
  char in_tmpl[] = "/tmp/es_test_inXXXXXX";
  int fi = mkstemp(in_tmpl);
  if (!input.empty() && write(fi, input.data(), input.size()) != static_cast<ssize_t>(input.size()))
    ADD_FAILURE() << "cannot write test input";
  close(fi);
  char out_tmpl[] = "/tmp/es_test_outXXXXXX";
  char err_tmpl[] = "/tmp/es_test_errXXXXXX";
  int fo = mkstemp(out_tmpl);
  int fe = mkstemp(err_tmpl);
  close(fo);
  close(fe);
  std::string cmd = BinaryPath() + " " + args + " >" + out_tmpl + " 2>" + err_tmpl + " <" + in_tmpl;
  int st = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = ReadFile(out_tmpl);
  r.err = ReadFile(err_tmpl);
  std::remove(out_tmpl);
  std::remove(err_tmpl);
  std::remove(in_tmpl);
  return r;
}

std::vector<float> Gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<uint8_t> QuantizeRef(TensorType t, const std::vector<float>& x) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> out(RowBytes(t, n));
  QuantizeRowRef(t, x.data(), out.data(), n);
  return out;
}

std::vector<float> DequantizeRef(TensorType t, const void* src, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  DequantizeRowRef(t, src, out.data(), n);
  return out;
}

void ForEachTarget(const std::function<void(const std::string&)>& body) {
  const auto targets = kernels::SupportedTargets();
  ASSERT_FALSE(targets.empty());
  for (const auto& t : targets) {
    SCOPED_TRACE("target " + t);
    kernels::SetTargetForTesting(t);
    EXPECT_EQ(std::string(kernels::ActiveTarget()), t);
    body(t);
  }
  kernels::SetTargetForTesting("");
}

}  // namespace es::test
