// What discovery measures: a device's profile for a model (cached on disk) and the links between
// devices (Echo round trips and one bulk transfer).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "shard/shard_discovery.h"
#include "shard/shard_rpc.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kMaxPings = 100;
constexpr uint64_t kMaxEchoBytes = 64ull << 20;

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line;
  return "";
}

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

MeasureOptions QuickMeasureOptions(int threads) {
  MeasureOptions o;
  o.threads = threads;
  o.ctx = {256, 2048};
  o.prompt_batch = 256;
  o.reps = 3;
  return o;
}

Profile CachedProfile(const std::string& model_path, const std::string& model_sha,
                      const std::string& cache_dir, const MeasureOptions& o, std::string* source) {
  if (!IsSha256Hex(model_sha)) throw Error("profile cache: '" + model_sha + "' is not a SHA-256");
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const int threads =
      o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  // The same model measured on another machine, CPU or thread count is another profile.
  Sha256 key;
  std::string device = std::string(host) + "|" + CpuModel() + "|" + std::to_string(threads);
  if (o.gpu_device >= 0) device += "|vulkan" + std::to_string(o.gpu_device);
  key.Update(device.data(), device.size());
  const std::string dir = cache_dir + "/profiles";
  const std::string path = dir + "/" + model_sha + "-" + key.HexDigest().substr(0, 16) + ".json";
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    try {
      Profile p = LoadProfile(path, true);
      *source = "cached";
      return p;
    } catch (const Error& e) {
      LogLine("profile", "ignoring the cached profile: " + std::string(e.what()) + "; measuring");
    }
  }
  MeasureOptions m = o;
  m.threads = threads;
  Profile p = MeasureProfile(model_path, m);
  fs::create_directories(dir, ec);
  // Written beside and renamed, so a reader never sees half a file.
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  try {
    SaveProfile(p, tmp);
    fs::rename(tmp, path, ec);
  } catch (const Error& e) {
    LogLine("profile", "cannot cache the profile in " + dir + ": " + e.what());
  }
  fs::remove(tmp, ec);
  *source = "measured";
  return p;
}

LinkSpec MeasureLinkTo(WorkerClient& to, int pings, uint64_t bulk_bytes) {
  const auto deadline = std::chrono::milliseconds(5000);
  std::vector<double> rtt;
  rpc::EchoRequest ping;
  ping.set_payload(std::string(64, 'p'));
  to.Echo(ping, deadline);  // opens the connection, which is not part of any round trip
  for (int i = 0; i < std::max(1, pings); ++i) {
    const auto t0 = Clock::now();
    to.Echo(ping, deadline);
    rtt.push_back(MsSince(t0));
  }
  std::sort(rtt.begin(), rtt.end());
  LinkSpec l;
  l.rtt_ms = rtt[rtt.size() / 2];
  rpc::EchoRequest bulk;
  bulk.set_payload(std::string(std::max<uint64_t>(bulk_bytes, 1024), 'b'));
  double best_ms = 0;
  for (int i = 0; i < 2; ++i) {
    const auto t0 = Clock::now();
    to.Echo(bulk, std::chrono::milliseconds(60000));
    const double ms = MsSince(t0);
    if (i == 0 || ms < best_ms) best_ms = ms;
  }
  // The transfer's own time: a round trip is spent on the request and its empty reply anyway.
  const double transfer_ms = std::max(best_ms - l.rtt_ms, best_ms / 2);
  l.bandwidth_mbps = double(bulk.payload().size()) * 8 / 1e6 / (transfer_ms / 1000);
  return l;
}

grpc::Status ServeEcho(const rpc::EchoRequest& req, rpc::EchoReply* reply) {
  if (req.reply_bytes() > kMaxEchoBytes)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Echo: reply_bytes " + std::to_string(req.reply_bytes()) +
                            " is over the limit of " + std::to_string(kMaxEchoBytes));
  reply->set_payload(std::string(req.reply_bytes(), 'e'));
  return grpc::Status::OK;
}

grpc::Status ServeMeasureLink(const rpc::MeasureLinkRequest& req, const Security& security,
                              rpc::MeasureLinkReply* reply) {
  auto bad = [](const std::string& m) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "MeasureLink: " + m);
  };
  if (req.address().empty() || req.address().size() > 300) return bad("address missing or long");
  if (req.pings() < 1 || req.pings() > kMaxPings)
    return bad("pings must be 1 to " + std::to_string(kMaxPings));
  if (req.bulk_bytes() < 1024 || req.bulk_bytes() > kMaxEchoBytes)
    return bad("bulk_bytes must be 1 KiB to 64 MiB");
  try {
    WorkerClient peer(req.name().empty() ? "peer" : req.name(), req.address(), security);
    const LinkSpec l = MeasureLinkTo(peer, req.pings(), req.bulk_bytes());
    reply->set_rtt_ms(l.rtt_ms);
    reply->set_bandwidth_mbps(l.bandwidth_mbps);
  } catch (const Error& e) {
    // The other worker failed (unreachable, wrong token): the caller's request was sound.
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
  }
  return grpc::Status::OK;
}

}  // namespace es::shard
