// GGUF reader: the input is a whole file. A broken file must give es::Error; one that opens must
// also survive what loading does with its metadata (tokenizer, model hyperparameters).
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "model/model_config.h"
#include "tokenizer/tokenizer.h"

namespace {

// Reads everything the accessors hand out, so a view past the mapping faults here.
size_t Touch(const es::gguf::File& f) {
  size_t sum = f.version() + f.alignment() + f.data_offset();
  for (const auto& key : f.metadata_keys()) {
    const es::gguf::Value* v = f.Find(key);
    if (!v) es::fuzz::Fail("metadata key '" + key + "' is listed but not found");
    // Every element through the accessors (views into the mapping, numbers converted there).
    if (v->IsArray() && v->elem_type == es::gguf::ValueType::kString)
      for (size_t i = 0; i < v->size(); ++i) {
        const std::string_view s = v->String(i);
        sum += s.size() + (s.empty() ? 0 : static_cast<unsigned char>(s.back()));
      }
    else if (v->IsArray() && v->elem_type != es::gguf::ValueType::kArray)
      for (size_t i = 0; i < v->size(); ++i) sum += v->Number(i) > 0;
  }
  for (const auto& t : f.tensors()) {
    sum += t.ShapeString().size() + static_cast<size_t>(t.NumElements() & 1);
    if (t.data && t.n_bytes > 0) {
      if (t.data < f.base() || t.data + t.n_bytes > f.base() + f.file_size())
        es::fuzz::Fail("tensor '" + t.name + "' lies outside the file");
      sum += t.data[0] + t.data[t.n_bytes - 1];
    }
    if (f.FindTensor(t.name) == nullptr) es::fuzz::Fail("tensor '" + t.name + "' not indexed");
  }
  return sum;
}

void UseTokenizer(const es::gguf::File& f) {
  try {
    auto tk = es::tok::Tokenizer::FromGGUF(f);
    const int32_t n = tk->n_vocab();
    auto ids = tk->Encode("Hello world! <s> <|im_start|> 12345 \xe2\x82\xac", true, true);
    for (int32_t id : ids)
      if (id < 0 || id >= n) es::fuzz::Fail("Encode gave id " + std::to_string(id));
    std::vector<int32_t> first;
    for (int32_t id = 0; id < n && id < 64; ++id) first.push_back(id);
    (void)tk->Decode(ids, true);
    (void)tk->Decode(first, true);
    (void)tk->ChatTemplate();
  } catch (const es::Error&) {
  }
}

// Small valid files (the shared models are megabytes, mostly tensor data): stories260K's
// metadata with a few tiny tensors of several types, and a bare llama header.
void WriteSeeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  static const uint8_t zeros[256] = {};
  auto stories = es::gguf::File::Open(es::fuzz::ModelPath("stories260K.gguf"));
  es::gguf::Writer w;
  w.CopyMetadataFrom(*stories);
  w.AddTensor("a.f32", {4, 2}, es::TensorType::kF32, zeros);
  w.AddTensor("b.f16", {32}, es::TensorType::kF16, zeros);
  w.AddTensor("c.q8_0", {32}, es::TensorType::kQ8_0, zeros);
  w.AddTensor("d.q4_0", {32, 2}, es::TensorType::kQ4_0, zeros);
  w.Write(dir + "/stories-metadata.gguf");
  es::gguf::Writer bare;
  bare.SetString("general.architecture", "llama");
  bare.SetU32("llama.block_count", 1);
  bare.SetU32("llama.embedding_length", 8);
  bare.SetU32("llama.attention.head_count", 2);
  bare.SetU32("llama.feed_forward_length", 16);
  bare.SetStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a", "b"});
  bare.SetString("tokenizer.ggml.model", "llama");
  bare.AddTensor("token_embd.weight", {8, 5}, es::TensorType::kF32, zeros);
  bare.Write(dir + "/bare-llama.gguf");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("EDGESHARD_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static es::fuzz::MemFile mem;
  mem.Write(data, size);
  std::unique_ptr<es::gguf::File> f;
  try {
    f = es::gguf::File::Open(mem.path());
  } catch (const es::Error&) {
    return 0;
  }
  volatile size_t sink = Touch(*f);
  (void)sink;
  UseTokenizer(*f);
  try {
    (void)es::model::ReadModelConfig(*f);
  } catch (const es::Error&) {
  }
  return 0;
}
