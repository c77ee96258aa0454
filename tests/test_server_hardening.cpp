// `edgeshard serve` against hostile clients: bodies built to exhaust the stack, clients that send
// their requests slowly or never finish them, one address that opens hundreds of connections.
// Under the asan preset the same tests drive the ASan+UBSan server.
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "server_harness.h"
#include "test_util.h"

namespace {

using namespace es::test::srv;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Waits up to `limit_ms` for the server to close `fd`; returns the ms it took, or -1.
double MsUntilClosed(int fd, int limit_ms) {
  const auto t0 = Clock::now();
  char buf[4096];
  while (MsSince(t0) < limit_ms) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN)) return MsSince(t0);
    }
  }
  return -1;
}

// Reads what the server sent on `fd` within `ms`.
std::string ReadFor(int fd, int ms) {
  std::string out;
  const auto t0 = Clock::now();
  char buf[4096];
  while (MsSince(t0) < ms) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

class HardenedServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"-m", Stories(), "--chat-template", "chatml", "-c", "256", "-t",
                                 "1", "--http-head-timeout", "2", "--max-conns-per-client", "64"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static int port() { return server_->port(); }
  static ServerProcess* server_;
};
ServerProcess* HardenedServer::server_ = nullptr;

// 100,000 nested arrays once killed the server: the error message serialised the value
// recursively. Bodies nested deeper than the limit are refused before they are parsed.
TEST_F(HardenedServer, DeeplyNestedBodiesAre400) {
  ASSERT_GT(port(), 0);
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    auto r = Post(port(), path, deep);
    json e = ExpectError(r, 400);
    EXPECT_NE(e["message"].get<std::string>().find("deeper than 64"), std::string::npos) << r.body;
    const std::string in_field =
        "{\"prompt\": " + std::string(100000, '{') + std::string(100000, '}') + "}";
    ExpectError(Post(port(), path, in_field), 400);
  }
  // Brackets inside strings are text, not nesting; 64 levels are still JSON we read.
  auto ok = Post(port(), "/v1/completions",
                 "{\"prompt\": \"" + std::string(150, '[') + "\", \"max_tokens\": 2}");
  EXPECT_EQ(ok.status, 200) << ok.body;
  const std::string at_limit =
      "{\"prompt\": \"x\", \"stop\": " + std::string(63, '[') + std::string(63, ']') + "}";
  json e = ExpectError(Post(port(), "/v1/completions", at_limit), 400, "stop");
  EXPECT_EQ(e["message"].get<std::string>().find("deeper"), std::string::npos);
  EXPECT_EQ(Get(port(), "/health").status, 200);
}

// A huge value quoted in an error is cut short without being serialised whole.
TEST_F(HardenedServer, ErrorsQuoteAShortPreview) {
  std::string arr = "[";
  for (int i = 0; i < 200000; ++i) arr += (i ? ",\"" : "\"") + std::to_string(i) + "\"";
  arr += "]";
  auto r = Post(port(), "/v1/completions", "{\"prompt\": \"x\", \"temperature\": " + arr + "}");
  json e = ExpectError(r, 400, "temperature");
  EXPECT_LT(e["message"].get<std::string>().size(), 200u) << r.body;
  EXPECT_NE(e["message"].get<std::string>().find("[\"0\",\"1\""), std::string::npos) << r.body;
}

// Slowloris: 200 half-sent requests from one address must not starve other clients. /health
// answered in 17-19 s before; now the address holds at most 64 connections (the rest get 429)
// and threads grow as needed, so other clients are served at once.
TEST_F(HardenedServer, StalledConnectionsDoNotStarveOthers) {
  std::vector<int> stalled;
  for (int i = 0; i < 200; ++i) {
    const int fd = Connect(port(), "127.0.0.2");
    SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    stalled.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  double worst = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    auto h = Get(port(), "/health");
    worst = std::max(worst, MsSince(t0));
    EXPECT_EQ(h.status, 200);
  }
  EXPECT_LT(worst, 1000) << "/health took " << worst << " ms with 200 stalled connections open";
  int refused = 0;
  for (int fd : stalled) {
    const std::string got = ReadFor(fd, 20);
    if (got.rfind("HTTP/1.1 429", 0) == 0) {
      ++refused;
      EXPECT_NE(got.find("too_many_connections"), std::string::npos) << got;
    }
  }
  EXPECT_EQ(refused, 200 - 64);
  for (int fd : stalled) close(fd);
}

// The head has one deadline for all of it: a client trickling a byte every 300 ms is cut off at
// the head timeout (2 s here), not kept alive by each byte; a silent one likewise.
TEST_F(HardenedServer, SlowHeadsAreCutAtTheDeadline) {
  const int silent = Connect(port());
  const int trickle = Connect(port());
  const auto t0 = Clock::now();
  const std::string head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa";
  bool cut = false;
  for (size_t i = 0; i < head.size() && MsSince(t0) < 8000; ++i) {
    if (send(trickle, &head[i], 1, MSG_NOSIGNAL) != 1) {
      cut = true;
      break;
    }
    if (MsUntilClosed(trickle, 300) >= 0) {
      cut = true;
      break;
    }
  }
  const double trickle_ms = MsSince(t0);
  EXPECT_TRUE(cut) << "a trickling client kept its connection for " << trickle_ms << " ms";
  EXPECT_GT(trickle_ms, 1500);
  EXPECT_LT(trickle_ms, 4000);
  const double silent_ms = MsUntilClosed(silent, 5000);
  EXPECT_GE(silent_ms, 0) << "a silent connection was not closed";
  close(silent);
  close(trickle);
  EXPECT_EQ(Get(port(), "/health").status, 200);
}

// Listening beyond loopback without a key is allowed, with a warning (the worker warns too).
TEST(ServerWarnings, PublicAddressWithoutKeyWarns) {
  const std::string serve = "timeout -s TERM 3 " + es::test::BinaryPath() + " serve -m " +
                            Stories() + " -c 64 --port 0 --host 0.0.0.0";
  auto open = Shell(serve);
  EXPECT_NE(open.out.find("warning: listening on 0.0.0.0 without --api-key"), std::string::npos)
      << open.out;
  auto keyed = Shell(serve + " --api-key k");
  EXPECT_NE(keyed.out.find("listening on"), std::string::npos) << keyed.out;
  EXPECT_EQ(keyed.out.find("without --api-key"), std::string::npos) << keyed.out;
}

}  // namespace
