// `serve -ngl all`: the server's slots run every block on the Vulkan device (lavapipe in CI) with
// device KV caches, says so at start-up, and answers as the all-CPU server does.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "server_harness.h"
#include "test_util.h"

namespace {

using nlohmann::json;
using namespace es::test::srv;

std::string Complete(int port) {
  const auto r = Post(port, "/v1/completions",
                      R"({"prompt":"Once upon a time","max_tokens":24,"temperature":0})");
  EXPECT_EQ(r.status, 200) << r.body;
  return json::parse(r.body)["choices"][0]["text"].get<std::string>();
}

TEST(ServerGpu, SlotsRunOnTheGpuAndAnswerAsTheCpu) {
  const std::string model = es::test::ModelPath("stories260K.gguf");
  std::string cpu_text;
  {
    ServerProcess cpu({"-m", model});
    ASSERT_NE(cpu.port(), 0);
    cpu_text = Complete(cpu.port());
  }
  ServerProcess gpu({"-m", model, "-ngl", "all", "--parallel", "2"});
  ASSERT_NE(gpu.port(), 0);
  EXPECT_NE(gpu.stderr_text().find("blocks 0-4 and the output head on vulkan0 ("),
            std::string::npos)
      << gpu.stderr_text();
  EXPECT_EQ(Complete(gpu.port()), cpu_text);
  EXPECT_EQ(Complete(gpu.port()), cpu_text);  // a slot's cached prefix, reused
}

TEST(ServerGpu, GpuLayersWithAClusterIsAUsageError) {
  const auto r = es::test::RunCli("serve -m " + es::test::ModelPath("stories260K.gguf") +
                                  " -ngl all --cluster auto");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("give the workers --gpu-layers"), std::string::npos) << r.err;
}

}  // namespace
