// Security of the worker service: a shared token proved on every call in both directions, and
// optional (mutual) TLS.
//
// Each call carries a fresh nonce, a timestamp and HMAC-SHA256(token, "client|method|nonce|time");
// the worker checks it, refuses stale or replayed proofs, and answers with
// HMAC-SHA256(token, "server|method|nonce") in its initial metadata, which the caller checks. So
// both ends show they hold the token without sending it, also on a link without TLS.
#pragma once
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

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

// Lower-case hex SHA-256 of a file; `progress(done, total)` is called as it reads.
std::string Sha256File(const std::string& path,
                       const std::function<void(uint64_t, uint64_t)>& progress = {});
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
  void Attach(grpc::ClientContext& ctx);
  // True if the worker's initial metadata proves it holds the token. Call once the call has
  // returned (unary) or after WaitForInitialMetadata (streams).
  bool Verify(const grpc::ClientContext& ctx) const;

 private:
  std::string token_, method_, nonce_;
};

// Server side: checks every call and remembers recent nonces to refuse replays.
class ServerAuth {
 public:
  explicit ServerAuth(std::string token, std::string log_name);
  // OK, after adding the worker's proof to the initial metadata; else UNAUTHENTICATED, logged.
  grpc::Status Check(grpc::ServerContext* ctx, const std::string& method);

 private:
  std::string token_, log_name_;
  std::mutex mu_;
  std::unordered_set<std::string> seen_;
  std::deque<std::pair<int64_t, std::string>> seen_order_;  // (time, nonce), oldest first
};

// Prints "[time] name: message" to stderr (workers log refusals and faults this way).
void LogLine(const std::string& name, const std::string& message);

}  // namespace es::shard
