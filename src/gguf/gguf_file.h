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
// Bytes of one value of scalar type `t` in a file; 0 for strings and arrays.
size_t ValueSize(ValueType t);

// Limits on what a file may declare, enforced by File::Open with an error naming the entry and
// the limit. Every real model fits them with room to spare; they bound what a corrupt or hostile
// file (workers open pushed files with this same reader) can cost in memory and time.
// Tensor data must be readable in place: the kernels read elements up to 8 bytes wide (f64/i64)
// with plain loads, which need natural alignment. llama.cpp writes 32 by default.
constexpr size_t kMinAlignment = 8;
constexpr size_t kMaxAlignment = size_t{1} << 20;
inline bool ValidAlignment(uint64_t a) {
  return a >= kMinAlignment && a <= kMaxAlignment && (a & (a - 1)) == 0;
}
constexpr uint64_t kMaxKeyBytes = 64 * 1024;          // a metadata key
constexpr uint64_t kMaxStringBytes = 64ull << 20;     // a string value or array element
constexpr uint64_t kMaxMetadataBytes = 256ull << 20;  // header and all metadata entries
constexpr uint64_t kMaxMetadataEntries = 1 << 16;
constexpr uint64_t kMaxTensors = 1 << 16;
constexpr uint64_t kMaxTensorNameBytes = 256;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxDim = 1ull << 40;

// `s` fit for an error or log message: control characters, DEL, NUL, backslash and bytes that are
// not valid UTF-8 escaped as \xNN, cut after `max_bytes` of input with "...". File contents must
// not drive the reader's terminal or cut the message short.
std::string Printable(std::string_view s, size_t max_bytes = 200);

// One metadata value. Arrays stay in the mapping and are converted on access, so metadata costs
// about its file size in memory whatever its element type.
struct Value {
  ValueType type = ValueType::kU8;
  ValueType elem_type = ValueType::kU8;  // for arrays
  // Scalars are widened: integers to int64/uint64, floats to double.
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  size_t array_len = 0;
  // First element of an array in the mapping (raw little-endian bytes for numeric arrays).
  const uint8_t* array_data = nullptr;
  // String arrays: where element i's characters start, relative to array_data, plus one entry
  // past the end. 4 bytes per element: no more than the length field each element has in the
  // file, and arrays are far below 4 GiB (kMaxMetadataBytes).
  std::vector<uint32_t> string_starts;
  uint8_t string_len_bytes = 8;  // width of each element's length field (4 in GGUF v1)

  bool IsArray() const { return type == ValueType::kArray; }
  size_t size() const { return array_len; }
  // Element i of a numeric array, widened (exact for |x| < 2^53). i < size().
  double Number(size_t i) const;
  // Element i of a string array, viewing the mapping (valid while the File lives). i < size().
  std::string_view String(size_t i) const;
  // Copies of the whole array; for small arrays and tests.
  std::vector<double> Numbers() const;
  std::vector<std::string> Strings() const;
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
  // use_mmap false (--no-mmap) reads the whole file into anonymous memory instead of mapping
  // it: every byte is then resident, and released pages read back as zeros (see mapped()).
  static std::unique_ptr<File> Open(const std::string& path, bool use_mmap = true);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }
  size_t data_offset() const { return data_offset_; }
  // True when tensor data is a mapping of the file: pages dropped with madvise(MADV_DONTNEED)
  // fault back in from the file. False after --no-mmap, where they would read back as zeros.
  bool mapped() const { return mapped_; }

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
  // Arrays (read elements with Value::String / Value::Number); throw if missing or of the wrong
  // element kind.
  const Value& GetStringArray(std::string_view key) const;
  const Value& GetNumberArray(std::string_view key) const;

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
  void ReadAlignment();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = true;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::map<std::string, Value, std::less<>> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace es::gguf
