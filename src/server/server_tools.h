// Tool calling and reasoning on /v1/chat/completions (issue 18 point 3): the request's messages
// (tool turns included), `tools`, `tool_choice`, `parallel_tool_calls` and `reasoning_format`
// checked; what the chat template implies for the reply (tool-call format, <think> blocks); and
// the reply's text split into content, reasoning_content and tool_calls as OpenAI shapes them.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer_chat_output.h"

namespace es::server {

enum class ToolChoice { kNone, kAuto, kRequired, kNamed };
// llama-server's reasoning_format: kAuto and kDeepseek put <think>...</think> into
// reasoning_content; kNone leaves it in the content.
enum class ReasoningFormat { kAuto, kNone, kDeepseek };

struct ToolRequest {
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();  // OpenAI function tools
  ToolChoice choice = ToolChoice::kAuto;
  std::string named;  // the function tool_choice names (kNamed)
  bool parallel = true;
  ReasoningFormat reasoning = ReasoningFormat::kAuto;
  // Tools reach the template (and calls are parsed) unless there are none or the choice is none.
  bool active() const { return !tools.empty() && choice != ToolChoice::kNone; }
};

// tools, tool_choice, parallel_tool_calls and reasoning_format of a chat request; throws ApiError
// 400 naming the field (and the bad part of it) when one is malformed or asks for what this
// server does not do.
ToolRequest ParseToolFields(const nlohmann::json& body);

// /v1/completions: tools cannot be offered there; throws ApiError 400 naming the field when a
// request does (an empty list and tool_choice none/auto change nothing and pass).
void RefuseToolsOutsideChat(const nlohmann::json& body);

// `messages` in the OpenAI shape the templates read: roles system (developer), user, assistant
// (content and/or tool_calls) and tool (tool_call_id, content); content parts joined into text.
// Throws ApiError 400 naming the message and the bad part.
nlohmann::ordered_json ParseChatMessages(const nlohmann::json& body);

// How a chat reply is read, fixed once the prompt is built.
struct ChatPlan {
  tok::ToolCallFormat format = tok::ToolCallFormat::kNone;  // kNone: no tool calls are parsed
  bool reasoning = false;     // <think>...</think> goes to reasoning_content
  bool think_open = false;    // the prompt ends inside an opened <think> block
  bool think_closed = false;  // the prompt ends with </think>: no thinking comes
  bool parallel = true;       // false: only the first call is kept
  bool forced = false;        // a grammar makes the reply calls only (tool_choice required/named)
  bool active() const { return format != tok::ToolCallFormat::kNone || reasoning; }
};

// Checks a rendered prompt against the request's tools: the template must have a call format
// this server parses and must have shown every tool to the model; throws ApiError 400 otherwise.
void CheckToolsRendered(const ToolRequest& t, const std::string& template_text,
                        const std::string& prompt);

// The plan for a request whose prompt rendered to `prompt_tail` (its last few dozen bytes are
// enough) with the template text `template_text`.
ChatPlan PlanChatOutput(const ToolRequest& t, const std::string& template_text,
                        const std::string& prompt_tail);

// The marker texts the reply is read by (tool-call and thinking markers): where a vocabulary has
// them as control tokens, the output must show those tokens' text for the reply to be read.
std::vector<std::string> MarkerTexts(const ChatPlan& p);

// tool_choice required / named: GBNF admitting only calls of the tools (the named one) in the
// plan's format, each with arguments valid under the tool's `parameters` schema, preceded by
// the thinking block a reasoning model may write; "" for none/auto. Throws ApiError 400 naming
// the tool's parameters when a schema uses what the grammar builder cannot constrain.
std::string ToolCallGbnf(const ToolRequest& t, const ChatPlan& p);

// An OpenAI tool call id: Mistral's templates insist on 9 letters or digits; others get
// "call_" and 24 of them. `given` (the model's own id) is kept when it fits the format.
std::string ToolCallId(tok::ToolCallFormat f, const std::string& given);

// One tool call as OpenAI's message.tool_calls[] holds it.
nlohmann::json ToolCallJson(const tok::ToolCall& c);

// A streamed piece of a tool call: the first names it (head), later ones add argument text.
struct CallPiece {
  size_t index = 0;
  bool head = false;
  std::string id, name;   // head
  std::string arguments;  // text to append to the call's arguments
};

struct ReplyDelta {
  std::string reasoning, content;
  std::vector<CallPiece> calls;
};

// The chat reply split while it streams, summed for the non-streamed body; ids assigned. A
// Hermes call forced by the grammar streams its arguments as they are written (the grammar
// guarantees the call completes as begun); other calls come whole once read to their end.
class ChatReply {
 public:
  explicit ChatReply(const ChatPlan& p);
  // The split of the new text (final: the generation ended, nothing is held back any more).
  ReplyDelta Feed(const std::string& text, bool final);
  // The whole reply so far.
  const tok::ChatOutput& whole() const { return whole_; }

 private:
  // The call being written: its head once `{"name": "...", "arguments": {` is read.
  struct Partial {
    bool open = false, closed = false, in_string = false, escaped = false;
    int depth = 0;
    size_t index = 0, args_at = 0;
    std::string id, name, sent;
  };
  void OpenPartial(ReplyDelta& out);
  void StreamArguments(ReplyDelta& out);

  ChatPlan plan_;
  tok::ChatOutputStream stream_;
  tok::ChatOutput whole_;
  bool progressive_;
  std::string raw_;         // progressive: the text so far
  size_t search_from_ = 0;  // progressive: where the next call may begin
  Partial partial_;
};

}  // namespace es::server
