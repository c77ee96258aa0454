// Bigger than RAM (issue 16): --no-mmap computes what the mapping does, --mlock locks or says how
// to allow it, and the start-up line says what stays resident and warns when the file is larger
// than the memory the process may use (injected with $EDGESHARD_MEMORY_LIMIT).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "model/model_quantize.h"
#include "model/model_synth.h"
#include "test_util.h"

namespace {

using es::test::RunCli;
using es::test::RunResult;

// A small mixture of experts (16 experts, 4 used) as Q8_0, whose layers the kernels interleave:
// --no-mmap then also releases copied pages of memory that is not a file mapping.
std::string MoeModel() {
  static const std::string path = [] {
    const std::string p = (std::filesystem::temp_directory_path() /
                           ("es_memory_moe_" + std::to_string(getpid()) + ".gguf"))
                              .string();
    es::model::SynthOptions so;
    so.threads = 2;
    es::model::SynthesizeModel(*es::model::FindSynthPreset("tiny-test-qwen3moe"),
                               es::test::ModelPath("vocab/ggml-vocab-llama-spm.gguf"), p,
                               *es::model::FindQuantFormat("q8_0"), so);
    return p;
  }();
  return path;
}

class RemoveModel : public ::testing::Environment {
 public:
  void TearDown() override {
    std::filesystem::remove(std::filesystem::temp_directory_path() /
                            ("es_memory_moe_" + std::to_string(getpid()) + ".gguf"));
  }
};
const auto* const kRemove = ::testing::AddGlobalTestEnvironment(new RemoveModel);

std::string RunArgs(const std::string& model) {
  return "run -m " + model + " -p 'Once upon a time' -n 8 --temp 0 -c 64 -b 16 -t 2";
}

// `prefix` (shell words: environment, ulimit, a wrapper) before the binary.
RunResult Sh(const std::string& prefix, const std::string& args) {
  // Per process: ctest runs each test in its own process, two at a time, and shared names let
  // one test read or remove the other's output (seen: empty stderr, every check on it failing).
  const std::string tag = std::to_string(getpid());
  const std::string out = std::filesystem::temp_directory_path() / ("es_memory_out_" + tag);
  const std::string err = std::filesystem::temp_directory_path() / ("es_memory_err_" + tag);
  const std::string cmd =
      prefix + " " + es::test::BinaryPath() + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int st = std::system(("sh -c \"" + cmd + "\"").c_str());
  RunResult r{WIFEXITED(st) ? WEXITSTATUS(st) : 128, es::test::ReadFile(out),
              es::test::ReadFile(err)};
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

TEST(Memory, NoMmapGeneratesWhatTheMappingDoes) {
  for (const std::string& m : {es::test::ModelPath("stories260K.gguf"), MoeModel()}) {
    SCOPED_TRACE(m);
    const auto a = RunCli(RunArgs(m));
    const auto b = RunCli(RunArgs(m) + " --no-mmap");
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    EXPECT_EQ(a.out, b.out);
    EXPECT_GT(a.out.size(), std::string("Once upon a time").size());
  }
}

TEST(Memory, StartUpLineSaysWhatStaysResident) {
  const auto dense = RunCli(RunArgs(es::test::ModelPath("stories260K.gguf")));
  ASSERT_EQ(dense.exit_code, 0) << dense.err;
  EXPECT_NE(dense.err.find("edgeshard run: memory: "), std::string::npos) << dense.err;
  EXPECT_NE(dense.err.find(" resident (weights "), std::string::npos) << dense.err;
  EXPECT_EQ(dense.err.find("experts"), std::string::npos) << dense.err;
  // A mixture of experts: the experts stay mapped, and a token reads 4 of 16.
  const auto moe = RunCli(RunArgs(MoeModel()));
  ASSERT_EQ(moe.exit_code, 0) << moe.err;
  EXPECT_NE(moe.err.find(" stay in the file mapping, "), std::string::npos) << moe.err;
  EXPECT_NE(moe.err.find(" read per token"), std::string::npos) << moe.err;
  EXPECT_EQ(moe.err.find("warning"), std::string::npos) << moe.err;
  const auto in_memory = RunCli(RunArgs(MoeModel()) + " --no-mmap");
  EXPECT_NE(in_memory.err.find(" in memory, "), std::string::npos) << in_memory.err;
}

TEST(Memory, WarnsWhenTheFileIsLargerThanTheLimit) {
  const uint64_t size = std::filesystem::file_size(MoeModel());
  // Below the file, above what stays resident: it runs, paging experts in.
  const auto paged = Sh("EDGESHARD_MEMORY_LIMIT=" + std::to_string(size - 1), RunArgs(MoeModel()));
  ASSERT_EQ(paged.exit_code, 0) << paged.err;
  EXPECT_NE(paged.err.find("warning: the model file"), std::string::npos) << paged.err;
  EXPECT_NE(paged.err.find("EDGESHARD_MEMORY_LIMIT"), std::string::npos) << paged.err;
  EXPECT_NE(paged.err.find("experts are paged in"), std::string::npos) << paged.err;
  // Below what stays resident: says so. --no-mmap would hold it all.
  const auto tiny = Sh("EDGESHARD_MEMORY_LIMIT=4096", RunArgs(MoeModel()) + " --no-mmap");
  EXPECT_NE(tiny.err.find("--no-mmap/--mlock keep all of it in memory"), std::string::npos)
      << tiny.err;
}

TEST(Memory, MlockLocksOrSaysHowToAllowIt) {
  const std::string args = RunArgs(MoeModel());
  const auto plain = RunCli(args);
  const auto locked = RunCli(args + " --mlock");
  if (locked.exit_code == 0) {
    EXPECT_EQ(locked.out, plain.out);
  } else {
    EXPECT_NE(locked.err.find("RLIMIT_MEMLOCK"), std::string::npos) << locked.err;
  }
  // No locked memory allowed (and, as root, without the capability that overrides the limit):
  // refused, with what to do. The sanitizers replace mlock with a no-op that succeeds, so only
  // the plain build can see the refusal (the release suite runs it).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return;
#endif
  const bool root = geteuid() == 0;
  ASSERT_FALSE(root && std::system("setpriv --help >/dev/null 2>&1") != 0)
      << "setpriv (util-linux) is needed to drop CAP_IPC_LOCK as root";
  const auto refused =
      Sh(std::string("ulimit -l 0;") +
             (root ? " setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock" : ""),
         args + " --mlock");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("--mlock: cannot lock the model's weights in memory"),
            std::string::npos)
      << refused.err;
  EXPECT_NE(refused.err.find("ulimit -l unlimited"), std::string::npos) << refused.err;
}

}  // namespace
