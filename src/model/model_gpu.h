// Blocks of a LlamaModel on a GPU (the Vulkan backend, src/gpu): a range of layers (the last
// ones of the model, or of a worker's shard) with their weights in device memory, composed from the
// GPU programs the way model_llama.cpp composes the CPU kernels. Activations cross to the device
// once per contiguous range: hidden state up at its start, down at its end; the KV cache of those
// layers lives on the device.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gpu/gpu_device.h"
#include "gpu/gpu_matmul.h"
#include "model/model_llama.h"

namespace es::model {

class GpuBlocks {
 public:
  // Uploads blocks [first, last) of `m` to Vulkan device `device`, and with `head` the final
  // norm and output head. Throws es::Error naming what the backend cannot compute (a weight
  // type, mixture-of-experts blocks, an activation) or cannot hold.
  GpuBlocks(const LlamaModel& m, int device, int first, int last, bool head);
  ~GpuBlocks();
  int first() const { return first_; }
  int last() const { return last_; }
  bool head() const { return output_.rows > 0; }
  const gpu::DeviceInfo& device() const { return dev_->info(); }
  size_t weight_bytes() const { return weight_bytes_; }

  // Device memory for one sequence's keys and values of `layer`: `rows` rows of its KV types
  // (F16 or F32; a quantized cache type is refused).
  std::shared_ptr<gpu::Buffer> AllocKv(int64_t rows, TensorType type) const;
  // Runs blocks [first, last) (inside this range) on n rows of hidden state in host memory, each
  // row at rows[i].pos of the sequence whose caches are rows[i].kv (device KV in dk/dv). The
  // feed-forward halves of mixture-of-experts blocks run on the CPU (ws, pool) between the GPU's
  // parts: the experts stay in host memory, as KTransformers splits such models.
  void Forward(int first, int last, float* hidden, int n, const BatchRow* rows, Workspace& ws,
               kernels::ThreadPool& pool);
  // Final norm and output head of n rows of hidden state: logits [n, n_vocab] before any
  // soft-cap (the caller applies it). `hidden` is left as it is.
  void Head(const float* hidden, int n, float* logits);

 private:
  struct Layer {
    std::shared_ptr<gpu::Buffer> attn_norm, ffn_norm, attn_post_norm, ffn_post_norm;
    std::shared_ptr<gpu::Buffer> bq, bk, bv, bo, q_norm, k_norm, sinks;
    gpu::GpuMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  std::shared_ptr<gpu::Buffer> Vector(const float* v, int64_t n);
  void EnsureActivations(int n);
  // Blocks [first, last), without the last one's feed-forward half when `attention_only_last`.
  std::unique_ptr<gpu::Sequence> RecordForward(int first, int last, int n, const BatchRow* rows,
                                               bool attention_only_last);
  // Records y_i = W_i x for matmuls that share their input x (rows n, cols wide), each output at
  // the start of its buffer with rows its matrix's rows apart, x rounded per weight type first.
  struct MatMulOut {
    const gpu::GpuMatrix* w;
    const gpu::Buffer* y;
  };
  void RecordMatMuls(gpu::Sequence& s, const gpu::Buffer& x, int64_t cols, int n,
                     std::initializer_list<MatMulOut> outs);

  const LlamaModel& m_;
  std::unique_ptr<gpu::Device> dev_;
  int first_, last_;
  std::vector<Layer> layers_;  // index layer - first_
  gpu::GpuMatrix output_;      // the head (rows 0 when it stays on the CPU)
  std::shared_ptr<gpu::Buffer> output_norm_, logits_;
  size_t weight_bytes_ = 0;
  // Activations for up to max_rows_ rows.
  int max_rows_ = 0;
  std::shared_ptr<gpu::Buffer> hidden_, xb_, q_, k_, v_, attn_, gate_, up_, positions_;
  // Per-row query temperature (attn_temp_scale) and the constant query scale (q_scale).
  std::shared_ptr<gpu::Buffer> temperature_, q_scale_;
  // Activations rounded as the CPU's matmuls round them (gpu::ActRounding): kActSlots slots of
  // max_rows_ x the widest input, one per distinct rounding among the matmuls of one input.
  static constexpr int kActSlots = 3;
  std::shared_ptr<gpu::Buffer> acts_;
  size_t act_slot_ = 0;  // floats per slot
  // RoPE tables, one per distinct rotation among the layers (rope_group_ maps layer -> table).
  std::vector<std::shared_ptr<gpu::Buffer>> rope_tables_;
  std::vector<int> rope_group_;  // index layer - first_
  std::vector<kernels::RopeParams> rope_params_;
  // Recorded sequences by step shape: layer range, row count and each row's caches.
  std::map<std::string, std::unique_ptr<gpu::Sequence>> recorded_;
};

}  // namespace es::model
