// Start-up of real `edgeshard worker` processes: SIGTERM and SIGINT stop a worker promptly while
// it hashes a large model, and paths that are not regular files (a device, a FIFO) are refused
// at once instead of hashed forever or waited on.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "distributed_harness.h"

namespace es::test {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// A worker process that is not waited on until it listens (its start-up is what is tested).
class StartingWorker {
 public:
  StartingWorker(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    std::vector<std::string> a = {"--name", "w", "-q"};
    a.insert(a.end(), args.begin(), args.end());
    const int devnull = open("/dev/null", O_WRONLY);
    pid_ = ForkWorker(a, devnull, log);
    close(devnull);
  }
  ~StartingWorker() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Waits up to `limit` for the process to end; true with its wait status if it did.
  bool WaitExit(std::chrono::milliseconds limit, int* status) {
    const auto until = Clock::now() + limit;
    while (Clock::now() < until) {
      if (waitpid(pid_, status, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }
  bool Running() const { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  // Waits until the log contains `what` (or the limit passes).
  bool WaitLog(const std::string& what, std::chrono::milliseconds limit) const {
    const auto until = Clock::now() + limit;
    while (Clock::now() < until) {
      if (Log().find(what) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  void Signal(int sig) const { kill(pid_, sig); }
  std::string Log() const { return ReadFile(log_); }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

// A sparse file of `gib` GiB: created in no time, it reads as zeros at memory speed, which still
// takes seconds to hash (about 0.8 GB/s on the 2-core test VM).
std::string SparseFile(const TempDir& dir, int gib) {
  const std::string p = dir.path + "/big.gguf";
  const int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  EXPECT_EQ(ftruncate(fd, off_t(gib) << 30), 0);
  close(fd);
  return p;
}

void StopsWhileHashing(int sig, const char* name) {
  TempDir dir;
  const std::string token = dir.File("token", "startup-test-token-0123456789");
  const std::string big = SparseFile(dir, 8);
  StartingWorker w({"--token-file", token, "-m", big, "-t", "1"}, dir.path + "/w.log");
  ASSERT_TRUE(w.WaitLog("hashing", std::chrono::seconds(20))) << w.Log();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // well into the hash
  ASSERT_TRUE(w.Running()) << "the worker finished hashing 8 GiB in 0.3 s; use a larger file: "
                           << w.Log();
  const auto t0 = Clock::now();
  w.Signal(sig);
  int status = 0;
  const bool ended = w.WaitExit(std::chrono::seconds(30), &status);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  std::printf("[ startup  ] %s during hashing: worker ended %.0f ms after the signal\n", name, ms);
  ASSERT_TRUE(ended) << "the worker ignored " << name << " while hashing: " << w.Log();
  EXPECT_LT(ms, 1000.0) << w.Log();
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 128 + sig);
  EXPECT_THAT(w.Log(), HasSubstr(std::string("stopping on ") + name + " during start-up"));
}

TEST(WorkerStartup, SigtermWhileHashingStopsWithinOneSecond) {
  StopsWhileHashing(SIGTERM, "SIGTERM");
}

TEST(WorkerStartup, SigintWhileHashingStopsWithinOneSecond) {
  StopsWhileHashing(SIGINT, "SIGINT");
}

// Runs a worker that must refuse its arguments; returns its log after checking it ended with a
// failure within a few seconds.
std::string Refused(const TempDir& dir, const std::vector<std::string>& args,
                    const std::string& tag) {
  StartingWorker w(args, dir.path + "/" + tag + ".log");
  int status = 0;
  const auto t0 = Clock::now();
  const bool ended = w.WaitExit(std::chrono::seconds(10), &status);
  std::printf("[ startup  ] %s: %s after %.0f ms\n", tag.c_str(),
              ended ? "refused" : "still running",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  EXPECT_TRUE(ended) << tag << ": the worker hangs instead of refusing: " << w.Log();
  if (ended) {
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << tag << ": status " << status;
  }
  return w.Log();
}

TEST(WorkerStartup, ModelThatIsNotARegularFileIsRefused) {
  TempDir dir;
  const std::string token = dir.File("token", "startup-test-token-0123456789");
  std::string log = Refused(dir, {"--token-file", token, "-m", "/dev/zero"}, "dev-zero");
  EXPECT_THAT(log, HasSubstr("/dev/zero: the model (-m) must be a regular file"));
  EXPECT_THAT(log, HasSubstr("character device"));
  const std::string fifo = dir.path + "/model.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  log = Refused(dir, {"--token-file", token, "-m", fifo}, "fifo-model");
  EXPECT_THAT(log, HasSubstr(fifo + ": the model (-m) must be a regular file"));
  EXPECT_THAT(log, HasSubstr("FIFO"));
}

TEST(WorkerStartup, TokenAndProfileThatAreNotRegularFilesAreRefused) {
  TempDir dir;
  const std::string token = dir.File("token", "startup-test-token-0123456789");
  const std::string fifo = dir.path + "/token.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::string log = Refused(dir, {"--token-file", fifo}, "fifo-token");
  EXPECT_THAT(log, HasSubstr(fifo + ": the token file must be a regular file"));
  log = Refused(dir, {"--token-file", token, "--profile", fifo}, "fifo-profile");
  EXPECT_THAT(log, HasSubstr(fifo + ": the profile (--profile) must be a regular file"));
}

}  // namespace
}  // namespace es::test
