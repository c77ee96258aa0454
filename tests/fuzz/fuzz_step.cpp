// The worker's step decoder: input bytes become rpc::Steps and run through a StageExecutor over
// stories260K the way ShardWorker's stream does (row count check, DecodeActivations, Run). An
// invalid step must give es::Error, never a crash, an abort or a huge allocation.
//
// Input: a flags byte, then up to kMaxSteps chunks of [u16 length][serialized Step]. Flags pick
// the stage (low 2 bits) and, with 0x04, fill the activations from the input instead of
// decoding step.hidden (a fuzzer rarely guesses its exact size, and the blocks are the point).
// EDGESHARD_FUZZ_WRITE_SEEDS=DIR writes a few valid inputs to DIR and exits.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "kernels/kernels.h"
#include "model/model_llama.h"
#include "shard/shard_dist_stage.h"

namespace {

namespace rpc = edgeshard::rpc;
using es::shard::StageExecutor;
using es::shard::StageSpec;

constexpr int kMaxSteps = 4;
constexpr int kCtx = 32;

struct Stages {
  std::unique_ptr<es::model::LlamaModel> model;
  es::kernels::ThreadPool pool{1};
  std::vector<std::unique_ptr<StageExecutor>> exec;
};

// Never destroyed: libFuzzer leaves through exit() on many paths, and the pool's threads must
// not be joined from static destructors there.
Stages& Get() {
  static Stages* s = [] {
    auto* st = new Stages;
    st->model =
        es::model::LlamaModel::Load(es::fuzz::ModelPath("stories260K.gguf"),
                                    {.progress = {}, .prefault = false, .interleave = false});
    const int L = st->model->config().n_layer;
    // A whole model with the head, a middle stage, a last stage, and a head-only stage.
    const StageSpec specs[] = {
        {.first_layer = 0, .last_layer = L, .head = true, .n_ctx = kCtx, .max_batch = 8},
        {.first_layer = 1, .last_layer = 3, .n_ctx = kCtx, .max_batch = 4},
        {.first_layer = 3,
         .last_layer = L,
         .head = true,
         .n_ctx = kCtx,
         .kv_type = es::TensorType::kF32,
         .max_batch = 4},
        {.first_layer = L, .last_layer = L, .head = true, .n_ctx = kCtx, .max_batch = 2}};
    for (const auto& sp : specs)
      st->exec.push_back(std::make_unique<StageExecutor>(*st->model, sp, st->pool));
    return st;
  }();
  return *s;
}

// The worker's handling of one step (shard_worker.cpp, Stream) minus the transport.
void RunStep(StageExecutor& ex, const rpc::Step& step, bool fill, const uint8_t* data,
             size_t size) {
  const size_t d = Get().model->config().n_embd;
  int64_t rows = 0;
  for (const auto& s : step.segments()) rows += s.n_tokens();
  if (rows < 1 || rows > ex.max_batch()) return;  // the worker refuses these before Run
  std::vector<float> hidden(static_cast<size_t>(rows) * d);
  if (fill) {
    for (size_t i = 0; i < hidden.size(); ++i)
      hidden[i] = size ? (static_cast<int>(data[i % size]) - 128) / 64.0f : 0.0f;
  } else {
    es::shard::DecodeActivations(step.hidden(), step.wire(), hidden.data(), hidden.size());
  }
  StageExecutor::Output out = ex.Run(step, {}, hidden);
  const int32_t n_vocab = Get().model->config().n_vocab;
  for (int32_t t : out.tokens)
    if (t < 0 || t >= n_vocab) es::fuzz::Fail("sampled token " + std::to_string(t));
  if (out.tokens.size() != out.sequences.size()) es::fuzz::Fail("tokens and sequences differ");
  if (out.logits.size() % n_vocab != 0) es::fuzz::Fail("logits not a multiple of n_vocab");
}

void AddChunk(std::string& input, const rpc::Step& step) {
  const std::string b = step.SerializeAsString();
  input += static_cast<char>(b.size() & 0xFF);
  input += static_cast<char>(b.size() >> 8);
  input += b;
}

// Valid conversations: a prompt step then decode steps, for each stage kind.
void WriteSeeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const size_t d = Get().model->config().n_embd;
  for (int stage = 0; stage < 4; ++stage) {
    for (int wire = 0; wire < 2; ++wire) {
      std::string input(1, static_cast<char>(stage | (wire ? 0 : 0x04)));
      for (int k = 0; k < 3; ++k) {
        rpc::Step step;
        step.set_id(k + 1);
        step.set_wire(wire ? rpc::WIRE_F32 : rpc::WIRE_F16);
        auto* seg = step.add_segments();
        seg->set_sequence(7);
        seg->set_pos(k == 0 ? 0 : k + 1);
        seg->set_n_tokens(k == 0 ? 2 : 1);
        seg->set_sample(true);
        seg->set_want_logits(k == 2);
        if (k == 0) seg->mutable_sampling()->set_temperature(wire ? 0.8f : 0.0f);
        if (k == 0) seg->mutable_sampling()->set_top_k(40);
        if (k > 0) seg->add_accept(5);
        if (k == 2) {  // a second sequence joins the batch
          auto* s2 = step.add_segments();
          s2->set_sequence(9);
          s2->set_n_tokens(1);
          s2->set_sample(true);
          s2->mutable_sampling()->set_penalty_last_n(8);
          s2->mutable_sampling()->set_repeat_penalty(1.1f);
        }
        int64_t rows = 0;
        for (const auto& s : step.segments()) rows += s.n_tokens();
        const std::vector<float> h(rows * d, 0.25f);
        step.set_hidden(es::shard::EncodeActivations(h.data(), h.size(), step.wire()));
        AddChunk(input, step);
      }
      std::ofstream(dir + "/step-" + std::to_string(stage) + "-" + std::to_string(wire),
                    std::ios::binary)
          << input;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Parse failures (invalid UTF-8 in string fields) are expected here; their log is noise.
  google::protobuf::SetLogHandler(nullptr);
  Get();
  if (const char* dir = std::getenv("EDGESHARD_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Stages& st = Get();
  StageExecutor& ex = *st.exec[data[0] & 3];
  const bool fill = data[0] & 0x04;
  size_t at = 1;
  for (int k = 0; k < kMaxSteps && at + 2 <= size; ++k) {
    const size_t len = std::min<size_t>(data[at] | data[at + 1] << 8, size - at - 2);
    rpc::Step step;
    const bool parsed = step.ParseFromArray(data + at + 2, static_cast<int>(len));
    at += 2 + len;
    if (!parsed) break;
    if (!step.error().empty()) continue;  // the worker only passes failed steps on
    try {
      RunStep(ex, step, fill, data, size);
    } catch (const es::Error&) {
    }
  }
  // Each input starts from empty caches, so a crash reproduces from its input alone.
  ex.ReleaseAll();
  return 0;
}
