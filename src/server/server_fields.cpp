#include "server/server_fields.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "edgeshard/error.h"
#include "runtime/runtime_json_schema.h"

namespace es::server {
namespace {

using json = nlohmann::json;

bool OneOf(const json& v, std::initializer_list<json> ok) {
  for (const auto& o : ok)
    if (v == o) return true;  // numbers compare by value: 1 == 1.0
  return false;
}

// A field the server refuses unless its value is one that leaves the output as if it were
// absent. Fields that only tune a refused feature (mirostat_tau, dry_base, xtc_threshold, ...)
// and fields that never change the text (user, metadata, store, service_tier, stream_options,
// cache_prompt, prediction) are accepted.
struct Refused {
  const char* field;
  bool (*neutral)(const json&);
  const char* why;
};

const Refused kRefused[] = {
    {"mirostat", [](const json& v) { return OneOf(v, {0}); }, "mirostat sampling"},
    {"typical_p", [](const json& v) { return OneOf(v, {1}); }, "locally typical sampling"},
    {"tfs_z", [](const json& v) { return OneOf(v, {1}); }, "tail-free sampling"},
    {"top_n_sigma", [](const json& v) { return OneOf(v, {-1}); }, "top-n-sigma sampling"},
    {"dynatemp_range", [](const json& v) { return OneOf(v, {0}); }, "dynamic temperature"},
    {"dry_multiplier", [](const json& v) { return OneOf(v, {0}); }, "DRY repetition penalty"},
    {"xtc_probability", [](const json& v) { return OneOf(v, {0}); }, "XTC sampling"},
    {"min_keep",
     [](const json& v) {
       return OneOf(v, {0, 1});
     },
     "min_keep above 1"},
    {"samplers", [](const json&) { return false; }, "a custom sampler order"},
    {"penalize_nl", [](const json& v) { return v == false; }, "penalize_nl"},
    {"post_sampling_probs", [](const json& v) { return v == false; },
     "post-sampling probabilities"},
    {"lora", [](const json& v) { return v.is_array() && v.empty(); }, "LoRA adapters"},
    {"best_of", [](const json& v) { return OneOf(v, {1}); }, "best_of other than 1"},
    {"echo", [](const json& v) { return v == false; }, "echoing the prompt"},
    {"suffix", [](const json& v) { return v == ""; }, "suffix (fill-in-the-middle)"},
    {"functions", [](const json& v) { return v.is_array() && v.empty(); }, "function calling"},
    {"function_call",
     [](const json& v) {
       return OneOf(v, {"none", "auto"});
     },
     "function calling"},
    {"audio", [](const json&) { return false; }, "audio output"},
    {"modalities", [](const json& v) { return v == json::array({"text"}); }, "non-text output"},
    {"reasoning_effort", [](const json&) { return false; }, "reasoning_effort"},
    {"web_search_options", [](const json&) { return false; }, "web search"},
};

// A bias: a number in [-100, 100] or false (llama-server's ban). -100 bans the token outright
// (-inf, as OpenAI describes it: "should result in a ban"); llama.cpp adds -100 literally,
// which with a model's logits spanning more than 100 could still let it through.
float BiasValue(const json& v, const std::string& where) {
  if (v == false || (v.is_number() && v.get<double>() == -100))
    return -std::numeric_limits<float>::infinity();
  if (!v.is_number() || !(v.get<double>() >= -100 && v.get<double>() <= 100))
    throw ApiError(400, where + " must be a number from -100 to 100 or false, got " + Quote(v),
                   "logit_bias");
  return static_cast<float>(v.get<double>());
}

// A key that is all digits is a token id (OpenAI); anything else is token text (llama-server).
void AddBias(ParsedRequest& r, const json& token, float bias, const std::string& where) {
  if (token.is_number_integer()) {
    r.bias_ids.emplace_back(token.get<int64_t>(), bias);
    return;
  }
  if (!token.is_string())
    throw ApiError(400, where + ": a token must be an id or a text, got " + Quote(token),
                   "logit_bias");
  const std::string& s = token.get_ref<const std::string&>();
  int64_t id = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
  if (!s.empty() && ec == std::errc() && end == s.data() + s.size())
    r.bias_ids.emplace_back(id, bias);
  else if (!s.empty() && s[0] >= '0' && s[0] <= '9' && ec == std::errc::result_out_of_range)
    throw ApiError(400, where + ": token id " + Quote(token) + " is outside the vocabulary",
                   "logit_bias");
  else
    r.bias_texts.emplace_back(s, bias);
}

// A grammar from GBNF text or a JSON schema; es::Error (what is wrong with it) becomes a 400 that
// names `param`.
std::shared_ptr<const runtime::Grammar> Compile(const std::string& param, const json* schema,
                                                const std::string& gbnf) {
  try {
    return schema ? runtime::CompileJsonSchema(*schema) : runtime::Grammar::Parse(gbnf);
  } catch (const Error& e) {
    throw ApiError(400, "'" + param + "' is not usable: " + e.what(), param);
  }
}

}  // namespace

void ParseStructuredOutput(const json& body, ParsedRequest& r) {
  std::vector<std::string> given;
  std::shared_ptr<const runtime::Grammar> g;
  if (const json* v = Field(body, "grammar"); v && *v != "") {
    if (!v->is_string())
      throw ApiError(400, "'grammar' must be a string of GBNF rules, got " + Quote(*v), "grammar");
    g = Compile("grammar", nullptr, v->get<std::string>());
    given.push_back("grammar");
  }
  if (const json* v = Field(body, "json_schema")) {
    if (!v->is_object() && !v->is_boolean())
      throw ApiError(400, "'json_schema' must be a JSON schema (an object), got " + Quote(*v),
                     "json_schema");
    g = Compile("json_schema", v, "");
    given.push_back("json_schema");
  }
  if (const json* v = Field(body, "response_format")) {
    const json* type = v->is_object() ? Field(*v, "type") : nullptr;
    if (!type || !type->is_string())
      throw ApiError(400,
                     "'response_format' must be an object with a 'type' of \"text\", "
                     "\"json_object\" or \"json_schema\", got " +
                         Quote(*v),
                     "response_format");
    const std::string t = type->get<std::string>();
    if (t == "json_object") {
      // llama-server also takes a schema here.
      if (const json* sc = Field(*v, "schema"))
        g = Compile("response_format.schema", sc, "");
      else
        g = Compile("response_format", nullptr, runtime::JsonObjectGbnf());
      given.push_back("response_format");
    } else if (t == "json_schema") {
      const json* js = Field(*v, "json_schema");
      const json* sc = js && js->is_object() ? Field(*js, "schema") : Field(*v, "schema");
      if (!sc)
        throw ApiError(400,
                       "'response_format' of type \"json_schema\" needs "
                       "'json_schema': {\"name\": ..., \"schema\": {...}}",
                       "response_format");
      g = Compile("response_format.json_schema.schema", sc, "");
      given.push_back("response_format");
    } else if (t != "text") {
      throw ApiError(400,
                     "'response_format' type must be \"text\", \"json_object\" or "
                     "\"json_schema\", got " +
                         Quote(*type),
                     "response_format");
    }
  }
  if (given.size() > 1)
    throw ApiError(400,
                   "'" + given[0] + "' and '" + given[1] +
                       "' both constrain the output: give only one of them",
                   given[1]);
  r.gen.sampling.grammar = std::move(g);
}

void CheckRefusedFields(const json& body) {
  for (const auto& f : kRefused) {
    const json* v = Field(body, f.field);
    if (v && !f.neutral(*v))
      throw ApiError(400,
                     std::string("'") + f.field + "' is not supported by this server (" + f.why +
                         "), got " + Quote(*v),
                     f.field);
  }
}

std::vector<std::string> RefusedFieldNames() {
  std::vector<std::string> out;
  for (const auto& f : kRefused) out.emplace_back(f.field);
  return out;
}

void ParseLogitBias(const json& body, ParsedRequest& r) {
  const json* lb = Field(body, "logit_bias");
  if (!lb) return;
  if (lb->is_object()) {
    for (auto it = lb->begin(); it != lb->end(); ++it) {
      const std::string where = "logit_bias[" + Quote(json(it.key())) + "]";
      AddBias(r, json(it.key()), BiasValue(*it, where), where);
    }
  } else if (lb->is_array()) {
    for (size_t i = 0; i < lb->size(); ++i) {
      const json& e = (*lb)[i];
      const std::string where = "logit_bias[" + std::to_string(i) + "]";
      if (!e.is_array() || e.size() != 2)
        throw ApiError(400, where + " must be a [token, bias] pair, got " + Quote(e), "logit_bias");
      AddBias(r, e[0], BiasValue(e[1], where), where);
    }
  } else {
    throw ApiError(400,
                   "'logit_bias' must be an object mapping token ids to biases, got " + Quote(*lb),
                   "logit_bias");
  }
}

std::vector<std::pair<int32_t, float>> ResolveLogitBias(const ParsedRequest& r,
                                                        const tok::Tokenizer& t) {
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [id, bias] : r.bias_ids) {
    if (id < 0 || id >= t.n_vocab())
      throw ApiError(400,
                     "'logit_bias' names token id " + std::to_string(id) +
                         ", outside the vocabulary (0.." + std::to_string(t.n_vocab() - 1) + ")",
                     "logit_bias");
    out.emplace_back(static_cast<int32_t>(id), bias);
  }
  for (const auto& [text, bias] : r.bias_texts) {
    const auto ids = t.Encode(text, false, true);
    if (ids.empty())
      throw ApiError(400,
                     "'logit_bias' names the text " + Quote(json(text)) + ", which has no tokens",
                     "logit_bias");
    for (int32_t id : ids) out.emplace_back(id, bias);
  }
  return out;
}

}  // namespace es::server
