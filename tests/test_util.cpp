#include "test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

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

}  // namespace es::test
