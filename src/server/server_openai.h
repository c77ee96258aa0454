// The OpenAI wire format: request bodies of /v1/chat/completions and /v1/completions parsed and
// checked into a GenRequest, and the JSON / server-sent-event bodies written back. No sockets
// here, so all of it is testable directly.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/server_scheduler.h"
#include "server/server_tools.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_chat.h"

namespace es::server {

// An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "");
  int status;
  std::string param, code, type;
};
nlohmann::json ErrorJson(const ApiError& e);
// JSON text; invalid UTF-8 (a token can be half a character) is replaced, never thrown on.
std::string Dump(const nlohmann::json& j);
// At most 60 bytes of `v` as JSON, for error messages (a bad value may be megabytes).
std::string Quote(const nlohmann::json& v);
// body[key] when present and not null, else nullptr (clients send null for "default").
const nlohmann::json* Field(const nlohmann::json& body, const char* key);
// body[key] as a bool, `def` when absent or null; throws ApiError 400 naming the key otherwise.
bool BoolField(const nlohmann::json& body, const char* key, bool def);

enum class Endpoint { kChat, kCompletion };

// Deepest nesting of arrays/objects a request body may have. Real requests nest a few levels
// (messages -> content parts; a JSON schema a few dozen); deeper bodies are refused before
// parsing, since copying or printing a value recurses once per level.
constexpr int kMaxJsonDepth = 64;
// The body as JSON; throws ApiError 400 if it is not valid JSON or nests deeper than
// kMaxJsonDepth.
nlohmann::json ParseBody(const std::string& body);

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletion;
  GenRequest gen;                   // everything but the prompt tokens
  nlohmann::ordered_json messages;  // chat, in the shape templates read (ParseChatMessages)
  ToolRequest tools;                // chat: tools, tool_choice, reasoning_format
  ChatPlan plan;  // chat: how the reply is split (PlanChatOutput, after the prompt)
  nlohmann::ordered_json template_vars = nlohmann::ordered_json::object();  // chat_template_kwargs
  std::string prompt_text;             // completions, when given as text
  std::vector<int32_t> prompt_tokens;  // completions, when given as token ids
  bool prompt_is_tokens = false;
  std::string model;
  bool stream = false, include_usage = false;
  bool logprobs = false;  // chat: logprobs; completions: logprobs >= 0 (or n_probs > 0)
  int top_logprobs = 0;
  // logit_bias as given: token ids (checked once the vocabulary is at hand) and token texts
  // (llama-server's extension, tokenized then); -inf bans.
  std::vector<std::pair<int64_t, float>> bias_ids;
  std::vector<std::pair<std::string, float>> bias_texts;
};

// Checks every known field's type and range (unknown fields are ignored, as OpenAI's clients
// send extras; fields that would change the output but are not implemented are refused, see
// server_fields.h); throws ApiError 400 naming the field. max_tokens must lie in [1, n_ctx].
// max_tokens may reach max_tokens_cap (0: n_ctx; a server that shifts full contexts allows more).
ParsedRequest ParseRequest(Endpoint ep, const nlohmann::json& body, int n_ctx,
                           int max_tokens_cap = 0);

// The chat prompt's text: the messages (and the tools, when active) through the chat template
// (name or text; "" when the model has none, which throws ApiError 400), as chat completions
// tokenize it. Throws ApiError 400 when tools are asked for and the template cannot show them.
std::string RenderPrompt(const ParsedRequest& r, const tok::Tokenizer& t,
                         const std::string& chat_template);

// Sets r.plan for a chat request whose prompt (r.gen.prompt) is built.
void PlanReply(ParsedRequest& r, const tok::Tokenizer& t, const std::string& chat_template);

// The prompt's tokens: chat messages through the chat template (`chat_template` is a template
// name or text; empty when the model has none), completions text with BOS as the vocabulary
// asks. Throws ApiError 400 when it is empty, holds invalid ids or does not fit the context.
std::vector<int32_t> BuildPrompt(const ParsedRequest& r, const tok::Tokenizer& t,
                                 const std::string& chat_template, int n_ctx);

// Writes one request's response: streamed (SSE chunks) or as one JSON object at the end.
class ResponseWriter {
 public:
  ResponseWriter(const ParsedRequest& r, const tok::Tokenizer& t, std::string model_id);
  // SSE text for an event ("" if nothing to send); the last event ends with "data: [DONE]".
  std::string StreamEvent(const GenEvent& e);
  // Non-streamed: gather events, then the whole body once the last one came.
  void Accumulate(const GenEvent& e);
  std::string FinalBody() const;

 private:
  nlohmann::json Envelope(const char* object) const;
  nlohmann::json LogprobsJson(const std::vector<TokenLogprob>& toks, size_t text_offset) const;
  nlohmann::json Usage(const GenEvent& e) const;
  std::string FinishReason(const GenEvent& e) const;
  // Chat chunks for the split of new text (logprobs ride on the first).
  void ChatDeltas(const ReplyDelta& d, nlohmann::json logprobs, std::string& out) const;

  Endpoint endpoint_;
  bool include_usage_, logprobs_;
  const tok::Tokenizer& tok_;
  std::string model_id_, id_;
  int64_t created_;
  bool sent_role_ = false;
  ChatReply reply_;        // chat: content / reasoning / tool calls
  size_t text_bytes_ = 0;  // completions text_offset
  // Non-streamed.
  std::string text_;
  std::vector<TokenLogprob> tokens_;
  GenEvent last_;
};

}  // namespace es::server
