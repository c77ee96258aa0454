#include "shard/shard_worker.h"

#include <openssl/rand.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "edgeshard.grpc.pb.h"
#include "gpu/gpu_device.h"
#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "shard/shard_discovery.h"
#include "shard/shard_dist_stage.h"
#include "shard/shard_profile.h"
#include "shard/shard_rpc.h"

namespace es::shard {

namespace rpc = edgeshard::rpc;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double WallMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsLoopback(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("localhost:", 0) == 0 ||
         listen.rfind("[::1]:", 0) == 0;
}

}  // namespace

std::string DefaultCacheDir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/edgeshard";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/edgeshard";
  return "edgeshard-cache";
}

using SealedStream = grpc::ServerReaderWriter<rpc::Sealed, rpc::Sealed>;

class WorkerService final : public rpc::Worker::Service {
 public:
  explicit WorkerService(const WorkerOptions& o)
      : opts_(o), auth_(o.security.token, o.name), pool_(Threads(o.threads)) {
    // Once: describing devices takes driver calls, not for every health poll.
    if (opts_.offer_gpu >= 0) offered_gpu_ = gpu::FindDevice(opts_.offer_gpu);
    if (!opts_.profile_path.empty()) {
      const std::string text = ReadRegularFile(opts_.profile_path, "the profile (--profile)");
      ParseProfile(text, opts_.profile_path, false);  // validates
      profile_json_ = text;
      profile_source_ = "file";
    }
    if (!opts_.model_path.empty()) {
      // Checked once here, so a load request compares hashes without reading the file again.
      // A stop request (SIGINT/SIGTERM during start-up) ends the hashing of a large file.
      close(OpenRegularFile(opts_.model_path, "the model (-m)"));  // a FIFO would block the hash
      LogLine(opts_.name, "hashing " + opts_.model_path);
      Progress bar(opts_.name + ": hashing", opts_.quiet);
      local_sha_ = Sha256File(opts_.model_path, std::ref(bar), opts_.stop);
      if (opts_.stop && opts_.stop->load()) throw Stopped("stopped before loading the model");
      model::LlamaModel::Load(
          opts_.model_path, {.progress = {}, .prefault = false, .interleave = false});  // validates
      LogLine(opts_.name, opts_.model_path + " sha256 " + local_sha_);
      if (opts_.profile_at_start && profile_source_.empty()) MeasureOnce(true);
    }
  }

  static int Threads(int t) {
    return t > 0 ? t : std::max(1u, std::thread::hardware_concurrency());
  }

  void Stop() {
    hash_stop_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }

  grpc::Status Health(grpc::ServerContext* ctx, const rpc::HealthRequest* req,
                      rpc::HealthReply* r) override {
    return Proven(ctx, "Health", *r, FillHealth(ctx, req, r));
  }

  grpc::Status LoadShard(grpc::ServerContext* ctx, const rpc::LoadShardRequest* req,
                         rpc::LoadShardReply* reply) override {
    return Proven(ctx, "LoadShard", *reply, DoLoadShard(ctx, req, reply));
  }

  grpc::Status Release(grpc::ServerContext* ctx, const rpc::ReleaseRequest* req,
                       rpc::ReleaseReply* reply) override {
    return Proven(ctx, "Release", *reply, DoRelease(ctx, req));
  }

  grpc::Status PushModel(grpc::ServerContext* ctx, grpc::ServerReader<rpc::Sealed>* reader,
                         rpc::PushModelReply* reply) override {
    return Proven(ctx, "PushModel", *reply, DoPushModel(ctx, reader, reply));
  }

  grpc::Status Echo(grpc::ServerContext* ctx, const rpc::EchoRequest* req,
                    rpc::EchoReply* reply) override {
    auto st = auth_.Check(ctx, "Echo", req);
    return Proven(ctx, "Echo", *reply, st.ok() ? ServeEcho(*req, reply) : st);
  }

  grpc::Status MeasureLink(grpc::ServerContext* ctx, const rpc::MeasureLinkRequest* req,
                           rpc::MeasureLinkReply* reply) override {
    auto st = auth_.Check(ctx, "MeasureLink", req);
    return Proven(ctx, "MeasureLink", *reply,
                  st.ok() ? ServeMeasureLink(*req, opts_.security, reply) : st);
  }

 private:
  // A successful unary call's reply carries the worker's proof over its content.
  grpc::Status Proven(grpc::ServerContext* ctx, const std::string& method,
                      const google::protobuf::MessageLite& reply, grpc::Status st) {
    if (st.ok()) auth_.ProveReply(ctx, method, reply);
    return st;
  }

  grpc::Status FillHealth(grpc::ServerContext* ctx, const rpc::HealthRequest* req,
                          rpc::HealthReply* r) {
    if (auto st = auth_.Check(ctx, "Health", req); !st.ok()) return st;
    r->set_version("edgeshard 0.1.0");
    r->set_device(opts_.name);
    r->set_threads(pool_.size());
    r->set_memory_total_bytes(MemInfoBytes("MemTotal:"));
    r->set_memory_available_bytes(MemAvailable());
    r->set_memory_budget_bytes(opts_.memory_budget ? opts_.memory_budget
                                                   : r->memory_available_bytes());
    r->set_local_model_sha256(local_sha_);
    if (offered_gpu_) {
      const gpu::DeviceInfo& g = *offered_gpu_;
      r->set_gpu_name("vulkan" + std::to_string(g.index) + " (" + g.name + ")");
      r->set_gpu_index(g.index);
      r->set_gpu_memory_bytes(g.memory_bytes);
      r->set_gpu_unified_memory(g.unified_memory);
    }
    if (req->want_profile()) MeasureOnce(false);
    // A health poll does not wait for a measurement that another call started.
    if (std::unique_lock<std::mutex> lock(profile_mu_, std::try_to_lock); lock.owns_lock()) {
      // A measured profile travels only when asked for: the 250 ms health polls stay small.
      if (req->want_profile() || profile_source_ == "file") r->set_profile_json(profile_json_);
      if (req->want_profile()) r->set_gpu_profile_json(gpu_profile_json_);
      r->set_profile_source(profile_source_);
    } else {
      r->set_profile_source("measuring");
    }
    std::lock_guard<std::mutex> lock(mu_);
    r->set_epoch(epoch_);
    if (exec_) {
      r->set_model_sha256(model_sha_);
      r->set_first_layer(shard_.first_layer());
      r->set_last_layer(shard_.last_layer());
      r->set_has_head(shard_.has_head());
      r->set_sequences(n_sequences_);
      r->set_kv_bytes(kv_bytes_);
    }
    return grpc::Status::OK;
  }

  // Discovery asks for the profile of the local model: measured on the first request (on demand,
  // so a worker used with a cluster.yaml never pays for it) and cached on disk by model hash and
  // device, so the next start of this worker reads it.
  // A signal (at start) or Stop() (serving) ends the measurement after the current layer.
  void MeasureOnce(bool at_start) {
    std::lock_guard<std::mutex> lock(profile_mu_);
    if (!profile_source_.empty() || local_sha_.empty()) return;
    std::unique_lock<std::mutex> compute(compute_mu_);  // not while a step runs
    try {
      LogLine(opts_.name, "profiling " + opts_.model_path + " for discovery");
      std::string how;
      MeasureOptions mo = QuickMeasureOptions(int(pool_.size()));
      mo.progress = [this](const std::string&) {
        if (hash_stop_ || (opts_.stop && opts_.stop->load()))
          throw Stopped("stopped while profiling the model");
      };
      Profile p = CachedProfile(opts_.model_path, local_sha_, opts_.cache_dir, mo, &how);
      p.device = opts_.name;
      profile_json_ = ProfileToJson(p);
      profile_source_ = how;
      LogLine(opts_.name, "profile " + how);
      if (opts_.offer_gpu >= 0) {
        // The offered GPU's own profile (a model it cannot run, e.g. mixture-of-experts blocks,
        // leaves it out of discovery with the reason logged).
        mo.gpu_device = opts_.offer_gpu;
        try {
          Profile g = CachedProfile(opts_.model_path, local_sha_, opts_.cache_dir, mo, &how);
          g.device = opts_.name + "-gpu";
          gpu_profile_json_ = ProfileToJson(g);
          LogLine(opts_.name, "profile of " + g.gpu + " " + how);
        } catch (const Error& e) {
          LogLine(opts_.name, std::string("cannot profile the model on the GPU: ") + e.what());
        }
      }
    } catch (const Stopped&) {
      if (at_start) throw;  // the worker exits as a signal during start-up asks
    } catch (const Error& e) {
      LogLine(opts_.name, std::string("cannot profile the model: ") + e.what());
    }
  }

  grpc::Status DoLoadShard(grpc::ServerContext* ctx, const rpc::LoadShardRequest* req,
                           rpc::LoadShardReply* reply) {
    if (auto st = auth_.Check(ctx, "LoadShard", req); !st.ok()) return st;
    const auto t0 = Clock::now();
    std::string memory_note;  // for the log line, once loaded
    std::string gpu_note;     // where the shard's GPU blocks run, if any
    auto bad = [](const std::string& m) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, m);
    };
    if (!IsSha256Hex(req->model_sha256()))
      return bad("model_sha256 '" + req->model_sha256().substr(0, 80) +
                 "' is not 64 lower-case hex digits");
    if (req->n_ctx() < 1 || req->n_ctx() > (1 << 24)) return bad("n_ctx out of range");
    if (req->max_batch() < 1 || req->max_batch() > 65536) return bad("max_batch out of range");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (req->epoch() < epoch_)
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "epoch " + std::to_string(req->epoch()) +
                                " is older than the current " + std::to_string(epoch_));
    }
    // Which file holds this model: the local copy, or one streamed earlier into the cache.
    std::string path;
    if (!local_sha_.empty() && local_sha_ == req->model_sha256()) {
      path = opts_.model_path;
    } else {
      const std::string cached = opts_.cache_dir + "/" + req->model_sha256() + ".gguf";
      std::error_code ec;
      if (fs::is_regular_file(cached, ec)) {
        std::lock_guard<std::mutex> lock(verified_mu_);
        if (!verified_.count(cached)) {
          // A cached file is trusted only after its hash is checked again.
          Progress bar(opts_.name + ": checking cached model", opts_.quiet);
          std::string sha;
          try {
            sha = Sha256File(cached, std::ref(bar), &hash_stop_);  // Stop() ends a long check
          } catch (const Error& e) {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, opts_.name + ": " + e.what());
          }
          if (sha != req->model_sha256()) {
            LogLine(opts_.name, "cached " + cached + " does not match its hash; ignoring it");
          } else {
            verified_.insert(cached);
          }
        }
        if (verified_.count(cached)) path = cached;
      }
    }
    if (path.empty()) {
      reply->set_need_model(true);
      return grpc::Status::OK;
    }
    try {
      std::unique_lock<std::mutex> compute(compute_mu_);
      if (!model_ || model_sha_ != req->model_sha256()) {
        exec_.reset();
        model_.reset();
        model_ = model::LlamaModel::Load(
            path,
            {.progress = {}, .prefault = false, .interleave = false, .use_mmap = opts_.use_mmap});
        model_sha_ = req->model_sha256();
      }
      const auto& c = model_->config();
      if (req->first_layer() < 0 || req->last_layer() > c.n_layer ||
          req->first_layer() > req->last_layer())
        return bad("layers [" + std::to_string(req->first_layer()) + ", " +
                   std::to_string(req->last_layer()) + ") are outside the model's " +
                   std::to_string(c.n_layer) + " blocks");
      if (!req->has_head() && req->next_address().empty())
        return bad("a stage without the output head needs the next stage's address");
      StageSpec spec;
      spec.first_layer = req->first_layer();
      spec.last_layer = req->last_layer();
      spec.head = req->has_head();
      spec.n_ctx = req->n_ctx();
      auto kv_type = [](const std::string& t, const char* what) {
        return t.empty() ? TensorType::kF16 : model::ParseKvType(t, what);
      };
      spec.kv_type = {kv_type(req->cache_type_k(), "cache_type_k"),
                      kv_type(req->cache_type_v(), "cache_type_v")};
      spec.max_batch = req->max_batch();
      // The shard's last --gpu-layers blocks go to the GPU first (uploaded row-major); the rest
      // of its Q4_0/Q8_0 layers take the kernels' fast layout (the rest of the file stays unread).
      // The plan's GPU range if it gives one; else --gpu-layers: the shard's last blocks (more
      // than it has takes its head too, as -ngl does).
      int gpu_from = std::max(spec.first_layer, spec.last_layer - opts_.gpu_layers);
      int gpu_to = spec.last_layer, gpu_device = opts_.gpu_device;
      bool gpu_head = spec.head && opts_.gpu_layers > spec.last_layer - spec.first_layer;
      if (req->use_gpu()) {
        gpu_from = req->gpu_first_layer(), gpu_to = req->gpu_last_layer();
        gpu_head = req->gpu_head(), gpu_device = req->gpu_device();
        if (gpu_from < spec.first_layer || gpu_to > spec.last_layer || gpu_from > gpu_to ||
            (gpu_head && (!spec.head || gpu_to != spec.last_layer)) || gpu_device < 0)
          return bad("the GPU range [" + std::to_string(gpu_from) + ", " + std::to_string(gpu_to) +
                     ") is not a part of the shard that ends it");
      }
      {
        // The old shard's device caches go before the device they were allocated on.
        std::lock_guard<std::mutex> lock(mu_);
        exec_.reset();
      }
      model_->OffloadRangeToGpu(gpu_device, gpu_from, gpu_to, gpu_head);
      // The CPU's blocks (before and after the GPU's) take the kernels' fast layout.
      model_->PrepareLayers(spec.first_layer, gpu_from, spec.head && !gpu_head);
      model_->PrepareLayers(gpu_to, spec.last_layer, false);
      uint64_t expert_bytes = 0;
      reply->set_weight_bytes(Prefault(*model_, spec, opts_.mlock, &expert_bytes));
      memory_note = MemoryNote(*model_, reply->weight_bytes(), expert_bytes);
      if (const std::string g = model_->GpuPlacement(); !g.empty()) gpu_note = "; " + g;
      auto exec = std::make_unique<StageExecutor>(*model_, spec, pool_);
      std::lock_guard<std::mutex> lock(mu_);
      exec_ = std::move(exec);
      shard_ = *req;
      epoch_ = req->epoch();
      ++loads_;
      n_sequences_ = 0;
      kv_bytes_ = 0;
      cv_.notify_all();  // streams of older epochs end
    } catch (const Error& e) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
    } catch (const std::bad_alloc&) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "not enough memory for the shard's workspace");
    }
    reply->set_load_ms(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    LogLine(opts_.name, "epoch " + std::to_string(req->epoch()) + ": blocks [" +
                            std::to_string(req->first_layer()) + ", " +
                            std::to_string(req->last_layer()) + ")" +
                            (req->has_head() ? " + head" : "") + ", next " +
                            (req->next_address().empty() ? "coordinator" : req->next_address()) +
                            ", context " + std::to_string(req->n_ctx()) + memory_note + gpu_note);
    return grpc::Status::OK;
  }

  grpc::Status DoPushModel(grpc::ServerContext* ctx, grpc::ServerReader<rpc::Sealed>* reader,
                           rpc::PushModelReply* reply) {
    if (auto st = auth_.Check(ctx, "PushModel"); !st.ok()) return st;
    FrameSeal seal = FrameSeal::ForServer(auth_.token(), ctx);
    rpc::Sealed sealed;
    rpc::ModelChunk chunk;
    std::string refused;
    // Reads the next chunk; a chunk that fails its check ends the transfer.
    auto next = [&] {
      if (!reader->Read(&sealed)) return false;
      if (seal.Open(sealed, &chunk, &refused)) return true;
      LogLine(opts_.name, "refused PushModel from " + ctx->peer() + ": " + refused);
      return false;
    };
    auto refusal = [&] {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          opts_.name + ": refused a model chunk: " + refused +
                              "; use TLS on links an attacker can reach");
    };
    if (!next())
      return refused.empty() ? grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no data")
                             : refusal();
    const std::string sha = chunk.sha256();
    const uint64_t total = chunk.total_bytes();
    // The file name is the hash alone, so nothing the caller sends can name another place.
    if (!IsSha256Hex(sha))
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first chunk must carry the model's sha256 (64 hex digits)");
    std::error_code ec;
    fs::create_directories(opts_.cache_dir, ec);
    if (ec)
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          "cannot create the cache directory " + opts_.cache_dir + ": " + ec.message());
    struct statvfs vfs {};
    if (statvfs(opts_.cache_dir.c_str(), &vfs) == 0 &&
        static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < total)
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "the cache directory " + opts_.cache_dir + " has room for " +
                              std::to_string(static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize) +
                              " bytes, the model needs " + std::to_string(total));
    unsigned char rnd[8];
    RAND_bytes(rnd, sizeof rnd);
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".part-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    const std::string final_path = opts_.cache_dir + "/" + sha + ".gguf";
    const std::string part = final_path + suffix;
    std::FILE* f = std::fopen(part.c_str(), "wb");
    if (!f) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "cannot write " + part);
    LogLine(opts_.name, "receiving model " + sha.substr(0, 12) + "… (" + std::to_string(total) +
                            " bytes) from " + ctx->peer());
    Progress bar(opts_.name + ": receiving model", opts_.quiet);
    Sha256 h;
    uint64_t done = 0;
    bool ok = true;
    std::string why;
    do {
      const std::string& d = chunk.data();
      if (done + d.size() > total) {
        ok = false, why = "more data than the announced " + std::to_string(total) + " bytes";
        break;
      }
      if (std::fwrite(d.data(), 1, d.size(), f) != d.size()) {
        ok = false, why = "write error in " + part;
        break;
      }
      h.Update(d.data(), d.size());
      done += d.size();
      bar(done, total);
    } while (next());
    if (std::fclose(f) != 0 && ok) ok = false, why = "write error in " + part;
    if (!refused.empty()) {
      fs::remove(part, ec);
      return refusal();
    }
    if (ok && done != total)
      ok = false,
      why = "received " + std::to_string(done) + " of " + std::to_string(total) + " bytes";
    if (ok && h.HexDigest() != sha) ok = false, why = "the data does not match its sha256";
    if (!ok) {
      fs::remove(part, ec);
      LogLine(opts_.name, "model transfer failed: " + why);
      return grpc::Status(grpc::StatusCode::DATA_LOSS, why);
    }
    fs::rename(part, final_path, ec);
    if (ec) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, ec.message());
    {
      std::lock_guard<std::mutex> lock(verified_mu_);
      verified_.insert(final_path);
    }
    LogLine(opts_.name, "cached " + final_path);
    reply->set_bytes(done);
    return grpc::Status::OK;
  }

  grpc::Status DoRelease(grpc::ServerContext* ctx, const rpc::ReleaseRequest* req) {
    if (auto st = auth_.Check(ctx, "Release", req); !st.ok()) return st;
    std::lock_guard<std::mutex> compute(compute_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    if (req->epoch() != epoch_ || !exec_) return grpc::Status::OK;  // nothing of that epoch
    if (req->sequences_size() == 0) exec_->ReleaseAll();
    for (uint64_t s : req->sequences()) exec_->Release(s);
    n_sequences_ = exec_->sequences();
    kv_bytes_ = exec_->kv_bytes();
    return grpc::Status::OK;
  }

 public:
  // The data path; every frame is sealed (FrameSeal) and checked before it is used.
  grpc::Status Stream(grpc::ServerContext* ctx, SealedStream* rw) override {
    if (auto st = auth_.Check(ctx, "Stream"); !st.ok()) return st;
    rw->SendInitialMetadata();
    FrameSeal seal = FrameSeal::ForServer(auth_.token(), ctx);
    rpc::Frame f;
    if (auto st = ReadFrame(ctx, rw, seal, &f); !st.ok()) return st;
    if (!f.has_open())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a stream starts with an Open frame");
    const uint64_t epoch = f.open().epoch();
    rpc::LoadShardRequest shard;
    uint64_t load = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (epoch != epoch_ || !exec_)
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "epoch " + std::to_string(epoch) + " is not loaded (current " +
                                std::to_string(epoch_) + ")");
      shard = shard_;
      load = loads_;
    }
    if (f.open().role() == rpc::Open::RESULTS) return ServeResults(ctx, rw, seal, load);
    return ServeUpstream(ctx, rw, seal, epoch, load, shard);
  }

 private:
  // The next frame of a stream: OK with the frame, CANCELLED at its end (the caller closed it or
  // went away), or UNAUTHENTICATED (logged) for a frame that fails its check.
  grpc::Status ReadFrame(grpc::ServerContext* ctx, SealedStream* rw, FrameSeal& seal,
                         rpc::Frame* f) {
    rpc::Sealed s;
    if (!rw->Read(&s)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream ended");
    std::string why;
    if (seal.Open(s, f, &why)) return grpc::Status::OK;
    LogLine(opts_.name, "refused a Stream frame from " + ctx->peer() + ": " + why);
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        opts_.name + ": refused a frame: " + why +
            "; nothing of it was computed (use TLS on links an attacker can reach)");
  }

  // "; weights 1230 MiB (experts 920 MiB stay in the file mapping)", with a warning when the
  // file is larger than the memory this process may use: what the log line adds about memory.
  std::string MemoryNote(const model::LlamaModel& m, uint64_t weights, uint64_t experts) const {
    auto Mib = [](uint64_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MiB"; };
    std::string s = "; weights " + Mib(weights);
    if (experts > 0)
      s += " (experts " + Mib(experts) +
           (opts_.mlock || !opts_.use_mmap ? " in memory)" : " stay in the file mapping)");
    const runtime::MemoryLimit limit = runtime::ProcessMemoryLimit();
    if (limit.bytes > 0 && m.file().file_size() > limit.bytes)
      s += "; warning: the model file (" + Mib(m.file().file_size()) +
           ") is larger than the memory this process may use (" + Mib(limit.bytes) + ", " +
           limit.what + "): weights not in memory are paged in from the file as they are read";
    return s;
  }

  // Reads the shard's weights once, so the first step is not slowed by page faults and memory
  // use shows at load time. Returns the shard's weight bytes.
  // With `lock` (--mlock) they are locked in memory too.
  // `experts`: the shard's expert bytes, which stay in the file mapping unless locked.
  static uint64_t Prefault(const model::LlamaModel& m, const StageSpec& s, bool lock,
                           uint64_t* experts) {
    const auto& c = m.config();
    uint64_t bytes = 0;
    for (const auto& t : m.file().tensors()) {
      bool mine = false;
      if (t.name.rfind("blk.", 0) == 0) {
        const int b = std::atoi(t.name.c_str() + 4);
        mine = b >= s.first_layer && b < s.last_layer;
      } else if (t.name.rfind("output", 0) == 0) {
        mine = s.head;
      } else if (t.name == "token_embd.weight") {
        mine = s.head && c.tied_output;
      }
      if (!mine) continue;
      bytes += t.n_bytes;
      if (c.moe() && t.name.find("_exps.") != std::string::npos) *experts += t.n_bytes;
      m.Prefault(t);
      if (lock) m.Lock(t);
    }
    if (lock) m.LockCopies();
    return bytes;
  }

  // A stream serves the load it was opened under: a later Load ends it even with the same epoch
  // (another coordinator's numbering), so steps of an old plan never reach the new caches.
  grpc::Status ServeResults(grpc::ServerContext* ctx, SealedStream* rw, FrameSeal& seal,
                            uint64_t load) {
    std::unique_lock<std::mutex> lock(mu_);
    {
      std::lock_guard<std::mutex> w(sink_write_mu_);
      sink_ = rw;
      sink_seal_ = &seal;
      sink_load_ = load;
    }
    cv_.notify_all();
    while (!stopping_ && loads_ == load && !ctx->IsCancelled() && sink_ == rw)
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> w(sink_write_mu_);
    if (sink_ == rw) sink_ = nullptr, sink_seal_ = nullptr;
    return grpc::Status::OK;
  }

  // Sends a result to the coordinator's RESULTS stream (waits briefly for it to be opened).
  bool SendResult(uint64_t load, const rpc::Frame& frame) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::seconds(5),
                   [&] { return stopping_ || (sink_ && sink_load_ == load) || loads_ != load; });
    }
    std::lock_guard<std::mutex> w(sink_write_mu_);
    if (!sink_ || sink_load_ != load) return false;
    return sink_->Write(sink_seal_->Seal(frame));
  }

  grpc::Status ServeUpstream(grpc::ServerContext* ctx, SealedStream* rw, FrameSeal& seal,
                             uint64_t epoch, uint64_t load, const rpc::LoadShardRequest& shard) {
    std::unique_ptr<WorkerClient> next;
    std::unique_ptr<StreamCall> down;
    if (!shard.has_head()) {
      next = std::make_unique<WorkerClient>(
          shard.next_name().empty() ? shard.next_address() : shard.next_name(),
          shard.next_address(), opts_.security);
      try {
        down = next->OpenStream(rpc::Open::UPSTREAM, epoch, std::chrono::seconds(5));
      } catch (const RpcError& e) {
        LogLine(opts_.name, std::string("cannot reach the next stage: ") + e.what());
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            opts_.name + ": cannot reach the next stage: " + e.what());
      }
    }
    // A cancelled upstream call cancels the downstream one too, so a write blocked on a stalled
    // next stage returns.
    std::atomic<bool> serving{true};
    std::thread watch;
    if (down)
      watch = std::thread([&] {
        while (serving.load() && !ctx->IsCancelled())
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (serving.load()) down->ctx.TryCancel();
      });
    struct Join {
      std::atomic<bool>& serving;
      std::thread& t;
      ~Join() {
        serving = false;
        if (t.joinable()) t.join();
      }
    } join{serving, watch};
    std::vector<float> hidden;
    rpc::Frame in;
    while (true) {
      if (auto st = ReadFrame(ctx, rw, seal, &in); !st.ok()) {
        if (st.error_code() == grpc::StatusCode::CANCELLED) break;
        return st;  // the downstream call is cancelled as this one ends
      }
      if (!in.has_step())
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected a Step frame");
      rpc::Step& step = *in.mutable_step();
      const double received = WallMs();
      rpc::Timing timing;
      timing.set_stage(opts_.name);
      timing.set_wire_bytes(step.hidden().size());
      timing.set_link_ms(step.sent_unix_ms() > 0 ? std::max(0.0, received - step.sent_unix_ms())
                                                 : 0.0);
      StageExecutor::Output out;
      if (step.error().empty()) {
        try {
          std::lock_guard<std::mutex> compute(compute_mu_);
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (loads_ != load || !exec_)
              return grpc::Status(grpc::StatusCode::ABORTED, "a newer plan was loaded");
          }
          int64_t rows = 0;
          for (const auto& s : step.segments()) rows += s.n_tokens();
          if (rows < 1 || rows > exec_->max_batch())
            throw Error("step " + std::to_string(step.id()) + " has " + std::to_string(rows) +
                        " rows, the stage holds at most " + std::to_string(exec_->max_batch()));
          hidden.resize(static_cast<size_t>(rows) * model_->config().n_embd);
          DecodeActivations(step.hidden(), step.wire(), hidden.data(), hidden.size());
          out = exec_->Run(step, {}, hidden);
          std::lock_guard<std::mutex> lock(mu_);
          n_sequences_ = exec_->sequences();
          kv_bytes_ = exec_->kv_bytes();
        } catch (const Error& e) {
          step.set_error(opts_.name + ": " + e.what());
          LogLine(opts_.name, "step " + std::to_string(step.id()) + " failed: " + e.what());
        } catch (const std::bad_alloc&) {
          step.set_error(opts_.name + ": out of memory for the KV cache");
        }
      }
      timing.set_compute_ms(out.compute_ms);
      if (shard.has_head()) {
        rpc::Frame res;
        rpc::Result* r = res.mutable_result();
        r->set_step(step.id());
        r->set_error(step.error());
        StageExecutor::Fill(out, *r);
        *r->mutable_timings() = step.timings();
        *r->add_timings() = timing;
        if (!SendResult(load, res))
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              opts_.name + ": the coordinator's results stream is gone");
      } else {
        if (step.error().empty())
          step.set_hidden(EncodeActivations(hidden.data(), hidden.size(), step.wire()));
        else
          step.clear_hidden();
        *step.add_timings() = timing;
        step.set_sent_unix_ms(WallMs());
        if (!down->Write(in)) {
          const std::string who = next->Who();
          LogLine(opts_.name, "lost the next stage " + who);
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              opts_.name + ": lost the next stage " + who);
        }
      }
      if (ctx->IsCancelled()) break;
    }
    if (down) down->rw->WritesDone();
    return grpc::Status::OK;
  }

  WorkerOptions opts_;
  ServerAuth auth_;
  kernels::ThreadPool pool_;
  std::string local_sha_;
  std::mutex profile_mu_;  // guards the profile (measured on demand)
  std::string profile_json_, profile_source_, gpu_profile_json_;
  std::optional<gpu::DeviceInfo> offered_gpu_;  // --gpu: what Health reports of it

  std::atomic<bool> hash_stop_{false};  // set by Stop(): a cached model's check ends early
  std::mutex verified_mu_;
  std::set<std::string> verified_;  // cached model files whose hash was checked

  std::mutex compute_mu_;  // one step (or load) at a time; taken before mu_
  std::unique_ptr<model::LlamaModel> model_;
  std::string model_sha_;

  std::mutex mu_;  // guards what follows
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t epoch_ = 0;
  uint64_t loads_ = 0;  // Loads so far: a stream, and the results sink, serve one load
  rpc::LoadShardRequest shard_;
  std::unique_ptr<StageExecutor> exec_;
  int n_sequences_ = 0;
  size_t kv_bytes_ = 0;

  std::mutex sink_write_mu_;  // serialises writes to the results stream (and their sealing)
  SealedStream* sink_ = nullptr;
  FrameSeal* sink_seal_ = nullptr;
  uint64_t sink_load_ = 0;
};

struct WorkerServer::Impl {
  std::unique_ptr<WorkerService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<BeaconResponder> beacon;
  int port = 0;
  std::string address;
  bool stopped = false;
};

WorkerServer::WorkerServer(const WorkerOptions& options) : impl_(std::make_unique<Impl>()) {
  WorkerOptions o = options;
  if (o.name.empty()) o.name = o.listen;
  if (o.cache_dir.empty()) o.cache_dir = DefaultCacheDir();
  if (o.security.token.empty()) throw Error("a worker needs a token (--token-file)");
  if (!IsLoopback(o.listen))
    LogLine(o.name, std::string("listening beyond loopback on ") + o.listen +
                        (o.security.tls() ? "" : " WITHOUT TLS: activations travel in clear text"));
  impl_->service = std::make_unique<WorkerService>(o);
  grpc::ServerBuilder b;
  b.AddListeningPort(o.listen, ServerCredentials(o.security), &impl_->port);
  b.RegisterService(impl_->service.get());
  b.SetMaxReceiveMessageSize(kMaxMessageBytes);
  b.SetMaxSendMessageSize(kMaxMessageBytes);
  impl_->server = b.BuildAndStart();
  if (!impl_->server || impl_->port == 0)
    throw Error("cannot listen on " + o.listen + " (address in use or not local?)");
  const size_t colon = o.listen.rfind(':');
  impl_->address = o.listen.substr(0, colon) + ":" + std::to_string(impl_->port);
  if (o.announce) StartBeacon(o);
}

void WorkerServer::StartBeacon(const WorkerOptions& o) {
  // A wildcard listen address is announced as "" (the source uses the datagram's sender).
  std::string host = o.listen.substr(0, o.listen.rfind(':'));
  if (host == "0.0.0.0" || host == "[::]" || host == "::") host.clear();
  // Beacon names allow [A-Za-z0-9_.-] (the default name is the listen address).
  std::string name = o.name.substr(0, 64);
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') c = '-';
  try {
    impl_->beacon = std::make_unique<BeaconResponder>(o.security.token, *o.announce, name, host,
                                                      impl_->port, o.announce_interval);
  } catch (const Error& e) {
    // Discovery is a convenience: the worker still serves a cluster.yaml without it.
    LogLine(o.name, std::string("not discoverable: ") + e.what());
  }
}

WorkerServer::~WorkerServer() {
  Shutdown();
}
int WorkerServer::port() const {
  return impl_->port;
}
std::string WorkerServer::address() const {
  return impl_->address;
}
void WorkerServer::Wait() {
  if (impl_->server) impl_->server->Wait();
}
void WorkerServer::Shutdown() {
  if (!impl_->server || impl_->stopped) return;
  impl_->stopped = true;
  impl_->beacon.reset();
  impl_->service->Stop();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace es::shard
