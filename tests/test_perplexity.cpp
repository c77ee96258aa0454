// Perplexity of every shared model on the GPL-3 corpus (context 128, 8 chunks) within 0.5%
// of llama.cpp's figure in ../shared/models/ref/perplexity-gpl3-c128-chunks8.txt.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "test_util.h"

namespace {

std::map<std::string, double> ReferenceFigures() {
  std::map<std::string, double> out;
  std::istringstream in(es::test::ReadFile(es::test::ModelPath("ref/perplexity-gpl3-c128-chunks8.txt")));
  std::string line;
  std::regex re(R"((\S+) PPL = ([0-9.]+))");
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, re)) out[m[1]] = std::stod(m[2]);
  return out;
}

double RunPerplexity(const std::string& model) {
  const std::string corpus = es::test::ModelsDir() + "/../data/gpl3-head12k.txt";
  auto r = es::test::RunCli("perplexity -m " + model + " -f " + corpus + " -c 128 --chunks 8 -t 2");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  std::regex re(R"(Final estimate: PPL = ([0-9.]+))");
  if (!std::regex_search(r.out, m, re)) {
    ADD_FAILURE() << "no estimate in output: " << r.out << r.err;
    return 0;
  }
  return std::stod(m[1]);
}

TEST(Perplexity, EverySharedModelWithinHalfPercentOfLlamaCpp) {
  const auto refs = ReferenceFigures();
  ASSERT_GE(refs.size(), 9u);
  int checked = 0;
  for (const auto& [name, want] : refs) {
    const std::string path = es::test::ModelsDir() + "/" + name + ".gguf";
    if (!std::filesystem::exists(path)) continue;  // the f32 masters are not shipped
    const double got = RunPerplexity(path);
    std::printf("  %-32s edgeshard %.4f  llama.cpp %.4f  (%+.3f%%)\n", name.c_str(), got, want, 100 * (got - want) / want);
    EXPECT_NEAR(got, want, 0.005 * want) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 9);
}

TEST(Perplexity, TooShortTextIsClearError) {
  const std::string tiny = (std::filesystem::temp_directory_path() / "es_ppl_tiny.txt").string();
  { std::ofstream(tiny) << "too short"; }
  auto r = es::test::RunCli("perplexity -m " + es::test::ModelPath("stories260K.gguf") + " -f " + tiny + " -c 128");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("at least 128"), std::string::npos) << r.err;
  std::filesystem::remove(tiny);
}

}  // namespace
