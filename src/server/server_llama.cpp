#include "server/server_llama.h"

#include <vector>

namespace es::server {
namespace {

using json = nlohmann::json;

void NeedObject(const json& body) {
  if (!body.is_object())
    throw ApiError(400, "the request body must be a JSON object, got " + Quote(body));
}

bool ValidUtf8(const std::string& s) {
  try {
    (void)json(s).dump();
    return true;
  } catch (const json::type_error&) {
    return false;
  }
}

}  // namespace

json Tokenize(const json& body, const tok::Tokenizer& t) {
  NeedObject(body);
  const json* c = Field(body, "content");
  if (!c || !c->is_string())
    throw ApiError(400, "'content' must be a string" + (c ? ", got " + Quote(*c) : ""), "content");
  // llama-server's defaults: no BOS, special-token texts become those tokens.
  const auto ids = t.Encode(c->get_ref<const std::string&>(), BoolField(body, "add_special", false),
                            BoolField(body, "parse_special", true));
  const bool pieces = BoolField(body, "with_pieces", false);
  json tokens = json::array();
  for (int32_t id : ids) {
    if (!pieces) {
      tokens.push_back(id);
      continue;
    }
    const std::string p = t.TokenToPiece(id, true);
    json bytes = json::array();
    for (unsigned char ch : p) bytes.push_back(static_cast<int>(ch));
    tokens.push_back({{"id", id}, {"piece", ValidUtf8(p) ? json(p) : bytes}});
  }
  return json{{"tokens", tokens}};
}

json Detokenize(const json& body, const tok::Tokenizer& t) {
  NeedObject(body);
  const json* a = Field(body, "tokens");
  if (!a || !a->is_array())
    throw ApiError(400, "'tokens' must be an array of token ids" + (a ? ", got " + Quote(*a) : ""),
                   "tokens");
  std::string text;
  for (size_t i = 0; i < a->size(); ++i) {
    const json& x = (*a)[i];
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= t.n_vocab())
      throw ApiError(400,
                     "tokens[" + std::to_string(i) + "] must be a token id from 0 to " +
                         std::to_string(t.n_vocab() - 1) + ", got " + Quote(x),
                     "tokens");
    // As llama-server: every piece as it is, special tokens as their text.
    text += t.TokenToPiece(static_cast<int32_t>(x.get<int64_t>()), true);
  }
  return json{{"content", text}};
}

json ApplyTemplate(const json& body, const tok::Tokenizer& t, const std::string& chat_template,
                   int n_ctx) {
  const ParsedRequest r = ParseRequest(Endpoint::kChat, body, n_ctx);
  return json{{"prompt", RenderPrompt(r, t, chat_template)}};
}

}  // namespace es::server
