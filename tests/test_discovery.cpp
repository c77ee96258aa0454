// Zero-config discovery (`--cluster auto`, `edgeshard cluster status`): the beacon codec refuses
// forged, foreign and replayed datagrams; real `edgeshard worker` processes on loopback are found
// when they hold the token and not otherwise; their profiles are measured once and then read
// from the cache; every link is measured; and `run --cluster auto` prints what one device prints.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <optional>
#include <set>

#include "distributed_harness.h"
#include "shard/shard_beacon.h"
#include "shard/shard_discovery.h"
#include "shard/shard_planner.h"

namespace es::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kToken = "0123456789abcdef0123456789abcdef";

TEST(BeaconCodec, RoundTripsTheFields) {
  const std::string key = shard::BeaconKey(kToken);
  const shard::Beacon b = shard::NewBeacon(shard::Beacon::Kind::kAnnounce, "w1", "10.0.0.2", 7070);
  shard::BeaconVerifier v(key);
  std::string why;
  const auto got = v.Verify(shard::EncodeBeacon(b, key), shard::UnixMs(), &why);
  ASSERT_TRUE(got) << why;
  EXPECT_EQ(got->name, "w1");
  EXPECT_EQ(got->host, "10.0.0.2");
  EXPECT_EQ(got->port, 7070);
  EXPECT_EQ(got->nonce, b.nonce);
  EXPECT_EQ(got->kind, shard::Beacon::Kind::kAnnounce);
}

TEST(BeaconCodec, RefusesAnotherTokenAForgeryAReplayAndAStaleBeacon) {
  const std::string key = shard::BeaconKey(kToken);
  const int64_t now = shard::UnixMs();
  shard::BeaconVerifier v(key);
  std::string why;
  // Another cluster's token.
  const std::string foreign =
      shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kAnnounce, "w1", "", 7070),
                          shard::BeaconKey("another-token-of-enough-length"));
  EXPECT_FALSE(v.Verify(foreign, now, &why));
  EXPECT_THAT(why, HasSubstr("does not verify"));
  // A forgery: the right code over other content (the port redirected elsewhere).
  std::string forged =
      shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kAnnounce, "w1", "", 7070), key);
  forged.replace(forged.find("\n7070\n"), 6, "\n7071\n");
  EXPECT_FALSE(v.Verify(forged, now, &why));
  EXPECT_THAT(why, HasSubstr("does not verify"));
  // A replay of a good beacon inside the window.
  const std::string good =
      shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kAnnounce, "w1", "", 7070), key);
  EXPECT_TRUE(v.Verify(good, now, &why)) << why;
  EXPECT_FALSE(v.Verify(good, now + 10, &why));
  EXPECT_THAT(why, HasSubstr("replayed"));
  // The same datagram replayed after the window (a fresh verifier: the nonce is forgotten).
  shard::BeaconVerifier later(key);
  EXPECT_FALSE(later.Verify(good, now + 120000, &why));
  EXPECT_THAT(why, HasSubstr("stale"));
  // Not a beacon at all, and a truncated one.
  EXPECT_FALSE(v.Verify("hello", now, &why));
  EXPECT_FALSE(v.Verify(good.substr(0, good.size() - 10), now, &why));
  // Names that cannot travel are refused when encoding.
  EXPECT_THROW(
      shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kAnnounce, "a\nb", "", 1), key),
      Error);
}

// The link measurement handlers refuse requests out of bounds before doing anything.
TEST(LinkMeasurement, RefusesRequestsOutOfBounds) {
  edgeshard::rpc::EchoRequest echo;
  echo.set_reply_bytes(1u << 30);
  edgeshard::rpc::EchoReply echo_reply;
  const grpc::Status e = shard::ServeEcho(echo, &echo_reply);
  EXPECT_EQ(e.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(e.error_message(), HasSubstr("reply_bytes"));
  echo.set_reply_bytes(10);
  ASSERT_TRUE(shard::ServeEcho(echo, &echo_reply).ok());
  EXPECT_EQ(echo_reply.payload().size(), 10u);

  const auto security = shard::Security{kToken, "", "", ""};
  edgeshard::rpc::MeasureLinkRequest req;
  req.set_address("127.0.0.1:1");
  req.set_pings(0);
  req.set_bulk_bytes(1 << 20);
  edgeshard::rpc::MeasureLinkReply reply;
  EXPECT_THAT(shard::ServeMeasureLink(req, security, &reply).error_message(), HasSubstr("pings"));
  req.set_pings(3);
  req.set_bulk_bytes(1ull << 40);
  EXPECT_THAT(shard::ServeMeasureLink(req, security, &reply).error_message(),
              HasSubstr("bulk_bytes"));
  req.set_bulk_bytes(1 << 20);
  req.clear_address();
  EXPECT_EQ(shard::ServeMeasureLink(req, security, &reply).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Sound, but nobody listens there: the failure names the peer, not the request.
  req.set_address("127.0.0.1:1");
  const grpc::Status down = shard::ServeMeasureLink(req, security, &reply);
  EXPECT_EQ(down.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// A UDP port nobody else on this machine uses now, so parallel tests do not hear each other.
int FreeUdpPort() {
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// A live responder on loopback answers a fresh probe with its address, and ignores the same
// probe sent again (a replay), a probe with another token and a forged one.
TEST(BeaconResponder, AnswersFreshProbesOnly) {
  const int port = FreeUdpPort();
  const shard::DiscoveryEndpoint ep{"239.255.70.70", port};
  shard::BeaconResponder responder(kToken, ep, "w1", "127.0.0.1", 4242,
                                   std::chrono::milliseconds(0));
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  timeval tv{0, 400000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const in_addr lo{htonl(INADDR_LOOPBACK)};
  setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo);
  sockaddr_in group{};
  group.sin_family = AF_INET;
  group.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, ep.group.c_str(), &group.sin_addr);
  auto send = [&](const std::string& d) {
    sendto(fd, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&group), sizeof group);
  };
  auto answer = [&]() -> std::optional<shard::Beacon> {
    char buf[2048];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return std::nullopt;
    shard::BeaconVerifier v(shard::BeaconKey(kToken));
    std::string why;
    return v.Verify(std::string(buf, size_t(n)), shard::UnixMs(), &why);
  };
  const std::string key = shard::BeaconKey(kToken);
  auto fresh = [&] {
    return shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kProbe, "src", "", 0), key);
  };
  // The responder joins the group as it starts: wait until it answers at all.
  bool up = false;
  for (int i = 0; i < 10 && !up; ++i) {
    send(fresh());
    up = answer().has_value();
  }
  ASSERT_TRUE(up) << "the responder never answered a probe on 127.0.0.1";
  while (answer()) {
  }  // late answers to the warm-up probes
  const std::string probe = fresh();
  send(probe);
  const auto got = answer();
  ASSERT_TRUE(got);
  EXPECT_EQ(got->name, "w1");
  EXPECT_EQ(got->host, "127.0.0.1");
  EXPECT_EQ(got->port, 4242);
  EXPECT_EQ(got->kind, shard::Beacon::Kind::kAnnounce);
  send(probe);  // a replay
  send(shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kProbe, "src", "", 0),
                           shard::BeaconKey("another-token-of-enough-length")));
  std::string forged =
      shard::EncodeBeacon(shard::NewBeacon(shard::Beacon::Kind::kProbe, "src", "", 0), key);
  forged.replace(forged.find("\nsrc\n"), 5, "\nsrd\n");
  send(forged);
  EXPECT_FALSE(answer());
  close(fd);
}

class Discovery : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = dir_.File("cluster.token", kToken + "\n");
    wrong_token_file_ = dir_.File("other.token", "fedcba9876543210fedcba9876543210\n");
    port_ = FreeUdpPort();
    // The CLI's source profile is cached under $XDG_CACHE_HOME: keep it in the test's folder.
    setenv("XDG_CACHE_HOME", (dir_.path + "/xdg").c_str(), 1);
  }
  std::vector<std::string> WorkerArgs(const std::string& token_file, const std::string& cache,
                                      uint64_t memory) const {
    std::vector<std::string> a = {
        "--token-file", token_file, "-t", "1",    "--discovery-port",    std::to_string(port_),
        "--cache-dir",  cache,      "-m", model_, "--announce-interval", "0.5"};
    if (memory) a.insert(a.end(), {"--memory", std::to_string(memory)});
    return a;
  }
  shard::DiscoveryOptions Options(std::vector<std::string>* log) const {
    shard::DiscoveryOptions o;
    o.endpoint.port = port_;
    o.window = std::chrono::milliseconds(2500);
    o.source_threads = 1;
    o.cache_dir = dir_.path + "/source-cache";
    o.pings = 3;
    o.bulk_bytes = 256 << 10;
    o.log = [log](const std::string& s) { log->push_back(s); };
    return o;
  }

  TempDir dir_;
  std::string token_file_, wrong_token_file_;
  std::string model_ = ModelPath("stories260K.gguf");
  int port_ = 0;
};

// Three workers with the token are found, with their budgets, profiles and every link; a fourth
// with another token is neither found nor trusted (it ignores the source's probes, and the
// source would ignore its announcements). A worker restarted reads its profile from the cache.
TEST_F(Discovery, FindsTheWorkersThatHoldTheToken) {
  const auto security = shard::Security::Load(token_file_, "", "", "");
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (int i = 1; i <= 3; ++i)
    workers.push_back(std::make_unique<WorkerProcess>(
        "w" + std::to_string(i),
        WorkerArgs(token_file_, dir_.path + "/cache" + std::to_string(i), 1000000u * i),
        dir_.path));
  WorkerProcess intruder("intruder", WorkerArgs(wrong_token_file_, dir_.path + "/cache4", 0),
                         dir_.path);
  ASSERT_GT(intruder.port(), 0);

  std::vector<std::string> log;
  const shard::Discovery d = shard::Discover(model_, security, Options(&log));
  std::set<std::string> names;
  for (const auto& dev : d.devices) names.insert(dev.name);
  EXPECT_EQ(names, (std::set<std::string>{"source", "w1", "w2", "w3"}));
  ASSERT_EQ(d.cluster.devices.size(), 4u);
  EXPECT_EQ(d.cluster.source, 0);
  ASSERT_EQ(d.cluster.profiles.size(), 4u);
  for (size_t i = 1; i < d.devices.size(); ++i) {
    const auto& dev = d.devices[i];
    const int n = dev.name.back() - '0';
    EXPECT_EQ(dev.memory_budget_bytes, 1000000u * n) << dev.name;
    EXPECT_EQ(d.cluster.MemoryBudget(int(i)), 1000000u * n);
    EXPECT_EQ(dev.threads, 1);
    EXPECT_EQ(dev.profile_source, "measured") << dev.name;
    EXPECT_TRUE(d.cluster.profiles[i].has_timing());
    EXPECT_EQ(d.cluster.profiles[i].model.units.size(), d.cluster.profiles[0].model.units.size());
    EXPECT_EQ(dev.address, workers[n - 1]->address());
  }
  // Every pair of the four devices has a measured link.
  EXPECT_EQ(d.cluster.links.size(), 6u);
  for (const auto& [k, l] : d.cluster.links) {
    EXPECT_GT(l.bandwidth_mbps, 0) << k.first << "-" << k.second;
    EXPECT_GT(l.rtt_ms, 0) << k.first << "-" << k.second;
  }
  // The intruder heard the probes and refused them (so it did not answer); its announcements
  // (every 0.5 s) reached the source, which refused them: nobody found it.
  EXPECT_THAT(intruder.Log(), HasSubstr("ignored a discovery datagram"));
  EXPECT_THAT(intruder.Log(), HasSubstr("does not verify"));
  bool refused = false;
  for (const auto& line : log) {
    EXPECT_THAT(line, Not(HasSubstr("intruder")));
    refused |= line.find("does not verify") != std::string::npos;
  }
  EXPECT_TRUE(refused) << "the source never heard (and refused) the intruder's announcements";
  // The table of `cluster status`.
  const std::string table = shard::DiscoveryTable(d);
  EXPECT_THAT(table, HasSubstr("| w2 | " + workers[1]->address() + " | 1 |"));
  EXPECT_THAT(table, HasSubstr("| source - w3 |"));

  // A restarted worker reads its profile from its cache.
  workers[0]->Restart();
  std::vector<std::string> log2;
  auto o2 = Options(&log2);
  o2.expect = 3;
  o2.window = std::chrono::milliseconds(10000);  // ends as soon as the three answer
  const shard::Discovery d2 = shard::Discover(model_, security, o2);
  bool seen = false;
  for (const auto& dev : d2.devices)
    if (dev.name == "w1") {
      seen = true;
      EXPECT_EQ(dev.profile_source, "cached");
    }
  EXPECT_TRUE(seen);
  EXPECT_EQ(d2.devices[0].profile_source, "cached");  // the source's own, from the first run
}

#ifdef EDGESHARD_HAVE_VULKAN
// A worker started with `--gpu vulkan0` (lavapipe in CI) offers its GPU as a device of its own,
// and the source its own with --source-gpu: measured on the GPU, budgeted with the GPU's memory,
// their links to their hosts priced as unified memory (lavapipe's is the host's), and planned
// with.
TEST_F(Discovery, WorkersOfferTheirGpus) {
  const auto security = shard::Security::Load(token_file_, "", "", "");
  auto args = WorkerArgs(token_file_, dir_.path + "/cache-g", 0);
  args.insert(args.end(), {"--gpu", "vulkan0"});
  WorkerProcess w("wg", args, dir_.path);
  ASSERT_GT(w.port(), 0);
  std::vector<std::string> log;
  auto o = Options(&log);
  o.expect = 1;
  o.window = std::chrono::milliseconds(10000);
  o.source_gpu = 0;
  const shard::Discovery d = shard::Discover(model_, security, o);
  ASSERT_EQ(d.devices.size(), 4u);  // source, wg, then the GPUs
  EXPECT_EQ(d.devices[2].name, "source-gpu");
  EXPECT_EQ(d.devices[3].name, "wg-gpu");
  EXPECT_EQ(d.devices[3].gpu_of, "wg");
  ASSERT_EQ(d.cluster.devices.size(), 4u);
  ASSERT_EQ(d.cluster.profiles.size(), 4u);
  EXPECT_EQ(d.cluster.devices[2].gpu_of, 0);
  EXPECT_EQ(d.cluster.devices[3].gpu_of, 1);
  EXPECT_EQ(d.cluster.devices[3].gpu, 0);
  for (int g : {2, 3}) {
    EXPECT_EQ(d.cluster.profiles[g].gpu.rfind("vulkan0 (", 0), 0u) << d.cluster.profiles[g].gpu;
    EXPECT_GT(d.cluster.MemoryBudget(g), 0u);
  }
  EXPECT_TRUE(d.cluster.profiles[1].gpu.empty());
  EXPECT_EQ(d.cluster.Link(1, 3).bandwidth_mbps, shard::kUnifiedLink.bandwidth_mbps);
  EXPECT_EQ(d.cluster.Link(0, 3).rtt_ms, d.cluster.Link(0, 1).rtt_ms);  // through its host
  EXPECT_THAT(shard::DiscoveryTable(d), HasSubstr("| wg-gpu | vulkan0 ("));
  EXPECT_THAT(w.Log(), HasSubstr("profile of vulkan0 ("));
  const shard::Problem p = shard::BuildProblem(d.cluster, d.cluster.profiles[0].model, {});
  EXPECT_EQ(p.Host(3), 1);
  const shard::Solution s = shard::Solve(p, shard::Objective::kLatency);
  ASSERT_TRUE(s.feasible);
  EXPECT_NO_THROW(shard::CheckStages(p, s.stages));
}
#endif

// The wrong token alone: nothing is found, and the error says what to check. (The worker
// profiles its model at start here, as --profile-at-start asks, before it says it listens.)
TEST_F(Discovery, FindsNothingWithAnotherToken) {
  auto args = WorkerArgs(token_file_, dir_.path + "/cache1", 0);
  args.push_back("--profile-at-start");
  WorkerProcess w("w1", args, dir_.path);
  EXPECT_THAT(w.Log(), HasSubstr("w1: profile measured"));
  std::vector<std::string> log;
  auto o = Options(&log);
  o.window = std::chrono::milliseconds(1200);
  try {
    shard::Discover(model_, shard::Security::Load(wrong_token_file_, "", "", ""), o);
    ADD_FAILURE() << "discovery found a worker of another cluster";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("found no worker"));
    EXPECT_THAT(e.what(), HasSubstr("--token-file"));
  }
  // The worker refused the probes, and the source its announcements.
  EXPECT_THAT(w.Log(), HasSubstr("does not verify"));
  bool refused = false;
  for (const auto& line : log) refused |= line.find("does not verify") != std::string::npos;
  EXPECT_TRUE(refused);
}

// `run --cluster auto` prints exactly what `run` prints on one device, with the plan spread over
// all three discovered workers (their budgets leave the planner no other choice), and `cluster
// status -m` shows the devices, links and that plan.
TEST_F(Discovery, RunClusterAutoMatchesOneDevice) {
  const int n_ctx = 256;
  const auto units = shard::UnitsFromGguf(*gguf::File::Open(model_));
  const std::vector<uint64_t> budgets = SplitBudgets(units, n_ctx, 3);
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (int i = 1; i <= 3; ++i)
    workers.push_back(std::make_unique<WorkerProcess>(
        "w" + std::to_string(i),
        WorkerArgs(token_file_, dir_.path + "/cache" + std::to_string(i), budgets[i]), dir_.path));
  const std::string common = "-m " + model_ + " -c " + std::to_string(n_ctx) +
                             " -t 1 --temp 0 -n 24 -p 'Once upon a time' ";
  const auto single = RunCli("run " + common);
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const std::string auto_args =
      "--cluster auto --token-file " + token_file_ + " --discovery-port " + std::to_string(port_) +
      " --discover-workers 3 --discover-seconds 10 --source-memory " + std::to_string(budgets[0]);
  const auto dist = RunCli("run " + common + auto_args + " -v");
  ASSERT_EQ(dist.exit_code, 0) << dist.err;
  EXPECT_EQ(dist.out, single.out);
  for (const char* w : {"| w1 |", "| w2 |", "| w3 |"}) EXPECT_THAT(dist.err, HasSubstr(w));
  EXPECT_THAT(dist.err, HasSubstr("discovery: found worker 'w3'"));

  const auto status = RunCli(
      "cluster status --token-file " + token_file_ + " --discovery-port " + std::to_string(port_) +
      " --discover-workers 3 --discover-seconds 10 --source-memory " + std::to_string(budgets[0]) +
      " -t 1 --ctx " + std::to_string(n_ctx) + " -m " + model_);
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("Discovered 3 worker(s)"));
  EXPECT_THAT(status.out, HasSubstr("| source - w1 |"));
  EXPECT_THAT(status.out, HasSubstr("| w2 - w3 |"));
  EXPECT_THAT(status.out, HasSubstr("Optimum:"));
  for (const char* w : {"| w1 |", "| w2 |", "| w3 |"}) EXPECT_THAT(status.out, HasSubstr(w));
}

}  // namespace
}  // namespace es::test
