// End-to-end checks of the `edgeshard` binary: exit codes, messages, generation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "test_util.h"

namespace {

using es::test::ModelPath;
using es::test::RunCli;

std::string Unhex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    s += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return s;
}

int CountLines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

TEST(Cli, NoSubcommandIsUsageError) {
  auto r = RunCli("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("edgeshard"), std::string::npos);
}

TEST(Cli, UnknownOptionIsUsageError) {
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf") + " -p hi --no-such-flag");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no-such-flag"), std::string::npos) << r.err;
}

TEST(Cli, MissingModelFileIsUsageError) {
  auto r = RunCli("run -m /nonexistent/model.gguf -p hi");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("/nonexistent/model.gguf"), std::string::npos) << r.err;
}

TEST(Cli, MissingPromptIsUsageError) {
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("prompt"), std::string::npos) << r.err;
}

TEST(Cli, BadNumberIsUsageError) {
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf") + " -p hi --top-p 7");
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Cli, CorruptModelIsOneLineErrorExit1) {
  const std::string bad = std::filesystem::temp_directory_path() / "es_cli_corrupt.gguf";
  std::ofstream(bad, std::ios::binary) << "GGUF\x03\0\0\0garbage";
  auto r = RunCli("run -m " + bad + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(CountLines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
  std::filesystem::remove(bad);
}

TEST(Cli, NotAModelIsClearError) {
  const std::string bad = std::filesystem::temp_directory_path() / "es_cli_text.gguf";
  std::ofstream(bad) << "this is a text file, not a model\n";
  auto r = RunCli("run -m " + bad + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad magic"), std::string::npos) << r.err;
  std::filesystem::remove(bad);
}

TEST(Cli, RunGreedyStoryMatchesLlamaCpp) {
  auto ref = nlohmann::json::parse(es::test::ReadFile(ModelPath("ref/stories260K.ref.json")));
  const auto& c = ref["cases"][0];
  ASSERT_EQ(c["prompt"], "Once upon a time");
  const std::string story = Unhex(c["greedy_hex"].get<std::string>());
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf") + " -p 'Once upon a time' -n " +
                  std::to_string(c["greedy"].size()) + " --temp 0 -t 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Once upon a time" + story + "\n");
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST(Cli, RunStopStringIsNotPrinted) {
  auto ref = nlohmann::json::parse(es::test::ReadFile(ModelPath("ref/stories260K.ref.json")));
  const std::string story = Unhex(ref["cases"][0]["greedy_hex"].get<std::string>());
  // Stop on a word in the middle of the greedy story: output is exactly the text before it.
  const std::string stop = "little";
  const size_t at = story.find(stop);
  ASSERT_NE(at, std::string::npos) << story;
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf") +
                  " -p 'Once upon a time' -n 64 --temp 0 --stop " + stop);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Once upon a time" + story.substr(0, at) + "\n");
  EXPECT_NE(r.err.find("stop: stop"), std::string::npos) << r.err;
}

TEST(Cli, RunSeedIsReproducible) {
  const std::string args = "run -m " + ModelPath("stories260K.gguf") +
                           " -p 'Once upon a time' -n 40 --temp 1.0 --seed 1234";
  auto a = RunCli(args);
  auto b = RunCli(args);
  auto c = RunCli("run -m " + ModelPath("stories260K.gguf") +
                  " -p 'Once upon a time' -n 40 --temp 1.0 --seed 99");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(Cli, ContextOverflowIsClearError) {
  auto r = RunCli("run -m " + ModelPath("stories260K.gguf") +
                  " -p 'Once upon a time' -n 100 -c 16 --temp 0 --ignore-eos --no-context-shift");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("context"), std::string::npos) << r.err;
}

TEST(Cli, EvalJsonMatchesReferenceSchema) {
  auto r = RunCli("eval -m " + ModelPath("stories260K.gguf") +
                  " -p 'Once upon a time' --top 10 --json --greedy 32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto out = nlohmann::json::parse(r.out);
  auto ref = nlohmann::json::parse(es::test::ReadFile(ModelPath("ref/stories260K.ref.json")));
  const auto& want = ref["cases"][0];
  const auto& got = out["cases"][0];
  EXPECT_EQ(out["n_vocab"], 512);
  EXPECT_EQ(got["tokens"], want["tokens"]);
  EXPECT_EQ(got["greedy"], want["greedy"]);
  EXPECT_EQ(got["greedy_hex"], want["greedy_hex"]);
  ASSERT_EQ(got["top"].size(), want["top"].size());
  for (size_t i = 0; i < want["top"].size(); ++i) {
    EXPECT_EQ(got["top"][i][0][0], want["top"][i][0][0]) << "position " << i;
    EXPECT_NEAR(got["top"][i][0][1].get<double>(), want["top"][i][0][1].get<double>(), 1e-3 * 20);
  }
}

TEST(Cli, ChatKeepsConversationWithTemplate) {
  auto r = es::test::RunCliWithInput(
      "chat -m " + ModelPath("stories260K.gguf") + " --chat-template chatml -n 8 --temp 0 -v",
      "Hello\nTell me more\n/exit\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(CountLines(r.out), 2) << r.out;
  // The second turn reuses the cached first turn instead of recomputing it.
  std::regex re(R"(\[(\d+) cached, (\d+) evaluated)");
  std::vector<int> cached;
  for (auto it = std::sregex_iterator(r.err.begin(), r.err.end(), re); it != std::sregex_iterator();
       ++it)
    cached.push_back(std::stoi((*it)[1]));
  ASSERT_EQ(cached.size(), 2u) << r.err;
  EXPECT_EQ(cached[0], 0);
  EXPECT_GT(cached[1], 5) << r.err;
}

// A model without tokenizer.chat_template chats in chatml and says so (with the override).
TEST(Cli, ChatWithoutTemplateFallsBackToChatml) {
  auto r = es::test::RunCliWithInput("chat -m " + ModelPath("stories260K.gguf") + " -n 4 --temp 0",
                                     "hi\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("using chatml"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--chat-template"), std::string::npos) << r.err;
}

// --chat-template-file reads a Jinja template; --jinja-var values reach it as JSON values.
TEST(Cli, ChatTemplateFileAndJinjaVars) {
  char path[] = "/tmp/es_chat_tmpl_XXXXXX";
  const int fd = mkstemp(path);
  const std::string tmpl =
      "{{ raise_exception('got ' ~ enable_thinking ~ ' ' ~ (enable_thinking is boolean) ~ ' ' ~ "
      "name) }}";
  ASSERT_EQ(write(fd, tmpl.data(), tmpl.size()), static_cast<ssize_t>(tmpl.size()));
  close(fd);
  auto r = es::test::RunCliWithInput("chat -m " + ModelPath("stories260K.gguf") +
                                         " --chat-template-file " + path +
                                         " --jinja-var enable_thinking=false --jinja-var name=Ann",
                                     "hi\n");
  std::remove(path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("got False True Ann"), std::string::npos) << r.err;
  r = es::test::RunCliWithInput(
      "chat -m " + ModelPath("stories260K.gguf") + " --chat-template-file /nonexistent.jinja", "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent.jinja"), std::string::npos) << r.err;
}

TEST(Cli, BenchJsonReportsMedians) {
  auto r = RunCli("bench -m " + ModelPath("stories260K.gguf") + " -p 16 -n 4 -t 1,2 -r 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 4u);
  for (const auto& row : j) {
    EXPECT_GT(row["median"].get<double>(), 0);
    EXPECT_EQ(row["tokens_per_s"].size(), 2u);
  }
  EXPECT_EQ(j[0]["threads"], 1);
  EXPECT_EQ(j[2]["threads"], 2);
}

}  // namespace
