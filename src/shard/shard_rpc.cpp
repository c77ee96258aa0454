#include "shard/shard_rpc.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

namespace es::shard {

namespace rpc = edgeshard::rpc;

std::string StatusCodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "status " + std::to_string(static_cast<int>(c));
  }
}

Progress::Progress(std::string label, bool quiet)
    : label_(std::move(label)),
      quiet_(quiet),
      tty_(isatty(STDERR_FILENO)),
      t0_(std::chrono::steady_clock::now()) {}

void Progress::operator()(uint64_t done, uint64_t total) {
  if (quiet_ || total == 0) return;
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  const double mib = static_cast<double>(total) / (1024.0 * 1024.0);
  if (!tty_) {
    const int q = static_cast<int>(frac * 4);
    if (q > last_quarter_) {
      last_quarter_ = q;
      LogLine(label_,
              std::to_string(q * 25) + "% of " + std::to_string(static_cast<int>(mib)) + " MiB");
    }
    return;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  if (secs < 1.0 && done < total) return;
  if (!drew_ && done >= total) return;  // fast work stays quiet
  drew_ = true;
  const int width = 40, fill = static_cast<int>(width * frac);
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %.1f MiB", label_.c_str(), fill,
               "========================================", width - fill, "",
               static_cast<int>(100 * frac), mib);
  if (done >= total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

grpc::ChannelArguments DefaultChannelArgs() {
  grpc::ChannelArguments a;
  a.SetMaxReceiveMessageSize(kMaxMessageBytes);
  a.SetMaxSendMessageSize(kMaxMessageBytes);
  // A worker that comes back should be reachable again quickly (gRPC backs off up to 2 min).
  a.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  a.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  a.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Each worker gets its own connection even when two share an address string.
  a.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return a;
}

bool StreamCall::Write(const rpc::Frame& f) {
  return rw->Write(seal->Seal(f));
}

bool StreamCall::Read(rpc::Frame* f) {
  rpc::Sealed s;
  if (!rw->Read(&s)) return false;
  if (seal->Open(s, f, &refused_)) return true;
  LogLine("edgeshard", "refused a frame from " + who + ": " + refused_);
  ctx.TryCancel();
  return false;
}

std::string StreamCall::EndReason(const std::string& otherwise) {
  if (!refused_.empty()) return "a frame from " + who + " was refused: " + refused_;
  // Read returned false, so the status has arrived (or the call was cancelled): Finish is prompt.
  const grpc::Status st = rw->Finish();
  if (st.ok()) return otherwise;
  return who + " ended the stream: " + StatusCodeName(st.error_code()) + ": " + st.error_message();
}

StreamCall::~StreamCall() {
  ctx.TryCancel();
  // Finish would wait for the worker; a cancelled call is released without it.
}

WorkerClient::WorkerClient(std::string name, std::string address, const Security& security)
    : name_(std::move(name)), address_(std::move(address)), security_(security) {
  channel_ =
      grpc::CreateCustomChannel(address_, ClientCredentials(security_), DefaultChannelArgs());
  stub_ = rpc::Worker::NewStub(channel_);
}

std::string WorkerClient::Who() const {
  return "worker '" + name_ + "' (" + address_ + ")";
}

void WorkerClient::Fail(const std::string& method, const grpc::Status& st) const {
  std::string why = st.error_message();
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED)
    why += " (do the coordinator and the worker use the same --token-file?)";
  else if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    why = "no answer before the deadline (the worker is stalled or overloaded)";
  throw RpcError(Who() + ": " + method + " failed: " + StatusCodeName(st.error_code()) + ": " + why,
                 st.error_code());
}

void WorkerClient::CheckProof(const std::string& method, const CallAuth& auth,
                              const grpc::ClientContext& ctx,
                              const google::protobuf::MessageLite* reply) const {
  if (!auth.Verify(ctx))
    throw RpcError(Who() + ": " + method +
                       ": the worker did not prove it holds the cluster token; refusing to use it",
                   grpc::StatusCode::UNAUTHENTICATED);
  if (reply && !auth.VerifyReply(ctx, *reply))
    throw RpcError(Who() + ": " + method +
                       ": the reply's proof does not match its content (altered on the way?); "
                       "refusing it (use TLS on untrusted links)",
                   grpc::StatusCode::UNAUTHENTICATED);
}

namespace {
std::chrono::system_clock::time_point After(std::chrono::milliseconds ms) {
  return std::chrono::system_clock::now() + ms;
}
}  // namespace

template <typename Reply, typename Req, typename Call>
Reply WorkerClient::Unary(const std::string& method, const Req& req,
                          std::chrono::milliseconds deadline, Call call) {
  grpc::ClientContext ctx;
  ctx.set_deadline(After(deadline));
  CallAuth auth(security_.token, method);
  auth.Attach(ctx, &req);
  Reply reply;
  const grpc::Status st = call(&ctx, req, &reply);
  if (!st.ok()) Fail(method, st);
  CheckProof(method, auth, ctx, &reply);
  return reply;
}

rpc::HealthReply WorkerClient::Health(std::chrono::milliseconds deadline,
                                      const rpc::HealthRequest& req) {
  return Unary<rpc::HealthReply>("Health", req, deadline,
                                 [&](auto* c, auto& r, auto* o) { return stub_->Health(c, r, o); });
}

rpc::LoadShardReply WorkerClient::LoadShard(const rpc::LoadShardRequest& req,
                                            std::chrono::milliseconds deadline) {
  return Unary<rpc::LoadShardReply>("LoadShard", req, deadline, [&](auto* c, auto& r, auto* o) {
    return stub_->LoadShard(c, r, o);
  });
}

rpc::EchoReply WorkerClient::Echo(const rpc::EchoRequest& req, std::chrono::milliseconds deadline) {
  return Unary<rpc::EchoReply>("Echo", req, deadline,
                               [&](auto* c, auto& r, auto* o) { return stub_->Echo(c, r, o); });
}

rpc::MeasureLinkReply WorkerClient::MeasureLink(const rpc::MeasureLinkRequest& req,
                                                std::chrono::milliseconds deadline) {
  return Unary<rpc::MeasureLinkReply>("MeasureLink", req, deadline, [&](auto* c, auto& r, auto* o) {
    return stub_->MeasureLink(c, r, o);
  });
}

void WorkerClient::PushModel(const std::string& path, const std::string& sha256,
                             const std::function<void(uint64_t, uint64_t)>& progress,
                             std::chrono::milliseconds deadline) {
  std::FILE* f = fdopen(OpenRegularFile(path, "the model to send to " + Who()), "rb");
  if (!f) throw Error(path + ": cannot open the model to send it to " + Who());
  std::fseek(f, 0, SEEK_END);
  const uint64_t total = static_cast<uint64_t>(std::ftell(f));
  std::fseek(f, 0, SEEK_SET);
  grpc::ClientContext ctx;
  ctx.set_deadline(After(deadline));
  CallAuth auth(security_.token, "PushModel");
  auth.Attach(ctx);
  FrameSeal seal(security_.token, auth.nonce(), true);
  rpc::PushModelReply reply;
  auto writer = stub_->PushModel(&ctx, &reply);
  std::vector<char> buf(4 << 20);
  uint64_t done = 0;
  bool first = true, write_ok = true;
  while (write_ok) {
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n == 0 && !first) break;
    rpc::ModelChunk chunk;
    if (first) chunk.set_sha256(sha256), chunk.set_total_bytes(total), first = false;
    chunk.set_data(buf.data(), n);
    write_ok = writer->Write(seal.Seal(chunk));
    done += n;
    if (progress) progress(done, total);
    if (n == 0) break;
  }
  std::fclose(f);
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  if (!st.ok()) Fail("PushModel", st);
  CheckProof("PushModel", auth, ctx, &reply);
}

void WorkerClient::Release(uint64_t epoch, const std::vector<uint64_t>& sequences,
                           std::chrono::milliseconds deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(After(deadline));
  CallAuth auth(security_.token, "Release");
  rpc::ReleaseRequest req;
  req.set_epoch(epoch);
  for (uint64_t s : sequences) req.add_sequences(s);
  auth.Attach(ctx, &req);
  rpc::ReleaseReply reply;
  const grpc::Status st = stub_->Release(&ctx, req, &reply);
  if (!st.ok()) Fail("Release", st);
  CheckProof("Release", auth, ctx, &reply);
}

std::unique_ptr<StreamCall> WorkerClient::OpenStream(rpc::Open::Role role, uint64_t epoch,
                                                     std::chrono::milliseconds open_deadline) {
  auto call = std::make_unique<StreamCall>();
  CallAuth auth(security_.token, "Stream");
  auth.Attach(call->ctx);
  call->seal = std::make_unique<FrameSeal>(security_.token, auth.nonce(), true);
  call->who = Who();
  // Streams live as long as the plan; liveness is watched by Health polls and per-step waits.
  call->ctx.set_deadline(After(std::chrono::hours(24 * 365)));
  call->rw = stub_->Stream(&call->ctx);
  rpc::Frame open;
  open.mutable_open()->set_role(role);
  open.mutable_open()->set_epoch(epoch);
  if (!call->Write(open)) {
    const grpc::Status st = call->rw->Finish();
    Fail("Stream", st.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed") : st);
  }
  // The worker sends its proof right after accepting the Open frame; bound the wait.
  std::atomic<bool> done{false};
  std::thread guard([&] {
    const auto until = std::chrono::steady_clock::now() + open_deadline;
    while (!done.load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!done.load()) call->ctx.TryCancel();
  });
  call->rw->WaitForInitialMetadata();
  done = true;
  guard.join();
  if (auth.Verify(call->ctx)) return call;
  if (call->ctx.GetServerInitialMetadata().count("x-es-server-proof"))
    CheckProof("Stream", auth, call->ctx);  // a proof made with another token
  // No proof: the worker refused (the status says why).
  const grpc::Status st = call->rw->Finish();
  if (!st.ok()) {
    if (st.error_code() == grpc::StatusCode::CANCELLED)
      Fail("Stream", grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, ""));
    Fail("Stream", st);
  }
  CheckProof("Stream", auth, call->ctx);
  return call;
}

}  // namespace es::shard
