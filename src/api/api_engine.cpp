// The public API (include/edgeshard/edgeshard.h) over the model, runtime and tokenizer layers.
#include <algorithm>
#include <chrono>
#include <limits>
#include <map>

#include "edgeshard/edgeshard.h"
#include "model/model_llama.h"
#include "runtime/runtime_sampler.h"
#include "runtime/runtime_session.h"
#include "runtime/runtime_stop.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_chat.h"

namespace es {

struct Model::Impl {
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  bool in_memory = false;
};

std::shared_ptr<Model> Model::Load(const LoadParams& p) {
  std::shared_ptr<Model> m(new Model());
  m->impl_ = std::make_unique<Impl>();
  model::LoadOptions lo;
  lo.progress = p.progress;
  lo.use_mmap = p.use_mmap;
  lo.mlock = p.use_mlock;
  lo.gpu_layers = p.gpu_layers < 0 ? std::numeric_limits<int>::max() : p.gpu_layers;
  lo.gpu_device = p.gpu_device;
  m->impl_->model = model::LlamaModel::Load(p.path, lo);
  m->impl_->in_memory = !p.use_mmap || p.use_mlock;
  m->impl_->tokenizer = tok::Tokenizer::FromGGUF(m->impl_->model->file());
  if (m->impl_->tokenizer->n_vocab() != m->impl_->model->config().n_vocab)
    throw Error(p.path + ": the vocabulary has " + std::to_string(m->impl_->tokenizer->n_vocab()) +
                " tokens but token_embd.weight has " +
                std::to_string(m->impl_->model->config().n_vocab) + " rows");
  return m;
}

Model::~Model() = default;

ModelInfo Model::Info() const {
  const auto& c = impl_->model->config();
  const size_t embd = impl_->model->file().GetTensor("token_embd.weight").n_bytes;
  size_t per_token = impl_->model->weight_bytes() - (c.tied_output ? 0 : embd - embd / c.n_vocab);
  // A mixture of experts reads only its chosen experts' share of the expert tensors.
  if (c.moe())
    for (const auto& t : impl_->model->file().tensors())
      if (t.name.find("_exps.") != std::string::npos)
        per_token -= t.n_bytes - t.n_bytes / c.n_expert * c.n_expert_used;
  ModelInfo i{c.arch,
              c.name,
              c.n_layer,
              c.n_embd,
              c.n_head,
              c.n_head_kv,
              c.n_ff,
              c.n_vocab,
              c.n_ctx_train,
              impl_->model->weight_bytes(),
              per_token,
              impl_->model->file().file_size(),
              "",
              impl_->model->ExpertTensorBytes(),
              impl_->model->ExpertBytesPerToken(),
              impl_->in_memory,
              impl_->model->gpu_first(),
              impl_->model->gpu_first() < c.n_layer || impl_->model->gpu_head()
                  ? impl_->model->GpuDeviceName()
                  : "",
              impl_->model->GpuPlacement()};
  // llama.cpp's file type names, as users know them from file names; else the dominant type.
  static const std::map<int64_t, const char*> kFileTypes = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},
      {8, "Q5_0"},    {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"},
      {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},
      {18, "Q6_K"},   {25, "IQ4_NL"}, {32, "BF16"}};
  const auto ft = impl_->model->file().GetIntOr("general.file_type");
  if (ft && kFileTypes.count(*ft)) {
    i.weight_type = kFileTypes.at(*ft);
  } else {
    std::map<std::string, size_t> by_type;
    for (const auto& t : impl_->model->file().tensors())
      if (t.dims.size() > 1) by_type[TypeName(t.type)] += t.n_bytes;
    size_t best = 0;
    for (const auto& [name, bytes] : by_type)
      if (bytes > best) best = bytes, i.weight_type = name;
  }
  return i;
}

std::vector<int32_t> Model::Tokenize(std::string_view text, bool add_special,
                                     bool parse_special) const {
  return impl_->tokenizer->Encode(text, add_special, parse_special);
}

std::string Model::TokenToPiece(int32_t id) const {
  return impl_->tokenizer->TokenToPiece(id);
}

std::string Model::Detokenize(const std::vector<int32_t>& ids) const {
  return impl_->tokenizer->Decode(ids);
}

bool Model::IsEndOfGeneration(int32_t id) const {
  return impl_->tokenizer->IsEog(id);
}

int32_t Model::PromptBosToken() const {
  return impl_->tokenizer->add_bos() ? impl_->tokenizer->bos() : -1;
}

std::string Model::ApplyChatTemplate(const std::vector<ChatTurn>& turns, bool add_assistant_prompt,
                                     const std::string& template_override,
                                     const std::vector<std::string>& template_vars) const {
  const auto& t = *impl_->tokenizer;
  const std::string tmpl =
      tok::ChatTemplateOrDefault(template_override, t.ChatTemplate(), impl_->model->file().path());
  std::vector<tok::ChatMessage> msgs;
  for (const auto& turn : turns) msgs.push_back({turn.role, turn.content});
  const std::string bos = t.bos() >= 0 ? t.TokenText(t.bos()) : "";
  const std::string eos = t.eos() >= 0 ? t.TokenText(t.eos()) : "";
  return tok::ApplyChatTemplate(tmpl, msgs, add_assistant_prompt, bos, eos,
                                tok::ParseJinjaVars(template_vars));
}

struct Context::Impl {
  std::unique_ptr<runtime::Session> session;
};

Context::Context(std::shared_ptr<Model> model, const ContextParams& p) : model_(std::move(model)) {
  runtime::SessionOptions so;
  so.n_ctx = p.n_ctx;
  so.n_threads = p.n_threads;
  so.n_batch = p.n_batch;
  so.kv_type = {model::ParseKvType(p.cache_type_k, "KV cache type for keys"),
                model::ParseKvType(p.cache_type_v, "KV cache type for values")};
  if (p.n_ctx < 0)
    throw Error("context length must be positive (got " + std::to_string(p.n_ctx) + ")");
  // A context beyond the training one is allowed: the file's RoPE scaling applies, and the CLI
  // warns (as llama.cpp does).
  impl_ = std::make_unique<Impl>();
  impl_->session = std::make_unique<runtime::Session>(*model_->impl().model, so);
}

Context::~Context() = default;
size_t Context::kv_bytes() const {
  return impl_->session->kv_bytes();
}

size_t Context::buffer_bytes() const {
  return impl_->session->buffer_bytes();
}
int Context::n_ctx() const {
  return static_cast<int>(impl_->session->n_ctx());
}
int Context::n_threads() const {
  return impl_->session->n_threads();
}
int64_t Context::n_past() const {
  return impl_->session->n_past();
}
const std::vector<int32_t>& Context::tokens() const {
  return impl_->session->tokens();
}
void Context::Eval(const std::vector<int32_t>& tokens, std::vector<float>* all_logits) {
  impl_->session->Eval(tokens, all_logits);
}
const std::vector<float>& Context::last_logits() const {
  return impl_->session->last_logits();
}
void Context::Truncate(int64_t n) {
  impl_->session->Truncate(n);
}

GenerateResult Context::Generate(const std::vector<int32_t>& prompt, const GenerateParams& gp,
                                 const std::function<bool(std::string_view)>& on_text) {
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  runtime::Session& s = *impl_->session;
  const auto& tk = *model_->impl().tokenizer;
  GenerateResult r;
  r.n_prompt = static_cast<int>(prompt.size());
  if (prompt.empty() && s.n_past() == 0) throw Error("the prompt is empty");
  // llama.cpp keeps a leading BOS on top of n_keep; -1 (or more than the prompt) keeps it all.
  const int64_t n_prompt_all = s.n_past() + static_cast<int64_t>(prompt.size());
  const int32_t first = s.n_past() > 0 ? s.tokens()[0] : prompt[0];
  const bool bos = first == model_->PromptBosToken();
  const int64_t keep = gp.n_keep < 0 || gp.n_keep > n_prompt_all ? n_prompt_all : gp.n_keep + bos;
  // A prompt that does not fit after what the context holds makes room first, as llama.cpp's
  // completion tool does for its user input.
  while (gp.context_shift && s.n_past() + static_cast<int64_t>(prompt.size()) >= s.n_ctx() &&
         s.ShiftContext(keep) > 0)
    ++r.n_shifts;
  if (s.n_past() + static_cast<int64_t>(prompt.size()) >= s.n_ctx())
    throw Error("the prompt needs " + std::to_string(s.n_past() + prompt.size()) +
                " positions but the context holds " + std::to_string(s.n_ctx()) +
                " (use a larger -c)");
  auto t0 = Clock::now();
  s.Eval(prompt);
  r.prompt_ms = ms(Clock::now() - t0);

  runtime::SamplerParams sp;
  sp.temperature = gp.sampling.temperature;
  sp.top_k = gp.sampling.top_k;
  sp.top_p = gp.sampling.top_p;
  sp.min_p = gp.sampling.min_p;
  sp.repeat_penalty = gp.sampling.repeat_penalty;
  sp.frequency_penalty = gp.sampling.frequency_penalty;
  sp.presence_penalty = gp.sampling.presence_penalty;
  sp.penalty_last_n = gp.sampling.penalty_last_n;
  sp.seed = gp.sampling.seed;
  runtime::Sampler sampler(sp, model_->impl().model->config().n_vocab);
  // Penalties see the prompt too, as in llama.cpp.
  for (int32_t t : prompt) sampler.Accept(t);
  runtime::StopMatcher stop(gp.stop);
  auto emit = [&](const std::string& text) {
    if (text.empty()) return true;
    r.text += text;
    return on_text ? on_text(text) : true;
  };

  r.stop_reason = "length";
  const int64_t limit = gp.max_tokens < 0 ? INT64_MAX : gp.max_tokens;
  while (static_cast<int64_t>(r.tokens.size()) < limit) {
    const int32_t tok = sampler.Sample(s.last_logits().data());
    if (!gp.ignore_eos && tk.IsEog(tok)) {
      r.stop_reason = "eos";
      break;
    }
    sampler.Accept(tok);
    r.tokens.push_back(tok);
    auto fed = stop.Feed(tk.TokenToPiece(tok));
    if (!emit(fed.text)) {
      r.stop_reason = "cancelled";
      break;
    }
    if (fed.stopped) {
      r.stop_reason = "stop";
      break;
    }
    if (static_cast<int64_t>(r.tokens.size()) >= limit) break;
    if (s.n_past() >= s.n_ctx()) {
      if (!gp.context_shift || s.ShiftContext(keep) == 0) {
        r.stop_reason = "context";
        break;
      }
      ++r.n_shifts;
    }
    auto t1 = Clock::now();
    s.Eval({tok});
    r.decode_ms += ms(Clock::now() - t1);
    ++r.n_decode;
  }
  if (r.stop_reason != "stop" && r.stop_reason != "cancelled") emit(stop.Flush());
  return r;
}

}  // namespace es
