// GGUF container: a memory-mapped file with typed metadata and a tensor table.
// Every read is bounds-checked; a broken file raises es::Error naming the file and field.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "edgeshard/error.h"
#include "tensor/tensor_types.h"

namespace es::gguf {

enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
const char* ValueTypeName(ValueType t);

// One metadata value. Arrays keep their element type and a view of their elements.
struct Value {
  ValueType type = ValueType::kU8;
  ValueType elem_type = ValueType::kU8;  // for arrays
  // Scalars are widened: integers to int64/uint64, floats to double.
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  std::vector<std::string> strings;  // string arrays
  std::vector<double> numbers;       // numeric arrays (float/int values, exact for |x| < 2^53)
  size_t array_len = 0;
  // Raw little-endian bytes of numeric arrays (for large arrays read without conversion).
  const uint8_t* array_data = nullptr;

  bool IsArray() const { return type == ValueType::kArray; }
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) dimension
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;  // relative to the data section
  size_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping

  int64_t NumElements() const;
  int64_t Rows() const;  // product of dims[1..]
  std::string ShapeString() const;
};

class File {
 public:
  // Opens and validates `path`. Throws es::Error with the file name and the broken field.
  static std::unique_ptr<File> Open(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }
  size_t data_offset() const { return data_offset_; }

  // Metadata.
  bool Has(std::string_view key) const;
  const Value* Find(std::string_view key) const;
  const std::map<std::string, Value, std::less<>>& metadata() const { return kv_; }
  // Metadata keys in the order the file stores them.
  const std::vector<std::string>& metadata_keys() const { return key_order_; }
  // Typed getters: throw es::Error naming the key if missing or of the wrong kind.
  std::string GetString(std::string_view key) const;
  int64_t GetInt(std::string_view key) const;
  double GetFloat(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  std::optional<std::string> GetStringOr(std::string_view key) const;
  std::optional<int64_t> GetIntOr(std::string_view key) const;
  std::optional<double> GetFloatOr(std::string_view key) const;
  std::optional<bool> GetBoolOr(std::string_view key) const;
  const std::vector<std::string>& GetStringArray(std::string_view key) const;
  const std::vector<double>& GetNumberArray(std::string_view key) const;

  // Tensors, in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;
  // Throws es::Error if missing.
  const TensorInfo& GetTensor(std::string_view name) const;

  // Base of the mapping (for zero-copy access).
  const uint8_t* base() const { return base_; }

 private:
  File() = default;
  void Parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::map<std::string, Value, std::less<>> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace es::gguf
