// Zero-config discovery's UDP beacon (docs/distributed.md, "Discovery"): workers announce their
// gRPC address on a multicast group and answer probes from a source; every datagram carries an
// HMAC under a key derived from the cluster token, a timestamp and a nonce, so only holders of
// the token can make themselves found or find anyone, and a recorded datagram cannot be replayed.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace es::shard {

struct Beacon {
  enum class Kind { kAnnounce, kProbe };
  Kind kind = Kind::kAnnounce;
  std::string name;  // the worker's (or probing source's) name
  std::string host;  // announce: the gRPC host; "" means the datagram's sender address
  int port = 0;      // announce: the gRPC port
  int64_t time_ms = 0;
  std::string nonce;  // 32 hex digits
};

// A fresh beacon (current time, random nonce).
Beacon NewBeacon(Beacon::Kind kind, const std::string& name, const std::string& host, int port);

// The beacon key: HMAC-SHA256(token, "edgeshard-beacon-key/1"), so beacons never use the token
// itself (which keys the gRPC proofs).
std::string BeaconKey(const std::string& token);
// The datagram: text lines "ESB1", kind, name, host, port, time, nonce, then the HMAC of all of
// them. Throws es::Error on a field that cannot be sent (bad name, host, port).
std::string EncodeBeacon(const Beacon& b, const std::string& key);

// Checks datagrams: format, code, timestamp within `max_skew_ms` of `now_ms`, and a nonce not
// seen before (nonces are remembered for twice the skew, so a replay inside the window fails on
// the nonce and one after it on the time).
class BeaconVerifier {
 public:
  explicit BeaconVerifier(std::string key, int64_t max_skew_ms = 30000);
  // The beacon, or nullopt with `why` (for a log line).
  std::optional<Beacon> Verify(const std::string& datagram, int64_t now_ms, std::string* why);

 private:
  std::string key_;
  int64_t max_skew_ms_;
  std::unordered_set<std::string> seen_;
  std::deque<std::pair<int64_t, std::string>> order_;  // (time seen, nonce), oldest first
};

int64_t UnixMs();

// Where beacons travel: an IPv4 multicast group and UDP port (sent on every up interface,
// loopback included, so workers on one machine find each other too).
struct DiscoveryEndpoint {
  std::string group = "239.255.70.70";
  int port = 7071;
};
// "ADDR:PORT" is not used: the group and port are separate options (--discovery-addr/-port).
void CheckEndpoint(const DiscoveryEndpoint& ep);  // es::Error naming the bad value

// The worker's side: answers verified probes at once (unicast to the prober) and, every
// `interval` (0: never), announces itself to the group. Stops in its destructor.
class BeaconResponder {
 public:
  BeaconResponder(const std::string& token, const DiscoveryEndpoint& ep, std::string name,
                  std::string host, int port, std::chrono::milliseconds interval);
  ~BeaconResponder();
  BeaconResponder(const BeaconResponder&) = delete;
  BeaconResponder& operator=(const BeaconResponder&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct FoundWorker {
  std::string name, address;  // address: host:port of its gRPC service
  std::string from;           // the datagram's sender IP
};

struct DiscoverOptions {
  DiscoveryEndpoint endpoint;
  std::chrono::milliseconds window{3000};  // how long to listen
  int expect = 0;                          // stop as soon as this many are found (0: the window)
  std::string name = "source";             // in probes
  std::function<void(const std::string&)> log;  // ignored datagrams and finds
};

// Probes the group (every 500 ms) and gathers verified announcements for the window. Workers
// are told apart by address; a name seen twice is suffixed with "-2", "-3", ...
std::vector<FoundWorker> DiscoverWorkers(const std::string& token, const DiscoverOptions& o);

}  // namespace es::shard
