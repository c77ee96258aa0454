// `edgeshard profile`: measure this device for the planner (per layer unit, through the engine),
// or a link to a peer (bandwidth and round trip over TCP), or serve as that peer (an echo server).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "cli/cli_command.h"
#include "gpu/gpu_device.h"
#include "shard/shard_cluster.h"
#include "shard/shard_profile.h"

namespace es::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct ProfileOptions {
  std::string model, out, link, memory, name, device = "cpu";
  std::vector<int> ctx = {512, 2048};
  int threads = 0, batch = 512, reps = 7;
  int echo_port = -1, max_connections = 0, timeout_s = 0;
  double link_mb = 8;
  bool json = false;
};

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Owns a socket descriptor.
struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd, o.fd);
    return *this;
  }
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

void SendAll(int fd, const char* p, size_t n, const std::string& peer) {
  while (n > 0) {
    const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0)
      throw Error(peer + ": connection lost while sending (" + std::strerror(errno) + ")");
    p += k, n -= size_t(k);
  }
}

void RecvAll(int fd, char* p, size_t n, const std::string& peer) {
  while (n > 0) {
    const ssize_t k = recv(fd, p, n, 0);
    if (k == 0) throw Error(peer + ": the peer closed the connection (is it an echo server?)");
    if (k < 0) throw Error(peer + ": receive failed: " + std::strerror(errno));
    p += k, n -= size_t(k);
  }
}

Fd Connect(const std::string& hostport) {
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == hostport.size())
    throw UsageError("--link: expected HOST:PORT, got '" + hostport + "'");
  const std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
    throw Error(hostport + ": cannot resolve: " + gai_strerror(rc));
  std::string why = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    Fd s(socket(a->ai_family, a->ai_socktype, a->ai_protocol));
    if (s.fd < 0) continue;
    if (connect(s.fd, a->ai_addr, a->ai_addrlen) == 0) {
      freeaddrinfo(res);
      const int one = 1;
      setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      timeval tv{30, 0};  // a silent peer fails the measurement instead of hanging it
      setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      return s;
    }
    why = std::strerror(errno);
  }
  freeaddrinfo(res);
  throw Error(hostport + ": cannot connect: " + why);
}

// Round trip: median of small ping-pongs. Bandwidth: a bulk payload streamed to the echo
// server while a second thread reads it back; the transfer time is the total less one RTT.
int MeasureLink(const ProfileOptions& o) {
  Fd s = Connect(o.link);
  char byte = 'x';
  std::vector<double> rtts;
  for (int i = 0; i < 21; ++i) {
    const auto t0 = Clock::now();
    SendAll(s.fd, &byte, 1, o.link);
    RecvAll(s.fd, &byte, 1, o.link);
    rtts.push_back(MsSince(t0));
  }
  std::sort(rtts.begin(), rtts.end());
  const double rtt = rtts[rtts.size() / 2];
  const size_t total = size_t(std::max(0.001, o.link_mb) * (1 << 20));
  std::vector<char> out(1 << 16, 'e'), in(1 << 16);
  std::string send_error;
  const auto t0 = Clock::now();
  std::thread sender([&] {
    try {
      for (size_t sent = 0; sent < total;) {
        const size_t n = std::min(out.size(), total - sent);
        SendAll(s.fd, out.data(), n, o.link);
        sent += n;
      }
    } catch (const std::exception& e) {
      send_error = e.what();
      shutdown(s.fd, SHUT_RDWR);
    }
  });
  try {
    for (size_t got = 0; got < total;) {
      const size_t n = std::min(in.size(), total - got);
      RecvAll(s.fd, in.data(), n, o.link);
      got += n;
    }
  } catch (...) {
    shutdown(s.fd, SHUT_RDWR);
    sender.join();
    throw;
  }
  sender.join();
  if (!send_error.empty()) throw Error(send_error);
  const double ms = MsSince(t0);
  const double mbps = total * 8.0 / (std::max(ms - rtt, 1e-3) * 1e3);
  if (o.json) {
    nlohmann::json j = {
        {"peer", o.link}, {"rtt_ms", rtt}, {"bandwidth_mbps", mbps}, {"bytes", total}, {"ms", ms}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("# link to %s: %.1f MiB echoed in %.1f ms\n", o.link.c_str(), total / 1048576.0,
                ms);
    std::printf("{between: [THIS, PEER], bandwidth_mbps: %.1f, rtt_ms: %.3f}\n", mbps, rtt);
  }
  return kExitOk;
}

void Echo(Fd c) {
  std::vector<char> buf(1 << 16);
  while (true) {
    const ssize_t n = recv(c.fd, buf.data(), buf.size(), 0);
    if (n <= 0) return;
    try {
      SendAll(c.fd, buf.data(), size_t(n), "echo");
    } catch (const Error&) {
      return;
    }
  }
}

int EchoServer(const ProfileOptions& o) {
  Fd s(socket(AF_INET6, SOCK_STREAM, 0));
  bool v6 = s.fd >= 0;
  if (!v6) s = Fd(socket(AF_INET, SOCK_STREAM, 0));
  if (s.fd < 0) throw Error(std::string("echo server: socket: ") + std::strerror(errno));
  const int one = 1, zero = 0;
  setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage addr{};
  socklen_t len;
  if (v6) {
    setsockopt(s.fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);  // IPv4 clients too
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_any;
    a->sin6_port = htons(uint16_t(o.echo_port));
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_ANY);
    a->sin_port = htons(uint16_t(o.echo_port));
    len = sizeof *a;
  }
  if (bind(s.fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(s.fd, 16) != 0)
    throw Error("echo server: cannot listen on port " + std::to_string(o.echo_port) + ": " +
                std::strerror(errno));
  getsockname(s.fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                            : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  std::printf("echo server listening on port %d\n", port);
  std::fflush(stdout);
  std::vector<std::thread> workers;
  const auto t0 = Clock::now();
  for (int served = 0; o.max_connections <= 0 || served < o.max_connections;) {
    pollfd p{s.fd, POLLIN, 0};
    int wait_ms = -1;
    if (o.timeout_s > 0) {
      wait_ms = int(o.timeout_s * 1000 - MsSince(t0));
      if (wait_ms <= 0) break;
    }
    if (poll(&p, 1, wait_ms) <= 0) continue;
    Fd c(accept(s.fd, nullptr, nullptr));
    if (c.fd < 0) continue;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    workers.emplace_back(Echo, std::move(c));
    ++served;
  }
  for (auto& w : workers) w.join();
  return kExitOk;
}

int ProfileDevice(const ProfileOptions& o) {
  shard::MeasureOptions m;
  m.threads = o.threads;
  m.ctx = o.ctx;
  m.prompt_batch = o.batch;
  m.reps = o.reps;
  m.device = o.name;
  if (o.device != "cpu") {
    try {
      m.gpu_device = gpu::ParseDeviceName(o.device);
    } catch (const Error& e) {
      throw UsageError(std::string("--device: ") + e.what());
    }
  }
  if (!o.memory.empty()) {
    const auto b = shard::ParseByteSize(o.memory);
    if (!b || *b == 0)
      throw UsageError("--memory: '" + o.memory + "' is not a size such as '14 GiB'");
    m.memory_budget_bytes = *b;
  }
  m.progress = [](const std::string& s) { std::fprintf(stderr, "profile: %s\n", s.c_str()); };
  const shard::Profile p = shard::MeasureProfile(o.model, m);
  shard::SaveProfile(p, o.out);
  double decode = 0;
  for (const auto& t : p.timing) decode += t.decode.front().ms;
  uint64_t total = 0, active = 0;
  for (const auto& u : p.model.units) total += u.weight_bytes, active += u.active_bytes;
  std::fprintf(stderr,
               "profile: %s: %zu units, one decode step %.3f ms at context %d, %s, "
               "reading %.1f of %.1f MiB of weights -> %s\n",
               p.device.c_str(), p.model.units.size(), decode, p.timing[0].decode.front().ctx,
               p.gpu.empty() ? (std::to_string(p.threads) + " threads").c_str() : p.gpu.c_str(),
               active / 1048576.0, total / 1048576.0, o.out.c_str());
  return kExitOk;
}

const bool registered = RegisterCommand("profile", [](CLI::App& app) {
  auto o = std::make_shared<ProfileOptions>();
  auto* cmd =
      app.add_subcommand("profile", "measure this device (per layer unit) or a link, for `plan`");
  auto* m =
      cmd->add_option("-m,--model", o->model, "GGUF model to profile")->check(CLI::ExistingFile);
  auto* out = cmd->add_option("-o,--output", o->out, "write the device profile (JSON) here");
  cmd->add_option("-t,--threads", o->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--ctx", o->ctx, "context lengths to time decoding at, e.g. 512,2048")
      ->delimiter(',')
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--batch", o->batch, "prompt tokens per forward pass when timing prompts")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--reps", o->reps, "samples per figure (the median is kept)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--memory", o->memory, "memory budget to record (default: MemAvailable)");
  cmd->add_option("--name", o->name, "device name to record (default: host name)");
  cmd->add_option("--device", o->device,
                  "cpu (the default), or a GPU: vulkan0, vulkan1, ... (every block and the head "
                  "run there; the budget is its memory)");
  auto* link =
      cmd->add_option("--link", o->link, "measure bandwidth and RTT to an echo peer HOST:PORT");
  cmd->add_option("--link-mb", o->link_mb, "MiB to echo when measuring bandwidth")
      ->check(CLI::Range(0.001, 1e6));
  cmd->add_flag("--json", o->json, "print the link measurement as JSON");
  auto* echo =
      cmd->add_option("--echo-server", o->echo_port, "serve as a link peer: echo on PORT (0: any)")
          ->check(CLI::Range(0, 65535));
  cmd->add_option("--max-connections", o->max_connections,
                  "echo server: exit after this many connections");
  cmd->add_option("--timeout-s", o->timeout_s,
                  "echo server: stop accepting after this many seconds");
  return [o, m, out, link, echo]() {
    const int modes = (m->count() > 0) + (link->count() > 0) + (echo->count() > 0);
    if (modes != 1)
      throw UsageError(
          "give exactly one of -m MODEL (with -o), --link HOST:PORT, --echo-server PORT");
    if (link->count()) return MeasureLink(*o);
    if (echo->count()) return EchoServer(*o);
    if (out->count() == 0) throw UsageError("-o FILE is required to write the profile");
    return ProfileDevice(*o);
  };
});

}  // namespace
}  // namespace es::cli
