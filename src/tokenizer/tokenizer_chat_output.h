// What a chat model's generated text means: reasoning (<think>...</think>), plain content, and
// tool calls in the formats models are trained on. The server turns the result into OpenAI's
// `reasoning_content`, `content` and `tool_calls` (issue 18); the streaming splitter gives the
// same split piece by piece, holding back only text that may still become a marker.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace es::tok {

// Tool-call syntaxes, by the model family that emits them.
enum class ToolCallFormat {
  kNone,     // no tool calls: everything is content
  kHermes,   // Hermes/Qwen: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, repeated
  kLlama3,   // Llama 3.x: [<|python_tag|>]{"name": ..., "parameters": {...}}, several joined by ;
  kMistral,  // Mistral: [TOOL_CALLS][{"name", "arguments", "id"?}, ...] or
             // [TOOL_CALLS]name[ARGS]{...}
};

// The format a chat template implies (by the markers its text uses); kNone when it has none.
ToolCallFormat ToolCallFormatFor(const std::string& chat_template);
const char* ToolCallFormatName(ToolCallFormat f);

struct ToolCall {
  std::string id;  // the model's id when it gave one (Mistral), else "call_<n>"
  std::string name;
  std::string arguments;  // a JSON object's text, as OpenAI sends `function.arguments`
};

struct ChatOutput {
  std::string reasoning;  // text inside <think>...</think> (reasoning_content)
  std::string content;
  std::vector<ToolCall> tool_calls;
};

// Splits a finished generation. `reasoning`: the model may think first; a leading <think> is
// optional (DeepSeek-R1 style templates open it in the prompt), so text before a first </think>
// is reasoning. Text that looks like a tool call but does not parse stays content.
ChatOutput ParseChatOutput(std::string_view text, ToolCallFormat f, bool reasoning);

// The same split while tokens arrive. Feed() returns the content and reasoning that are final
// so far; tool calls come out whole when their closing marker (or the end) is seen.
// `think_open`: the prompt already opened a <think> block (the output starts in reasoning).
class ChatOutputStream {
 public:
  ChatOutputStream(ToolCallFormat f, bool reasoning, bool think_open = false);
  struct Delta {
    std::string reasoning, content;
    std::vector<ToolCall> tool_calls;
    bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
  };
  Delta Feed(std::string_view piece);
  // End of generation: whatever was held back.
  Delta Finish();

 private:
  Delta Drain(bool final);
  ToolCallFormat format_;
  bool in_reasoning_;
  bool reasoning_possible_;
  std::string buf_;  // text not yet given out
  int n_calls_ = 0;
};

}  // namespace es::tok
