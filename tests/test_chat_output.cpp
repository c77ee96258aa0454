// Splitting a chat model's output into reasoning, content and tool calls (Hermes/Qwen, Llama 3.x,
// Mistral formats), whole and while it streams: the streamed pieces add up to the whole split
// for every way of cutting the text, and content is not held back longer than a marker needs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.h"
#include "tokenizer/tokenizer_chat_output.h"

namespace es::test {
namespace {

using tok::ChatOutput;
using tok::ChatOutputStream;
using tok::ParseChatOutput;
using tok::ToolCall;
using tok::ToolCallFormat;

struct Case {
  const char* text;
  ToolCallFormat format;
  bool reasoning;
  const char* want_reasoning;
  const char* want_content;
  std::vector<ToolCall> want_calls;
};

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
       "\"Paris\"}}\n</tool_call>",
       ToolCallFormat::kHermes,
       false,
       "",
       "Let me check.",
       {{"call_0", "get_weather", R"({"city":"Paris"})"}}},
      {"<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": "
       "\"b\", \"arguments\": \"{\\\"x\\\": 1}\"}\n</tool_call>",
       ToolCallFormat::kHermes,
       false,
       "",
       "",
       {{"call_0", "a", "{}"}, {"call_1", "b", "{\"x\": 1}"}}},
      {"<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{\"name\": \"w\", "
       "\"arguments\": "
       "{\"q\": \"<tool_call>\"}}\n</tool_call>",
       ToolCallFormat::kHermes,
       true,
       "The user wants weather.",
       "",
       {{"call_0", "w", R"({"q":"<tool_call>"})"}}},
      {"Use <tool_call> tags like this: <tool_call>{bad json}</tool_call>",
       ToolCallFormat::kHermes,
       false,
       "",
       "Use <tool_call> tags like this: <tool_call>{bad json}</tool_call>",
       {}},
      {"{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}",
       ToolCallFormat::kLlama3,
       false,
       "",
       "",
       {{"call_0", "get_time", R"({"zone":"UTC"})"}}},
      {"<|python_tag|>{\"name\": \"a\", \"parameters\": {\"n\": 1}}; {\"name\": \"b\", "
       "\"parameters\": {}}",
       ToolCallFormat::kLlama3,
       false,
       "",
       "",
       {{"call_0", "a", R"({"n":1})"}, {"call_1", "b", "{}"}}},
      {"The answer is {\"name\": 3}.",
       ToolCallFormat::kLlama3,
       false,
       "",
       "The answer is {\"name\": 3}.",
       {}},
      {"[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}, \"id\": \"abc123DEF\"}]",
       ToolCallFormat::kMistral,
       false,
       "",
       "",
       {{"abc123DEF", "f", R"({"a":1})"}}},
      {"Sure.[TOOL_CALLS]search[ARGS]{\"q\": \"edge llm\"}",
       ToolCallFormat::kMistral,
       false,
       "",
       "Sure.",
       {{"call_0", "search", R"({"q":"edge llm"})"}}},
      {"<think>Short.</think>\n\nParis is the capital.",
       ToolCallFormat::kNone,
       true,
       "Short.",
       "Paris is the capital.",
       {}},
      {"<think>cut off while thin", ToolCallFormat::kHermes, true, "cut off while thin", "", {}},
      {"Plain answer with < and [ and {.",
       ToolCallFormat::kHermes,
       true,
       "",
       "Plain answer with < and [ and {.",
       {}},
  };
  return cases;
}

void ExpectCalls(const std::vector<ToolCall>& got, const std::vector<ToolCall>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].id, want[i].id) << what;
    EXPECT_EQ(got[i].name, want[i].name) << what;
    EXPECT_EQ(got[i].arguments, want[i].arguments) << what;
  }
}

std::string Trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \n");
  const size_t e = s.find_last_not_of(" \n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

TEST(ChatOutput, ParsesEachFormat) {
  for (const Case& c : Cases()) {
    const ChatOutput out = ParseChatOutput(c.text, c.format, c.reasoning);
    EXPECT_EQ(out.reasoning, c.want_reasoning) << c.text;
    EXPECT_EQ(out.content, c.want_content) << c.text;
    ExpectCalls(out.tool_calls, c.want_calls, c.text);
  }
  // DeepSeek-R1's templates open <think> in the prompt: the output only closes it.
  const ChatOutput r1 = ParseChatOutput("weighing it\n</think>\n\n42", ToolCallFormat::kNone, true);
  EXPECT_EQ(r1.reasoning, "weighing it");
  EXPECT_EQ(r1.content, "42");
  // Without reasoning asked for, think tags are content.
  EXPECT_EQ(ParseChatOutput("<think>x</think>y", ToolCallFormat::kNone, false).content,
            "<think>x</think>y");
}

TEST(ChatOutput, StreamAddsUpToTheWholeForEveryCut) {
  for (const Case& c : Cases()) {
    const std::string text = c.text;
    for (size_t step = 1; step <= 9; ++step) {
      const std::string what = text + " (pieces of " + std::to_string(step) + ")";
      ChatOutputStream s(c.format, c.reasoning);
      std::string reasoning, content;
      std::vector<ToolCall> calls;
      auto take = [&](ChatOutputStream::Delta d) {
        reasoning += d.reasoning;
        content += d.content;
        for (auto& tc : d.tool_calls) calls.push_back(tc);
      };
      for (size_t i = 0; i < text.size(); i += step) take(s.Feed(text.substr(i, step)));
      take(s.Finish());
      EXPECT_EQ(Trimmed(reasoning), c.want_reasoning) << what;
      EXPECT_EQ(Trimmed(content), c.want_content) << what;
      ExpectCalls(calls, c.want_calls, what);
    }
  }
  // With the <think> opened by the prompt.
  ChatOutputStream r1(ToolCallFormat::kNone, true, /*think_open=*/true);
  auto d = r1.Feed("weighing it\n</think>\n\n42");
  const auto e = r1.Finish();
  EXPECT_EQ(Trimmed(d.reasoning + e.reasoning), "weighing it");
  EXPECT_EQ(d.content + e.content, "42");
}

// Content goes out as soon as it cannot be the start of a marker.
TEST(ChatOutput, StreamHoldsBackOnlyWhatMayBeAMarker) {
  ChatOutputStream s(ToolCallFormat::kHermes, false);
  EXPECT_EQ(s.Feed("Hello").content, "Hello");
  EXPECT_EQ(s.Feed(" world <tool").content, " world ");
  EXPECT_EQ(s.Feed("s are fun").content, "<tools are fun");
  auto d = s.Feed("<tool_call>{\"name\": \"f\", \"arguments\": {}}");
  EXPECT_TRUE(d.tool_calls.empty());  // not closed yet
  d = s.Feed("</tool_call>");
  ASSERT_EQ(d.tool_calls.size(), 1u);
  EXPECT_EQ(d.tool_calls[0].name, "f");

  ChatOutputStream t(ToolCallFormat::kNone, true);
  EXPECT_EQ(t.Feed("<thi").reasoning, "");
  auto r = t.Feed("nk>Let me see");
  EXPECT_EQ(r.reasoning, "Let me see");
  EXPECT_EQ(t.Feed(" more</th").reasoning, " more");
  r = t.Feed("ink>Done.");
  EXPECT_EQ(r.content, "Done.");

  // Llama 3: a call only at the very start; once text has begun, a brace is text.
  ChatOutputStream l(ToolCallFormat::kLlama3, false);
  EXPECT_EQ(l.Feed("Sure: ").content, "Sure: ");
  EXPECT_EQ(l.Feed("{\"a\": 1}").content, "{\"a\": 1}");
}

// The formats real chat templates imply.
TEST(ChatOutput, FormatOfRealTemplates) {
  const std::vector<std::pair<std::string, ToolCallFormat>> cases = {
      {"Qwen-Qwen2.5-7B-Instruct.jinja", ToolCallFormat::kHermes},
      {"Qwen-Qwen3-0.6B.jinja", ToolCallFormat::kHermes},
      {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", ToolCallFormat::kHermes},
      {"meta-llama-Llama-3.1-8B-Instruct.jinja", ToolCallFormat::kLlama3},
      {"meta-llama-Llama-3.2-3B-Instruct.jinja", ToolCallFormat::kLlama3},
      {"meta-llama-Llama-3.3-70B-Instruct.jinja", ToolCallFormat::kLlama3},
      {"mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolCallFormat::kMistral},
      {"Mistral-Small-3.2-24B-Instruct-2506.jinja", ToolCallFormat::kMistral},
      {"microsoft-Phi-3.5-mini-instruct.jinja", ToolCallFormat::kNone},
      {"google-gemma-2-2b-it.jinja", ToolCallFormat::kNone},
  };
  for (const auto& [file, want] : cases) {
    const std::string t = ReadFile(ModelsDir() + "/../templates/" + file);
    ASSERT_FALSE(t.empty()) << file;
    EXPECT_EQ(tok::ToolCallFormatFor(t), want)
        << file << ": " << tok::ToolCallFormatName(tok::ToolCallFormatFor(t));
  }
}

}  // namespace
}  // namespace es::test
