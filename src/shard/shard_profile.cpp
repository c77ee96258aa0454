#include "shard/shard_profile.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "gpu/gpu_device.h"
#include "model/model_llama.h"
#include "runtime/runtime_kv_cache.h"

namespace es::shard {
namespace {

using nlohmann::json;

// Reads fields of a JSON object; errors name the file and the path to the bad field.
class Reader {
 public:
  Reader(const json& j, std::string what, std::string path)
      : j_(j), what_(std::move(what)), path_(std::move(path)) {
    if (!j_.is_object()) Fail("expected an object");
  }
  [[noreturn]] void Fail(const std::string& msg, const std::string& key = "") const {
    throw Error(what_ + ": " + (key.empty() ? path_ : Sub(key)) + ": " + msg);
  }
  std::string Sub(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  bool Has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& At(const std::string& key) const {
    if (!Has(key)) Fail("missing", key);
    return j_.at(key);
  }
  std::string Str(const std::string& key, bool required = true) const {
    if (!required && !Has(key)) return "";
    const json& v = At(key);
    if (!v.is_string()) Fail("expected a string", key);
    return v.get<std::string>();
  }
  double Num(const std::string& key, double min, bool required = true, double dflt = 0) const {
    if (!required && !Has(key)) return dflt;
    const json& v = At(key);
    if (!v.is_number() || !(v.get<double>() >= min))
      Fail("expected a number >= " + Fmt(min) + ", got " + v.dump(), key);
    return v.get<double>();
  }
  uint64_t U64(const std::string& key, bool required = true) const {
    if (!required && !Has(key)) return 0;
    const json& v = At(key);
    if (!v.is_number_unsigned()) Fail("expected a non-negative integer, got " + v.dump(), key);
    return v.get<uint64_t>();
  }
  int Int(const std::string& key, int min, bool required = true) const {
    if (!required && !Has(key)) return 0;
    const json& v = At(key);
    if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > (1 << 30))
      Fail("expected an integer >= " + std::to_string(min) + ", got " + v.dump(), key);
    return v.get<int>();
  }
  static std::string Fmt(double x) {
    std::ostringstream s;
    s << x;
    return s.str();
  }

 private:
  const json& j_;
  std::string what_, path_;
};

}  // namespace

double UnitTiming::DecodeMs(int ctx) const {
  if (decode.empty()) return 0;
  if (decode.size() == 1) return decode[0].ms;
  size_t i = 1;
  while (i + 1 < decode.size() && decode[i].ctx < ctx) ++i;
  const DecodePoint& a = decode[i - 1];
  const DecodePoint& b = decode[i];
  const double t = a.ms + (b.ms - a.ms) * double(ctx - a.ctx) / double(b.ctx - a.ctx);
  return t > 0 ? t : 0;
}

Profile ParseProfile(const std::string& text, const std::string& what, bool require_timing) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(what + ": not valid JSON: " + e.what());
  }
  Reader top(j, what, "");
  const std::string schema = top.Str("schema");
  if (schema != kProfileSchema)
    top.Fail("is '" + schema + "', expected '" + kProfileSchema + "'", "schema");
  Profile p;
  if (top.Has("device")) {
    Reader d(top.At("device"), what, "device");
    p.device = d.Str("name", false);
    p.cpu = d.Str("cpu", false);
    p.threads = d.Int("threads", 0, false);
    p.memory_budget_bytes = d.U64("memory_budget_bytes", false);
    p.gpu = d.Str("gpu", false);
    if (d.Has("unified_memory")) {
      if (!d.At("unified_memory").is_boolean()) d.Fail("expected true or false", "unified_memory");
      p.unified_memory = d.At("unified_memory").get<bool>();
    }
    p.crossing_ms = d.Num("crossing_ms", 0, false);
  } else if (require_timing) {
    top.Fail("missing", "device");
  }
  Reader m(top.At("model"), what, "model");
  p.model.name = m.Str("name");
  p.model.arch = m.Str("arch", false);
  p.model.weight_type = m.Str("weight_type", false);
  p.model.n_layer = m.Int("n_layer", 1);
  p.model.n_embd = m.Int("n_embd", 0, false);
  p.prompt_batch = top.Int("prompt_batch", 1, require_timing);

  const json& units = top.At("units");
  if (!units.is_array()) top.Fail("expected an array", "units");
  if (units.size() != size_t(p.model.n_layer) + 2)
    top.Fail("has " + std::to_string(units.size()) + " entries, expected n_layer + 2 = " +
                 std::to_string(p.model.n_layer + 2) + " (embedding, blocks, head)",
             "units");
  bool any_timing = false;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string path = "units[" + std::to_string(i) + "]";
    Reader r(units[i], what, path);
    UnitInfo u;
    u.name = r.Str("name");
    u.weight_bytes = r.U64("weight_bytes");
    u.matrix_bytes = r.U64("matrix_bytes", false);
    u.matrix_elems = r.U64("matrix_elems", false);
    if (u.matrix_bytes > u.weight_bytes) r.Fail("exceeds weight_bytes", "matrix_bytes");
    // Older profiles (and dense models) read every weight per decode step.
    u.active_bytes = r.Has("active_bytes") ? r.U64("active_bytes") : u.weight_bytes;
    if (u.active_bytes > u.weight_bytes) r.Fail("exceeds weight_bytes", "active_bytes");
    u.kv_bytes_per_token = r.U64("kv_bytes_per_token", false);
    u.kv_window = r.U64("kv_window", false);
    u.out_bytes_per_token = r.U64("out_bytes_per_token");
    p.model.units.push_back(u);
    const bool timed = r.Has("decode_ms");
    if (i > 0 && timed != any_timing) r.Fail("units must all have timings or none", "decode_ms");
    any_timing = timed;
    if (!timed) {
      if (require_timing)
        r.Fail("missing (this file has no timings; run `edgeshard profile`)", "decode_ms");
      continue;
    }
    UnitTiming t;
    t.prompt_ms_per_token = r.Num("prompt_ms_per_token", 0);
    t.row_ms = r.Has("row_ms") ? r.Num("row_ms", 0) : 0;
    const json& dec = r.At("decode_ms");
    if (!dec.is_array() || dec.empty())
      r.Fail("expected a non-empty array of {ctx, ms}", "decode_ms");
    for (size_t k = 0; k < dec.size(); ++k) {
      Reader pt(dec[k], what, r.Sub("decode_ms[" + std::to_string(k) + "]"));
      DecodePoint dp{pt.Int("ctx", 0), pt.Num("ms", 0)};
      if (!t.decode.empty() && dp.ctx <= t.decode.back().ctx)
        pt.Fail("ctx must be ascending", "ctx");
      t.decode.push_back(dp);
    }
    p.timing.push_back(t);
  }
  return p;
}

Profile LoadProfile(const std::string& path, bool require_timing) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open profile");
  std::stringstream ss;
  ss << f.rdbuf();
  return ParseProfile(ss.str(), path, require_timing);
}

std::string ProfileToJson(const Profile& p) {
  nlohmann::ordered_json units = nlohmann::ordered_json::array();
  for (size_t i = 0; i < p.model.units.size(); ++i) {
    const UnitInfo& u = p.model.units[i];
    nlohmann::ordered_json ju = {{"name", u.name},
                                 {"weight_bytes", u.weight_bytes},
                                 {"matrix_bytes", u.matrix_bytes},
                                 {"matrix_elems", u.matrix_elems},
                                 {"kv_bytes_per_token", u.kv_bytes_per_token},
                                 {"out_bytes_per_token", u.out_bytes_per_token}};
    if (u.kv_window > 0) ju["kv_window"] = u.kv_window;
    if (u.active_bytes != u.weight_bytes) ju["active_bytes"] = u.active_bytes;
    if (p.has_timing()) {
      ju["prompt_ms_per_token"] = p.timing[i].prompt_ms_per_token;
      if (p.timing[i].row_ms > 0) ju["row_ms"] = p.timing[i].row_ms;
      nlohmann::ordered_json dec = nlohmann::ordered_json::array();
      for (const auto& d : p.timing[i].decode) dec.push_back({{"ctx", d.ctx}, {"ms", d.ms}});
      ju["decode_ms"] = dec;
    }
    units.push_back(ju);
  }
  nlohmann::ordered_json j = {{"schema", kProfileSchema},
                              {"model",
                               {{"name", p.model.name},
                                {"arch", p.model.arch},
                                {"weight_type", p.model.weight_type},
                                {"n_layer", p.model.n_layer},
                                {"n_embd", p.model.n_embd}}}};
  if (p.has_timing()) {
    j["device"] = {{"name", p.device},
                   {"cpu", p.cpu},
                   {"threads", p.threads},
                   {"memory_budget_bytes", p.memory_budget_bytes}};
    if (!p.gpu.empty()) {
      j["device"]["gpu"] = p.gpu;
      j["device"]["unified_memory"] = p.unified_memory;
      j["device"]["crossing_ms"] = p.crossing_ms;
    }
    j["prompt_batch"] = p.prompt_batch;
  }
  // One unit per line, so a profile reads as a table.
  std::string text = j.dump(2);
  text.resize(text.rfind('}'));
  while (!text.empty() && text.back() == '\n') text.pop_back();
  text += ",\n  \"units\": [\n";
  for (size_t i = 0; i < units.size(); ++i)
    text += "    " + units[i].dump() + (i + 1 < units.size() ? ",\n" : "\n");
  return text + "  ]\n}\n";
}

void SaveProfile(const Profile& p, const std::string& path) {
  std::ofstream f(path, std::ios::binary);
  f << ProfileToJson(p);
  if (!f) throw Error(path + ": cannot write profile");
}

ModelUnits LoadModelUnits(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open model");
  char magic[4] = {};
  f.read(magic, 4);
  if (f.gcount() == 4 && std::string(magic, 4) == "GGUF")
    return UnitsFromGguf(*gguf::File::Open(path));
  return LoadProfile(path, false).model;
}

namespace {

std::string CpuName() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string v = line.substr(line.find(':') + 1);
      return v.substr(std::min(v.size(), v.find_first_not_of(' ')));
    }
  return "";
}

// Median wall time of `reps` runs of fn(), in ms; `setup` runs untimed before each.
template <typename Setup, typename Fn>
double MedianMs(int reps, Setup setup, Fn fn) {
  std::vector<double> v;
  for (int r = -1; r < reps; ++r) {  // r == -1 warms caches up and is not kept
    setup();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 0) v.push_back(ms);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Profile MeasureProfile(const std::string& model_path, const MeasureOptions& o) {
  auto say = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };
  say("loading " + model_path);
  model::LoadOptions lo;
  if (o.gpu_device >= 0) {
    lo.gpu_device = o.gpu_device;
    lo.gpu_layers = std::numeric_limits<int>::max();  // every block and the head
  }
  const auto model = model::LlamaModel::Load(model_path, lo);
  const model::ModelConfig& c = model->config();
  Profile p;
  p.model = UnitsFromGguf(model->file());
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  p.device = o.device.empty() ? host : o.device;
  p.cpu = CpuName();
  p.memory_budget_bytes = o.memory_budget_bytes ? o.memory_budget_bytes : MemAvailable();
  if (o.gpu_device >= 0) {
    const gpu::DeviceInfo g = gpu::FindDevice(o.gpu_device);
    p.gpu = model->GpuDeviceName();
    p.unified_memory = g.unified_memory;
    if (!o.memory_budget_bytes) p.memory_budget_bytes = g.memory_bytes;
    say("on " + p.gpu);
  }
  const int reps = std::max(1, o.reps);

  // Context lengths must leave room for the token being decoded.
  std::vector<int> ctxs;
  for (int x : o.ctx)
    if (x >= 0) ctxs.push_back(std::min(x, c.n_ctx_train - 1));
  if (ctxs.empty()) throw Error("profile: give at least one context length >= 0");
  std::sort(ctxs.begin(), ctxs.end());
  ctxs.erase(std::unique(ctxs.begin(), ctxs.end()), ctxs.end());
  const int batch = std::max(1, std::min(o.prompt_batch, c.n_ctx_train));
  p.prompt_batch = batch;
  const int64_t max_ctx = std::max<int64_t>(batch, ctxs.back() + 1);

  const int threads =
      o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  p.threads = threads;
  kernels::ThreadPool pool(threads);
  runtime::KvCache kv(c, max_ctx, TensorType::kF16, 0, -1, 0, model.get());
  model::Workspace ws(c, batch, int(max_ctx), pool.size());
  std::mt19937 rng(1);
  std::vector<int32_t> tokens(batch);
  for (auto& t : tokens) t = int32_t(rng() % uint32_t(c.n_vocab));
  const size_t row = size_t(c.n_embd);
  std::vector<float> base(batch * row), hidden(batch * row);
  model->Embed(tokens.data(), batch, base.data());
  const int head_rows =
      std::min(batch, 64);  // the head's prompt cost per row, without a huge logits buffer
  std::vector<float> logits(size_t(head_rows) * c.n_vocab);
  auto reset = [&] { std::copy(base.begin(), base.end(), hidden.begin()); };

  p.timing.resize(p.model.units.size());
  // Embedding: a lookup per token.
  p.timing[0].prompt_ms_per_token =
      MedianMs(
          reps, [] {}, [&] { model->Embed(tokens.data(), batch, hidden.data()); }) /
      batch;
  const double embd_decode = MedianMs(
      reps, [] {}, [&] { model->Embed(tokens.data(), 1, hidden.data()); });
  for (int x : ctxs) p.timing[0].decode.push_back({x, embd_decode});

  for (int b = 0; b < c.n_layer; ++b) {
    say("block " + std::to_string(b + 1) + "/" + std::to_string(c.n_layer));
    UnitTiming& t = p.timing[b + 1];
    t.prompt_ms_per_token =
        MedianMs(reps, reset,
                 [&] {
                   model->ForwardBlocks(b, b + 1, hidden.data(), batch, 0, kv.layers(), ws, pool);
                 }) /
        batch;
    // The cache rows below each context length are there (their values do not change the cost).
    // Each step decodes another token's row: a mixture of experts routes each to the experts
    // its router picks, as in generation, rather than timing one warm set of experts.
    int next_row = 0;
    for (int x : ctxs)
      t.decode.push_back({x, MedianMs(reps, reset, [&] {
                            float* h = hidden.data() + size_t(next_row++ % batch) * row;
                            model->ForwardBlocks(b, b + 1, h, 1, x, kv.layers(), ws, pool);
                          })});
    // A few rows at once, at the first context length: what a micro-batch adds per sequence.
    if (batch >= kMicroBatchRows && ctxs[0] + kMicroBatchRows <= max_ctx) {
      const double few = MedianMs(reps, reset, [&] {
        const int r0 = (next_row += kMicroBatchRows) % (batch - kMicroBatchRows + 1);
        float* h = hidden.data() + size_t(r0) * row;
        model->ForwardBlocks(b, b + 1, h, kMicroBatchRows, ctxs[0], kv.layers(), ws, pool);
      });
      t.row_ms = std::max(few - t.decode[0].ms, 0.0) / (kMicroBatchRows - 1);
    }
  }
  if (o.gpu_device >= 0 && c.n_layer > 1) {
    // Each block alone crossed to the GPU and back once; a range of them crosses once. The
    // difference between the blocks alone and all of them in one pass is the crossings saved.
    int next_row = 0;
    const double all = MedianMs(reps, reset, [&] {
      float* h = hidden.data() + size_t(next_row++ % batch) * row;
      model->ForwardBlocks(0, c.n_layer, h, 1, ctxs[0], kv.layers(), ws, pool);
    });
    double alone = 0;
    for (int b = 0; b < c.n_layer; ++b) alone += p.timing[b + 1].decode[0].ms;
    p.crossing_ms = std::max(0.0, (alone - all) / (c.n_layer - 1));
    for (int b = 0; b < c.n_layer; ++b)
      for (DecodePoint& d : p.timing[b + 1].decode) d.ms = std::max(0.0, d.ms - p.crossing_ms);
  }
  say("head");
  UnitTiming& h = p.timing.back();
  h.prompt_ms_per_token =
      MedianMs(reps, reset,
               [&] { model->Head(hidden.data(), head_rows, logits.data(), ws, pool); }) /
      head_rows;
  const double head_decode =
      MedianMs(reps, reset, [&] { model->Head(hidden.data(), 1, logits.data(), ws, pool); });
  for (int x : ctxs) h.decode.push_back({x, head_decode});
  if (head_rows >= kMicroBatchRows) {
    const double few = MedianMs(
        reps, reset, [&] { model->Head(hidden.data(), kMicroBatchRows, logits.data(), ws, pool); });
    h.row_ms = std::max(few - head_decode, 0.0) / (kMicroBatchRows - 1);
  }
  return p;
}

}  // namespace es::shard
