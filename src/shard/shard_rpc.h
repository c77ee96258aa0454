// Client side of the worker service: one authenticated channel per worker, every unary call with
// a deadline, and the data-path streams. Used by the coordinator and by workers (to reach the
// next stage).
#pragma once
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "edgeshard.grpc.pb.h"
#include "shard/shard_auth.h"

namespace es::shard {

// Largest frame on the wire: a prompt chunk of activations (rows x n_embd x 4 bytes) or a model
// chunk.
constexpr int kMaxMessageBytes = 256 << 20;

// A failed call: the worker's name and address, the method, and gRPC's status.
class RpcError : public Error {
 public:
  RpcError(const std::string& msg, grpc::StatusCode code) : Error(msg), code_(code) {}
  grpc::StatusCode code() const { return code_; }
  // The worker is unreachable, stalled or gone (as opposed to refusing the request).
  bool unreachable() const {
    return code_ == grpc::StatusCode::UNAVAILABLE || code_ == grpc::StatusCode::DEADLINE_EXCEEDED ||
           code_ == grpc::StatusCode::CANCELLED || code_ == grpc::StatusCode::UNKNOWN;
  }

 private:
  grpc::StatusCode code_;
};

std::string StatusCodeName(grpc::StatusCode c);

using FrameStream = grpc::ClientReaderWriter<edgeshard::rpc::Sealed, edgeshard::rpc::Sealed>;

// An open data-path stream to a worker; its frames are sealed and checked (FrameSeal). Destroying
// it cancels the call.
struct StreamCall {
  grpc::ClientContext ctx;
  std::unique_ptr<FrameStream> rw;
  std::unique_ptr<FrameSeal> seal;
  std::string who;  // the worker, for messages
  // Seals and writes a frame (one writer at a time); false once the stream is broken.
  bool Write(const edgeshard::rpc::Frame& f);
  // Reads and checks the next frame (one reader at a time); false at the end of the stream or at
  // a frame that fails its check, which cancels the call.
  bool Read(edgeshard::rpc::Frame* f);
  // After Read returned false: why the stream ended (`otherwise` when the worker ended it
  // normally).
  std::string EndReason(const std::string& otherwise);
  ~StreamCall();

 private:
  std::string refused_;  // a frame from the worker that failed its check
};

class WorkerClient {
 public:
  WorkerClient(std::string name, std::string address, const Security& security);
  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }
  // "name (address)" for messages.
  std::string Who() const;

  edgeshard::rpc::HealthReply Health(std::chrono::milliseconds deadline,
                                     const edgeshard::rpc::HealthRequest& req = {});
  edgeshard::rpc::LoadShardReply LoadShard(const edgeshard::rpc::LoadShardRequest& req,
                                           std::chrono::milliseconds deadline);
  // Streams `path` (whose hash is `sha256`) into the worker's cache. `progress(done, total)`.
  void PushModel(const std::string& path, const std::string& sha256,
                 const std::function<void(uint64_t, uint64_t)>& progress,
                 std::chrono::milliseconds deadline);
  void Release(uint64_t epoch, const std::vector<uint64_t>& sequences,
               std::chrono::milliseconds deadline);
  edgeshard::rpc::EchoReply Echo(const edgeshard::rpc::EchoRequest& req,
                                 std::chrono::milliseconds deadline);
  edgeshard::rpc::MeasureLinkReply MeasureLink(const edgeshard::rpc::MeasureLinkRequest& req,
                                               std::chrono::milliseconds deadline);
  // Opens a Stream call in `role`, sends the Open frame and checks the worker's token proof.
  std::unique_ptr<StreamCall> OpenStream(edgeshard::rpc::Open::Role role, uint64_t epoch,
                                         std::chrono::milliseconds open_deadline);

 private:
  // A unary call with a proof on both ends; `call` invokes the stub's method.
  template <typename Reply, typename Req, typename Call>
  Reply Unary(const std::string& method, const Req& req, std::chrono::milliseconds deadline,
              Call call);
  [[noreturn]] void Fail(const std::string& method, const grpc::Status& st) const;
  // `reply`: a unary call's reply, whose proof is checked too.
  void CheckProof(const std::string& method, const CallAuth& auth, const grpc::ClientContext& ctx,
                  const google::protobuf::MessageLite* reply = nullptr) const;

  std::string name_, address_;
  const Security& security_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<edgeshard::rpc::Worker::Stub> stub_;
};

// A progress bar on stderr for long transfers: redrawn in place on a terminal once the work has
// taken a second, otherwise a log line every 25%.
class Progress {
 public:
  Progress(std::string label, bool quiet = false);
  void operator()(uint64_t done, uint64_t total);

 private:
  std::string label_;
  bool quiet_, tty_, drew_ = false;
  int last_quarter_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

// Channel arguments shared by every connection (message size, fast reconnects).
grpc::ChannelArguments DefaultChannelArgs();

}  // namespace es::shard
