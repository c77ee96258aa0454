// llama-server's own endpoints beside the OpenAI ones: POST /tokenize, POST /detokenize,
// POST /apply-template (GET /props is assembled in server_http.cpp, which knows the server).
// Bodies in, bodies out, no sockets: testable directly. Bad bodies throw ApiError 400.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "server/server_openai.h"
#include "tokenizer/tokenizer.h"

namespace es::server {

// {"content": text, "add_special": false, "parse_special": true, "with_pieces": false} ->
// {"tokens": [id...]} or, with pieces, {"tokens": [{"id", "piece"}...]} where a piece that is
// not valid UTF-8 (part of a character) is given as its bytes.
nlohmann::json Tokenize(const nlohmann::json& body, const tok::Tokenizer& t);
// {"tokens": [id...]} -> {"content": the pieces joined, special tokens as their text}.
nlohmann::json Detokenize(const nlohmann::json& body, const tok::Tokenizer& t);
// {"messages": [...], "chat_template_kwargs": {...}} -> {"prompt": the rendered text}, the text
// /v1/chat/completions would tokenize.
nlohmann::json ApplyTemplate(const nlohmann::json& body, const tok::Tokenizer& t,
                             const std::string& chat_template, int n_ctx);

}  // namespace es::server
