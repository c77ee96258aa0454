#include "shard/shard_beacon.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "edgeshard/error.h"
#include "shard/shard_auth.h"

namespace es::shard {
namespace {

constexpr const char* kMagic = "ESB1";
constexpr size_t kMaxDatagram = 1024;

// Datagrams are few and small; a field longer than this is a malformed (or hostile) one.
bool GoodName(const std::string& s) {
  static const std::regex re("[A-Za-z0-9_.-]{1,64}");
  return std::regex_match(s, re);
}
bool GoodHost(const std::string& s) {
  static const std::regex re("[A-Za-z0-9_.:\\[\\]-]{0,255}");
  return std::regex_match(s, re);
}

constexpr const char* kReplayed = "replayed (its nonce was seen before)";

// A copy of a datagram already accepted: beacons go out on every interface, so copies are normal.
bool IsDuplicate(const std::string& why) {
  return why == kReplayed;
}

const char* KindName(Beacon::Kind k) {
  return k == Beacon::Kind::kAnnounce ? "announce" : "probe";
}

// A UDP socket that closes itself.
struct Socket {
  int fd = -1;
  Socket() {
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw Error(std::string("cannot open a UDP socket: ") + strerror(errno));
  }
  ~Socket() {
    if (fd >= 0) close(fd);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
};

in_addr ParseGroup(const std::string& group) {
  in_addr a{};
  if (inet_pton(AF_INET, group.c_str(), &a) != 1)
    throw Error("discovery address '" + group + "' is not an IPv4 address");
  return a;
}

// IPv4 addresses of the interfaces that are up (loopback included): beacons go out on each.
std::vector<in_addr> Interfaces() {
  std::vector<in_addr> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i; i = i->ifa_next)
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP))
      out.push_back(reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr);
  freeifaddrs(list);
  return out;
}

sockaddr_in Endpoint(in_addr a, int port) {
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_addr = a;
  s.sin_port = htons(uint16_t(port));
  return s;
}

std::string Ip(const sockaddr_in& s) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &s.sin_addr, buf, sizeof buf);
  return buf;
}

// Sends to the group once per interface (IP_MULTICAST_IF picks it); a unicast or broadcast
// address instead of a group is sent to once.
void SendToGroup(int fd, const DiscoveryEndpoint& ep, const std::string& data) {
  const in_addr g = ParseGroup(ep.group);
  const sockaddr_in to = Endpoint(g, ep.port);
  if (!IN_MULTICAST(ntohl(g.s_addr))) {
    const int one = 1;  // a broadcast address needs it; a unicast one ignores it
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    sendto(fd, data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
    return;
  }
  for (const in_addr& ifa : Interfaces()) {
    setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &ifa, sizeof ifa);
    sendto(fd, data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  }
}

// Binds to the group's port (shared with other workers on this machine) and joins the group on
// every interface.
void JoinGroup(int fd, const DiscoveryEndpoint& ep) {
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  const in_addr g = ParseGroup(ep.group);
  const sockaddr_in any = Endpoint(in_addr{htonl(INADDR_ANY)}, ep.port);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&any), sizeof any) != 0)
    throw Error("cannot bind the discovery port " + std::to_string(ep.port) + ": " +
                strerror(errno) + " (choose another with --discovery-port)");
  if (!IN_MULTICAST(ntohl(g.s_addr))) return;
  int joined = 0;
  for (const in_addr& ifa : Interfaces()) {
    ip_mreq m{};
    m.imr_multiaddr = g;
    m.imr_interface = ifa;
    joined += setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m) == 0;
  }
  if (joined == 0)
    throw Error("cannot join the discovery group " + ep.group +
                " on any interface: " + strerror(errno));
}

// Waits up to `ms` for a datagram on any of `fds`; returns the fd's index or -1.
int Receive(const std::vector<int>& fds, int ms, std::string* data, sockaddr_in* from) {
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back({fd, POLLIN, 0});
  if (poll(p.data(), p.size(), std::max(0, ms)) <= 0) return -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (!(p[i].revents & POLLIN)) continue;
    char buf[kMaxDatagram + 1];
    socklen_t len = sizeof *from;
    const ssize_t n =
        recvfrom(p[i].fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(from), &len);
    if (n < 0) return -1;
    data->assign(buf, size_t(n));
    return int(i);
  }
  return -1;
}

}  // namespace

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Beacon NewBeacon(Beacon::Kind kind, const std::string& name, const std::string& host, int port) {
  unsigned char rnd[16];
  if (RAND_bytes(rnd, sizeof rnd) != 1) throw Error("no random bytes for a beacon nonce");
  static const char* d = "0123456789abcdef";
  std::string nonce;
  for (unsigned char c : rnd) nonce += d[c >> 4], nonce += d[c & 15];
  return {kind, name, host, port, UnixMs(), nonce};
}

std::string BeaconKey(const std::string& token) {
  return Hmac(token, "edgeshard-beacon-key/1");
}

std::string EncodeBeacon(const Beacon& b, const std::string& key) {
  if (!GoodName(b.name))
    throw Error("beacon name '" + b.name + "': use 1 to 64 letters, digits, '_', '.', '-'");
  if (!GoodHost(b.host)) throw Error("beacon host '" + b.host + "' is not a host name or address");
  if (b.port < 0 || b.port > 65535) throw Error("beacon port out of range");
  std::ostringstream s;
  s << kMagic << '\n'
    << KindName(b.kind) << '\n'
    << b.name << '\n'
    << b.host << '\n'
    << b.port << '\n'
    << b.time_ms << '\n'
    << b.nonce << '\n';
  const std::string body = s.str();
  return body + Hmac(key, body);
}

BeaconVerifier::BeaconVerifier(std::string key, int64_t max_skew_ms)
    : key_(std::move(key)), max_skew_ms_(max_skew_ms) {}

std::optional<Beacon> BeaconVerifier::Verify(const std::string& data, int64_t now_ms,
                                             std::string* why) {
  auto fail = [&](const std::string& w) -> std::optional<Beacon> {
    *why = w;
    return std::nullopt;
  };
  if (data.size() > kMaxDatagram) return fail("longer than a beacon");
  const size_t body_end = data.rfind('\n');
  if (body_end == std::string::npos || data.compare(0, 5, std::string(kMagic) + "\n") != 0)
    return fail("not an edgeshard beacon");
  const std::string body = data.substr(0, body_end + 1), mac = data.substr(body_end + 1);
  // The code is checked before any field is trusted.
  if (!SameSecret(mac, Hmac(key_, body)))
    return fail("its code does not verify (sent with another cluster token, or altered)");
  std::vector<std::string> f;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) f.push_back(line);
  if (f.size() != 7) return fail("malformed beacon");
  Beacon b;
  if (f[1] == "announce")
    b.kind = Beacon::Kind::kAnnounce;
  else if (f[1] == "probe")
    b.kind = Beacon::Kind::kProbe;
  else
    return fail("unknown beacon kind");
  b.name = f[2];
  b.host = f[3];
  try {
    b.port = std::stoi(f[4]);
    b.time_ms = std::stoll(f[5]);
  } catch (const std::exception&) {
    return fail("malformed beacon");
  }
  b.nonce = f[6];
  if (!GoodName(b.name) || !GoodHost(b.host) || b.port < 0 || b.port > 65535 ||
      b.nonce.size() != 32)
    return fail("malformed beacon");
  if (std::llabs(now_ms - b.time_ms) > max_skew_ms_)
    return fail("stale: sent " + std::to_string((now_ms - b.time_ms) / 1000) +
                " s from now (replayed, or the clocks differ by more than " +
                std::to_string(max_skew_ms_ / 1000) + " s)");
  while (!order_.empty() && order_.front().first < now_ms - 2 * max_skew_ms_) {
    seen_.erase(order_.front().second);
    order_.pop_front();
  }
  if (!seen_.insert(b.nonce).second) return fail(kReplayed);
  order_.push_back({now_ms, b.nonce});
  return b;
}

void CheckEndpoint(const DiscoveryEndpoint& ep) {
  ParseGroup(ep.group);
  if (ep.port < 1 || ep.port > 65535)
    throw Error("discovery port " + std::to_string(ep.port) + " is not in 1..65535");
}

struct BeaconResponder::Impl {
  std::string key, name, host;
  int port = 0;
  DiscoveryEndpoint ep;
  std::chrono::milliseconds interval;
  Socket group_sock, send_sock;
  std::atomic<bool> stop{false};
  std::thread thread;

  // The beacon must never take the worker down: a failure ends discoverability, logged.
  void RunLogged() {
    try {
      Run();
    } catch (const std::exception& e) {
      LogLine(name, std::string("discovery beacon stopped: ") + e.what());
    }
  }

  void Run() {
    BeaconVerifier verifier(key);
    auto next_announce = std::chrono::steady_clock::now();
    int64_t last_log_ms = 0;
    while (!stop) {
      const auto now = std::chrono::steady_clock::now();
      if (interval.count() > 0 && now >= next_announce) {
        SendToGroup(send_sock.fd, ep,
                    EncodeBeacon(NewBeacon(Beacon::Kind::kAnnounce, name, host, port), key));
        next_announce = now + interval;
      }
      std::string data, why;
      sockaddr_in from{};
      if (Receive({group_sock.fd}, 100, &data, &from) < 0) continue;
      const auto b = verifier.Verify(data, UnixMs(), &why);
      if (!b) {
        // One line per 10 s at most: a flood of bad datagrams must not flood the log. Copies
        // of one datagram (sent on every interface) are not worth a line either.
        if (!IsDuplicate(why) && UnixMs() - last_log_ms > 10000) {
          last_log_ms = UnixMs();
          LogLine(name, "ignored a discovery datagram from " + Ip(from) + ": " + why);
        }
        continue;
      }
      if (b->kind != Beacon::Kind::kProbe) continue;  // another worker's announcement
      const std::string reply =
          EncodeBeacon(NewBeacon(Beacon::Kind::kAnnounce, name, host, port), key);
      sendto(send_sock.fd, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from),
             sizeof from);
    }
  }
};

BeaconResponder::BeaconResponder(const std::string& token, const DiscoveryEndpoint& ep,
                                 std::string name, std::string host, int port,
                                 std::chrono::milliseconds interval)
    : impl_(std::make_unique<Impl>()) {
  CheckEndpoint(ep);
  Impl& m = *impl_;
  m.key = BeaconKey(token);
  m.name = std::move(name);
  m.host = std::move(host);
  m.port = port;
  m.ep = ep;
  m.interval = interval;
  EncodeBeacon(NewBeacon(Beacon::Kind::kAnnounce, m.name, m.host, m.port), m.key);  // validates
  JoinGroup(m.group_sock.fd, ep);
  m.thread = std::thread([&m] { m.RunLogged(); });
}

BeaconResponder::~BeaconResponder() {
  impl_->stop = true;
  impl_->thread.join();
}

std::vector<FoundWorker> DiscoverWorkers(const std::string& token, const DiscoverOptions& o) {
  CheckEndpoint(o.endpoint);
  const std::string key = BeaconKey(token);
  auto log = [&](const std::string& m) {
    if (o.log) o.log(m);
  };
  // Answers come to the probing socket; periodic announcements to the group.
  Socket probe, group;
  JoinGroup(group.fd, o.endpoint);
  BeaconVerifier verifier(key);
  std::set<std::string> local;
  for (const in_addr& a : Interfaces()) local.insert(Ip(Endpoint(a, 0)));
  std::vector<FoundWorker> found;
  std::map<std::string, int> names;
  const auto t0 = std::chrono::steady_clock::now(), until = t0 + o.window;
  auto next_probe = t0;
  while (true) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= until || (o.expect > 0 && int(found.size()) >= o.expect)) break;
    if (now >= next_probe) {
      SendToGroup(probe.fd, o.endpoint,
                  EncodeBeacon(NewBeacon(Beacon::Kind::kProbe, o.name, "", 0), key));
      next_probe = now + std::chrono::milliseconds(500);
    }
    const int wait =
        int(std::chrono::duration_cast<std::chrono::milliseconds>(std::min(until, next_probe) - now)
                .count());
    std::string data, why;
    sockaddr_in from{};
    if (Receive({probe.fd, group.fd}, wait, &data, &from) < 0) continue;
    const auto b = verifier.Verify(data, UnixMs(), &why);
    if (!b) {
      if (!IsDuplicate(why)) log("ignored a discovery datagram from " + Ip(from) + ": " + why);
      continue;
    }
    if (b->kind != Beacon::Kind::kAnnounce) continue;  // our own probe, or another source's
    const std::string ip = Ip(from);
    const std::string host = b->host.empty() ? ip : b->host;
    // A worker that announces a loopback address is reachable only from its own machine (whose
    // datagrams come from loopback or from one of this machine's addresses).
    if (host.rfind("127.", 0) == 0 && ip.rfind("127.", 0) != 0 && !local.count(ip)) {
      log("ignored worker '" + b->name + "' at " + ip + ": it announces loopback address " + host +
          " (start it with --listen on an address this machine can reach)");
      continue;
    }
    const bool bare_v6 = host.find(':') != std::string::npos && host[0] != '[';
    const std::string address = (bare_v6 ? "[" + host + "]" : host) + ":" + std::to_string(b->port);
    if (std::any_of(found.begin(), found.end(),
                    [&](const FoundWorker& f) { return f.address == address; }))
      continue;
    std::string name = b->name;
    if (int n = ++names[b->name]; n > 1) name += "-" + std::to_string(n);
    log("found worker '" + name + "' at " + address);
    found.push_back({name, address, ip});
  }
  return found;
}

}  // namespace es::shard
