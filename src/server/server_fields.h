// Request fields beyond the basic sampling knobs: logit_bias and n_probs parsed, and the fields
// this server does not implement refused (issue 18: no field that changes the output is
// silently ignored).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/server_openai.h"
#include "tokenizer/tokenizer.h"

namespace es::server {

// Throws ApiError 400 naming the first field of `body` that asks for something this server
// does not do (grammar, mirostat, ...); absent, null and "off" values pass.
void CheckRefusedFields(const nlohmann::json& body);
// The names CheckRefusedFields refuses, for tests and docs.
std::vector<std::string> RefusedFieldNames();

// Structured output into r.gen.sampling.grammar: `grammar` (GBNF text), `json_schema`
// (llama-server's), `response_format` {"type": "json_object" | "json_schema" | "text"}. Throws
// ApiError 400 naming the field for a malformed or unsupported grammar or schema, or when more
// than one of them is given.
void ParseStructuredOutput(const nlohmann::json& body, ParsedRequest& r);

// logit_bias into r (OpenAI's {"id": bias} object, or llama-server's [[id or text, bias]]
// array and token-text keys); throws ApiError 400 naming "logit_bias" for a malformed entry.
void ParseLogitBias(const nlohmann::json& body, ParsedRequest& r);
// The parsed biases as (token id, bias) pairs: ids checked against the vocabulary, texts
// tokenized (every token of a text gets the bias). Throws ApiError 400 for an unknown id.
std::vector<std::pair<int32_t, float>> ResolveLogitBias(const ParsedRequest& r,
                                                        const tok::Tokenizer& t);

}  // namespace es::server
