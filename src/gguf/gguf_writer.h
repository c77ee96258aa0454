// GGUF v3 writer: typed metadata in insertion order and a tensor table whose data is streamed
// to disk one tensor at a time (from a caller's buffer or a callback), laid out and padded the
// way llama.cpp writes and expects it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf_file.h"
#include "tensor/tensor_types.h"

namespace es::gguf {

// Receives one tensor's bytes from a data callback, in order, in pieces of any size.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void Write(const void* data, size_t n) = 0;
};

class Writer {
 public:
  // Called once, during Write(), to produce a tensor's bytes; it must write exactly the
  // tensor's byte size to the sink.
  using DataFn = std::function<void(TensorSink&)>;

  static constexpr size_t kDefaultAlignment = 32;
  static constexpr size_t kMaxNameLen = 63;  // llama.cpp's tensor name limit (64 with the NUL)

  Writer() = default;

  // Metadata. Setting an existing key replaces its value and keeps its position.
  void SetU8(std::string_view key, uint8_t v);
  void SetI8(std::string_view key, int8_t v);
  void SetU16(std::string_view key, uint16_t v);
  void SetI16(std::string_view key, int16_t v);
  void SetU32(std::string_view key, uint32_t v);
  void SetI32(std::string_view key, int32_t v);
  void SetU64(std::string_view key, uint64_t v);
  void SetI64(std::string_view key, int64_t v);
  void SetF32(std::string_view key, float v);
  void SetF64(std::string_view key, double v);
  void SetBool(std::string_view key, bool v);
  void SetString(std::string_view key, std::string_view v);
  void SetArray(std::string_view key, std::span<const uint8_t> v);
  void SetArray(std::string_view key, std::span<const int8_t> v);
  void SetArray(std::string_view key, std::span<const uint16_t> v);
  void SetArray(std::string_view key, std::span<const int16_t> v);
  void SetArray(std::string_view key, std::span<const uint32_t> v);
  void SetArray(std::string_view key, std::span<const int32_t> v);
  void SetArray(std::string_view key, std::span<const uint64_t> v);
  void SetArray(std::string_view key, std::span<const int64_t> v);
  void SetArray(std::string_view key, std::span<const float> v);
  void SetArray(std::string_view key, std::span<const double> v);
  void SetBoolArray(std::string_view key, const std::vector<bool>& v);
  void SetStringArray(std::string_view key, const std::vector<std::string>& v);
  // A value read from a File, re-encoded with its original type (arrays byte-exact).
  void SetValue(std::string_view key, const Value& v);
  // Every metadata entry of `f`, in file order (general.alignment included).
  void CopyMetadataFrom(const File& f);
  bool Has(std::string_view key) const;
  bool Remove(std::string_view key);
  size_t n_metadata() const { return kv_.size(); }

  // Data alignment; also stored as general.alignment (u32). Must be a power of two.
  void SetAlignment(size_t alignment);
  // general.alignment if set (validated at Write), else 32.
  size_t alignment() const;

  // Tensors, written in the order added. `data` must stay valid until Write() returns and
  // hold the tensor's full byte size. Throws es::Error for bad names, shapes or duplicates.
  void AddTensor(std::string_view name, std::vector<int64_t> dims, TensorType type,
                 const void* data);
  void AddTensor(std::string_view name, std::vector<int64_t> dims, TensorType type, DataFn fill);
  size_t n_tensors() const { return tensors_.size(); }
  // Bytes of a tensor of this shape and type (validated like AddTensor).
  static size_t TensorBytes(std::string_view name, const std::vector<int64_t>& dims,
                            TensorType type);

  // Writes the file: first to `path`.tmp, renamed over `path` only when complete, so a failure
  // never leaves a partial model behind. Throws es::Error naming the file on I/O errors or
  // when a data callback writes the wrong number of bytes. Returns the file size.
  uint64_t Write(const std::string& path) const;

 private:
  struct Entry {
    std::string key;
    ValueType type;
    std::vector<uint8_t> payload;  // encoded value as stored after the type field
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    TensorType type;
    size_t n_bytes;
    const void* data;
    DataFn fill;
  };
  void Put(std::string_view key, ValueType type, std::vector<uint8_t> payload);
  template <typename T>
  void PutScalar(std::string_view key, ValueType type, T v);
  template <typename T>
  void PutArray(std::string_view key, ValueType elem, std::span<const T> v);
  void AddTensorImpl(std::string_view name, std::vector<int64_t> dims, TensorType type,
                     const void* data, DataFn fill);

  std::vector<Entry> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace es::gguf
