// Authentication of the worker service's messages (docs/distributed.md, Security): sealed stream
// frames refuse altered, reordered, dropped, replayed, reflected and transplanted messages; a
// unary call's proof covers its request and reply; and a byte flipped in a Step on its way to a
// real worker (through a TCP relay, no TLS) is refused instead of computed.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>

#include "distributed_harness.h"
#include "shard/shard_auth.h"
#include "shard/shard_rpc.h"
#include "shard/shard_worker.h"

namespace es::test {
namespace {

namespace rpc = edgeshard::rpc;
using ::testing::HasSubstr;

constexpr const char* kToken = "auth-test-token-0123456789";

rpc::Frame StepFrame(uint64_t id, size_t hidden_bytes) {
  rpc::Frame f;
  rpc::Step* s = f.mutable_step();
  s->set_id(id);
  auto* seg = s->add_segments();
  seg->set_sequence(1);
  seg->set_n_tokens(1);
  s->set_hidden(std::string(hidden_bytes, static_cast<char>(id)));
  return f;
}

TEST(FrameSeal, AcceptsFramesInOrder) {
  shard::FrameSeal caller(kToken, "nonce-a", true), worker(kToken, "nonce-a", false);
  for (uint64_t i = 0; i < 3; ++i) {
    rpc::Frame got;
    std::string why;
    ASSERT_TRUE(worker.Open(caller.Seal(StepFrame(i, 64)), &got, &why)) << why;
    EXPECT_EQ(got.step().id(), i);
  }
  // And the other direction, numbered on its own.
  rpc::Frame got;
  std::string why;
  EXPECT_TRUE(caller.Open(worker.Seal(StepFrame(7, 8)), &got, &why)) << why;
}

TEST(FrameSeal, RefusesAlteredBodyAndMac) {
  shard::FrameSeal caller(kToken, "nonce-a", true), worker(kToken, "nonce-a", false);
  auto s = caller.Seal(StepFrame(1, 64));
  s.mutable_body()->back() ^= 1;
  rpc::Frame got;
  std::string why;
  EXPECT_FALSE(worker.Open(s, &got, &why));
  EXPECT_THAT(why, HasSubstr("failed its authentication check"));
  shard::FrameSeal caller2(kToken, "nonce-b", true), worker2(kToken, "nonce-b", false);
  auto t = caller2.Seal(StepFrame(1, 64));
  (*t.mutable_mac())[0] ^= 1;
  EXPECT_FALSE(worker2.Open(t, &got, &why));
}

TEST(FrameSeal, RefusesReorderedDroppedAndReplayedFrames) {
  shard::FrameSeal caller(kToken, "nonce-a", true), worker(kToken, "nonce-a", false);
  const auto f0 = caller.Seal(StepFrame(0, 16));
  const auto f1 = caller.Seal(StepFrame(1, 16));
  const auto f2 = caller.Seal(StepFrame(2, 16));
  rpc::Frame got;
  std::string why;
  EXPECT_FALSE(worker.Open(f1, &got, &why)) << "frame 1 accepted before frame 0";
  ASSERT_TRUE(worker.Open(f0, &got, &why)) << why;
  EXPECT_FALSE(worker.Open(f0, &got, &why)) << "a replayed frame was accepted";
  EXPECT_FALSE(worker.Open(f2, &got, &why)) << "frame 1 was dropped unnoticed";
  EXPECT_TRUE(worker.Open(f1, &got, &why)) << why;
  EXPECT_TRUE(worker.Open(f2, &got, &why)) << why;
}

TEST(FrameSeal, RefusesFramesFromAnotherCallOrDirectionOrToken) {
  shard::FrameSeal other_call(kToken, "nonce-other", true);
  shard::FrameSeal caller(kToken, "nonce-a", true), worker(kToken, "nonce-a", false);
  shard::FrameSeal wrong_token("another-token-0123456789", "nonce-a", true);
  rpc::Frame got;
  std::string why;
  EXPECT_FALSE(worker.Open(other_call.Seal(StepFrame(0, 16)), &got, &why)) << "moved between calls";
  EXPECT_FALSE(worker.Open(wrong_token.Seal(StepFrame(0, 16)), &got, &why)) << "other token";
  // The caller's own frame reflected back to it.
  EXPECT_FALSE(caller.Open(caller.Seal(StepFrame(0, 16)), &got, &why)) << "reflected";
}

// Cost of sealing and opening one decode step of a 4096-wide model (printed for the docs).
TEST(FrameSeal, CostPerStepOf4096WideActivations) {
  for (const size_t bytes : {size_t(4096 * 2), size_t(4096 * 4)}) {
    shard::FrameSeal caller(kToken, "nonce-a", true), worker(kToken, "nonce-a", false);
    const rpc::Frame f = StepFrame(1, bytes);
    constexpr int kRounds = 2000;
    rpc::Frame got;
    std::string why;
    const auto t0 = std::chrono::steady_clock::now();
    double seal_s = 0;
    for (int i = 0; i < kRounds; ++i) {
      const auto a = std::chrono::steady_clock::now();
      const auto s = caller.Seal(f);
      seal_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
      ASSERT_TRUE(worker.Open(s, &got, &why)) << why;
    }
    const double total_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
        kRounds;
    std::printf(
        "[ cost     ] %zu-byte activations (4096 x %s): seal %.1f us, seal + open %.1f us "
        "per step\n",
        bytes, bytes == 4096 * 2 ? "F16" : "F32", seal_s * 1e6 / kRounds, total_us);
    EXPECT_LT(total_us, 2000.0);  // far below a step's compute; a loose bound for slow machines
  }
}

// A unary call's proof covers its request: the same proof with another request is refused, and
// the worker's reply carries a proof over its content.
TEST(UnaryAuth, ProofCoversRequestAndReply) {
  TempDir dir;
  shard::WorkerOptions o;
  o.security = shard::Security::Load(dir.File("token", kToken), "", "", "");
  o.cache_dir = dir.path + "/cache";
  o.quiet = true;
  shard::WorkerServer w(o);
  auto stub =
      rpc::Worker::NewStub(grpc::CreateChannel(w.address(), grpc::InsecureChannelCredentials()));
  rpc::ReleaseRequest proven, sent;
  proven.set_epoch(5);
  sent.set_epoch(6);  // what an on-path host would change
  {
    grpc::ClientContext ctx;
    shard::CallAuth auth(kToken, "Release");
    auth.Attach(ctx, &proven);
    rpc::ReleaseReply reply;
    const auto st = stub->Release(&ctx, sent, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("altered request"));
  }
  {
    grpc::ClientContext ctx;
    shard::CallAuth auth(kToken, "Health");
    const rpc::HealthRequest req;
    auth.Attach(ctx, &req);
    rpc::HealthReply reply;
    const auto st = stub->Health(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(auth.Verify(ctx));
    EXPECT_TRUE(auth.VerifyReply(ctx, reply));
    reply.set_threads(reply.threads() + 1);  // an altered reply no longer matches its proof
    EXPECT_FALSE(auth.VerifyReply(ctx, reply));
  }
}

// A TCP relay between the coordinator and a worker that flips one byte in the middle of the
// first large HTTP/2 DATA frame sent towards the worker (a Step with a prompt's activations) or,
// with `towards_worker` false, back from it (a Result with logits).
class FlipRelay {
 public:
  FlipRelay(int target_port, size_t min_data_bytes, bool towards_worker)
      : target_port_(target_port), min_data_(min_data_bytes), towards_worker_(towards_worker) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(listen_fd_, 16) != 0)
      throw std::runtime_error("relay: cannot listen");
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    threads_.emplace_back([this] { Accept(); });
  }
  ~FlipRelay() {
    stopping_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    }
    for (size_t i = 0;; ++i) {
      std::thread t;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (i >= threads_.size()) break;
        t = std::move(threads_[i]);
      }
      if (t.joinable()) t.join();
    }
    close(listen_fd_);
    for (int fd : fds_) close(fd);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int flipped() const { return flipped_; }

 private:
  void Accept() {
    while (!stopping_) {
      const int c = accept(listen_fd_, nullptr, nullptr);
      if (c < 0) return;
      const int s = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_port_));
      std::lock_guard<std::mutex> lock(mu_);
      fds_.push_back(c);
      fds_.push_back(s);
      if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        shutdown(c, SHUT_RDWR);
        continue;
      }
      threads_.emplace_back([this, c, s] { Pump(c, s, true); });
      threads_.emplace_back([this, c, s] { Pump(s, c, false); });
    }
  }
  static bool WriteAll(int fd, const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
      if (w <= 0) return false;
      p += w, n -= size_t(w);
    }
    return true;
  }
  // Copies `from` to `to`, parsing HTTP/2 frames (after the client's 24-byte preface towards
  // the worker) to find the DATA frames' payloads.
  void Pump(int from, int to, bool to_worker) {
    std::string buf;
    size_t preface = to_worker ? 24 : 0;
    const bool flip = to_worker == towards_worker_;
    char tmp[1 << 16];
    while (true) {
      const ssize_t n = read(from, tmp, sizeof tmp);
      if (n <= 0) break;
      buf.append(tmp, size_t(n));
      size_t off = 0;
      if (preface > 0) {
        off = std::min(preface, buf.size());
        preface -= off;
      }
      while (preface == 0 && buf.size() - off >= 9) {
        const auto* h = reinterpret_cast<const unsigned char*>(buf.data() + off);
        const size_t len = (size_t(h[0]) << 16) | (size_t(h[1]) << 8) | h[2];
        if (buf.size() - off < 9 + len) break;
        if (flip && h[3] == 0 /* DATA */ && len >= min_data_ && flipped_.fetch_add(1) == 0)
          buf[off + 9 + len / 2] ^= 0x20;
        off += 9 + len;
      }
      if (!WriteAll(to, buf.data(), off)) break;
      buf.erase(0, off);
    }
    shutdown(to, SHUT_RDWR);
    shutdown(from, SHUT_RDWR);
  }

  int target_port_, port_ = 0, listen_fd_ = -1;
  size_t min_data_;
  bool towards_worker_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> flipped_{0};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
};

// A coordinator with one worker, reached through a FlipRelay.
struct RelayedCluster {
  static constexpr int kCtx = 128;
  TempDir dir;
  std::string token = dir.File("token", kToken);
  std::string model = ModelPath("stories260K.gguf");
  WorkerProcess w{"w1", {"-t", "1", "--token-file", token, "-m", model}, dir.path};
  FlipRelay relay;
  std::unique_ptr<shard::Coordinator> co;
  RelayedCluster(size_t min_data_bytes, bool towards_worker)
      : relay(w.port(), min_data_bytes, towards_worker) {
    const std::string profile = WriteProfile(dir, model);
    const auto b = SplitBudgets(shard::LoadProfile(profile, true).model, kCtx, 1);
    const std::string cluster = dir.File(
        "cluster.yaml", ClusterYaml(profile, {{"src", "", b[0]}, {"w1", relay.address(), b[1]}}));
    co = std::make_unique<shard::Coordinator>(model, QuietOptions(cluster, token, kCtx));
  }
};

// Without TLS an on-path host flips one byte of a Step's activations: the worker refuses the
// frame (and logs it), and the coordinator's request fails with that reason instead of
// continuing with tokens computed from altered data.
TEST(DistributedAuth, StepAlteredInFlightIsRefused) {
  // A prompt step carries rows x 64 x 2 bytes of F16 activations; control messages (Health,
  // LoadShard, the Open frame) stay well below 400 bytes.
  RelayedCluster c(400, true);
  const auto prompt = c.co->tokenizer().Encode("Once upon a time there was a", true, true);
  try {
    const auto r = c.co->Generate(c.co->NewSequence(), prompt, Greedy(8), {});
    ADD_FAILURE() << "generation went on after a Step was altered in flight (" << r.tokens.size()
                  << " tokens)";
  } catch (const Error& e) {
    std::printf("[ refused  ] %s\n", e.what());
    EXPECT_THAT(e.what(), HasSubstr("refused a frame"));
    EXPECT_THAT(e.what(), HasSubstr("failed its authentication check"));
  }
  EXPECT_GE(c.relay.flipped(), 1) << "the relay saw no Step to alter";
  EXPECT_THAT(c.w.Log(), HasSubstr("refused a Stream frame"));
}

// The same for a Result on its way back: the coordinator refuses logits altered in flight.
TEST(DistributedAuth, ResultAlteredInFlightIsRefused) {
  // A Result with logits carries 512 x 4 bytes; Health and LoadShard replies are far smaller.
  RelayedCluster c(1500, false);
  const auto prompt = c.co->tokenizer().Encode("Once upon a time", true, true);
  try {
    const auto logits = c.co->Eval(c.co->NewSequence(), prompt);
    ADD_FAILURE() << "logits altered in flight were accepted (" << logits.size() << " values)";
  } catch (const Error& e) {
    std::printf("[ refused  ] %s\n", e.what());
    EXPECT_THAT(e.what(), HasSubstr("was refused"));
    EXPECT_THAT(e.what(), HasSubstr("failed its authentication check"));
  }
  EXPECT_GE(c.relay.flipped(), 1) << "the relay saw no Result to alter";
}

}  // namespace
}  // namespace es::test
