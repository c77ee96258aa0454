// Model-file quantization: which type each tensor gets for a target format (llama.cpp's rules,
// restricted to the types edgeshard computes with), and streaming conversion of GGUF files.
//
// Formats (`edgeshard quantize --help` lists them):
//   f32, f16, bf16, q8_0, q4_0, q4_k, q6_k,  every weight matrix in that type ("pure").
//   q5_k, q3_k,
//   q2_k-pure, iq4_xs-pure
//   q4_k_m, q5_k_m    llama.cpp's Q4_K_M / Q5_K_M: Q6_K for output.weight and for attn_v /
//                     ffn_down in the layers llama.cpp's use_more_bits rule picks, Q4_K / Q5_K
//                     elsewhere.
//   q5_k_s, q3_k_s    llama.cpp's Q5_K_S / Q3_K_S: the base type, output.weight in Q6_K.
//   q4_k_s, q3_k_m,   llama.cpp's Q4_K_S, Q3_K_M, Q3_K_L: output.weight in Q6_K and Q5_K / Q4_K
//   q3_k_l            for some attn_v, ffn_down, attn_output layers by llama.cpp's rules.
//   q2_k, iq4_xs      llama.cpp's Q2_K and IQ4_XS (as llama-quantize names them): Q6_K output
//                     and llama.cpp's Q3_K/Q4_K/Q5_K layers.
//   q4_0-q6k-output,  the base type with output.weight in Q6_K (or token_embd.weight when the
//   q4_k-q6k-output   model ties its output to it). q4_0-q6k-output is what llama.cpp's own
//                     "Q4_0" writes.
// 1-D tensors (norms, biases) and tensors whose names do not end in "weight" are copied as they
// are. A row length the chosen type cannot hold falls back as llama.cpp's does (Q4_K -> Q5_0,
// Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/IQ4_XS -> IQ4_NL; F16 when that does not fit either).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "tensor/tensor_types.h"

namespace es::model {

struct QuantFormat {
  enum class Mix {
    kPure,       // every quantized tensor in `base`
    kQ6KOutput,  // base, output (or tied embedding) in Q6_K
    kQ4KM,       // llama.cpp's Q4_K_M (and Q5_K_M, whose rules are the same with base Q5_K)
    kQ4KS,       // llama.cpp's Q4_K_S
    kQ3KM,       // llama.cpp's Q3_K_M
    kQ3KL,       // llama.cpp's Q3_K_L
    kQ2K,        // llama.cpp's Q2_K
    kIQ4XS,      // llama.cpp's IQ4_XS (without an importance matrix)
    kMXFP4MoE,   // llama.cpp's MXFP4_MOE: experts' 3-D matrices MXFP4, everything else Q8_0
  };
  const char* name;  // as typed on the command line, e.g. "q4_k_m"
  TensorType base;
  Mix mix;
  uint32_t file_type;  // general.file_type: llama.cpp's LLAMA_FTYPE number
  const char* description;
};

// All formats, in a stable order.
const std::vector<QuantFormat>& QuantFormats();
// Case-insensitive ("Q4_K_M" and "q4_k_m" both work); nullopt for unknown names.
std::optional<QuantFormat> FindQuantFormat(std::string_view name);
// "f32, f16, ..." for messages.
std::string QuantFormatNames();

// A tensor as the planner sees it.
struct TensorDesc {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the row length
  TensorType type = TensorType::kF32;
};

// What happens to one tensor.
struct TensorPlan {
  std::string name;
  std::vector<int64_t> dims;
  TensorType src = TensorType::kF32;
  TensorType dst = TensorType::kF32;
  std::string fallback;  // non-empty when the wanted type did not fit the row length: why
  bool Converted() const { return src != dst; }
};

// llama.cpp's tensor order for written files: tensors outside blocks first, then blk.0, blk.1,
// ...; by name within each group. Stable for anything else.
void SortTensorsLikeLlama(std::vector<TensorDesc>& tensors);

// True for tensors a format changes the type of: names ending in "weight", 2 or more dims, not
// a norm (llama.cpp's rule, minus the tensor kinds of architectures edgeshard does not run).
bool IsQuantizable(const TensorDesc& t);

// Chooses every tensor's output type. `tensors` must already be in write order (the counters
// that pick Q4_K_M's attn_v layers run in that order, as in llama.cpp); n_layer is the block count.
std::vector<TensorPlan> PlanTensorTypes(const std::vector<TensorDesc>& tensors,
                                        const QuantFormat& format, int n_layer);

// Writes `rows` rows of `row_len` elements converted to `type` into `sink`, in row order.
// produce(row, out) fills one row of floats; it is called from up to `threads` threads at once
// and must depend only on `row`. Rows are converted in batches, so memory stays bounded
// (a few MiB per thread) whatever the tensor size. progress(rows_done) follows each batch.
void WriteRows(gguf::TensorSink& sink, TensorType type, int64_t row_len, int64_t rows,
               const std::function<void(int64_t row, float* out)>& produce, int threads,
               const std::function<void(int64_t rows_done)>& progress = {});

struct QuantizeOptions {
  int threads = 0;  // 0: all cores
  // (bytes of output data written so far, total output data bytes, tensor being written)
  std::function<void(uint64_t, uint64_t, const std::string&)> progress;
  // One call per tensor that fell back to another type.
  std::function<void(const std::string&)> warn;
  // Take quantized input too (llama-quantize's --allow-requantize): its tensors are dequantized
  // and quantized again, which loses more than quantizing the F16/F32 original. warn is told once.
  bool allow_requantize = false;
};

struct QuantizeResult {
  std::vector<TensorPlan> plan;  // in file order
  uint64_t input_bytes = 0;      // the whole input file
  uint64_t output_bytes = 0;     // the whole output file
  int n_fallback = 0;
};

// Converts the F32/F16/BF16 model `in` to `format` and writes `out` (replaced only when complete).
// Metadata is copied in order; general.quantization_version (2) and general.file_type are set
// last, as llama.cpp's quantizer does. es::Error for a quantized input, unsupported tensor
// types, or I/O failures.
QuantizeResult QuantizeFile(const std::string& in, const std::string& out,
                            const QuantFormat& format, const QuantizeOptions& options = {});

// Sets general.quantization_version and general.file_type at the end of the metadata.
void SetQuantizationMetadata(gguf::Writer& w, const QuantFormat& format);

}  // namespace es::model
