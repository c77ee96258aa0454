// One pipeline stage of distributed inference: a contiguous range of transformer blocks, the
// KV caches of the sequences passing through it, and (on the last stage) the output head and the
// samplers. Workers run one; the coordinator runs the source stage (embedding + its blocks), and
// the whole model when a plan keeps everything on the source.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "edgeshard.pb.h"
#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"
#include "runtime/runtime_sampler.h"

namespace es::shard {

struct StageSpec {
  int first_layer = 0, last_layer = 0;  // blocks [first, last)
  bool embed = false;                   // rows arrive as token ids (the source stage)
  bool head = false;                    // final norm, output head and sampling (the last stage)
  int n_ctx = 0;                        // KV positions per sequence
  model::KvTypes kv_type{};
  int max_batch = 1;  // rows per step
};

// Activations on the wire: F16 (half the bytes, the default) or F32 (bit-exact).
std::string EncodeActivations(const float* x, size_t n, edgeshard::rpc::WireType wire);
// Throws es::Error unless `bytes` holds exactly n values of the wire type.
void DecodeActivations(const std::string& bytes, edgeshard::rpc::WireType wire, float* out,
                       size_t n);
size_t WireBytesPerValue(edgeshard::rpc::WireType wire);

runtime::SamplerParams FromProto(const edgeshard::rpc::SamplingConfig& c);
edgeshard::rpc::SamplingConfig ToProto(const runtime::SamplerParams& p);

class StageExecutor {
 public:
  StageExecutor(const model::LlamaModel& m, const StageSpec& spec, kernels::ThreadPool& pool);

  struct Output {
    std::vector<uint64_t> sequences;  // segments that sampled, in step order
    std::vector<int32_t> tokens;
    std::vector<float> logits;  // n_vocab per segment with want_logits, in step order
    std::vector<edgeshard::rpc::TokenLogprobs> logprobs;  // per sampled segment with n_logprobs
    double compute_ms = 0;
  };
  // Moves tokens, logits and log-probabilities into the step's result message.
  static void Fill(Output& out, edgeshard::rpc::Result& r);
  // Runs `step` through the stage. `hidden` holds rows x n_embd values on entry (embed stages
  // fill it from `tokens`, one id per row) and the stage's output on return. Throws es::Error
  // for an inconsistent step (it names the sequence and what was expected).
  Output Run(const edgeshard::rpc::Step& step, const std::vector<int32_t>& tokens,
             std::vector<float>& hidden);

  void Release(uint64_t sequence);
  void ReleaseAll();
  int sequences() const { return static_cast<int>(seqs_.size()); }
  size_t kv_bytes() const;
  const StageSpec& spec() const { return spec_; }
  // Rows a step may hold.
  int max_batch() const { return spec_.max_batch; }

 private:
  struct Seq {
    std::unique_ptr<runtime::KvCache> kv;
    std::unique_ptr<runtime::Sampler> sampler;
    int64_t n_past = 0;
  };
  Seq& Get(uint64_t id);

  const model::LlamaModel& model_;
  StageSpec spec_;
  kernels::ThreadPool& pool_;
  model::Workspace ws_;
  std::map<uint64_t, Seq> seqs_;
  std::vector<model::BatchRow> rows_;
  std::vector<float> logits_;
  std::vector<int32_t> scratch_;                    // log-probabilities' sort
  std::shared_ptr<const runtime::TokenTrie> trie_;  // for grammars, built on first use
};

}  // namespace es::shard
