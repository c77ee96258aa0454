// Security of the worker service: a shared token proved on every call in both directions, and
// optional (mutual) TLS.
//
// Each call carries a fresh nonce, a timestamp and
// HMAC-SHA256(token, "client|method|nonce|time|SHA-256(request)"); the worker checks it, refuses
// stale or replayed proofs, and answers with HMAC-SHA256(token, "server|method|nonce") in its
// initial metadata and, for unary calls, HMAC-SHA256(token, "reply|method|nonce|SHA-256(reply)")
// in its trailing metadata, which the caller checks. Messages of the streaming calls are sealed
// one by one (FrameSeal). So both ends show they hold the token without sending it, and an
// on-path host without TLS can neither alter, reorder, drop-and-replay nor move a message between
// calls unnoticed.
#pragma once
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "edgeshard.pb.h"
#include "edgeshard/error.h"

namespace es::shard {

struct Security {
  std::string token;                      // shared secret (never empty once loaded)
  std::string tls_ca, tls_cert, tls_key;  // PEM text; all empty: plain TCP
  bool tls() const { return !tls_cert.empty() || !tls_ca.empty(); }
  // Reads the files (empty paths are skipped). The token file holds one secret of at least 16
  // characters; surrounding whitespace is ignored. TLS needs a certificate and key together.
  static Security Load(const std::string& token_file, const std::string& ca_file,
                       const std::string& cert_file, const std::string& key_file);
};

// Credentials for a channel to a worker (TLS when the security has a CA or certificate).
std::shared_ptr<grpc::ChannelCredentials> ClientCredentials(const Security& s);
// Credentials for the worker's port; with a CA, clients must present a certificate signed by it.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const Security& s);

// Thrown when a long operation is abandoned because `stop` was set (a signal during start-up).
class Stopped : public Error {
 public:
  using Error::Error;
};

// Opens `path` for reading only if it is a regular file (throws naming the path and `what` it
// should be otherwise). The open does not block, so a FIFO or device is refused, not waited on.
int OpenRegularFile(const std::string& path, const std::string& what);
// The whole content of a regular file (see OpenRegularFile).
std::string ReadRegularFile(const std::string& path, const std::string& what);

// Lower-case hex SHA-256 of a regular file; `progress(done, total)` is called as it reads. Throws
// Stopped soon after `*stop` becomes true.
std::string Sha256File(const std::string& path,
                       const std::function<void(uint64_t, uint64_t)>& progress = {},
                       const std::atomic<bool>* stop = nullptr);
// Hex SHA-256 of a message's deterministic serialization (what a unary call's proofs cover).
std::string MessageDigest(const google::protobuf::MessageLite& m);
// Incremental SHA-256 (streamed model files).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  void Update(const void* data, size_t n);
  std::string HexDigest();  // finishes the hash

 private:
  void* ctx_;
};
bool IsSha256Hex(const std::string& s);

// Client side of one call: attach a proof before the call, check the worker's answer after it.
class CallAuth {
 public:
  CallAuth(const std::string& token, std::string method);
  // `request`: the unary call's request, whose digest the proof covers (null for streams).
  void Attach(grpc::ClientContext& ctx, const google::protobuf::MessageLite* request = nullptr);
  // True if the worker's initial metadata proves it holds the token. Call once the call has
  // returned (unary) or after WaitForInitialMetadata (streams).
  bool Verify(const grpc::ClientContext& ctx) const;
  // True if the trailing metadata of a finished unary call proves `reply` came from the worker.
  bool VerifyReply(const grpc::ClientContext& ctx,
                   const google::protobuf::MessageLite& reply) const;
  const std::string& nonce() const { return nonce_; }

 private:
  std::string token_, method_, nonce_;
};

// Server side: checks every call and remembers recent nonces to refuse replays.
class ServerAuth {
 public:
  explicit ServerAuth(std::string token, std::string log_name);
  // OK, after adding the worker's proof to the initial metadata; else UNAUTHENTICATED, logged.
  // `request`: the unary call's request, whose digest the caller's proof must cover.
  grpc::Status Check(grpc::ServerContext* ctx, const std::string& method,
                     const google::protobuf::MessageLite* request = nullptr);
  // Adds the proof over a unary call's reply to the trailing metadata (after a successful Check).
  void ProveReply(grpc::ServerContext* ctx, const std::string& method,
                  const google::protobuf::MessageLite& reply) const;
  const std::string& token() const { return token_; }

 private:
  std::string token_, log_name_;
  std::mutex mu_;
  std::unordered_set<std::string> seen_;
  std::deque<std::pair<int64_t, std::string>> seen_order_;  // (time, nonce), oldest first
};

// Seals and opens the messages of one streaming call in both directions. Each direction numbers
// its messages from 0; a message is accepted only with the next number of its direction, so an
// altered, reordered, dropped, replayed, reflected or transplanted (other call) message fails.
// One thread seals (and writes in the same order) and one opens at a time.
class FrameSeal {
 public:
  // `caller`: this end opened the call. `nonce`: the call's nonce (CallAuth::nonce, or the
  // client's metadata on the worker).
  FrameSeal(std::string token, std::string nonce, bool caller);
  edgeshard::rpc::Sealed Seal(const google::protobuf::MessageLite& m);
  // Checks the next message from the other end and parses it into `m`; false with `why` when the
  // code does not verify or the body does not parse.
  bool Open(const edgeshard::rpc::Sealed& s, google::protobuf::MessageLite* m, std::string* why);
  // The server's seal for a call that passed ServerAuth::Check.
  static FrameSeal ForServer(const std::string& token, const grpc::ServerContext* ctx);

 private:
  std::string Mac(char direction, uint64_t seq, const std::string& body) const;
  std::string token_, nonce_;
  bool caller_;
  uint64_t sent_ = 0, received_ = 0;
};

// Lower-case hex HMAC-SHA256 of `msg` under `key` (proofs, discovery beacons).
std::string Hmac(const std::string& key, const std::string& msg);
// Constant-time comparison, so a forged proof learns nothing from timing.
bool SameSecret(const std::string& a, const std::string& b);

// Prints "[time] name: message" to stderr (workers log refusals and faults this way).
void LogLine(const std::string& name, const std::string& message);

}  // namespace es::shard
