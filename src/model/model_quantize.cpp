#include "model/model_quantize.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <thread>

#include "edgeshard/error.h"
#include "tensor/tensor_quant.h"

namespace es::model {
namespace {

using Mix = QuantFormat::Mix;

// Output rows converted per batch before they are handed to the sink: large enough that the
// threads have work, small enough that a 13B model's embedding never sits in memory whole.
constexpr size_t kBatchBytes = size_t{16} << 20;

bool IsFloatType(TensorType t) {
  return t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// Block index of "blk.N.…" names, -1 for tensors outside the blocks.
int LayerOf(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  size_t i = 4;
  int64_t v = 0;
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) {
    v = v * 10 + (name[i] - '0');
    if (v > (1 << 30)) return -1;
    ++i;
  }
  return i < name.size() && name[i] == '.' ? static_cast<int>(v) : -1;
}

// llama.cpp gives these layers of a Q4_K_M model more bits: the first and last eighth, and every
// third layer in between.
bool UseMoreBits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

int BlockElems(TensorType t) {
  return Traits(t).block_elems;
}

int ResolveThreads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

// Runs fn(begin, end) over [0, n) split into `threads` contiguous ranges; rethrows the first
// exception a worker raised.
void ParallelRanges(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  const int nt = static_cast<int>(std::min<int64_t>(threads, n));
  if (nt <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::exception_ptr> errors(nt);
  std::vector<std::thread> workers;
  workers.reserve(nt - 1);
  auto range = [&](int t) {
    const int64_t b = n * t / nt, e = n * (t + 1) / nt;
    try {
      fn(b, e);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  for (int t = 1; t < nt; ++t) workers.emplace_back(range, t);
  range(0);
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Q8_0 as llama.cpp writes model files (quantize_row_q8_0_ref): values scaled by 1/d with
// d = amax/127 and rounded half away from zero. QuantizeRowRef's Q8_0 follows the activation
// quantizer instead (127/amax, ties to even), which differs in about 0.5% of blocks.
void QuantizeQ8_0File(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = F32ToF16(d);
    for (int j = 0; j < kQK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void QuantizeRowForFile(TensorType t, const float* x, void* y, int64_t n) {
  if (t == TensorType::kQ8_0)
    QuantizeQ8_0File(x, static_cast<BlockQ8_0*>(y), n / kQK8_0);
  else
    QuantizeRowRef(t, x, y, n);
}

}  // namespace

const std::vector<QuantFormat>& QuantFormats() {
  static const std::vector<QuantFormat> kFormats = {
      {"f32", TensorType::kF32, Mix::kPure, 0, "all weights F32"},
      {"f16", TensorType::kF16, Mix::kPure, 1, "all weights F16"},
      {"bf16", TensorType::kBF16, Mix::kPure, 32, "all weights BF16"},
      {"q8_0", TensorType::kQ8_0, Mix::kPure, 7, "all weights Q8_0 (as llama.cpp's Q8_0)"},
      {"q6_k", TensorType::kQ6_K, Mix::kPure, 18, "all weights Q6_K (as llama.cpp's Q6_K)"},
      {"q4_0", TensorType::kQ4_0, Mix::kPure, 2, "all weights Q4_0, output included"},
      {"q4_0-q6k-output", TensorType::kQ4_0, Mix::kQ6KOutput, 2,
       "Q4_0, output in Q6_K (as llama.cpp's Q4_0)"},
      {"q4_1", TensorType::kQ4_1, Mix::kQ6KOutput, 3, "Q4_1, output in Q6_K (as llama.cpp's Q4_1)"},
      {"q5_0", TensorType::kQ5_0, Mix::kQ6KOutput, 8, "Q5_0, output in Q6_K (as llama.cpp's Q5_0)"},
      {"q5_1", TensorType::kQ5_1, Mix::kQ6KOutput, 9, "Q5_1, output in Q6_K (as llama.cpp's Q5_1)"},
      {"iq4_nl", TensorType::kIQ4_NL, Mix::kQ6KOutput, 25,
       "IQ4_NL, output in Q6_K (as llama.cpp's IQ4_NL without an importance matrix)"},
      {"q4_k", TensorType::kQ4_K, Mix::kPure, 14, "all weights Q4_K, output included"},
      {"q5_k", TensorType::kQ5_K, Mix::kPure, 16, "all weights Q5_K, output included"},
      {"q3_k", TensorType::kQ3_K, Mix::kPure, 11, "all weights Q3_K, output included"},
      {"q2_k-pure", TensorType::kQ2_K, Mix::kPure, 10, "all weights Q2_K, output included"},
      {"iq4_xs-pure", TensorType::kIQ4_XS, Mix::kPure, 30, "all weights IQ4_XS, output included"},
      {"q4_k-q6k-output", TensorType::kQ4_K, Mix::kQ6KOutput, 14, "Q4_K, output in Q6_K"},
      {"q4_k_m", TensorType::kQ4_K, Mix::kQ4KM, 15,
       "Q4_K; Q6_K for output and some attn_v/ffn_down layers (as llama.cpp's Q4_K_M)"},
      // llama.cpp's Q5_K_M and Q5_K_S follow Q4_K_M's and the -q6k-output rules with base Q5_K.
      {"q5_k_m", TensorType::kQ5_K, Mix::kQ4KM, 17,
       "Q5_K; Q6_K for output and some attn_v/ffn_down layers (as llama.cpp's Q5_K_M)"},
      {"q5_k_s", TensorType::kQ5_K, Mix::kQ6KOutput, 16,
       "Q5_K, output in Q6_K (as llama.cpp's Q5_K_S)"},
      {"q4_k_s", TensorType::kQ4_K, Mix::kQ4KS, 14,
       "Q4_K; Q5_K for the first attn_v and ffn_down layers, Q6_K output (as llama.cpp's Q4_K_S)"},
      {"q2_k", TensorType::kQ2_K, Mix::kQ2K, 10,
       "Q2_K; Q3_K/Q4_K for attn_v, Q3_K for ffn_down, attn_output, Q6_K output (llama.cpp's "
       "Q2_K)"},
      {"iq4_xs", TensorType::kIQ4_XS, Mix::kIQ4XS, 30,
       "IQ4_XS; Q5_K for the first ffn_down layers (and attn_v with 4+ query heads per KV head), "
       "Q6_K output (llama.cpp's IQ4_XS)"},
      {"q3_k_s", TensorType::kQ3_K, Mix::kQ6KOutput, 11,
       "Q3_K, output in Q6_K (as llama.cpp's Q3_K_S)"},
      {"q3_k_m", TensorType::kQ3_K, Mix::kQ3KM, 12,
       "Q3_K; Q4_K/Q5_K for attn_v, ffn_down, attn_output, Q6_K output (as llama.cpp's Q3_K_M)"},
      {"mxfp4_moe", TensorType::kMXFP4, Mix::kMXFP4MoE, 38,
       "MXFP4 for the experts' matrices, Q8_0 for every other (as llama.cpp's MXFP4_MOE)"},
      {"mxfp4-pure", TensorType::kMXFP4, Mix::kPure, 38,
       "all weights MXFP4, output included (llama.cpp's MXFP4_MOE with --pure)"},
      {"q3_k_l", TensorType::kQ3_K, Mix::kQ3KL, 13,
       "Q3_K; Q5_K for attn_v, ffn_down, attn_output, Q6_K output (as llama.cpp's Q3_K_L)"},
  };
  return kFormats;
}

std::optional<QuantFormat> FindQuantFormat(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& f : QuantFormats())
    if (lower == f.name) return f;
  return std::nullopt;
}

std::string QuantFormatNames() {
  std::string s;
  for (const auto& f : QuantFormats()) {
    if (!s.empty()) s += ", ";
    s += f.name;
  }
  return s;
}

void SortTensorsLikeLlama(std::vector<TensorDesc>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorDesc& a, const TensorDesc& b) {
    const int la = LayerOf(a.name), lb = LayerOf(b.name);
    if (la != lb) return la < lb;
    return a.name < b.name;
  });
}

bool IsQuantizable(const TensorDesc& t) {
  return EndsWith(t.name, "weight") && t.dims.size() >= 2 && !Contains(t.name, "_norm.weight") &&
         !Contains(t.name, "ffn_gate_inp.weight");
}

namespace {
// llama.cpp's type for the i-th attn_v of n (llama_tensor_get_type; MoE and 70B cases aside);
// n_gqa: query heads per KV head.
TensorType MixAttnV(const QuantFormat& f, int i, int n, int64_t n_gqa) {
  using Mix = QuantFormat::Mix;
  if (f.mix == Mix::kQ2K) return n_gqa >= 4 ? TensorType::kQ4_K : TensorType::kQ3_K;
  if (f.mix == Mix::kIQ4XS && n_gqa >= 4) return TensorType::kQ5_K;
  if (f.mix == Mix::kQ4KM && UseMoreBits(i, n)) return TensorType::kQ6_K;
  if (f.mix == Mix::kQ4KS && i < 4) return TensorType::kQ5_K;
  if (f.mix == Mix::kQ3KM) return i < 2 ? TensorType::kQ5_K : TensorType::kQ4_K;
  if (f.mix == Mix::kQ3KL) return TensorType::kQ5_K;
  return f.base;
}
// The same for ffn_down of layer i of n.
TensorType MixFfnDown(const QuantFormat& f, int i, int n) {
  using Mix = QuantFormat::Mix;
  if (f.mix == Mix::kQ4KM && UseMoreBits(i, n)) return TensorType::kQ6_K;
  if (f.mix == Mix::kQ4KS && i < n / 8) return TensorType::kQ5_K;
  if (f.mix == Mix::kQ2K) return TensorType::kQ3_K;
  if (f.mix == Mix::kIQ4XS && i < n / 8) return TensorType::kQ5_K;  // without an imatrix
  if (f.mix == Mix::kQ3KM) return i < n / 16 ? TensorType::kQ5_K : TensorType::kQ4_K;
  if (f.mix == Mix::kQ3KL) return TensorType::kQ5_K;
  return f.base;
}
}  // namespace

std::vector<TensorPlan> PlanTensorTypes(const std::vector<TensorDesc>& tensors,
                                        const QuantFormat& format, int n_layer) {
  bool has_output = false;
  int n_attn_v = 0;
  int64_t q_rows = 0, k_rows = 0;  // of the first layer: n_gqa = n_head / n_head_kv
  for (const auto& t : tensors) {
    if (t.name == "output.weight") has_output = true;
    if (Contains(t.name, "attn_v.weight")) ++n_attn_v;
    if (t.name == "blk.0.attn_q.weight" && t.dims.size() == 2) q_rows = t.dims[1];
    if (t.name == "blk.0.attn_k.weight" && t.dims.size() == 2) k_rows = t.dims[1];
  }
  const int64_t n_gqa = k_rows > 0 ? q_rows / k_rows : 1;
  // Experts per block (the last dimension of a 3-D expert tensor); llama.cpp's mixes treat
  // 8-expert models (Mixtral) apart and place a MoE file's ffn_down tensors by their block.
  int64_t n_expert = 0;
  for (const auto& t : tensors)
    if (Contains(t.name, "_exps.") && t.dims.size() == 3) n_expert = t.dims[2];
  const bool eight_experts = n_expert == 8;
  int i_attn_v = 0, i_ffn_down = 0;
  std::vector<TensorPlan> plan;
  plan.reserve(tensors.size());
  for (const auto& t : tensors) {
    TensorPlan p{t.name, t.dims, t.type, t.type, {}};
    if (!IsQuantizable(t)) {
      plan.push_back(std::move(p));
      continue;
    }
    const int64_t nx = t.dims[0];
    TensorType want = format.base;
    if (format.mix == Mix::kMXFP4MoE) {
      // llama.cpp decides by shape alone: a matrix stacked over experts (3-D, more than one).
      want = t.dims.size() >= 3 && t.dims[2] > 1 ? TensorType::kMXFP4 : TensorType::kQ8_0;
    } else if (format.mix != Mix::kPure) {
      const bool is_output =
          t.name == "output.weight" || (!has_output && t.name == "token_embd.weight");
      if (is_output) {
        // llama.cpp: an output row the base type cannot hold goes to Q8_0, anything else to Q6_K.
        if (nx % BlockElems(format.base) != 0)
          want = TensorType::kQ8_0;
        else if (format.base != TensorType::kQ8_0)
          want = TensorType::kQ6_K;
      } else if (Contains(t.name, "attn_v.weight")) {
        want = MixAttnV(format, i_attn_v++, n_attn_v, n_gqa);
        if (eight_experts) want = TensorType::kQ8_0;  // llama.cpp: "trades just ~128MB"
      } else if (Contains(t.name, "attn_k.weight") && eight_experts) {
        want = TensorType::kQ8_0;
      } else if (Contains(t.name, "ffn_down")) {
        const int i = i_ffn_down++;
        want = MixFfnDown(format, n_expert > 1 ? LayerOf(t.name) : i, n_layer);
      } else if (eight_experts && Contains(t.name, "attn_output.weight")) {
        // llama.cpp's 8-expert rule for Q2_K, Q3_K_S/M, IQ4_NL, Q4_K_S/M and IQ4_XS.
        const uint32_t ft = format.file_type;
        if (ft == 10 || ft == 11 || ft == 12 || ft == 25 || ft == 14 || ft == 15 || ft == 30)
          want = TensorType::kQ5_K;
      } else if (Contains(t.name, "attn_output.weight") || Contains(t.name, "attn_qkv.weight")) {
        // llama.cpp: Q3_K_M's attn_output and fused QKV in Q4_K; Q3_K_L's attn_output in Q5_K;
        // Q2_K's attn_output in Q3_K.
        if (format.mix == Mix::kQ2K && Contains(t.name, "attn_output")) want = TensorType::kQ3_K;
        if (format.mix == Mix::kQ3KM) want = TensorType::kQ4_K;
        if (format.mix == Mix::kQ3KL)
          want = Contains(t.name, "attn_qkv") ? TensorType::kQ4_K : TensorType::kQ5_K;
      }
    }
    if (nx % BlockElems(want) != 0) {
      // As llama.cpp: Q4_K falls back to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K/Q3_K/IQ4_XS to
      // IQ4_NL, and to F16 when those do not fit either (or for the 32-element types).
      TensorType fb = TensorType::kF16;
      if (want == TensorType::kQ4_K)
        fb = TensorType::kQ5_0;
      else if (want == TensorType::kQ5_K)
        fb = TensorType::kQ5_1;
      else if (want == TensorType::kQ6_K)
        fb = TensorType::kQ8_0;
      else if (want == TensorType::kQ2_K || want == TensorType::kQ3_K ||
               want == TensorType::kIQ4_XS)
        fb = TensorType::kIQ4_NL;
      if (nx % BlockElems(fb) != 0) fb = TensorType::kF16;
      p.fallback = "tensor '" + gguf::Printable(t.name) + "': row length " + std::to_string(nx) +
                   " is not a multiple of " + std::to_string(BlockElems(want)) + " as " +
                   TypeName(want) + " needs; using " + TypeName(fb);
      want = fb;
    }
    p.dst = want;
    plan.push_back(std::move(p));
  }
  return plan;
}

void WriteRows(gguf::TensorSink& sink, TensorType type, int64_t row_len, int64_t rows,
               const std::function<void(int64_t, float*)>& produce, int threads,
               const std::function<void(int64_t)>& progress) {
  if (row_len <= 0 || row_len % BlockElems(type) != 0)
    throw Error("WriteRows: row length " + std::to_string(row_len) + " does not fit type " +
                TypeName(type));
  const size_t row_bytes = RowBytes(type, row_len);
  const int nt = ResolveThreads(threads);
  // At least one row per thread, at most the whole tensor.
  const int64_t batch = std::max<int64_t>(
      1, std::min(rows, std::max<int64_t>(static_cast<int64_t>(kBatchBytes / row_bytes), nt)));
  std::vector<uint8_t> out(static_cast<size_t>(std::min(batch, rows)) * row_bytes);
  for (int64_t first = 0; first < rows; first += batch) {
    const int64_t n = std::min(batch, rows - first);
    ParallelRanges(n, nt, [&](int64_t b, int64_t e) {
      std::vector<float> tmp(static_cast<size_t>(row_len));
      for (int64_t r = b; r < e; ++r) {
        produce(first + r, tmp.data());
        QuantizeRowForFile(type, tmp.data(), out.data() + static_cast<size_t>(r) * row_bytes,
                           row_len);
      }
    });
    sink.Write(out.data(), static_cast<size_t>(n) * row_bytes);
    if (progress) progress(first + n);
  }
}

void SetQuantizationMetadata(gguf::Writer& w, const QuantFormat& format) {
  // llama.cpp's writer removes and re-appends a key it sets, so these two end the metadata.
  w.Remove("general.quantization_version");
  w.Remove("general.file_type");
  w.SetU32("general.quantization_version", 2);
  w.SetU32("general.file_type", format.file_type);
}

QuantizeResult QuantizeFile(const std::string& in, const std::string& out,
                            const QuantFormat& format, const QuantizeOptions& options) {
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && std::filesystem::equivalent(in, out, ec))
    throw Error(out + ": the output file is the input file; choose another output path");
  auto file = gguf::File::Open(in);
  std::vector<TensorDesc> descs;
  descs.reserve(file->tensors().size());
  std::string requantized;  // the quantized input types, for the warning
  for (const auto& t : file->tensors()) {
    if (!IsFloatType(t.type)) {
      if (!options.allow_requantize)
        throw Error(in + ": tensor '" + gguf::Printable(t.name) + "' is already quantized (" +
                    TypeName(t.type) +
                    "); quantize from an F32, F16 or BF16 model, or pass --allow-requantize "
                    "(quality drops)");
      if (!Traits(t.type).supported)
        throw Error(in + ": tensor '" + gguf::Printable(t.name) + "' has type " + TypeName(t.type) +
                    ", which edgeshard cannot read to requantize");
      if (requantized.find(TypeName(t.type)) == std::string::npos)
        requantized += (requantized.empty() ? "" : ", ") + std::string(TypeName(t.type));
    }
    descs.push_back({t.name, t.dims, t.type});
  }
  if (!requantized.empty() && options.warn)
    options.warn("requantizing " + in + " (" + requantized +
                 "): its weights are dequantized and quantized again, which loses more quality "
                 "than quantizing the F16/F32 original");
  if (descs.empty()) throw Error(in + ": the file has no tensors, nothing to quantize");
  SortTensorsLikeLlama(descs);

  int n_layer = 0;
  const auto arch = file->GetStringOr("general.architecture");
  if (auto bc = arch ? file->GetIntOr(*arch + ".block_count") : std::nullopt; bc && *bc > 0) {
    n_layer = static_cast<int>(std::min<int64_t>(*bc, 1 << 20));
  } else {
    for (const auto& d : descs) n_layer = std::max(n_layer, LayerOf(d.name) + 1);
  }

  QuantizeResult result;
  result.input_bytes = file->file_size();
  result.plan = PlanTensorTypes(descs, format, n_layer);

  gguf::Writer w;
  w.CopyMetadataFrom(*file);
  SetQuantizationMetadata(w, format);
  for (const char* k : {"split.no", "split.count", "split.tensors.count"}) w.Remove(k);

  uint64_t total = 0;
  for (const auto& p : result.plan) total += gguf::Writer::TensorBytes(p.name, p.dims, p.dst);
  const int threads = ResolveThreads(options.threads);
  uint64_t done = 0;  // written by the data callbacks, which run one after another in Write()
  for (const auto& p : result.plan) {
    if (!p.fallback.empty()) {
      ++result.n_fallback;
      if (options.warn) options.warn(p.fallback);
    }
    const gguf::TensorInfo& src = file->GetTensor(p.name);
    const uint64_t out_bytes = gguf::Writer::TensorBytes(p.name, p.dims, p.dst);
    if (!p.Converted()) {
      // Same type: the bytes are copied untouched (llama.cpp does the same).
      w.AddTensor(p.name, p.dims, p.dst,
                  [&, src_ptr = src.data, n = src.n_bytes, name = p.name](gguf::TensorSink& sink) {
                    constexpr size_t kPiece = size_t{8} << 20;
                    for (size_t at = 0; at < n; at += kPiece) {
                      const size_t k = std::min(kPiece, n - at);
                      sink.Write(src_ptr + at, k);
                      done += k;
                      if (options.progress) options.progress(done, total, name);
                    }
                  });
      continue;
    }
    const int64_t row_len = p.dims[0];
    const int64_t rows = src.Rows();
    const size_t src_row_bytes = RowBytes(src.type, row_len);
    const size_t dst_row_bytes = RowBytes(p.dst, row_len);
    w.AddTensor(p.name, p.dims, p.dst,
                [&, src_ptr = src.data, src_type = src.type, dst = p.dst, row_len, rows,
                 src_row_bytes, dst_row_bytes, out_bytes, name = p.name](gguf::TensorSink& sink) {
                  const uint64_t base = done;
                  WriteRows(
                      sink, dst, row_len, rows,
                      [&](int64_t r, float* y) {
                        DequantizeRowRef(src_type, src_ptr + static_cast<size_t>(r) * src_row_bytes,
                                         y, row_len);
                      },
                      threads,
                      [&](int64_t rows_done) {
                        done = base + static_cast<uint64_t>(rows_done) * dst_row_bytes;
                        if (options.progress) options.progress(done, total, name);
                      });
                  done = base + out_bytes;
                });
  }
  result.output_bytes = w.Write(out);
  return result;
}

}  // namespace es::model
