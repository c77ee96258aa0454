// The llama-like transformer (the families of model_arch.h: llama, qwen2, qwen3, gemma3): weights
// mapped from GGUF and the forward pass. Layers can be run in ranges, so a shard holds blocks
// [first, last) of a model.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "kernels/kernels.h"
#include "model/model_config.h"

namespace es::gpu {
class Buffer;
}

namespace es::model {

class GpuBlocks;

// Element types of a KV cache: F16 by default (as llama.cpp), F32, or the block types llama.cpp
// offers for `-ctk/-ctv` that we compute, Q8_0 and Q4_0. K and V may differ.
struct KvTypes {
  TensorType k = TensorType::kF16;
  TensorType v = TensorType::kF16;
  KvTypes() = default;
  KvTypes(TensorType both) : k(both), v(both) {}  // NOLINT(google-explicit-constructor)
  KvTypes(TensorType k_type, TensorType v_type) : k(k_type), v(v_type) {}
  bool operator==(const KvTypes&) const = default;
};
// "f32", "f16", "q8_0" or "q4_0" (`what` names the option in the error for anything else).
TensorType ParseKvType(const std::string& name, const std::string& what);
// Throws es::Error naming the type when a cache of these types cannot hold this model's heads
// (block types need head_dim to be a multiple of their 32-element blocks).
void CheckKvTypes(const ModelConfig& c, KvTypes t);
// "" for the default F16 cache, else " (K q8_0, V q4_0)": what start-up lines add to the size.
std::string KvTypesNote(KvTypes t);
// Bytes of one cached position of one layer: its key row plus its value row.
size_t KvRowBytes(const ModelConfig& c, KvTypes t);

// One layer's KV storage, owned by the runtime: rows of kv_dim values per position.
struct KvLayer {
  void* k = nullptr;
  void* v = nullptr;
  TensorType k_type = TensorType::kF16;
  TensorType v_type = TensorType::kF16;
  int64_t n_ctx = 0;
  // 0: n_ctx rows, position p in row p. Otherwise a sliding-window layer's ring of `ring` rows
  // (its window plus a batch), position p in row p % ring: older keys are never read again.
  int64_t ring = 0;
  int64_t Row(int64_t pos) const { return ring ? pos % ring : pos; }
  size_t k_row_bytes = 0;  // RowBytes(k_type, kv_dim)
  size_t v_row_bytes = 0;
  // Layers on a GPU (LlamaModel::OffloadToGpu) keep their keys and values in device memory.
  gpu::Buffer* dk = nullptr;
  gpu::Buffer* dv = nullptr;
};

// One row of a batch: the cache of the sequence it belongs to (indexed by layer) and its
// position. Rows of several sequences can share one forward pass (continuous batching).
struct BatchRow {
  const KvLayer* kv = nullptr;
  int64_t pos = 0;
};

// Activations of a batch of up to `max_batch` tokens, allocated once per context.
class Workspace {
 public:
  Workspace(const ModelConfig& c, int max_batch, int max_ctx, int n_threads);
  int max_batch() const { return max_batch_; }
  int64_t max_ctx() const { return max_ctx_; }
  // Rows of the feed-forward network computed at a time: its two n_ff-wide buffers dominate the
  // workspace, and the matmuls already stream the weights once per 64 rows, so smaller chunks
  // cost no extra memory traffic.
  static constexpr int kFfnRows = 128;
  std::vector<float> xb, q, k, v;
  // gate holds the attention output (max_batch rows of q_dim) until the feed-forward network
  // reuses it for its gate projection (kFfnRows rows of n_ff), next to up (which then takes the
  // down projection's output).
  std::vector<float> gate, up;
  float* attn_out() { return gate.data(); }
  std::vector<f16_t> q16;     // queries rounded to the KV type (F16 caches)
  std::vector<float> scores;  // per thread: max_ctx attention weights
  // Per thread: one query head converted for a quantized K cache (kernels::ConvertQuery).
  uint8_t* query_buf(int thread) {
    return qconv_base_ + static_cast<size_t>(thread) * qconv_stride_;
  }
  std::vector<BatchRow> rows;  // max_batch
  kernels::Scratch scratch;
  // Mixture-of-experts blocks, per kFfnRows rows: router probabilities, each row's chosen experts
  // and weights, the rows routed to one expert gathered, and each (row, choice)'s output.
  std::vector<float> moe_probs, moe_weights, moe_x, moe_out;
  std::vector<int32_t> moe_choice, moe_rows, moe_order;
  // Bytes allocated so far (the scratch grows on first use): start-up lines report it.
  size_t bytes() const;

 private:
  int max_batch_;
  int64_t max_ctx_ = 0;
  std::vector<uint8_t> qconv_;
  uint8_t* qconv_base_ = nullptr;
  size_t qconv_stride_ = 0;
};

// What mixture-of-experts blocks read, for tests that count it (LlamaModel::CountExpertReads).
struct ExpertReads {
  uint64_t bytes = 0;  // bytes of expert matrices multiplied with (gate, up and down)
  // (layer, expert) in the order the experts were computed: once per block and batch.
  std::vector<std::pair<int, int>> experts;
  // [layer][row]: the probability of the last expert chosen minus that of the best one left out,
  // rows in the order computed. A tiny margin is a near-tie that rounding can flip, which is
  // where another implementation may route differently.
  std::vector<std::vector<float>> margins;
};

// Loader helpers shared by the model's files: a tensor of the file checked against the shape
// the architecture expects (es::Error naming it otherwise). GetMatrix takes [cols, rows].
kernels::Matrix GetMatrix(const gguf::File& f, const std::string& name, int64_t cols, int64_t rows);
const float* GetVector(const gguf::File& f, const std::string& name, int64_t n);
// gate = act(gate) * up elementwise, for the family's gated feed-forward kind.
void GatedActivation(FfnKind kind, float* gate, const float* up, int64_t n);
// Throws es::Error when the kernels cannot compute with the tensor's type.
void CheckWeightType(const gguf::File& f, const gguf::TensorInfo& t);

struct LoadOptions {
  // Called with (bytes touched, total bytes) while weights are paged in.
  std::function<void(size_t, size_t)> progress;
  bool prefault = true;  // read every weight page at load time, so the first token is not slow
  // Copy Q4_0/Q8_0/F16 layer matrices into the layout the CPU's kernels read fastest (kernels::
  // PrefersInterleaved), releasing the mapped pages they came from. Shard processes that use
  // a few layers of a mapped file leave it off (it would read every layer) and call
  // LlamaModel::PrepareLayers for their range.
  bool interleave = true;
  // false (--no-mmap): read the whole file into memory instead of mapping it, so experts too
  // are resident.
  bool use_mmap = true;
  // --mlock: lock the weights the model reads in memory (LlamaModel::Lock) once loaded.
  bool mlock = false;
  // -ngl: the last gpu_layers blocks go to Vulkan device gpu_device (OffloadToGpu); more than
  // n_layer puts the output head there too, as llama.cpp's -ngl does; 0 keeps everything on the
  // CPU.
  int gpu_layers = 0;
  int gpu_device = 0;
};

class LlamaModel {
 public:
  static std::unique_ptr<LlamaModel> Load(const std::string& path, const LoadOptions& opts = {});

  // Moves the last `n_layers` blocks (all of them when n_layers >= n_layer) to Vulkan device
  // `device` (model_gpu.h): ForwardBlocks then runs them there, with their KV caches in device
  // memory (KvLayer::dk/dv, which a runtime::KvCache given the model allocates). n_layers > n_layer
  // moves the final norm and output head too (Head then runs there). Throws es::Error naming
  // what the GPU backend cannot compute. Not thread-safe against forward passes.
  void OffloadToGpu(int device, int n_layers);
  // Blocks [first, last) to the GPU, and the head with `head` (then last must be n_layer): a
  // worker's or a plan's GPU range. An empty range without the head gives the GPU back.
  void OffloadRangeToGpu(int device, int first, int last, bool head = false);
  // The blocks on the GPU, [gpu_first, gpu_last) (both n_layer when none is), whether the head is
  // there, and the offloaded blocks themselves.
  int gpu_first() const;
  int gpu_last() const;
  bool gpu_head() const;
  GpuBlocks* gpu() const { return gpu_.get(); }
  // Device memory for `rows` cached keys (or values) of type t of one GPU layer.
  std::shared_ptr<gpu::Buffer> AllocDeviceKv(int64_t rows, TensorType t) const;
  // "vulkan0 (NVIDIA GeForce RTX 4090)": the GPU the offloaded blocks run on, as its driver names
  // it ("" when none).
  std::string GpuDeviceName() const;
  // "blocks 3-4 and the output head on vulkan0 (...)": what runs on the GPU ("" when nothing).
  std::string GpuPlacement() const;

  const ModelConfig& config() const { return cfg_; }
  const gguf::File& file() const { return *file_; }
  size_t weight_bytes() const { return weight_bytes_; }

  // hidden[i * n_embd ...] = embedding of tokens[i]. Token ids are checked.
  void Embed(const int32_t* tokens, int n, float* hidden) const;
  // Runs blocks [first, last) on `n` rows of hidden state at positions pos0 .. pos0+n-1
  // (one sequence, causal). kv[l] is layer l's cache; rows pos0..pos0+n-1 are written.
  void ForwardBlocks(int first, int last, float* hidden, int n, int64_t pos0, const KvLayer* kv,
                     Workspace& ws, kernels::ThreadPool& pool) const;
  // The same for rows that may belong to different sequences: row i is at rows[i].pos of the
  // sequence whose caches are rows[i].kv. Rows of one sequence must be in position order.
  void ForwardBlocks(int first, int last, float* hidden, int n, const BatchRow* rows, Workspace& ws,
                     kernels::ThreadPool& pool) const;
  // Copies the Q4_0/Q8_0 matrices of blocks [first, last) (and the output head) into the layout the
  // CPU's kernels read fastest, if it has one; results are bit-identical either way. Load does
  // this for every block unless told not to; a shard worker does it for its own range. Not
  // thread-safe against running forward passes.
  void PrepareLayers(int first, int last, bool head);
  // Reads one page of every 4 KiB of a tensor of the file, so that a first forward pass does not
  // stall on page faults; tensors replaced by a copy above and an untied embedding table (read
  // a row per token) are skipped.
  void Prefault(const gguf::TensorInfo& t) const;
  // --mlock: locks tensor `t` in memory (experts included), unless a copy replaced it, and with
  // `copies` the copies of PrepareLayers. Throws es::Error saying how to raise RLIMIT_MEMLOCK
  // when the system refuses.
  void Lock(const gguf::TensorInfo& t) const;
  void LockCopies() const;
  // How layer `layer` rotates queries and keys for a sequence of n_ctx positions (LongRoPE
  // picks its factors by the length); n_rot 0 for a layer without RoPE.
  kernels::RopeParams RopeFor(int layer, int64_t n_ctx) const;
  // Context shift: turns the `n_rows` cached key rows at `k` (kv_dim values each, of `type`) of
  // layer `layer` by `delta` positions, with the layer's RoPE for a sequence of n_ctx positions,
  // as if their tokens had been evaluated `delta` positions later (negative: earlier). F16 and
  // quantized keys go through f32 and are rounded back, as llama.cpp's shift does. No-op for a
  // layer without RoPE. Body in model_kv.cpp.
  void ShiftKeys(int layer, int64_t n_ctx, void* k, TensorType type, int64_t n_rows,
                 int64_t delta) const;
  // Final norm and output head for `n` rows of hidden state; logits [n, n_vocab]. May overwrite
  // hidden with its normalised values (the CPU's head does; the GPU's leaves it).
  void Head(float* hidden, int n, float* logits, Workspace& ws, kernels::ThreadPool& pool) const;
  // Test hook: while set, mixture-of-experts blocks add what they read to `sink` (nullptr: stop).
  // Not thread-safe against forward passes on other threads.
  void CountExpertReads(ExpertReads* sink) const { expert_reads_ = sink; }
  // Bytes of one expert's three matrices in `layer` (0 for a dense model): a decode step reads
  // n_expert_used of these per block.
  uint64_t ExpertBytes(int layer) const;
  // Bytes of all expert tensors (0 for a dense model), and of those a decode step reads: the
  // part that stays in the file mapping, paged in as tokens choose experts.
  uint64_t ExpertTensorBytes() const;
  uint64_t ExpertBytesPerToken() const;

 private:
  // A mixture-of-experts feed-forward: the router, each expert's slice of the 3-D tensors (a
  // contiguous [rows, cols] matrix of its own), and a shared expert with its gate (qwen2moe).
  struct Experts {
    kernels::Matrix router;
    std::vector<kernels::Matrix> gate, up, down;
    kernels::Matrix sh_gate, sh_up, sh_down;
    const float* sh_router = nullptr;
    // Biases (gpt-oss): the router's (n_expert) and each expert's, expert-major ([n_expert][rows]).
    const float *router_b = nullptr, *gate_b = nullptr, *up_b = nullptr, *down_b = nullptr;
  };
  struct Layer {
    const float* attn_norm;
    kernels::Matrix wq, wk, wv, wo;
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
    const float* bo = nullptr;                         // attention output bias
    const float* sinks = nullptr;                      // a sink logit per query head
    const float *q_norm = nullptr, *k_norm = nullptr;  // QK-norm weights (head_dim each)
    const float* ffn_norm;
    kernels::Matrix w_gate, w_up, w_down;
    const float *attn_post_norm = nullptr, *ffn_post_norm = nullptr;  // sandwich norms
    Experts moe;  // when config().moe(), instead of w_gate/w_up/w_down
  };
  friend class GpuBlocks;
  LlamaModel() = default;
  // The two halves of a block, each adding its result to `hidden`.
  void AttentionBlock(int layer, float* hidden, int n, const BatchRow* rows, Workspace& ws,
                      kernels::ThreadPool& pool) const;
  void FeedForwardBlock(int layer, float* hidden, int n, Workspace& ws,
                        kernels::ThreadPool& pool) const;
  // Mixture-of-experts half of a block (model_moe.cpp): adds the experts' output for the `m`
  // normalised rows at x to hidden.
  void ExpertsBlock(int layer, float* hidden, const float* x, int m, Workspace& ws,
                    kernels::ThreadPool& pool) const;
  // Maps layer `layer`'s expert tensors into L.moe (model_moe.cpp).
  void LoadExperts(int layer, Layer& L);
  // Blocks [first, last) on the GPU (mixture-of-experts halves on the CPU with ws and pool),
  // and the head there (model_gpu.cpp).
  void ForwardGpu(int first, int last, float* hidden, int n, const BatchRow* rows, Workspace& ws,
                  kernels::ThreadPool& pool) const;
  void HeadGpu(const float* hidden, int n, float* logits) const;
  // Softmax attention of the rows' queries over their caches, into ws.attn_out().
  void Attention(int layer, int n, const BatchRow* rows, Workspace& ws,
                 kernels::ThreadPool& pool) const;

  // A copy of the mapped vector `mapped` of n floats, owned by the model.
  const float* KeepVector(const float* mapped, int64_t n);
  // `bytes` of mapped weights at `mapped` are computed from a copy now (host or GPU): their pages
  // are dropped and Prefault/Lock skip them.
  void ReleaseMapped(const void* mapped, size_t bytes);

  std::unique_ptr<gguf::File> file_;
  ModelConfig cfg_;
  kernels::Matrix tok_embd_, output_;
  const float* output_norm_ = nullptr;
  // RoPE frequency divisors (n_rot / 2 each): Llama 3's, or LongRoPE's short and long sets.
  const float *rope_freqs_ = nullptr, *rope_short_ = nullptr, *rope_long_ = nullptr;
  std::vector<Layer> layers_;
  size_t weight_bytes_ = 0;
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> owned_;  // interleaved copies of weights
  std::vector<size_t> owned_bytes_;                           // their sizes
  // Norm weights and biases, copied at load: a few KiB each, but reading them from the mapping
  // would map the page cache's whole (up to 2 MiB) folio around each one.
  std::vector<std::unique_ptr<float[]>> vectors_;
  std::vector<const void*> copied_;  // mapped data replaced by one of the copies above
  mutable ExpertReads* expert_reads_ = nullptr;
  // shared_ptr: its deleter is bound where it is made, so builds without the GPU backend
  // (EDGESHARD_VULKAN=OFF, no model_gpu.cpp) need no GpuBlocks destructor.
  std::shared_ptr<GpuBlocks> gpu_;
};

}  // namespace es::model
