// Tool calling and reasoning on the chat endpoint, without a server: request validation
// (server_tools), prompts through real templates (../shared/templates), and replies shaped into
// content / reasoning_content / tool_calls, whole and streamed, from scripted generations.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "runtime/runtime_grammar.h"
#include "server/server_openai.h"
#include "server/server_tools.h"
#include "test_util.h"

namespace {

using json = nlohmann::json;
using es::server::ApiError;
using es::server::Endpoint;
using es::server::ParsedRequest;

const es::tok::Tokenizer& Tok() {
  static auto t = [] {
    auto f = es::gguf::File::Open(es::test::ModelPath("stories260K.gguf"));
    return es::tok::Tokenizer::FromGGUF(*f);
  }();
  return *t;
}

std::string Template(const std::string& name) {
  const std::string path = es::test::ModelsDir() + "/../templates/" + name + ".jinja";
  if (!std::filesystem::exists(path)) ADD_FAILURE() << "chat template '" << path << "' is missing";
  return es::test::ReadFile(path);
}

const json kWeather = json::parse(R"({"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}})");

json Body(json extra = json::object()) {
  json b = {{"messages", json::array({{{"role", "user"}, {"content", "Weather in Paris?"}}})},
            {"tools", json::array({kWeather})}};
  b.update(extra);
  return b;
}

// The 400 a body gets, and the param it names.
std::string RefusedParam(const json& body, Endpoint ep = Endpoint::kChat) {
  try {
    es::server::ParseRequest(ep, body, 512);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << e.what();
    return e.param;
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return "";
}

ParsedRequest Prepared(const json& body, const std::string& tmpl) {
  ParsedRequest r = es::server::ParseRequest(Endpoint::kChat, body, 512);
  r.gen.prompt = es::server::BuildPrompt(r, Tok(), tmpl, 4096);
  es::server::PlanReply(r, Tok(), tmpl);
  return r;
}

es::server::GenEvent Ev(const std::string& text, bool done = false) {
  es::server::GenEvent e;
  e.text = text;
  e.done = done;
  if (done) e.finish_reason = "stop";
  return e;
}

// The whole body for a generation cut into `pieces`.
json Whole(const ParsedRequest& r, const std::vector<std::string>& pieces) {
  es::server::ResponseWriter w(r, Tok(), "m");
  for (size_t i = 0; i < pieces.size(); ++i) w.Accumulate(Ev(pieces[i], i + 1 == pieces.size()));
  return json::parse(w.FinalBody());
}

// The stream's chunks assembled as OpenAI's client does (ChatCompletionStream): content and
// reasoning appended, tool calls by index, the first of a call bringing id, type and name.
struct Streamed {
  json message = json::object();
  std::string finish;
  std::vector<json> chunks;
};
Streamed Stream(const ParsedRequest& r, const std::vector<std::string>& pieces) {
  es::server::ResponseWriter w(r, Tok(), "m");
  std::string sse;
  for (size_t i = 0; i < pieces.size(); ++i)
    sse += w.StreamEvent(Ev(pieces[i], i + 1 == pieces.size()));
  Streamed s;
  size_t at = 0;
  while ((at = sse.find("data: ", at)) != std::string::npos) {
    const size_t end = sse.find("\n\n", at);
    const std::string data = sse.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") break;
    const json c = json::parse(data);
    s.chunks.push_back(c);
    for (const auto& ch : c["choices"]) {
      if (!ch["finish_reason"].is_null()) s.finish = ch["finish_reason"];
      const json& d = ch["delta"];
      for (const char* k : {"content", "reasoning_content"})
        if (d.contains(k) && d[k].is_string())
          s.message[k] = s.message.value(k, std::string()) + d[k].get<std::string>();
      if (!d.contains("tool_calls")) continue;
      for (const auto& tc : d["tool_calls"]) {
        json& calls = s.message["tool_calls"];
        const size_t i = tc["index"];
        while (calls.size() <= i) calls.push_back(json::object());
        json& call = calls[i];
        if (tc.contains("id")) {
          // A call's first chunk: OpenAI's shape, arguments still empty.
          EXPECT_TRUE(tc.contains("type") && tc["function"].contains("name")) << tc;
          call = {{"id", tc["id"]},
                  {"type", tc["type"]},
                  {"function", {{"name", tc["function"]["name"]}, {"arguments", ""}}}};
        }
        EXPECT_TRUE(call.contains("id")) << "arguments before the call's first chunk: " << tc;
        call["function"]["arguments"] = call["function"]["arguments"].get<std::string>() +
                                        tc["function"].value("arguments", std::string());
      }
    }
  }
  return s;
}

TEST(ServerToolFields, MalformedToolsAreRefusedNamingThePart) {
  EXPECT_EQ(RefusedParam(Body({{"tools", {{"type", "function"}}}})), "tools");
  EXPECT_EQ(RefusedParam(Body({{"tools", "get_weather"}})), "tools");
  EXPECT_EQ(RefusedParam(Body({{"tools", json::array({{{"type", "custom"}, {"custom", {}}}})}})),
            "tools[0].type");
  EXPECT_EQ(RefusedParam(Body({{"tools", json::array({{{"type", "function"}}})}})),
            "tools[0].function");
  EXPECT_EQ(
      RefusedParam(Body(
          {{"tools", json::array({{{"type", "function"}, {"function", {{"name", "a b"}}}}})}})),
      "tools[0].function.name");
  EXPECT_EQ(
      RefusedParam(Body(
          {{"tools", json::array({{{"type", "function"},
                                   {"function", {{"name", "f"}, {"parameters", "object"}}}}})}})),
      "tools[0].function.parameters");
  EXPECT_EQ(RefusedParam(Body({{"tools", json::array({kWeather, kWeather})}})),
            "tools[1].function.name");
  EXPECT_EQ(RefusedParam(Body({{"tool_choice", "sometimes"}})), "tool_choice");
  EXPECT_EQ(RefusedParam(
                Body({{"tool_choice", {{"type", "function"}, {"function", {{"name", "other"}}}}}})),
            "tool_choice");
  EXPECT_EQ(RefusedParam(Body({{"tools", json::array()}, {"tool_choice", "required"}})),
            "tool_choice");
  EXPECT_EQ(RefusedParam(Body({{"parallel_tool_calls", "yes"}})), "parallel_tool_calls");
  EXPECT_EQ(RefusedParam(Body({{"reasoning_format", "deepseek-legacy"}})), "reasoning_format");
  // Completions have no tool calls: offering tools there is refused, not ignored.
  EXPECT_EQ(
      RefusedParam({{"prompt", "x"}, {"tools", json::array({kWeather})}}, Endpoint::kCompletion),
      "tools");
  EXPECT_EQ(RefusedParam({{"prompt", "x"}, {"tool_choice", "required"}}, Endpoint::kCompletion),
            "tool_choice");

  const auto r = es::server::ParseRequest(
      Endpoint::kChat,
      Body({{"tool_choice", "auto"}, {"parallel_tool_calls", false}, {"reasoning_format", "none"}}),
      512);
  EXPECT_EQ(r.tools.choice, es::server::ToolChoice::kAuto);
  EXPECT_FALSE(r.tools.parallel);
  EXPECT_EQ(r.tools.reasoning, es::server::ReasoningFormat::kNone);
  EXPECT_EQ(r.tools.tools.size(), 1u);
}

TEST(ServerToolFields, ToolTurnsInMessages) {
  const json call = {{"id", "call_1"},
                     {"type", "function"},
                     {"function", {{"name", "get_weather"}, {"arguments", R"({"city":"Paris"})"}}}};
  json msgs = json::array({{{"role", "user"}, {"content", "Weather?"}},
                           {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
                           {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "sunny"}}});
  const auto r = es::server::ParseRequest(Endpoint::kChat, Body({{"messages", msgs}}), 512);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1]["content"], "");
  EXPECT_EQ(r.messages[1]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(r.messages[2]["tool_call_id"], "call_1");
  // The template sees the earlier call and its result.
  const std::string prompt =
      es::server::RenderPrompt(r, Tok(), Template("Qwen-Qwen2.5-7B-Instruct"));
  EXPECT_NE(prompt.find("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                        "\"Paris\"}}\n</tool_call>"),
            std::string::npos)
      << prompt;
  EXPECT_NE(prompt.find("<tool_response>\nsunny\n</tool_response>"), std::string::npos) << prompt;

  auto bad = msgs;
  bad[2].erase("tool_call_id");
  EXPECT_EQ(RefusedParam(Body({{"messages", bad}})), "messages[2].tool_call_id");
  bad = msgs;
  bad[1]["tool_calls"][0]["function"].erase("name");
  EXPECT_EQ(RefusedParam(Body({{"messages", bad}})), "messages[1].tool_calls[0].function.name");
  bad = msgs;
  bad[0]["tool_calls"] = json::array({call});
  EXPECT_EQ(RefusedParam(Body({{"messages", bad}})), "messages[0].tool_calls");
  bad = msgs;
  bad[2]["role"] = "function";
  EXPECT_EQ(RefusedParam(Body({{"messages", bad}})), "messages[2].role");
}

TEST(ServerToolPrompt, ToolsReachTheTemplateOrAre400) {
  // Qwen2.5 lists the tools in its system turn and asks for <tool_call> replies.
  const ParsedRequest r = Prepared(Body(), Template("Qwen-Qwen2.5-7B-Instruct"));
  const std::string prompt =
      es::server::RenderPrompt(r, Tok(), Template("Qwen-Qwen2.5-7B-Instruct"));
  EXPECT_NE(prompt.find("\"name\": \"get_weather\""), std::string::npos) << prompt;
  EXPECT_EQ(r.plan.format, es::tok::ToolCallFormat::kHermes);
  EXPECT_FALSE(r.plan.reasoning);
  // tool_choice none: the tools are not shown and nothing is parsed as a call.
  const ParsedRequest none =
      Prepared(Body({{"tool_choice", "none"}}), Template("Qwen-Qwen2.5-7B-Instruct"));
  EXPECT_EQ(es::server::RenderPrompt(none, Tok(), Template("Qwen-Qwen2.5-7B-Instruct"))
                .find("get_weather"),
            std::string::npos);
  EXPECT_EQ(none.plan.format, es::tok::ToolCallFormat::kNone);
  // Llama 3.1 and Mistral Nemo: their own formats.
  EXPECT_EQ(Prepared(Body(), Template("meta-llama-Llama-3.1-8B-Instruct")).plan.format,
            es::tok::ToolCallFormat::kLlama3);
  EXPECT_EQ(Prepared(Body(), Template("mistralai-Mistral-Nemo-Instruct-2407")).plan.format,
            es::tok::ToolCallFormat::kMistral);
  // A template without tool syntax cannot take tools: 400, not silently dropped.
  try {
    Prepared(Body(), "chatml");
    ADD_FAILURE() << "chatml took tools";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tools");
    EXPECT_NE(std::string(e.what()).find("tool-call syntax"), std::string::npos) << e.what();
  }
  // ...but the same request without tools (or with tool_choice none) is fine.
  EXPECT_NO_THROW(Prepared(Body({{"tool_choice", "none"}}), "chatml"));
}

TEST(ServerToolReply, HermesCallsWholeAndStreamed) {
  const ParsedRequest r = Prepared(Body(), Template("Qwen-Qwen2.5-7B-Instruct"));
  const std::vector<std::string> pieces = {
      "Let me check.",
      "\n<tool",
      "_call>\n{\"name\": \"get_we",
      "ather\", \"arguments\": {\"city\"",
      ": \"Paris\"}}\n</tool_call>",
      "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
      "{\"city\": \"Oslo\"}}\n</tool_call>",
      ""};
  const json whole = Whole(r, pieces);
  const json& m = whole["choices"][0]["message"];
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(m["content"], "Let me check.");
  ASSERT_EQ(m["tool_calls"].size(), 2u) << whole;
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(json::parse(m["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            json({{"city", "Paris"}}));
  EXPECT_EQ(json::parse(m["tool_calls"][1]["function"]["arguments"].get<std::string>()),
            json({{"city", "Oslo"}}));
  const std::regex id("call_[A-Za-z0-9]{24}");
  EXPECT_TRUE(std::regex_match(m["tool_calls"][0]["id"].get<std::string>(), id)) << m;
  EXPECT_NE(m["tool_calls"][0]["id"], m["tool_calls"][1]["id"]);

  const Streamed s = Stream(r, pieces);
  EXPECT_EQ(s.finish, "tool_calls");
  EXPECT_EQ(s.message["content"], "Let me check.\n");  // the layout is streamed as it comes
  ASSERT_EQ(s.message["tool_calls"].size(), 2u) << s.message;
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(s.message["tool_calls"][i]["function"], m["tool_calls"][i]["function"]);
    EXPECT_TRUE(std::regex_match(s.message["tool_calls"][i]["id"].get<std::string>(), id));
  }
  // No chunk leaks marker text into the content.
  for (const auto& c : s.chunks) EXPECT_EQ(c.dump().find("<tool"), std::string::npos) << c;

  // parallel_tool_calls false: the first call only.
  const ParsedRequest one =
      Prepared(Body({{"parallel_tool_calls", false}}), Template("Qwen-Qwen2.5-7B-Instruct"));
  EXPECT_EQ(Whole(one, pieces)["choices"][0]["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(Stream(one, pieces).message["tool_calls"].size(), 1u);
}

TEST(ServerToolReply, PlainTextAndBrokenCallsStayContent) {
  const ParsedRequest r = Prepared(Body(), Template("Qwen-Qwen2.5-7B-Instruct"));
  const std::vector<std::string> plain = {"It is ", "sunny <in> Paris.", ""};
  json w = Whole(r, plain);
  EXPECT_EQ(w["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(w["choices"][0]["message"]["content"], "It is sunny <in> Paris.");
  EXPECT_FALSE(w["choices"][0]["message"].contains("tool_calls"));
  EXPECT_EQ(Stream(r, plain).message["content"], "It is sunny <in> Paris.");
  const std::vector<std::string> broken = {"<tool_call>\n{\"name\": ", "oops</tool_call>", ""};
  w = Whole(r, broken);
  EXPECT_EQ(w["choices"][0]["message"]["content"], "<tool_call>\n{\"name\": oops</tool_call>");
  EXPECT_EQ(w["choices"][0]["finish_reason"], "stop");
}

TEST(ServerToolReply, Llama3AndMistralCalls) {
  const ParsedRequest l = Prepared(Body(), Template("meta-llama-Llama-3.1-8B-Instruct"));
  const std::vector<std::string> lp = {"{\"name\": \"get_weather\", ",
                                       "\"parameters\": {\"city\": \"Rome\"}}", ""};
  const json lw = Whole(l, lp);
  EXPECT_EQ(lw["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(lw["choices"][0]["message"]["content"].is_null()) << lw;
  EXPECT_EQ(lw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            R"({"city":"Rome"})");
  EXPECT_EQ(Stream(l, lp).message["tool_calls"][0]["function"]["arguments"], R"({"city":"Rome"})");

  const ParsedRequest m = Prepared(Body(), Template("mistralai-Mistral-Nemo-Instruct-2407"));
  const std::vector<std::string> mp = {
      "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Bern\"}}]", ""};
  const json mw = Whole(m, mp);
  const json& call = mw["choices"][0]["message"]["tool_calls"][0];
  EXPECT_EQ(call["function"]["arguments"], R"({"city":"Bern"})");
  // Mistral's templates accept only 9-letter ids.
  EXPECT_TRUE(std::regex_match(call["id"].get<std::string>(), std::regex("[A-Za-z0-9]{9}")))
      << call;
}

TEST(ServerToolReply, ThinkGoesToReasoningContent) {
  const std::string qwen3 = Template("Qwen-Qwen3-0.6B");
  const ParsedRequest r = Prepared(Body(), qwen3);
  EXPECT_TRUE(r.plan.reasoning);
  EXPECT_FALSE(r.plan.think_open);
  const std::vector<std::string> pieces = {
      "<think>\nThe user wants", " weather.\n</th",
      "ink>\n\n<tool_call>\n{\"name\": "
      "\"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
      ""};
  const json w = Whole(r, pieces);
  const json& m = w["choices"][0]["message"];
  EXPECT_EQ(m["reasoning_content"], "The user wants weather.");
  EXPECT_TRUE(m["content"].is_null()) << w;
  EXPECT_EQ(m["tool_calls"].size(), 1u);
  const Streamed s = Stream(r, pieces);
  EXPECT_EQ(s.message["reasoning_content"], "The user wants weather.\n");
  EXPECT_FALSE(s.message.contains("content") && s.message["content"] != "") << s.message;
  EXPECT_EQ(s.message["tool_calls"][0]["function"], m["tool_calls"][0]["function"]);
  // reasoning_format none: the thoughts stay in the content.
  const ParsedRequest raw =
      Prepared(Body({{"reasoning_format", "none"}, {"tools", json::array()}}), qwen3);
  EXPECT_FALSE(raw.plan.active());
  const std::vector<std::string> text = {"<think>hm</think>Hi", ""};
  EXPECT_EQ(Whole(raw, text)["choices"][0]["message"]["content"], "<think>hm</think>Hi");
  // A prompt that opens <think> (QwQ with enable_thinking): the reply starts inside it.
  const ParsedRequest open = Prepared(Body({{"chat_template_kwargs", {{"enable_thinking", true}}}}),
                                      Template("Qwen-QwQ-32B"));
  EXPECT_TRUE(open.plan.think_open);
  const std::vector<std::string> opened = {"hid", "den</think>shown", ""};
  const json ow = Whole(open, opened);
  EXPECT_EQ(ow["choices"][0]["message"]["reasoning_content"], "hidden");
  EXPECT_EQ(ow["choices"][0]["message"]["content"], "shown");
  EXPECT_EQ(Stream(open, opened).message["reasoning_content"], "hidden");
  EXPECT_FALSE(Prepared(Body(), Template("Qwen-QwQ-32B")).plan.think_open);
}

// Whether the grammar a forced choice gets accepts `text` whole.
bool Accepts(const ParsedRequest& r, const std::string& text) {
  if (!r.gen.sampling.grammar) {
    ADD_FAILURE() << "no grammar";
    return false;
  }
  es::runtime::GrammarMatcher m(r.gen.sampling.grammar);
  return m.Accept(text) && m.CanEnd();
}

const json kTime = json::parse(R"({"type": "function", "function": {"name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                   "required": ["zone"], "additionalProperties": false}}})");

TEST(ServerToolGrammar, RequiredAndNamedAdmitOnlyValidCalls) {
  const std::string qwen = Template("Qwen-Qwen2.5-7B-Instruct");
  const json both = json::array({kWeather, kTime});
  const ParsedRequest req = Prepared(Body({{"tools", both}, {"tool_choice", "required"}}), qwen);
  const std::string paris =
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>";
  const std::string utc =
      "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>";
  EXPECT_TRUE(Accepts(req, paris));
  EXPECT_TRUE(Accepts(req, utc));
  EXPECT_TRUE(Accepts(req, paris + "\n" + utc));  // parallel calls
  EXPECT_FALSE(Accepts(req, "Sure! " + paris));   // no text instead of the call
  EXPECT_FALSE(Accepts(req, ""));
  EXPECT_FALSE(Accepts(req,
                       "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": "
                       "\"PST\"}}\n</tool_call>"));  // not in the enum
  EXPECT_FALSE(Accepts(req,
                       "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n"
                       "</tool_call>"));  // city is required
  EXPECT_FALSE(Accepts(req, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>"));
  // Named: that tool only. Not parallel: one call.
  const ParsedRequest named =
      Prepared(Body({{"tools", both},
                     {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}},
                     {"parallel_tool_calls", false}}),
               qwen);
  EXPECT_TRUE(Accepts(named, utc));
  EXPECT_FALSE(Accepts(named, paris));
  EXPECT_FALSE(Accepts(named, utc + "\n" + utc));
  // What the grammar lets through parses back into the call.
  const json w = Whole(req, {"\n", paris, ""});
  EXPECT_EQ(w["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(w["choices"][0]["message"]["content"].is_null()) << w;  // blank is no content
  // Forced calls keep the arguments as written (they were streamed so).
  EXPECT_EQ(w["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            R"({"city": "Paris"})");

  // Llama 3 and Mistral write their own syntax.
  const ParsedRequest l =
      Prepared(Body({{"tool_choice", "required"}}), Template("meta-llama-Llama-3.1-8B-Instruct"));
  EXPECT_TRUE(Accepts(l, R"({"name": "get_weather", "parameters": {"city": "Rome"}})"));
  EXPECT_FALSE(Accepts(l, R"({"name": "get_weather", "arguments": {"city": "Rome"}})"));
  const ParsedRequest m = Prepared(Body({{"tool_choice", "required"}}),
                                   Template("mistralai-Mistral-Nemo-Instruct-2407"));
  EXPECT_TRUE(
      Accepts(m, R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Bern"}}])"));

  // A thinking model may think first (Qwen3), unless the prompt closed the block already.
  const std::string qwen3 = Template("Qwen-Qwen3-0.6B");
  const ParsedRequest think = Prepared(Body({{"tool_choice", "required"}}), qwen3);
  EXPECT_TRUE(Accepts(think, "<think>\nrain?\n</think>\n\n" + paris));
  EXPECT_TRUE(Accepts(think, paris));
  const ParsedRequest no_think = Prepared(
      Body({{"tool_choice", "required"}, {"chat_template_kwargs", {{"enable_thinking", false}}}}),
      qwen3);
  EXPECT_TRUE(no_think.plan.think_closed);
  EXPECT_FALSE(Accepts(no_think, "<think>\nrain?\n</think>\n\n" + paris));
  EXPECT_TRUE(Accepts(no_think, paris));

  // auto and none force nothing.
  EXPECT_FALSE(Prepared(Body(), qwen).gen.sampling.grammar);
  // A grammar of the request's own cannot be combined with a forced call.
  try {
    Prepared(Body({{"tool_choice", "required"}, {"grammar", "root ::= \"x\""}}), qwen);
    ADD_FAILURE() << "grammar and tool_choice required together were accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tool_choice");
  }
  // Parameters that are not an object cannot be arguments.
  json scalar = kWeather;
  scalar["function"]["parameters"] = {{"type", "string"}};
  try {
    Prepared(Body({{"tools", json::array({scalar})}, {"tool_choice", "required"}}), qwen);
    ADD_FAILURE() << "string parameters were accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "tools[0].function.parameters");
  }
  // No type given: an object all the same.
  json untyped = kWeather;
  untyped["function"]["parameters"] = json::object();
  const ParsedRequest any =
      Prepared(Body({{"tools", json::array({untyped})}, {"tool_choice", "required"}}), qwen);
  EXPECT_TRUE(Accepts(any,
                      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"x\": 1}}\n"
                      "</tool_call>"));
  EXPECT_FALSE(Accepts(any,
                       "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": 1}\n"
                       "</tool_call>"));
  // A parameters schema the grammar builder cannot constrain: 400 naming the tool.
  json odd = kWeather;
  odd["function"]["parameters"]["properties"]["city"]["not"] = {{"const", "x"}};
  try {
    Prepared(Body({{"tools", json::array({odd})}, {"tool_choice", "required"}}), qwen);
    ADD_FAILURE() << "a schema with not was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tools[0].function.parameters");
  }
}

// Mistral vocabularies have [TOOL_CALLS] as a control token, which output text leaves out: the
// request asks the scheduler to show it, or the call could not be read.
TEST(ServerToolPrompt, ControlMarkersAreShown) {
  es::gguf::Writer w;
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "gpt-2");
  const std::vector<std::string> tokens = {"a", "b", "ab", "[TOOL_CALLS]", "[ARGS]", "<think>"};
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  w.SetStringArray("tokenizer.ggml.merges", {"a b"});
  const std::vector<int32_t> types = {1, 1, 1, 3, 3, 4};  // normal, control, user-defined
  w.SetArray("tokenizer.ggml.token_type", std::span<const int32_t>(types));
  const std::string path =
      (std::filesystem::temp_directory_path() / "es_tools_markers.gguf").string();
  w.Write(path);
  auto t = es::tok::Tokenizer::FromGGUF(*es::gguf::File::Open(path));
  std::filesystem::remove(path);

  ParsedRequest r = es::server::ParseRequest(Endpoint::kChat, Body(), 512);
  const std::string tmpl = Template("mistralai-Mistral-Nemo-Instruct-2407");
  r.gen.prompt = {0, 1};
  es::server::PlanReply(r, *t, tmpl);
  EXPECT_EQ(r.plan.format, es::tok::ToolCallFormat::kMistral);
  // The two control markers; <think> is user-defined (printed anyway) and not Mistral's.
  EXPECT_EQ(r.gen.shown_tokens, std::vector<int32_t>({3, 4}));
  // Without tools nothing needs showing.
  ParsedRequest plain =
      es::server::ParseRequest(Endpoint::kChat, Body({{"tools", json::array()}}), 512);
  plain.gen.prompt = {0, 1};
  es::server::PlanReply(plain, *t, tmpl);
  EXPECT_TRUE(plain.gen.shown_tokens.empty());
}

// Under tool_choice required a Hermes call streams its arguments while they are written: the
// head as soon as the name is read, then the arguments piece by piece.
TEST(ServerToolReply, ForcedCallsStreamArgumentsAsWritten) {
  const ParsedRequest r =
      Prepared(Body({{"tool_choice", "required"}}), Template("Qwen-Qwen2.5-7B-Instruct"));
  ASSERT_TRUE(r.plan.forced);
  const std::vector<std::string> pieces = {"<tool_call>\n{\"name\": \"get_we",
                                           "ather\", \"arguments\": {\"ci",
                                           "ty\": \"Par",
                                           "is {x}\"}",
                                           "}\n</tool_call>",
                                           ""};
  const Streamed s = Stream(r, pieces);
  std::vector<std::string> args;
  bool head_first = false;
  for (const auto& c : s.chunks)
    for (const auto& tc : c["choices"][0]["delta"].value("tool_calls", json::array())) {
      if (tc.contains("id")) head_first = args.empty();
      if (!tc.contains("id")) args.push_back(tc["function"]["arguments"]);
    }
  EXPECT_TRUE(head_first);
  // The arguments came in the pieces the model wrote them, not in one piece at the end.
  EXPECT_EQ(args, std::vector<std::string>({"{\"ci", "ty\": \"Par", "is {x}\"}"})) << s.message;
  const json whole = Whole(r, pieces);
  const json& call = whole["choices"][0]["message"]["tool_calls"][0];
  EXPECT_EQ(call["function"]["arguments"], "{\"city\": \"Paris {x}\"}");
  EXPECT_EQ(s.message["tool_calls"][0]["function"], call["function"]);
  EXPECT_EQ(s.finish, "tool_calls");
  // Cut off inside the arguments: the call begun stays a call, in both forms.
  const std::vector<std::string> cut = {"<tool_call>\n{\"name\": \"get_weather\", ",
                                        "\"arguments\": {\"city\": \"Pa", ""};
  const json cw = Whole(r, cut);
  EXPECT_TRUE(cw["choices"][0]["message"]["content"].is_null()) << cw;
  EXPECT_EQ(cw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\": \"Pa");
  EXPECT_EQ(Stream(r, cut).message["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Pa");
}

}  // namespace
