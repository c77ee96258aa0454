// Structured output through `edgeshard serve` on a random-weight model (Llama-2 vocabulary):
// grammar, json_schema and response_format on every completion path, streamed and not, bad
// grammars and schemas refused with 400; then the official OpenAI client validating 100 replies
// with ajv (tests/server/structured.test.mjs).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "server_harness.h"
#include "test_util.h"

namespace {

using namespace es::test::srv;
using json = nlohmann::json;
namespace fs = std::filesystem;

const fs::path kNodeDir = fs::path(__FILE__).parent_path() / "server";

class StructuredTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ =
        new ServerProcess({"-m", es::test::ModelPath("llama-2-tiny-random.gguf"), "--chat-template",
                           "chatml", "--parallel", "4", "-c", "1024", "-t", "2"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static int port() { return server_->port(); }
  static ServerProcess* server_;
};
ServerProcess* StructuredTest::server_ = nullptr;

// The text of an SSE stream of chat or completion chunks, and its finish reason.
std::pair<std::string, std::string> StreamText(const std::string& body) {
  std::string text, finish;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    const std::string data = body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") break;
    const json c = json::parse(data)["choices"][0];
    if (c.contains("text")) text += c["text"].get<std::string>();
    if (c.contains("delta") && c["delta"].contains("content") && c["delta"]["content"].is_string())
      text += c["delta"]["content"].get<std::string>();
    if (c["finish_reason"].is_string()) finish = c["finish_reason"];
  }
  return {text, finish};
}

TEST_F(StructuredTest, GrammarFieldOnEveryPath) {
  const std::set<std::string> ok = {"yes", "no", "maybe so"};
  for (const char* path : {"/v1/completions", "/completions"}) {
    for (int i = 0; i < 6; ++i) {
      const json body = {{"prompt", "Answer:"},
                         {"max_tokens", 20},
                         {"seed", i},
                         {"grammar", R"(root ::= "yes" | "no" | "maybe" " " [s] "o")"}};
      auto r = Post(port(), path, body.dump());
      ASSERT_EQ(r.status, 200) << r.body;
      const json c = json::parse(r.body)["choices"][0];
      EXPECT_TRUE(ok.count(c["text"].get<std::string>())) << r.body;
      EXPECT_EQ(c["finish_reason"], "stop") << r.body;
    }
  }
}

TEST_F(StructuredTest, JsonSchemaStreamedAndNot) {
  const json schema = json::parse(R"({"type":"object","additionalProperties":false,
      "required":["n","ok","tags"],"properties":{"n":{"type":"integer","minimum":-9,"maximum":99},
      "ok":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string","maxLength":4},
      "maxItems":2}}})");
  auto check = [&](const std::string& text) {
    const json j = json::parse(text, nullptr, false);
    ASSERT_TRUE(j.is_object()) << text;
    EXPECT_EQ(j.size(), 3u) << text;
    EXPECT_TRUE(j["n"].is_number_integer() && j["n"] >= -9 && j["n"] <= 99) << text;
    EXPECT_TRUE(j["ok"].is_boolean()) << text;
    EXPECT_TRUE(j["tags"].is_array() && j["tags"].size() <= 2) << text;
  };
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streamed" : "whole");
    // OpenAI's response_format on chat, llama-server's json_schema on completions.
    json chat = {{"messages", {{{"role", "user"}, {"content", "A record, please."}}}},
                 {"max_tokens", 300},
                 {"stream", stream},
                 {"response_format",
                  {{"type", "json_schema"},
                   {"json_schema", {{"name", "rec"}, {"strict", true}, {"schema", schema}}}}}};
    json comp = {{"prompt", "{"}, {"max_tokens", 300}, {"stream", stream}, {"json_schema", schema}};
    for (int i = 0; i < 4; ++i) {
      chat["seed"] = comp["seed"] = i;
      for (const auto& [path, body] :
           {std::pair{"/v1/chat/completions", chat}, std::pair{"/completions", comp}}) {
        auto r = Post(port(), path, body.dump());
        ASSERT_EQ(r.status, 200) << r.body;
        std::string text, finish;
        if (stream) {
          std::tie(text, finish) = StreamText(r.body);
        } else {
          const json c = json::parse(r.body)["choices"][0];
          text = c.contains("text") ? c["text"] : c["message"]["content"];
          finish = c["finish_reason"];
        }
        EXPECT_EQ(finish, "stop") << text;
        check(text);
      }
    }
  }
}

TEST_F(StructuredTest, JsonObjectMode) {
  auto r = Post(port(), "/v1/chat/completions",
                R"({"messages": [{"role": "user", "content": "json"}], "max_tokens": 40,
                    "seed": 3, "response_format": {"type": "json_object"}})");
  ASSERT_EQ(r.status, 200) << r.body;
  const json c = json::parse(r.body)["choices"][0];
  const std::string text = c["message"]["content"];
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text[0], '{') << text;
  if (c["finish_reason"] == "stop") {
    EXPECT_TRUE(json::parse(text).is_object()) << text;
  }
  // llama-server's variant carries a schema.
  r = Post(port(), "/v1/completions",
           R"({"prompt": "x", "max_tokens": 40, "response_format": {"type": "json_object",
               "schema": {"type": "object", "properties": {"a": {"const": 7}},
               "required": ["a"], "additionalProperties": false}}})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(json::parse(r.body)["choices"][0]["text"].get<std::string>()),
            json({{"a", 7}}));
}

TEST_F(StructuredTest, BadGrammarsAndSchemasAre400) {
  auto e = ExpectError(
      Post(port(), "/v1/completions", R"({"prompt": "x", "grammar": "root ::= \"a\" (b"})"), 400,
      "grammar");
  EXPECT_NE(e["message"].get<std::string>().find("line 1, column"), std::string::npos) << e;
  e = ExpectError(
      Post(port(), "/v1/completions", R"({"prompt": "x", "grammar": "root ::= undefined-rule"})"),
      400, "grammar");
  EXPECT_NE(e["message"].get<std::string>().find("undefined-rule"), std::string::npos) << e;
  e = ExpectError(
      Post(port(), "/v1/completions",
           R"({"prompt": "x", "json_schema": {"type": "string", "pattern": "(?=a)b"}})"),
      400, "json_schema");
  EXPECT_NE(e["message"].get<std::string>().find("'pattern'"), std::string::npos) << e;
  e = ExpectError(Post(port(), "/v1/chat/completions",
                       R"({"messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_schema", "json_schema": {"name": "a",
                           "schema": {"type": "object", "properties": {"x": {"not": {}}}}}}})"),
                  400, "response_format.json_schema.schema");
  EXPECT_NE(e["message"].get<std::string>().find("#/properties/x"), std::string::npos) << e;
  ExpectError(Post(port(), "/v1/chat/completions",
                   R"({"messages": [{"role": "user", "content": "x"}],
                       "response_format": {"type": "json_schema"}})"),
              400, "response_format");
  ExpectError(
      Post(port(), "/v1/completions", R"({"prompt": "x", "response_format": {"type": "xml"}})"),
      400, "response_format");
  ExpectError(Post(port(), "/v1/completions", R"({"prompt": "x", "grammar": 5})"), 400, "grammar");
  ExpectError(Post(port(), "/v1/completions",
                   R"({"prompt": "x", "grammar": "root ::= \"a\"", "json_schema": {}})"),
              400, "json_schema");
  // The server still serves.
  EXPECT_EQ(Post(port(), "/v1/completions", R"({"prompt": "x", "max_tokens": 2})").status, 200);
}

TEST_F(StructuredTest, OpenAIClientValidatesWithAjv) {
  if (!fs::exists(kNodeDir / "node_modules" / "ajv" / "package.json")) {
    ADD_FAILURE() << "ajv and the OpenAI client are not installed: run `npm ci --prefix "
                  << kNodeDir.string() << "`";
    return;
  }
  auto r = Shell("cd '" + kNodeDir.string() + "' && EDGESHARD_URL=" + server_->url() +
                 " timeout 500 node --test structured.test.mjs");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("# fail 0"), std::string::npos) << r.out;
}

}  // namespace
