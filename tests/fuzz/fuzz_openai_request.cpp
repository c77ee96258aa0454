// OpenAI request bodies: the first byte picks the endpoint and the chat template, the rest is the
// JSON body. A bad body must give ApiError (or es::Error / a JSON type error, which the server
// also answers with 400); anything else escaping, or a sanitizer report, is a bug.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "server/server_openai.h"
#include "tokenizer/tokenizer_chat.h"

namespace {

const es::tok::Tokenizer& Tok() {
  static auto t = es::fuzz::LoadTokenizer(es::fuzz::ModelPath("stories260K.gguf"));
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Tok();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  using es::server::Endpoint;
  const Endpoint ep = (data[0] & 1) ? Endpoint::kChat : Endpoint::kCompletion;
  const auto& names = es::tok::ChatTemplateNames();
  const size_t pick = (data[0] >> 1) % (names.size() + 1);
  const std::string tmpl = pick < names.size() ? names[pick] : "";  // "": a model without one
  const int n_ctx = (data[0] & 0x80) ? 16 : 128;

  // The server's path (server_http.cpp): ParseBody (JSON with its depth limit), then
  // ParseRequest and BuildPrompt.
  try {
    const nlohmann::json body =
        es::server::ParseBody(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
    const es::server::ParsedRequest r = es::server::ParseRequest(ep, body, n_ctx);
    const std::vector<int32_t> prompt = es::server::BuildPrompt(r, Tok(), tmpl, n_ctx);
    if (prompt.empty() || static_cast<int>(prompt.size()) > n_ctx)
      es::fuzz::Fail("BuildPrompt gave " + std::to_string(prompt.size()) + " tokens");
    for (int32_t id : prompt)
      if (id < 0 || id >= Tok().n_vocab()) es::fuzz::Fail("prompt id " + std::to_string(id));
    es::server::ResponseWriter w(r, Tok(), "fuzz");
  } catch (const es::server::ApiError&) {
  } catch (const es::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
