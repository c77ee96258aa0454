// GGUF reader: the input is a whole file. A broken file must give es::Error; one that opens must
// also survive what loading does with its metadata (tokenizer, model hyperparameters).
#include <cstdint>
#include <memory>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "gguf/gguf_file.h"
#include "model/model_config.h"
#include "tokenizer/tokenizer.h"

namespace {

// Reads everything the accessors hand out, so a view past the mapping faults here.
size_t Touch(const es::gguf::File& f) {
  size_t sum = f.version() + f.alignment() + f.data_offset();
  for (const auto& key : f.metadata_keys()) {
    const es::gguf::Value* v = f.Find(key);
    if (!v) es::fuzz::Fail("metadata key '" + key + "' is listed but not found");
    for (const auto& s : v->strings) sum += s.size();
    for (double x : v->numbers) sum += x > 0;
    if (v->array_data && v->array_len > 0) sum += v->array_data[0];
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

}  // namespace

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
