#include "shard/shard_auth.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <vector>

namespace es::shard {
namespace {

constexpr const char* kProofKey = "x-es-proof";
constexpr const char* kNonceKey = "x-es-nonce";
constexpr const char* kTimeKey = "x-es-time";
constexpr const char* kServerProofKey = "x-es-server-proof";
// A proof older (or newer) than this is refused; nonces are remembered this long.
constexpr int64_t kMaxSkewSeconds = 300;

std::string Hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) s[2 * i] = d[p[i] >> 4], s[2 * i + 1] = d[p[i] & 15];
  return s;
}

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

std::string ReadText(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot read the " + what);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
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

std::string Sha256File(const std::string& path,
                       const std::function<void(uint64_t, uint64_t)>& progress) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(path + ": cannot open to compute its hash");
  struct stat st {};
  fstat(fileno(f), &st);
  const uint64_t total = static_cast<uint64_t>(st.st_size);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t done = 0;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    h.Update(buf.data(), n);
    done += n;
    if (progress) progress(done, total);
  }
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) throw Error(path + ": read error while computing its hash");
  return h.HexDigest();
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

void CallAuth::Attach(grpc::ClientContext& ctx) {
  const std::string t = std::to_string(NowSeconds());
  ctx.AddMetadata(kNonceKey, nonce_);
  ctx.AddMetadata(kTimeKey, t);
  ctx.AddMetadata(kProofKey, Hmac(token_, "client|" + method_ + "|" + nonce_ + "|" + t));
}

bool CallAuth::Verify(const grpc::ClientContext& ctx) const {
  const std::string got = Meta(ctx.GetServerInitialMetadata(), kServerProofKey);
  return !got.empty() && SameSecret(got, Hmac(token_, "server|" + method_ + "|" + nonce_));
}

ServerAuth::ServerAuth(std::string token, std::string log_name)
    : token_(std::move(token)), log_name_(std::move(log_name)) {}

grpc::Status ServerAuth::Check(grpc::ServerContext* ctx, const std::string& method) {
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
  if (!SameSecret(proof, Hmac(token_, "client|" + method + "|" + nonce + "|" + t)))
    return refuse("wrong token (the proof does not match this worker's token)");
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
