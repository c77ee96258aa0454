// The 70 real chat templates in ../shared/templates, rendered for seven conversations by our Jinja
// interpreter and by Python's jinja2 (tests/chat_template_ref.py, run now with python3): the
// outputs must be byte-identical wherever jinja2 renders, and ours must raise wherever it raises.
// JINJA_CORPUS_ONLY=<substring> narrows the templates (for debugging one); JINJA_CORPUS_VERBOSE=1
// prints both renderers' errors where both raise.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "edgeshard/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer_chat.h"
#include "tokenizer/tokenizer_jinja.h"

namespace {

using json = nlohmann::ordered_json;

std::string TemplatesDir() {
  const std::string dir = es::test::ModelsDir() + "/../templates";
  if (!std::filesystem::is_directory(dir))
    ADD_FAILURE() << "chat templates directory '" << dir << "' is missing";
  return dir;
}

// 2026-01-15 12:00:00 UTC, the time strftime_now formats in both renderers.
constexpr std::time_t kNow = 1768478400;

json Cases() {
  const json user = {{"role", "user"}, {"content", "Hello, who are you?"}};
  const json system = {{"role", "system"}, {"content", "You are a helpful assistant."}};
  const json tools = json::parse(R"([{"type": "function", "function": {
      "name": "get_weather", "description": "Get the current weather in a city",
      "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
      "required": ["location"]}}}])");
  const json call = json::parse(R"({"role": "assistant", "content": "", "tool_calls": [
      {"id": "call12345", "type": "function", "function": {"name": "get_weather",
       "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}"}}]})");
  const json result = {{"role", "tool"},
                       {"tool_call_id", "call12345"},
                       {"name", "get_weather"},
                       {"content", "{\"temperature\": 18, \"sky\": \"clear\"}"}};
  const auto conv = [](json msgs, bool gen, json tools_or_null = nullptr,
                       json extra = json::object()) {
    return json{{"messages", std::move(msgs)},
                {"tools", std::move(tools_or_null)},
                {"add_generation_prompt", gen},
                {"extra", std::move(extra)}};
  };
  return json::array({
      conv({user}, true),
      conv({system, {{"role", "user"}, {"content", "What is 2+2?"}}}, true),
      conv({system,
            {{"role", "user"}, {"content", "Hi"}},
            {{"role", "assistant"}, {"content", "Hello! How can I help?"}},
            {{"role", "user"}, {"content", "Tell me a joke about café owners."}}},
           true),
      conv({{{"role", "user"}, {"content", "Hi"}},
            {{"role", "assistant"}, {"content", "Hello there."}}},
           false),
      conv({system, {{"role", "user"}, {"content", "What's the weather in Paris?"}}, call, result},
           true, tools),
      conv({{{"role", "user"},
             {"content", json::array({{{"type", "text"}, {"text", "Describe this."}}})}}},
           true, nullptr, {{"enable_thinking", false}}),
      conv({user}, true, tools, {{"enable_thinking", true}}),
  });
}

std::string RunReference(const json& spec) {
  char path[] = "/tmp/es_chat_ref_XXXXXX";
  const int fd = mkstemp(path);
  const std::string text = spec.dump();
  EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const std::string cmd =
      std::string("python3 ") + EDGESHARD_SOURCE_DIR + "/tests/chat_template_ref.py " + path;
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[65536];
  for (size_t n; p && (n = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  const int rc = p ? pclose(p) : -1;
  std::remove(path);
  EXPECT_EQ(rc, 0) << "'" << cmd << "' failed: python3 with jinja2 (python3-jinja2) is required";
  return out;
}

// Where two texts first differ, with some context, for the failure message.
std::string FirstDiff(const std::string& want, const std::string& got) {
  size_t k = 0;
  while (k < want.size() && k < got.size() && want[k] == got[k]) ++k;
  const size_t from = k > 80 ? k - 80 : 0;
  return "at byte " + std::to_string(k) + "\n  jinja2: " + json(want.substr(from, 200)).dump() +
         "\n  ours:   " + json(got.substr(from, 200)).dump();
}

TEST(ChatTemplateCorpus, EveryTemplateMatchesJinja2) {
  const std::string dir = TemplatesDir();
  std::vector<std::string> files;
  const char* only = std::getenv("JINJA_CORPUS_ONLY");
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string p = e.path().string();
    if (e.path().extension() == ".jinja" && (!only || p.find(only) != std::string::npos))
      files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  if (!only) {
    EXPECT_EQ(files.size(), 70u) << "templates in " << dir;
  }
  ASSERT_FALSE(files.empty());
  const json cases = Cases();
  const json spec = {{"templates", files},
                     {"now", {2026, 1, 15, 12, 0, 0}},
                     {"bos_token", "<s>"},
                     {"eos_token", "</s>"},
                     {"cases", cases}};
  const std::string ref_text = RunReference(spec);
  const json ref = json::parse(ref_text, nullptr, false);
  ASSERT_TRUE(ref.is_array() && ref.size() == files.size()) << ref_text.substr(0, 500);

  int identical = 0, both_raise = 0, mismatches = 0;
  for (size_t t = 0; t < files.size(); ++t) {
    const std::string name = std::filesystem::path(files[t]).filename().string();
    const std::string source = es::test::ReadFile(files[t]);
    for (size_t c = 0; c < cases.size(); ++c) {
      es::tok::ChatInputs in;
      in.messages = cases[c]["messages"];
      in.tools = cases[c]["tools"];
      in.add_generation_prompt = cases[c]["add_generation_prompt"].get<bool>();
      in.extra = cases[c]["extra"];
      in.bos_token = "<s>";
      in.eos_token = "</s>";
      in.now = kNow;
      std::string ours, error;
      bool ok = true;
      try {
        ours = es::tok::RenderChat(source, in);
      } catch (const es::Error& e) {
        ok = false;
        error = e.what();
      }
      const json& want = ref[t][c];
      if (want["ok"].get<bool>()) {
        const std::string text = want["text"].get<std::string>();
        if (ok && ours == text) {
          ++identical;
          continue;
        }
        ++mismatches;
        ADD_FAILURE() << name << " conversation " << c << ": "
                      << (ok ? FirstDiff(text, ours) : "jinja2 renders, ours raised: " + error);
      } else if (ok) {
        ++mismatches;
        ADD_FAILURE() << name << " conversation " << c << ": jinja2 raised ("
                      << want["error"].get<std::string>() << ") but ours rendered";
      } else {
        ++both_raise;
        if (std::getenv("JINJA_CORPUS_VERBOSE"))
          std::printf("%s conversation %zu raises\n  jinja2: %s\n  ours:   %s\n", name.c_str(), c,
                      want["error"].get<std::string>().c_str(), error.c_str());
      }
    }
  }
  std::printf("%zu templates x %zu conversations: %d identical, %d raise in both, %d mismatches\n",
              files.size(), cases.size(), identical, both_raise, mismatches);
  EXPECT_EQ(mismatches, 0);
}

// Broken templates (the real ones cut short or with bytes changed) render or give es::Error:
// never a crash, a hang or another exception.
TEST(ChatTemplateCorpus, DamagedTemplatesGiveErrors) {
  const json cases = Cases();
  es::tok::ChatInputs in;
  in.messages = cases[4]["messages"];
  in.tools = cases[4]["tools"];
  in.now = kNow;
  uint32_t seed = 12345;
  const auto next = [&seed] { return seed = seed * 1664525u + 1013904223u; };
  int renders = 0, errors = 0;
  for (const auto& e : std::filesystem::directory_iterator(TemplatesDir())) {
    if (e.path().extension() != ".jinja") continue;
    const std::string source = es::test::ReadFile(e.path().string());
    for (int k = 0; k < 24; ++k) {
      std::string t = source;
      if (k % 2 == 0) {
        t.resize(next() % (t.size() + 1));
      } else {
        for (int j = 0; j < 3; ++j) t[next() % t.size()] = "{}%#-()[]'\"\n x|."[next() % 17];
      }
      try {
        es::tok::RenderChat(t, in);
        ++renders;
      } catch (const es::Error&) {
        ++errors;
      }
    }
  }
  std::printf("damaged templates: %d rendered, %d gave es::Error\n", renders, errors);
  EXPECT_GT(errors, 0);
}

}  // namespace
