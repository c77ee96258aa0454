#include "shard/shard_auth.h"

#include <fcntl.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <vector>

namespace es::shard {
namespace {

constexpr const char* kProofKey = "x-es-proof";
constexpr const char* kNonceKey = "x-es-nonce";
constexpr const char* kTimeKey = "x-es-time";
constexpr const char* kServerProofKey = "x-es-server-proof";
constexpr const char* kReplyProofKey = "x-es-reply-proof";
// A proof older (or newer) than this is refused; nonces are remembered this long.
constexpr int64_t kMaxSkewSeconds = 300;

std::string Hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) s[2 * i] = d[p[i] >> 4], s[2 * i + 1] = d[p[i] & 15];
  return s;
}

}  // namespace

std::string Hmac(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len))
    throw Error("HMAC-SHA256 failed");
  return Hex(out, len);
}

// Constant-time comparison, so a forged proof learns nothing from timing.
bool SameSecret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

namespace {

std::string ReadText(const std::string& path, const std::string& what) {
  return ReadRegularFile(path, "the " + what);
}

const char* FileKind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

std::string Sha256Raw(const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr))
    throw Error("SHA-256 failed");
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string Meta(const std::multimap<grpc::string_ref, grpc::string_ref>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Security Security::Load(const std::string& token_file, const std::string& ca_file,
                        const std::string& cert_file, const std::string& key_file) {
  Security s;
  if (token_file.empty()) throw Error("a token file is required (--token-file FILE)");
  std::string t = ReadText(token_file, "token file");
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  size_t b = 0;
  while (b < t.size() && std::isspace(static_cast<unsigned char>(t[b]))) ++b;
  t = t.substr(b);
  if (t.size() < 16)
    throw Error(token_file + ": the token is " + std::to_string(t.size()) +
                " characters long; use a secret of at least 16 (e.g. `openssl rand -hex 32`)");
  if (t.find('\n') != std::string::npos)
    throw Error(token_file + ": expected one line with the token, found several");
  struct stat st {};
  if (stat(token_file.c_str(), &st) == 0 && (st.st_mode & 0077))
    LogLine("edgeshard",
            "warning: " + token_file +
                " is readable by other users; `chmod 600` it to keep the token secret");
  s.token = t;
  if (cert_file.empty() != key_file.empty())
    throw Error("TLS needs both a certificate and its key (--tls-cert and --tls-key)");
  if (!ca_file.empty()) s.tls_ca = ReadText(ca_file, "CA certificate");
  if (!cert_file.empty()) {
    s.tls_cert = ReadText(cert_file, "TLS certificate");
    s.tls_key = ReadText(key_file, "TLS key");
  }
  return s;
}

std::shared_ptr<grpc::ChannelCredentials> ClientCredentials(const Security& s) {
  if (!s.tls()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = s.tls_ca;
  o.pem_private_key = s.tls_key;
  o.pem_cert_chain = s.tls_cert;
  return grpc::SslCredentials(o);
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const Security& s) {
  if (!s.tls()) return grpc::InsecureServerCredentials();
  if (s.tls_cert.empty())
    throw Error("a TLS server needs a certificate and key (--tls-cert and --tls-key)");
  grpc::SslServerCredentialsOptions o(
      s.tls_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                       : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  o.pem_root_certs = s.tls_ca;
  o.pem_key_cert_pairs.push_back({s.tls_key, s.tls_cert});
  return grpc::SslServerCredentials(o);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || !EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr))
    throw Error("SHA-256 is not available");
}
Sha256::~Sha256() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
}
void Sha256::Update(const void* data, size_t n) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n);
}
std::string Sha256::HexDigest() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out, &len);
  return Hex(out, len);
}

int OpenRegularFile(const std::string& path, const std::string& what) {
  auto refuse = [&](const struct stat& st) {
    return Error(path + ": " + what + " must be a regular file, but this is " +
                 FileKind(st.st_mode) + "; give the path of a file");
  };
  // stat first (it never blocks) for a clear message about sockets, devices and FIFOs; then
  // O_NONBLOCK and fstat, so a path swapped in between is refused too instead of waited on.
  struct stat st {};
  if (stat(path.c_str(), &st) != 0)
    throw Error(path + ": cannot open " + what + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw refuse(st);
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open " + what + ": " + std::strerror(errno));
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw refuse(st);
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

std::string ReadRegularFile(const std::string& path, const std::string& what) {
  const int fd = OpenRegularFile(path, what);
  std::string text;
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  close(fd);
  if (n < 0) throw Error(path + ": read error in " + what);
  return text;
}

std::string Sha256File(const std::string& path,
                       const std::function<void(uint64_t, uint64_t)>& progress,
                       const std::atomic<bool>* stop) {
  const int fd = OpenRegularFile(path, "a file to hash");
  struct stat st {};
  fstat(fd, &st);
  const uint64_t total = static_cast<uint64_t>(st.st_size);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t done = 0;
  ssize_t n;
  // A 1 MiB read takes well under a millisecond, so a stop request is seen at once.
  while ((n = read(fd, buf.data(), buf.size())) > 0) {
    if (stop && stop->load()) {
      close(fd);
      throw Stopped(path + ": hashing stopped after " + std::to_string(done >> 20) + " of " +
                    std::to_string(total >> 20) + " MiB");
    }
    h.Update(buf.data(), static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
    if (progress) progress(done, total);
  }
  close(fd);
  if (n < 0) throw Error(path + ": read error while computing its hash");
  return h.HexDigest();
}

std::string MessageDigest(const google::protobuf::MessageLite& m) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    if (!m.SerializeToCodedStream(&out)) throw Error("cannot serialize a message");
  }
  const std::string d = Sha256Raw(bytes);
  return Hex(reinterpret_cast<const unsigned char*>(d.data()), d.size());
}

bool IsSha256Hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

CallAuth::CallAuth(const std::string& token, std::string method)
    : token_(token), method_(std::move(method)) {
  unsigned char r[16];
  if (RAND_bytes(r, sizeof r) != 1) throw Error("no randomness for a call nonce");
  nonce_ = Hex(r, sizeof r);
}

void CallAuth::Attach(grpc::ClientContext& ctx, const google::protobuf::MessageLite* request) {
  const std::string t = std::to_string(NowSeconds());
  const std::string digest = request ? MessageDigest(*request) : std::string();
  ctx.AddMetadata(kNonceKey, nonce_);
  ctx.AddMetadata(kTimeKey, t);
  ctx.AddMetadata(kProofKey,
                  Hmac(token_, "client|" + method_ + "|" + nonce_ + "|" + t + "|" + digest));
}

bool CallAuth::VerifyReply(const grpc::ClientContext& ctx,
                           const google::protobuf::MessageLite& reply) const {
  const std::string got = Meta(ctx.GetServerTrailingMetadata(), kReplyProofKey);
  return !got.empty() && SameSecret(got, Hmac(token_, "reply|" + method_ + "|" + nonce_ + "|" +
                                                          MessageDigest(reply)));
}

bool CallAuth::Verify(const grpc::ClientContext& ctx) const {
  const std::string got = Meta(ctx.GetServerInitialMetadata(), kServerProofKey);
  return !got.empty() && SameSecret(got, Hmac(token_, "server|" + method_ + "|" + nonce_));
}

ServerAuth::ServerAuth(std::string token, std::string log_name)
    : token_(std::move(token)), log_name_(std::move(log_name)) {}

grpc::Status ServerAuth::Check(grpc::ServerContext* ctx, const std::string& method,
                               const google::protobuf::MessageLite* request) {
  const auto& m = ctx->client_metadata();
  const std::string nonce = Meta(m, kNonceKey), t = Meta(m, kTimeKey), proof = Meta(m, kProofKey);
  auto refuse = [&](const std::string& why) {
    LogLine(log_name_, "refused " + method + " from " + ctx->peer() + ": " + why);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "edgeshard worker: " + why);
  };
  if (nonce.empty() || proof.empty() || t.empty()) return refuse("no token proof in the call");
  if (nonce.size() > 64) return refuse("malformed nonce");
  int64_t when = 0;
  try {
    when = std::stoll(t);
  } catch (const std::exception&) {
    return refuse("malformed timestamp");
  }
  const int64_t now = NowSeconds();
  const std::string digest = request ? MessageDigest(*request) : std::string();
  if (!SameSecret(proof, Hmac(token_, "client|" + method + "|" + nonce + "|" + t + "|" + digest)))
    return refuse(
        "wrong token or altered request (the proof does not match this worker's token and the "
        "request's digest)");
  if (when < now - kMaxSkewSeconds || when > now + kMaxSkewSeconds)
    return refuse("stale proof: its time is " + std::to_string(when - now) +
                  " s from this worker's clock");
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!seen_order_.empty() && seen_order_.front().first < now - 2 * kMaxSkewSeconds) {
      seen_.erase(seen_order_.front().second);
      seen_order_.pop_front();
    }
    if (!seen_.insert(nonce).second) return refuse("replayed proof (nonce seen before)");
    seen_order_.push_back({now, nonce});
  }
  ctx->AddInitialMetadata(kServerProofKey, Hmac(token_, "server|" + method + "|" + nonce));
  return grpc::Status::OK;
}

void ServerAuth::ProveReply(grpc::ServerContext* ctx, const std::string& method,
                            const google::protobuf::MessageLite& reply) const {
  const std::string nonce = Meta(ctx->client_metadata(), kNonceKey);
  ctx->AddTrailingMetadata(
      kReplyProofKey, Hmac(token_, "reply|" + method + "|" + nonce + "|" + MessageDigest(reply)));
}

FrameSeal::FrameSeal(std::string token, std::string nonce, bool caller)
    : token_(std::move(token)), nonce_(std::move(nonce)), caller_(caller) {}

FrameSeal FrameSeal::ForServer(const std::string& token, const grpc::ServerContext* ctx) {
  return FrameSeal(token, Meta(ctx->client_metadata(), kNonceKey), false);
}

std::string FrameSeal::Mac(char direction, uint64_t seq, const std::string& body) const {
  // The body is hashed first, so the code's input stays small without copying the activations.
  return Hmac(token_, std::string("frame|") + direction + "|" + nonce_ + "|" + std::to_string(seq) +
                          "|" + Sha256Raw(body));
}

edgeshard::rpc::Sealed FrameSeal::Seal(const google::protobuf::MessageLite& m) {
  edgeshard::rpc::Sealed s;
  if (!m.SerializeToString(s.mutable_body())) throw Error("cannot serialize a stream message");
  s.set_mac(Mac(caller_ ? 'c' : 's', sent_++, s.body()));
  return s;
}

bool FrameSeal::Open(const edgeshard::rpc::Sealed& s, google::protobuf::MessageLite* m,
                     std::string* why) {
  const uint64_t seq = received_;
  if (!SameSecret(s.mac(), Mac(caller_ ? 's' : 'c', seq, s.body()))) {
    *why = "message " + std::to_string(seq) +
           " of the call failed its authentication check (altered, reordered, replayed or from "
           "another call)";
    return false;
  }
  if (!m->ParseFromString(s.body())) {
    *why = "message " + std::to_string(seq) + " of the call does not parse";
    return false;
  }
  ++received_;
  return true;
}

void LogLine(const std::string& name, const std::string& message) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t tt = std::chrono::system_clock::to_time_t(now);
  const int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  localtime_r(&tt, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%H:%M:%S", &tm);
  std::fprintf(stderr, "[%s.%03d] %s: %s\n", ts, ms, name.c_str(), message.c_str());
  std::fflush(stderr);
}

}  // namespace es::shard
