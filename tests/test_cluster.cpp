// cluster.yaml parsing and validation (errors name the line), GPUs of hosts in it, profile JSON,
// model units.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "gguf/gguf_file.h"
#include "shard/shard_cluster.h"
#include "shard/shard_model_units.h"
#include "shard/shard_profile.h"
#include "test_util.h"

namespace es::shard {
namespace {

const std::string kFixtures =
    std::filesystem::path(EDGESHARD_SOURCE_DIR "/tests").string() + "/fixtures/planner/";

const char* kGood = R"(# a comment
source: phone
default_link: {bandwidth_mbps: 100, rtt_ms: 2}
devices:
  - name: phone
    address: 10.0.0.2:7070
    profile: p.json
    memory: 6 GiB
  - name: laptop
    like: phone
    time_scale: 0.5
    quant: q8_0
  - name: pc
    profile: /abs/pc.json
    memory: 16GB
links:
  - between: [phone, pc]
    bandwidth_mbps: 10
    rtt_ms: 20
  - between: [laptop, pc]
    rtt_ms: 1
)";

TEST(Cluster, ParsesEveryField) {
  const Cluster c = ParseCluster(kGood, "/cfg/cluster.yaml");
  ASSERT_EQ(c.devices.size(), 3u);
  EXPECT_EQ(c.source, 0);
  EXPECT_EQ(c.devices[0].address, "10.0.0.2:7070");
  EXPECT_EQ(c.devices[0].profile_path, "/cfg/p.json");
  EXPECT_EQ(c.devices[0].memory_bytes, 6ull << 30);
  EXPECT_EQ(c.devices[0].line, 5);
  EXPECT_EQ(c.devices[1].profile_path, "/cfg/p.json");
  EXPECT_DOUBLE_EQ(c.devices[1].time_scale, 0.5);
  ASSERT_TRUE(c.devices[1].quant.has_value());
  EXPECT_EQ(*c.devices[1].quant, TensorType::kQ8_0);
  EXPECT_EQ(c.devices[2].profile_path, "/abs/pc.json");
  EXPECT_EQ(c.devices[2].memory_bytes, 16000000000ull);
  EXPECT_DOUBLE_EQ(c.Link(2, 0).bandwidth_mbps, 10);
  EXPECT_DOUBLE_EQ(c.Link(0, 2).rtt_ms, 20);
  EXPECT_DOUBLE_EQ(c.Link(1, 2).bandwidth_mbps, 100);  // from the default
  EXPECT_DOUBLE_EQ(c.Link(1, 2).rtt_ms, 1);
  EXPECT_DOUBLE_EQ(c.Link(0, 1).bandwidth_mbps, 100);
}

// Replaces the first occurrence of `from` in `base` and expects `needle` in the error.
void ExpectErrorIn(const std::string& base, const std::string& from, const std::string& to,
                   const std::string& needle) {
  std::string text = base;
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  try {
    ParseCluster(text, "c.yaml");
    ADD_FAILURE() << "accepted:\n" << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
void ExpectError(const std::string& from, const std::string& to, const std::string& needle) {
  ExpectErrorIn(kGood, from, to, needle);
}

TEST(Cluster, ErrorsNameTheLine) {
  ExpectError("    memory: 6 GiB", "    memroy: 6 GiB", "c.yaml:8: device: unknown key 'memroy'");
  ExpectError("    memory: 6 GiB", "    memory: lots",
              "c.yaml:8: device 'phone': memory 'lots' is not a size");
  ExpectError("    time_scale: 0.5", "    time_scale: -1",
              "c.yaml:11: device 'laptop': time_scale: expected a number > 0");
  ExpectError("    time_scale: 0.5", "    time_scale: fast",
              "c.yaml:11: device 'laptop': time_scale: expected a number");
  ExpectError("    quant: q8_0", "    quant: q9_9", "c.yaml:12: device 'laptop': quant 'q9_9'");
  ExpectError("    like: phone", "    like: tablet",
              "c.yaml:10: device 'laptop': like: no device named 'tablet'");
  ExpectError("  - name: pc", "  - name: phone",
              "c.yaml:13: device 'phone' is declared twice (first on line 5)");
  ExpectError("  - name: pc", "  - name: p c", "c.yaml:13: device name 'p c'");
  ExpectError("    like: phone\n", "", "c.yaml:9: device 'laptop': give exactly one of 'profile'");
  ExpectError("source: phone", "source: tablet", "c.yaml:2: source: no device named 'tablet'");
  ExpectError("source: phone", "sauce: phone", "c.yaml:2: cluster: unknown key 'sauce'");
  ExpectError("  - between: [phone, pc]", "  - between: [phone, tv]",
              "c.yaml:17: link: no device named 'tv'");
  ExpectError("  - between: [laptop, pc]", "  - between: [pc, phone]",
              "c.yaml:20: link between 'phone' and 'pc' is given twice (first on line 17)");
  ExpectError("    bandwidth_mbps: 10", "    bandwidth_mbps: 0",
              "c.yaml:18: link: bandwidth_mbps: expected a number > 0");
  ExpectError("default_link: {bandwidth_mbps: 100, rtt_ms: 2}",
              "default_link: {bandwidth_mbps: 100, rtt: 2}",
              "c.yaml:3: default_link: unknown key 'rtt'");
  ExpectError("default_link: {bandwidth_mbps: 100, rtt_ms: 2}\n", "",
              "c.yaml:19: link: missing 'bandwidth_mbps'");
  ExpectError("devices:\n  - name: phone", "devices:\n  - name: [phone", "c.yaml:");  // YAML syntax
  ExpectError("    profile: /abs/pc.json", "    profile: [a, b]",
              "c.yaml:14: device 'pc': profile: expected a string");
}

TEST(Cluster, SyntaxErrorHasALine) {
  try {
    ParseCluster("source: a\ndevices:\n  - {name: a, profile: x.json\n", "s.yaml");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("s.yaml:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("YAML syntax error"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ParseCluster("", "e.yaml"), Error);
  EXPECT_THROW(ParseCluster("- a\n- b\n", "e.yaml"), Error);
  EXPECT_THROW(ParseCluster("source: a\n", "e.yaml"), Error);
  try {
    ParseCluster("source: a\ndevices:\n  - {name: a, profile: p.json}\n  - {name: b, like: a}\n",
                 "n.yaml");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no link between 'a' and 'b'"), std::string::npos)
        << e.what();
  }
}

TEST(Cluster, ByteSizes) {
  EXPECT_EQ(ParseByteSize("14 GiB"), 14ull << 30);
  EXPECT_EQ(ParseByteSize("1.5gb"), 1500000000ull);
  EXPECT_EQ(ParseByteSize("512MiB"), 512ull << 20);
  EXPECT_EQ(ParseByteSize("2 KB"), 2000ull);
  EXPECT_EQ(ParseByteSize("1048576"), 1048576ull);
  EXPECT_EQ(ParseByteSize("100 B"), 100ull);
  EXPECT_FALSE(ParseByteSize("-1 GiB"));
  EXPECT_FALSE(ParseByteSize("GiB"));
  EXPECT_FALSE(ParseByteSize("1 GiB extra"));
  EXPECT_FALSE(ParseByteSize("99999999999 TB"));
}

TEST(Cluster, LoadsProfilesAndNamesTheDeviceOnProfileErrors) {
  const Cluster c = LoadCluster(kFixtures + "paper/latency.yaml");
  ASSERT_EQ(c.profiles.size(), 5u);
  EXPECT_EQ(c.profiles[1].device, "orin-nx");  // via like:
  EXPECT_EQ(c.MemoryBudget(4), 22ull << 30);
  const std::string dir = std::filesystem::temp_directory_path() / "es_cluster_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/bad.json") << R"({"schema": "edgeshard-profile/1"})";
  std::ofstream(dir + "/c.yaml")
      << "source: a\ndevices:\n  - name: a\n    profile: bad.json\n    memory: 1 GiB\n";
  try {
    LoadCluster(dir + "/c.yaml");
    ADD_FAILURE();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("c.yaml:3: device 'a'"), std::string::npos) << m;
    EXPECT_NE(m.find("bad.json"), std::string::npos) << m;
  }
  std::filesystem::remove_all(dir);
}

// ---- GPUs of hosts (gpu_of) ----

const char* kGpus = R"(source: box
default_link: {bandwidth_mbps: 1000, rtt_ms: 1}
devices:
  - name: box
    profile: cpu.json
  - name: box-gpu
    gpu_of: box
    profile: gpu.json
    memory: 8 GiB
  - name: jetson
    address: 10.0.0.3:7070
    profile: cpu.json
  - name: jetson-gpu
    gpu_of: jetson
    gpu: vulkan1
    host_link: unified
    profile: gpu.json
  - name: far
    address: 10.0.0.4:7070
    profile: cpu.json
links:
  - {between: [jetson, far], bandwidth_mbps: 50, rtt_ms: 9}
)";

TEST(ClusterGpu, ParsesGpusAndPricesTheirLinks) {
  Cluster c = ParseCluster(kGpus, "/cfg/c.yaml");
  ASSERT_EQ(c.devices.size(), 5u);
  EXPECT_EQ(c.devices[1].gpu_of, 0);
  EXPECT_EQ(c.devices[1].gpu, 0);
  EXPECT_EQ(c.devices[3].gpu_of, 2);
  EXPECT_EQ(c.devices[3].gpu, 1);
  EXPECT_EQ(c.Host(1), 0);
  EXPECT_EQ(c.Host(3), 2);
  EXPECT_EQ(c.Host(4), 4);
  // box-gpu: no host_link, profile not loaded (ParseCluster only): PCIe.
  EXPECT_DOUBLE_EQ(c.Link(0, 1).bandwidth_mbps, kPcieLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(c.Link(1, 0).rtt_ms, kPcieLink.rtt_ms);
  EXPECT_DOUBLE_EQ(c.Link(2, 3).bandwidth_mbps, kUnifiedLink.bandwidth_mbps);
  // A GPU reaches the network through its host: jetson-gpu -> far is jetson -> far.
  EXPECT_DOUBLE_EQ(c.Link(3, 4).bandwidth_mbps, 50);
  EXPECT_DOUBLE_EQ(c.Link(4, 3).rtt_ms, 9);
  EXPECT_DOUBLE_EQ(c.Link(1, 3).bandwidth_mbps, 1000);  // box -> jetson, the default
  // With profiles: a unified-memory GPU's profile, its measured crossing as the RTT.
  Profile gpu;
  gpu.gpu = "vulkan0 (test)";
  gpu.unified_memory = true;
  gpu.crossing_ms = 0.25;
  c.profiles = {Profile{}, gpu, Profile{}, gpu, Profile{}};
  EXPECT_DOUBLE_EQ(c.Link(0, 1).bandwidth_mbps, kUnifiedLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(c.Link(0, 1).rtt_ms, 0.25);
  EXPECT_DOUBLE_EQ(c.Link(2, 3).rtt_ms, kUnifiedLink.rtt_ms);  // host_link given: kept
}

void ExpectGpuError(const std::string& from, const std::string& to, const std::string& needle) {
  ExpectErrorIn(kGpus, from, to, needle);
}

TEST(ClusterGpu, ErrorsNameTheLine) {
  ExpectGpuError("    gpu_of: box\n", "    gpu_of: boxx\n",
                 "c.yaml:7: device 'box-gpu': gpu_of: no device named 'boxx'");
  ExpectGpuError("    gpu_of: jetson\n", "    gpu_of: box\n",
                 "'box' already has a GPU ('box-gpu'); a worker runs one GPU");
  ExpectGpuError("    gpu_of: jetson\n", "    gpu_of: box-gpu\n", "'box-gpu' is itself a GPU");
  ExpectGpuError("    gpu: vulkan1\n", "    gpu: cuda0\n", "c.yaml:15: device 'jetson-gpu': gpu:");
  ExpectGpuError("    host_link: unified\n", "    host_link: usb\n",
                 "c.yaml:16: device 'jetson-gpu': host_link: expected pcie, unified");
  ExpectGpuError("    host_link: unified\n", "    host_link: {bandwidth_mbps: 100}\n",
                 "host_link: missing 'rtt_ms'");
  ExpectGpuError("    gpu_of: box\n", "    gpu_of: box\n    address: 1.2.3.4:5\n",
                 "a GPU has no address of its own");
  ExpectGpuError("    gpu_of: box\n", "    gpu: vulkan0\n", "name its host with 'gpu_of'");
  ExpectGpuError("source: box", "source: box-gpu", "c.yaml:1: source: 'box-gpu' is a GPU");
  ExpectGpuError("between: [jetson, far]", "between: [jetson-gpu, far]",
                 "link: 'jetson-gpu' is a GPU: it reaches other devices through its host");
}

std::string WriteProfileFile(const std::string& dir, const std::string& name, bool gpu) {
  Profile p;
  p.device = name;
  p.threads = 1;
  p.prompt_batch = 8;
  p.memory_budget_bytes = 1 << 30;
  if (gpu) p.gpu = "vulkan0 (test)", p.crossing_ms = 0.05;
  p.model.name = "m";
  p.model.n_layer = 1;
  for (const char* u : {"token_embd", "blk.0", "output"}) {
    UnitInfo info;
    info.name = u;
    info.weight_bytes = info.active_bytes = 100;
    info.out_bytes_per_token = 16;
    p.model.units.push_back(info);
    UnitTiming t;
    t.prompt_ms_per_token = 0.1;
    t.decode = {{0, gpu ? 0.1 : 1.0}};
    p.timing.push_back(t);
  }
  const std::string path = dir + "/" + name + ".json";
  SaveProfile(p, path);
  return path;
}

TEST(ClusterGpu, ProfilesMustMatchTheKindOfDevice) {
  char tmpl[] = "/tmp/es_cluster_gpu_XXXXXX";
  struct Dir {
    std::string path;
    ~Dir() { std::filesystem::remove_all(path); }
  } dir{mkdtemp(tmpl)};
  WriteProfileFile(dir.path, "cpu", false);
  WriteProfileFile(dir.path, "gpu", true);
  // A GPU profile round-trips its fields.
  const Profile g = LoadProfile(dir.path + "/gpu.json", true);
  EXPECT_EQ(g.gpu, "vulkan0 (test)");
  EXPECT_DOUBLE_EQ(g.crossing_ms, 0.05);
  EXPECT_FALSE(g.unified_memory);
  auto load = [&](const std::string& text) {
    std::ofstream(dir.path + "/c.yaml") << text;
    return LoadCluster(dir.path + "/c.yaml");
  };
  auto load_error = [&](const std::string& text) {
    try {
      load(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "accepted:\n" << text;
    return std::string();
  };
  const Cluster ok = load(
      "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
      "  - {name: a, profile: cpu.json}\n  - {name: g, gpu_of: a, profile: gpu.json}\n");
  // PCIe, with the profile's measured crossing (0.05 ms) as its round trip.
  EXPECT_DOUBLE_EQ(ok.Link(0, 1).bandwidth_mbps, kPcieLink.bandwidth_mbps);
  EXPECT_DOUBLE_EQ(ok.Link(0, 1).rtt_ms, 0.05);
  const std::string cpu_on_gpu = load_error(
      "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
      "  - {name: a, profile: cpu.json}\n  - {name: g, gpu_of: a, profile: cpu.json}\n");
  EXPECT_NE(cpu_on_gpu.find("c.yaml:5: device 'g': its profile"), std::string::npos) << cpu_on_gpu;
  EXPECT_NE(cpu_on_gpu.find("edgeshard profile --device vulkan0"), std::string::npos) << cpu_on_gpu;
  const std::string gpu_on_cpu = load_error(
      "source: a\ndefault_link: {bandwidth_mbps: 100, rtt_ms: 1}\ndevices:\n"
      "  - {name: a, profile: gpu.json}\n");
  EXPECT_NE(gpu_on_cpu.find("declare the GPU as a device with 'gpu_of: HOST'"), std::string::npos)
      << gpu_on_cpu;
}

// ---- profiles ----

std::string MiniProfile(const std::string& unit1_extra) {
  return R"({"schema": "edgeshard-profile/1", "prompt_batch": 64,
 "device": {"name": "x", "memory_budget_bytes": 1000},
 "model": {"name": "m", "n_layer": 1},
 "units": [
  {"name": "token_embd", "weight_bytes": 10, "out_bytes_per_token": 4, "prompt_ms_per_token": 0.1, "decode_ms": [{"ctx": 0, "ms": 1}]},
  {"name": "blk.0", "weight_bytes": 20, "out_bytes_per_token": 4, "prompt_ms_per_token": 0.1)" +
         unit1_extra + R"(},
  {"name": "output", "weight_bytes": 10, "out_bytes_per_token": 4, "prompt_ms_per_token": 0.1, "decode_ms": [{"ctx": 0, "ms": 1}]}
 ]})";
}

TEST(Profile, ValidatesWithJsonPaths) {
  const Profile ok =
      ParseProfile(MiniProfile(R"(, "decode_ms": [{"ctx": 100, "ms": 2}, {"ctx": 300, "ms": 4}])"),
                   "p.json", true);
  EXPECT_DOUBLE_EQ(ok.timing[1].DecodeMs(200), 3);   // between points
  EXPECT_DOUBLE_EQ(ok.timing[1].DecodeMs(500), 6);   // beyond: the last slope
  EXPECT_DOUBLE_EQ(ok.timing[1].DecodeMs(0), 1);     // before: the first slope
  EXPECT_DOUBLE_EQ(ok.timing[0].DecodeMs(9999), 1);  // one point: constant
  auto expect = [](const std::string& text, const std::string& needle) {
    try {
      ParseProfile(text, "p.json", true);
      ADD_FAILURE() << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect(MiniProfile(R"(, "decode_ms": [{"ctx": 300, "ms": 2}, {"ctx": 100, "ms": 4}])"),
         "p.json: units[1].decode_ms[1].ctx: ctx must be ascending");
  expect(MiniProfile(R"(, "decode_ms": [{"ctx": 300, "ms": -2}])"),
         "p.json: units[1].decode_ms[0].ms: expected a number >= 0");
  expect(MiniProfile(""), "p.json: units[1].decode_ms: units must all have timings or none");
  expect(MiniProfile(R"(, "decode_ms": 5)"),
         "p.json: units[1].decode_ms: expected a non-empty array");
  expect("{", "p.json: not valid JSON");
  expect(R"({"schema": "other"})", "p.json: schema: is 'other'");
  std::string wrong_count = MiniProfile(R"(, "decode_ms": [{"ctx": 1, "ms": 1}])");
  wrong_count.replace(wrong_count.find("\"n_layer\": 1"), 12, "\"n_layer\": 2");
  expect(wrong_count, "p.json: units: has 3 entries, expected n_layer + 2 = 4");
  // Units-only files are fine where timings are not needed.
  std::string units_only = MiniProfile("");
  for (size_t at;
       (at = units_only.find(R"(, "decode_ms": [{"ctx": 0, "ms": 1}])")) != std::string::npos;)
    units_only.erase(at, 36);
  EXPECT_FALSE(ParseProfile(units_only, "u.json", false).has_timing());
  expect(units_only, "decode_ms: missing");
}

TEST(Profile, RoundTrips) {
  const Profile a = LoadProfile(kFixtures + "paper/rtx3090.json", true);
  const Profile b = ParseProfile(ProfileToJson(a), "again", true);
  EXPECT_EQ(ProfileToJson(a), ProfileToJson(b));
  ASSERT_EQ(b.model.units.size(), 34u);
  EXPECT_EQ(b.model.units[33].name, "output");
  EXPECT_EQ(b.memory_budget_bytes, 22ull << 30);
  EXPECT_DOUBLE_EQ(b.timing[5].DecodeMs(512), a.timing[5].decode[0].ms);
}

// ---- model units from GGUF ----

TEST(ModelUnits, FromGgufMatchTheTensorTable) {
  for (const char* name :
       {"stories260K.gguf", "synth-llama-spm-256.q4_k_m.gguf", "synth-qwen2-gpt2-256.q8_0.gguf"}) {
    const auto f = gguf::File::Open(test::ModelPath(name));
    const ModelUnits m = UnitsFromGguf(*f);
    ASSERT_EQ(int(m.units.size()), m.n_layer + 2) << name;
    EXPECT_EQ(m.units[0].name, "token_embd");
    EXPECT_EQ(m.units[1].name, "blk.0");
    EXPECT_EQ(m.units.back().name, "output");
    uint64_t total = 0, tensors = 0;
    for (const auto& u : m.units) total += u.weight_bytes;
    for (const auto& t : f->tensors()) tensors += t.n_bytes;
    const bool tied = f->FindTensor("output.weight") == nullptr;
    // A tied head needs its own copy of the embedding matrix.
    EXPECT_EQ(total, tensors + (tied ? f->GetTensor("token_embd.weight").n_bytes : 0)) << name;
    const int64_t n_embd = f->GetTensor("token_embd.weight").dims[0];
    EXPECT_EQ(m.units[0].out_bytes_per_token, uint64_t(n_embd) * 4);
    EXPECT_EQ(m.units.back().out_bytes_per_token, 4u);  // a sampled token id
    EXPECT_EQ(m.units[0].kv_bytes_per_token, 0u);
    EXPECT_GT(m.units[1].kv_bytes_per_token, 0u);
    // Blocks of a single-type file differ only by name (q4_k_m mixes types per block).
    if (std::string(name).find("q4_k_m") == std::string::npos) {
      for (int b = 2; b <= m.n_layer; ++b)
        EXPECT_EQ(m.units[b].weight_bytes, m.units[1].weight_bytes);
    }
  }
  // stories260K: dim 64, 4 KV heads of 8 -> K and V rows of 32 F16 values per token.
  const ModelUnits s = UnitsFromGguf(*gguf::File::Open(test::ModelPath("stories260K.gguf")));
  EXPECT_EQ(s.units[1].kv_bytes_per_token, 2u * 32 * 2);
  EXPECT_EQ(s.weight_type, "F32");
  // Re-quantizing a block's matrices to Q8_0: 34 bytes per 32 values.
  const UnitInfo& blk = s.units[1];
  EXPECT_EQ(blk.WeightBytesAs(TensorType::kQ8_0),
            blk.weight_bytes - blk.matrix_bytes + blk.matrix_elems / 32 * 34);
  // LoadModelUnits reads GGUF and JSON alike.
  EXPECT_EQ(LoadModelUnits(test::ModelPath("stories260K.gguf")).units.size(), s.units.size());
  EXPECT_EQ(LoadModelUnits(kFixtures + "paper/llama2-7b-fp32.json").units.size(), 34u);
}

}  // namespace
}  // namespace es::shard
