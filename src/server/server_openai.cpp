#include "server/server_openai.h"

#include <chrono>
#include <cmath>
#include <random>

#include "edgeshard/error.h"
#include "server/server_fields.h"

namespace es::server {
namespace {

using json = nlohmann::json;

const char* TypeFor(int status) {
  if (status == 401) return "authentication_error";
  if (status == 404) return "not_found_error";
  if (status == 503) return "server_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Appends a preview of `v` to `out`, stopping once `out` passes `limit` bytes: a value quoted in
// an error is never serialised whole (it may be megabytes).
void Preview(const json& v, std::string& out, size_t limit) {
  if (out.size() > limit) return;
  if (v.is_array() || v.is_object()) {
    const bool arr = v.is_array();
    out += arr ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() <= limit; ++it) {
      if (!first) out += ',';
      first = false;
      if (!arr) out += Dump(json(it.key().substr(0, limit))) + ':';
      Preview(*it, out, limit);
    }
    out += arr ? ']' : '}';
    return;
  }
  const std::string s = v.is_string() && v.get_ref<const std::string&>().size() > limit
                            ? Dump(v.get_ref<const std::string&>().substr(0, limit))
                            : Dump(v);
  out += s;
}

double Number(const json& body, const char* key, double lo, double hi, double def) {
  const json* v = Field(body, key);
  if (!v) return def;
  if (!v->is_number() || !(v->get<double>() >= lo && v->get<double>() <= hi))
    throw ApiError(400,
                   std::string("'") + key + "' must be a number from " + Num(lo) + " to " +
                       Num(hi) + ", got " + Quote(*v),
                   key);
  return v->get<double>();
}

int64_t Integer(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def) {
  const json* v = Field(body, key);
  if (!v) return def;
  bool ok = v->is_number_integer();
  if (!ok && v->is_number_float()) {  // 16.0 is an integer too
    const double d = v->get<double>();
    ok = std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9e15;
  }
  if (ok) {
    const int64_t i =
        v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
            ? INT64_MAX
            : (v->is_number_float() ? static_cast<int64_t>(v->get<double>()) : v->get<int64_t>());
    if (i >= lo && i <= hi) return i;
  }
  throw ApiError(400,
                 std::string("'") + key + "' must be an integer from " + std::to_string(lo) +
                     " to " + std::to_string(hi) + ", got " + Quote(*v),
                 key);
}

std::vector<std::string> Stops(const json& body) {
  const json* v = Field(body, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (v->is_array() && v->size() <= 4) {
    std::vector<std::string> out;
    for (const auto& s : *v) {
      if (!s.is_string()) break;
      out.push_back(s.get<std::string>());
    }
    if (out.size() == v->size()) return out;
  }
  throw ApiError(400, "'stop' must be a string or an array of up to 4 strings, got " + Quote(*v),
                 "stop");
}

std::string RandomId(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return std::string(prefix) + buf;
}

std::string TrimSpace(const std::string& s) {
  const size_t b = s.find_first_not_of(" \n\r\t");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \n\r\t") - b + 1);
}

json Bytes(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

ApiError::ApiError(int s, const std::string& message, std::string p, std::string c, std::string t)
    : std::runtime_error(message),
      status(s),
      param(std::move(p)),
      code(std::move(c)),
      type(std::move(t)) {
  if (type.empty()) type = TypeFor(status);
}

json ErrorJson(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return json{{"error", err}};
}

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Quote(const json& v) {
  std::string s;
  Preview(v, s, 60);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

const json* Field(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool BoolField(const json& body, const char* key, bool def) {
  const json* v = Field(body, key);
  if (!v) return def;
  if (!v->is_boolean())
    throw ApiError(400, std::string("'") + key + "' must be true or false, got " + Quote(*v), key);
  return v->get<bool>();
}

json ParseBody(const std::string& body) {
  // Depth is counted on the text, outside strings, before the parser builds anything.
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : body) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw ApiError(400, "the request body nests arrays/objects deeper than " +
                                std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  try {
    return json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
}

ParsedRequest ParseRequest(Endpoint ep, const json& body, int n_ctx, int max_tokens_cap) {
  if (!body.is_object())
    throw ApiError(400, "the request body must be a JSON object, got " + Quote(body));
  CheckRefusedFields(body);
  ParsedRequest r;
  r.endpoint = ep;
  if (const json* m = Field(body, "model")) {
    if (!m->is_string()) throw ApiError(400, "'model' must be a string, got " + Quote(*m), "model");
    r.model = m->get<std::string>();
  }

  // Sampling: OpenAI's defaults where OpenAI has the knob, llama.cpp's (top_k 40, min_p 0.05)
  // for the extensions, so a plain request samples like llama-server does.
  auto& s = r.gen.sampling;
  s.temperature = static_cast<float>(Number(body, "temperature", 0, 2, 1.0));
  s.top_p = static_cast<float>(Number(body, "top_p", 0, 1, 1.0));
  s.presence_penalty = static_cast<float>(Number(body, "presence_penalty", -2, 2, 0));
  s.frequency_penalty = static_cast<float>(Number(body, "frequency_penalty", -2, 2, 0));
  s.top_k = static_cast<int>(Integer(body, "top_k", 0, 1 << 30, 40));
  s.min_p = static_cast<float>(Number(body, "min_p", 0, 1, 0.05));
  s.repeat_penalty = static_cast<float>(Number(body, "repeat_penalty", 0, 10, 1.0));
  s.penalty_last_n = static_cast<int>(Integer(body, "repeat_last_n", 0, n_ctx, 64));
  const int64_t seed = Integer(body, "seed", -1, INT64_MAX, -1);
  s.seed = seed < 0 ? runtime::Sampler::kRandomSeed : static_cast<uint64_t>(seed);
  ParseLogitBias(body, r);
  ParseStructuredOutput(body, r);

  // n_predict is llama-server's own name for it; -1 there means "no limit".
  const char* max_key = Field(body, "max_completion_tokens") ? "max_completion_tokens"
                        : Field(body, "max_tokens")          ? "max_tokens"
                                                             : "n_predict";
  if (const json* v = Field(body, max_key);
      v && !(max_key == std::string("n_predict") && *v == -1)) {
    r.gen.max_tokens =
        static_cast<int>(Integer(body, max_key, 1, max_tokens_cap > 0 ? max_tokens_cap : n_ctx, 0));
  }
  // llama.cpp's server extension: tokens a context shift keeps (-1: the prompt).
  r.gen.n_keep = static_cast<int>(Integer(body, "n_keep", -1, n_ctx, GenRequest::kServerKeep));
  r.gen.stop = Stops(body);
  r.gen.ignore_eos = BoolField(body, "ignore_eos", false);
  if (Integer(body, "n", 1, INT64_MAX, 1) != 1)
    throw ApiError(400, "'n' must be 1: one choice per request is supported", "n");
  r.stream = BoolField(body, "stream", false);
  if (const json* so = Field(body, "stream_options")) {
    if (!so->is_object())
      throw ApiError(400, "'stream_options' must be an object, got " + Quote(*so),
                     "stream_options");
    r.include_usage = BoolField(*so, "include_usage", false);
  }

  if (ep == Endpoint::kChat) {
    r.messages = ParseChatMessages(body);
    r.tools = ParseToolFields(body);
    r.logprobs = BoolField(body, "logprobs", false);
    r.top_logprobs = static_cast<int>(Integer(body, "top_logprobs", 0, 20, 0));
    if (r.top_logprobs > 0 && !r.logprobs)
      throw ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
    // Extra chat template variables, as llama-server takes them (e.g. {"enable_thinking": false}).
    if (const json* kw = Field(body, "chat_template_kwargs")) {
      if (!kw->is_object())
        throw ApiError(400, "'chat_template_kwargs' must be an object, got " + Quote(*kw),
                       "chat_template_kwargs");
      r.template_vars = nlohmann::ordered_json::parse(kw->dump());
    }
  } else {
    RefuseToolsOutsideChat(body);
    const json* p = Field(body, "prompt");
    if (!p) throw ApiError(400, "'prompt' is required", "prompt");
    auto token_array = [](const json& a) {
      if (!a.is_array() || a.empty()) return false;
      for (const auto& x : a)
        if (!x.is_number_integer()) return false;
      return true;
    };
    if (p->is_string()) {
      r.prompt_text = p->get<std::string>();
    } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
      r.prompt_text = (*p)[0].get<std::string>();
    } else if (token_array(*p) || (p->is_array() && p->size() == 1 && token_array((*p)[0]))) {
      const json& a = token_array(*p) ? *p : (*p)[0];
      for (const auto& x : a) {
        const int64_t id = x.get<int64_t>();
        if (id < 0 || id > INT32_MAX)
          throw ApiError(400, "'prompt' holds the invalid token id " + Quote(x), "prompt");
        r.prompt_tokens.push_back(static_cast<int32_t>(id));
      }
      r.prompt_is_tokens = true;
    } else {
      throw ApiError(
          400,
          "'prompt' must be a string or an array of token ids (one prompt per request), got " +
              Quote(*p),
          "prompt");
    }
    const int64_t lp = Integer(body, "logprobs", 0, 20, -1);
    r.logprobs = lp >= 0;
    r.top_logprobs = static_cast<int>(std::max<int64_t>(lp, 0));
  }
  // llama-server's n_probs: the top-N alternatives per token, reported in the logprobs shape of
  // the endpoint (as llama-server's OpenAI-compatible endpoints do); 0 means off.
  if (const int n_probs = static_cast<int>(Integer(body, "n_probs", 0, 20, 0)); n_probs > 0) {
    if (r.logprobs && r.top_logprobs != n_probs)
      throw ApiError(400,
                     "'n_probs' (" + std::to_string(n_probs) +
                         ") contradicts the logprobs asked for (" + std::to_string(r.top_logprobs) +
                         ")",
                     "n_probs");
    r.logprobs = true;
    r.top_logprobs = n_probs;
  }
  r.gen.n_logprobs = r.logprobs ? r.top_logprobs : -1;
  return r;
}

std::string RenderPrompt(const ParsedRequest& r, const tok::Tokenizer& t,
                         const std::string& chat_template) {
  if (chat_template.empty())
    throw ApiError(400,
                   "the model has no chat template (tokenizer.chat_template): use "
                   "/v1/completions, or start the "
                   "server with --chat-template NAME",
                   "messages");
  const std::string bos = t.bos() >= 0 ? t.TokenText(t.bos()) : "";
  const std::string eos = t.eos() >= 0 ? t.TokenText(t.eos()) : "";
  tok::ChatInputs in;
  in.messages = r.messages;
  if (r.tools.active()) in.tools = r.tools.tools;
  in.bos_token = bos;
  in.eos_token = eos;
  in.extra = r.template_vars;
  std::string text;
  try {
    text = tok::RenderChat(chat_template, in);
  } catch (const Error& e) {
    throw ApiError(400, std::string("cannot apply the chat template: ") + e.what(), "messages");
  }
  CheckToolsRendered(r.tools, tok::ChatTemplateText(chat_template), text);
  return text;
}

void PlanReply(ParsedRequest& r, const tok::Tokenizer& t, const std::string& chat_template) {
  if (r.endpoint != Endpoint::kChat || chat_template.empty()) return;
  // The last tokens tell whether the template opened a <think> block for the model.
  const size_t n = std::min<size_t>(r.gen.prompt.size(), 32);
  std::string tail;
  for (size_t i = r.gen.prompt.size() - n; i < r.gen.prompt.size(); ++i)
    tail += t.TokenToPiece(r.gen.prompt[i], true);
  r.plan = PlanChatOutput(r.tools, tok::ChatTemplateText(chat_template), tail);
  for (const std::string& m : MarkerTexts(r.plan))
    for (int32_t id : t.Encode(m, false, true))
      if (t.TokenToPiece(id).empty() && t.TokenToPiece(id, true) == m)
        r.gen.shown_tokens.push_back(id);
  const std::string gbnf = ToolCallGbnf(r.tools, r.plan);
  if (gbnf.empty()) return;
  r.plan.forced = true;
  if (r.gen.sampling.grammar)
    throw ApiError(400,
                   "'tool_choice' forces a tool call, which a grammar / json_schema / "
                   "response_format would contradict: give only one of them",
                   "tool_choice");
  try {
    r.gen.sampling.grammar = runtime::Grammar::Parse(gbnf);
  } catch (const Error& e) {
    throw ApiError(500, std::string("the tool-call grammar did not compile: ") + e.what());
  }
}

std::vector<int32_t> BuildPrompt(const ParsedRequest& r, const tok::Tokenizer& t,
                                 const std::string& chat_template, int n_ctx) {
  std::vector<int32_t> tokens;
  const char* param = r.endpoint == Endpoint::kChat ? "messages" : "prompt";
  if (r.endpoint == Endpoint::kChat) {
    const std::string text = RenderPrompt(r, t, chat_template);
    // Templates that write the BOS text themselves must not get a second BOS.
    auto with = t.Encode(text, true, true);
    auto without = t.Encode(text, false, true);
    tokens = with.size() > 1 && !without.empty() && with[0] == without[0] && with[1] == without[0]
                 ? without
                 : with;
  } else if (r.prompt_is_tokens) {
    for (int32_t id : r.prompt_tokens)
      if (id >= t.n_vocab())
        throw ApiError(400,
                       "'prompt' holds token id " + std::to_string(id) +
                           ", outside the vocabulary (0.." + std::to_string(t.n_vocab() - 1) + ")",
                       "prompt");
    tokens = r.prompt_tokens;
  } else {
    tokens = t.Encode(r.prompt_text, true, true);
  }
  if (tokens.empty()) throw ApiError(400, "the prompt is empty", param);
  if (static_cast<int64_t>(tokens.size()) >= n_ctx)
    throw ApiError(400,
                   "the prompt has " + std::to_string(tokens.size()) +
                       " tokens but the context holds " + std::to_string(n_ctx) +
                       " (at least one position must remain for the reply)",
                   param, "context_length_exceeded");
  return tokens;
}

ResponseWriter::ResponseWriter(const ParsedRequest& r, const tok::Tokenizer& t,
                               std::string model_id)
    : endpoint_(r.endpoint),
      include_usage_(r.include_usage),
      logprobs_(r.logprobs),
      tok_(t),
      model_id_(std::move(model_id)),
      id_(RandomId(r.endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-")),
      created_(std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count()),
      reply_(r.plan) {}

json ResponseWriter::Envelope(const char* object) const {
  return json{{"id", id_}, {"object", object}, {"created", created_}, {"model", model_id_}};
}

std::string ResponseWriter::FinishReason(const GenEvent& e) const {
  if (e.finish_reason == "length") return "length";
  return reply_.whole().tool_calls.empty() ? "stop" : "tool_calls";
}

json ResponseWriter::Usage(const GenEvent& e) const {
  return json{{"prompt_tokens", e.n_prompt},
              {"completion_tokens", e.n_generated},
              {"total_tokens", e.n_prompt + e.n_generated},
              {"prompt_tokens_details", {{"cached_tokens", e.n_cached}}}};
}

json ResponseWriter::LogprobsJson(const std::vector<TokenLogprob>& toks, size_t text_offset) const {
  if (endpoint_ == Endpoint::kChat) {
    json content = json::array();
    for (const auto& t : toks) {
      const std::string piece = tok_.TokenToPiece(t.id);
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const std::string p = tok_.TokenToPiece(id);
        top.push_back({{"token", p}, {"logprob", lp}, {"bytes", Bytes(p)}});
      }
      content.push_back({{"token", piece},
                         {"logprob", t.logprob},
                         {"bytes", Bytes(piece)},
                         {"top_logprobs", top}});
    }
    return json{{"content", content}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& t : toks) {
    const std::string piece = tok_.TokenToPiece(t.id);
    tokens.push_back(piece);
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) {
      const std::string p = tok_.TokenToPiece(id);
      if (!top.contains(p)) top[p] = lp;  // pieces of different ids can coincide: keep the likelier
    }
    tops.push_back(top);
    offsets.push_back(text_offset);
    text_offset += piece.size();
  }
  return json{{"tokens", tokens},
              {"token_logprobs", lps},
              {"top_logprobs", tops},
              {"text_offset", offsets}};
}

void ResponseWriter::ChatDeltas(const ReplyDelta& d, json logprobs, std::string& out) const {
  auto send = [&](json delta) {
    json choice = {{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", nullptr}};
    choice["logprobs"] = std::move(logprobs);
    logprobs = nullptr;
    json c = Envelope("chat.completion.chunk");
    c["choices"] = json::array({std::move(choice)});
    out += "data: " + Dump(c) + "\n\n";
  };
  if (!d.reasoning.empty() || !d.content.empty() || (logprobs_ && !logprobs.is_null())) {
    json delta = json::object();
    if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
    if (!d.content.empty()) delta["content"] = d.content;
    send(std::move(delta));
  }
  // As OpenAI streams a call: its index, id, type and name with empty arguments first, then
  // pieces of the arguments.
  for (const CallPiece& p : d.calls) {
    json call = {{"index", p.index}};
    if (p.head) {
      call["id"] = p.id;
      call["type"] = "function";
      call["function"] = {{"name", p.name}, {"arguments", ""}};
    } else if (!p.arguments.empty()) {
      call["function"] = {{"arguments", p.arguments}};
    } else {
      continue;
    }
    send(json{{"tool_calls", json::array({std::move(call)})}});
  }
}

std::string ResponseWriter::StreamEvent(const GenEvent& e) {
  std::string out;
  auto send = [&](const json& j) { out += "data: " + Dump(j) + "\n\n"; };
  const bool chat = endpoint_ == Endpoint::kChat;
  const char* object = chat ? "chat.completion.chunk" : "text_completion";
  if (chat && !sent_role_) {
    sent_role_ = true;
    json c = Envelope(object);
    c["choices"] = json::array({{{"index", 0},
                                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                                 {"logprobs", nullptr},
                                 {"finish_reason", nullptr}}});
    send(c);
  }
  const bool failed = e.done && e.finish_reason == "error";
  if (chat) {
    json lp = logprobs_ && !e.tokens.empty() ? LogprobsJson(e.tokens, 0) : json(nullptr);
    if (!failed) ChatDeltas(reply_.Feed(e.text, e.done), std::move(lp), out);
  } else if (!e.text.empty() || (logprobs_ && !e.tokens.empty())) {
    json choice = {{"index", 0}, {"finish_reason", nullptr}, {"text", e.text}};
    choice["logprobs"] = logprobs_ ? LogprobsJson(e.tokens, text_bytes_) : json(nullptr);
    for (const auto& t : e.tokens) text_bytes_ += tok_.TokenToPiece(t.id).size();
    json c = Envelope(object);
    c["choices"] = json::array({choice});
    send(c);
  }
  if (e.done) {
    if (failed) {
      send(ErrorJson(ApiError(500, e.error)));
    } else {
      json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(e)}};
      if (chat) {
        choice["delta"] = json::object();
      } else {
        choice["text"] = "";
      }
      json c = Envelope(object);
      c["choices"] = json::array({choice});
      send(c);
      if (include_usage_) {
        json u = Envelope(object);
        u["choices"] = json::array();
        u["usage"] = Usage(e);
        send(u);
      }
    }
    out += "data: [DONE]\n\n";
  }
  return out;
}

void ResponseWriter::Accumulate(const GenEvent& e) {
  if (endpoint_ == Endpoint::kChat)
    reply_.Feed(e.text, e.done);
  else
    text_ += e.text;
  for (const auto& t : e.tokens) tokens_.push_back(t);
  if (e.done) last_ = e;
}

std::string ResponseWriter::FinalBody() const {
  if (last_.finish_reason == "error") return Dump(ErrorJson(ApiError(500, last_.error)));
  const bool chat = endpoint_ == Endpoint::kChat;
  json choice = {{"index", 0}, {"finish_reason", FinishReason(last_)}};
  choice["logprobs"] = logprobs_ ? LogprobsJson(tokens_, 0) : json(nullptr);
  if (chat) {
    const tok::ChatOutput& w = reply_.whole();
    // Whole, the layout around thoughts and calls goes (a stream has sent it already).
    json msg = {{"role", "assistant"},
                {"content", w.tool_calls.empty() ? w.content : TrimSpace(w.content)}};
    if (!w.reasoning.empty()) msg["reasoning_content"] = TrimSpace(w.reasoning);
    if (!w.tool_calls.empty()) {
      // OpenAI's content is null when the reply is only calls.
      if (msg["content"] == "") msg["content"] = nullptr;
      msg["tool_calls"] = json::array();
      for (const auto& c : w.tool_calls) msg["tool_calls"].push_back(ToolCallJson(c));
    }
    choice["message"] = std::move(msg);
  } else {
    choice["text"] = text_;
  }
  json r = Envelope(chat ? "chat.completion" : "text_completion");
  r["choices"] = json::array({choice});
  r["usage"] = Usage(last_);
  return Dump(r);
}

}  // namespace es::server
