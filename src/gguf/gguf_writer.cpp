#include "gguf/gguf_writer.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "edgeshard/error.h"

namespace es::gguf {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF is little-endian");

constexpr uint32_t kMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kVersion = 3;
constexpr const char* kAlignmentKey = "general.alignment";

template <typename T>
void Append(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void AppendString(std::vector<uint8_t>& out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

size_t PadTo(size_t n, size_t align) {
  return (n + align - 1) / align * align;
}

// Buffered output to a temporary file that is renamed into place on Commit() and removed
// otherwise.
class OutFile {
 public:
  OutFile(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw Error(path_ + ": cannot create '" + tmp_ + "': " + std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~OutFile() {
    if (f_) {
      std::fclose(f_);
      std::remove(tmp_.c_str());
    }
  }
  void Write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      throw Error(path_ + ": write failed after " + std::to_string(written_) +
                  " bytes: " + std::strerror(errno));
    written_ += n;
  }
  void Zeros(size_t n) {
    static const uint8_t kZero[256] = {};
    while (n) {
      const size_t k = std::min(n, sizeof kZero);
      Write(kZero, k);
      n -= k;
    }
  }
  uint64_t written() const { return written_; }
  void Commit() {
    const bool ok = std::fflush(f_) == 0;
    const int err = errno;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok || !closed) {
      std::remove(tmp_.c_str());
      throw Error(path_ + ": write failed: " + std::strerror(err));
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp_.c_str());
      throw Error(path_ + ": cannot rename '" + tmp_ + "' into place: " + std::strerror(e));
    }
  }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

// Counts what a data callback writes so a short or long tensor is an error, not a broken file.
class CountingSink : public TensorSink {
 public:
  CountingSink(OutFile& out, const std::string& path, const std::string& name, size_t expected)
      : out_(out), path_(path), name_(name), expected_(expected) {}
  void Write(const void* data, size_t n) override {
    if (n > expected_ - got_)
      throw Error(path_ + ": tensor '" + Printable(name_) +
                  "': data callback wrote more than the " + std::to_string(expected_) +
                  " bytes the tensor holds");
    out_.Write(data, n);
    got_ += n;
  }
  size_t got() const { return got_; }

 private:
  OutFile& out_;
  const std::string& path_;
  const std::string& name_;
  size_t expected_;
  size_t got_ = 0;
};

}  // namespace

void Writer::Put(std::string_view key, ValueType type, std::vector<uint8_t> payload) {
  for (auto& e : kv_) {
    if (e.key == key) {
      e.type = type;
      e.payload = std::move(payload);
      return;
    }
  }
  kv_.push_back({std::string(key), type, std::move(payload)});
}

template <typename T>
void Writer::PutScalar(std::string_view key, ValueType type, T v) {
  std::vector<uint8_t> p;
  Append(p, v);
  Put(key, type, std::move(p));
}

template <typename T>
void Writer::PutArray(std::string_view key, ValueType elem, std::span<const T> v) {
  std::vector<uint8_t> p;
  p.reserve(12 + v.size_bytes());
  Append<uint32_t>(p, static_cast<uint32_t>(elem));
  Append<uint64_t>(p, v.size());
  const auto* b = reinterpret_cast<const uint8_t*>(v.data());
  p.insert(p.end(), b, b + v.size_bytes());
  Put(key, ValueType::kArray, std::move(p));
}

void Writer::SetU8(std::string_view k, uint8_t v) {
  PutScalar(k, ValueType::kU8, v);
}
void Writer::SetI8(std::string_view k, int8_t v) {
  PutScalar(k, ValueType::kI8, v);
}
void Writer::SetU16(std::string_view k, uint16_t v) {
  PutScalar(k, ValueType::kU16, v);
}
void Writer::SetI16(std::string_view k, int16_t v) {
  PutScalar(k, ValueType::kI16, v);
}
void Writer::SetU32(std::string_view k, uint32_t v) {
  PutScalar(k, ValueType::kU32, v);
}
void Writer::SetI32(std::string_view k, int32_t v) {
  PutScalar(k, ValueType::kI32, v);
}
void Writer::SetU64(std::string_view k, uint64_t v) {
  PutScalar(k, ValueType::kU64, v);
}
void Writer::SetI64(std::string_view k, int64_t v) {
  PutScalar(k, ValueType::kI64, v);
}
void Writer::SetF32(std::string_view k, float v) {
  PutScalar(k, ValueType::kF32, v);
}
void Writer::SetF64(std::string_view k, double v) {
  PutScalar(k, ValueType::kF64, v);
}
void Writer::SetBool(std::string_view k, bool v) {
  PutScalar<uint8_t>(k, ValueType::kBool, v ? 1 : 0);
}
void Writer::SetString(std::string_view k, std::string_view v) {
  std::vector<uint8_t> p;
  AppendString(p, v);
  Put(k, ValueType::kString, std::move(p));
}

void Writer::SetArray(std::string_view k, std::span<const uint8_t> v) {
  PutArray(k, ValueType::kU8, v);
}
void Writer::SetArray(std::string_view k, std::span<const int8_t> v) {
  PutArray(k, ValueType::kI8, v);
}
void Writer::SetArray(std::string_view k, std::span<const uint16_t> v) {
  PutArray(k, ValueType::kU16, v);
}
void Writer::SetArray(std::string_view k, std::span<const int16_t> v) {
  PutArray(k, ValueType::kI16, v);
}
void Writer::SetArray(std::string_view k, std::span<const uint32_t> v) {
  PutArray(k, ValueType::kU32, v);
}
void Writer::SetArray(std::string_view k, std::span<const int32_t> v) {
  PutArray(k, ValueType::kI32, v);
}
void Writer::SetArray(std::string_view k, std::span<const uint64_t> v) {
  PutArray(k, ValueType::kU64, v);
}
void Writer::SetArray(std::string_view k, std::span<const int64_t> v) {
  PutArray(k, ValueType::kI64, v);
}
void Writer::SetArray(std::string_view k, std::span<const float> v) {
  PutArray(k, ValueType::kF32, v);
}
void Writer::SetArray(std::string_view k, std::span<const double> v) {
  PutArray(k, ValueType::kF64, v);
}

void Writer::SetBoolArray(std::string_view k, const std::vector<bool>& v) {
  std::vector<uint8_t> bytes(v.begin(), v.end());
  PutArray(k, ValueType::kBool, std::span<const uint8_t>(bytes));
}

namespace {
// Payload of a string array whose element i is `at(i)`.
template <typename At>
std::vector<uint8_t> StringArrayPayload(size_t n, const At& at) {
  std::vector<uint8_t> p;
  size_t total = 12;
  for (size_t i = 0; i < n; ++i) total += 8 + at(i).size();
  p.reserve(total);
  Append<uint32_t>(p, static_cast<uint32_t>(ValueType::kString));
  Append<uint64_t>(p, n);
  for (size_t i = 0; i < n; ++i) AppendString(p, at(i));
  return p;
}
}  // namespace

void Writer::SetStringArray(std::string_view k, const std::vector<std::string>& v) {
  Put(k, ValueType::kArray,
      StringArrayPayload(v.size(), [&](size_t i) -> std::string_view { return v[i]; }));
}

void Writer::SetValue(std::string_view key, const Value& v) {
  const std::string k(key);
  if (k == kAlignmentKey && !v.IsArray()) {
    // llama.cpp reads the alignment only as u32, whatever integer type the source used.
    uint64_t a = 0;
    if (auto* i = std::get_if<int64_t>(&v.scalar)) a = *i < 0 ? 0 : static_cast<uint64_t>(*i);
    if (auto* u = std::get_if<uint64_t>(&v.scalar)) a = *u;
    if (a > (1u << 30)) a = 0;
    SetAlignment(static_cast<size_t>(a));
    return;
  }
  switch (v.type) {
    case ValueType::kString:
      SetString(key, std::get<std::string>(v.scalar));
      return;
    case ValueType::kBool:
      SetBool(key, std::get<bool>(v.scalar));
      return;
    case ValueType::kF32:
      SetF32(key, static_cast<float>(std::get<double>(v.scalar)));
      return;
    case ValueType::kF64:
      SetF64(key, std::get<double>(v.scalar));
      return;
    case ValueType::kU64:
      SetU64(key, std::get<uint64_t>(v.scalar));
      return;
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kU16:
    case ValueType::kI16:
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kI64: {
      const int64_t i = std::get<int64_t>(v.scalar);
      std::vector<uint8_t> p;
      Append(p, i);
      p.resize(ValueSize(v.type));  // little-endian: the low bytes are the narrow value
      Put(key, v.type, std::move(p));
      return;
    }
    case ValueType::kArray:
      break;
  }
  if (v.elem_type == ValueType::kString) {
    Put(key, ValueType::kArray,
        StringArrayPayload(v.size(), [&](size_t i) { return v.String(i); }));
    return;
  }
  const size_t es = ValueSize(v.elem_type);
  if (es == 0 || (v.array_len > 0 && v.array_data == nullptr))
    throw Error("gguf writer: metadata '" + Printable(k) + "' is an array of unsupported type " +
                ValueTypeName(v.elem_type));
  std::vector<uint8_t> p;
  p.reserve(12 + v.array_len * es);
  Append<uint32_t>(p, static_cast<uint32_t>(v.elem_type));
  Append<uint64_t>(p, v.array_len);
  if (v.array_len) p.insert(p.end(), v.array_data, v.array_data + v.array_len * es);
  Put(key, ValueType::kArray, std::move(p));
}

void Writer::CopyMetadataFrom(const File& f) {
  for (const auto& key : f.metadata_keys()) SetValue(key, *f.Find(key));
}

bool Writer::Has(std::string_view key) const {
  return std::any_of(kv_.begin(), kv_.end(), [&](const Entry& e) { return e.key == key; });
}

bool Writer::Remove(std::string_view key) {
  auto it = std::find_if(kv_.begin(), kv_.end(), [&](const Entry& e) { return e.key == key; });
  if (it == kv_.end()) return false;
  kv_.erase(it);
  return true;
}

void Writer::SetAlignment(size_t alignment) {
  if (!ValidAlignment(alignment))
    throw Error("gguf writer: alignment " + std::to_string(alignment) +
                " is invalid, expected a power of two from " + std::to_string(kMinAlignment) +
                " to 2^20");
  SetU32(kAlignmentKey, static_cast<uint32_t>(alignment));
}

size_t Writer::alignment() const {
  for (const auto& e : kv_) {
    if (e.key != kAlignmentKey) continue;
    if (e.type != ValueType::kU32)
      throw Error("gguf writer: metadata 'general.alignment' must be uint32, is " +
                  std::string(ValueTypeName(e.type)));
    uint32_t a;
    std::memcpy(&a, e.payload.data(), 4);
    if (!ValidAlignment(a))
      throw Error("gguf writer: metadata 'general.alignment' " + std::to_string(a) +
                  " is not a power of two from " + std::to_string(kMinAlignment) + " to 2^20");
    return a;
  }
  return kDefaultAlignment;
}

size_t Writer::TensorBytes(std::string_view name, const std::vector<int64_t>& dims,
                           TensorType type) {
  const std::string n(name);
  auto traits = GetTypeTraits(static_cast<uint32_t>(type));
  if (!traits)
    throw Error("gguf writer: tensor '" + Printable(n) + "' has unknown type id " +
                std::to_string(static_cast<uint32_t>(type)));
  if (dims.empty() || dims.size() > 4)
    throw Error("gguf writer: tensor '" + Printable(n) + "' has " + std::to_string(dims.size()) +
                " dimensions, expected 1 to 4");
  int64_t n_el = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 1)
      throw Error("gguf writer: tensor '" + Printable(n) + "' dimension " + std::to_string(i) +
                  " is " + std::to_string(dims[i]) + ", expected >= 1");
    if (n_el > std::numeric_limits<int64_t>::max() / dims[i])
      throw Error("gguf writer: tensor '" + Printable(n) + "' element count overflows");
    n_el *= dims[i];
  }
  if (dims[0] % traits->block_elems != 0)
    throw Error("gguf writer: tensor '" + Printable(n) + "' row length " + std::to_string(dims[0]) +
                " is not a multiple of the " + traits->name + " block size " +
                std::to_string(traits->block_elems));
  const int64_t blocks = n_el / traits->block_elems;
  if (blocks > std::numeric_limits<int64_t>::max() / traits->block_bytes)
    throw Error("gguf writer: tensor '" + Printable(n) + "' byte size overflows");
  return static_cast<size_t>(blocks) * static_cast<size_t>(traits->block_bytes);
}

void Writer::AddTensorImpl(std::string_view name, std::vector<int64_t> dims, TensorType type,
                           const void* data, DataFn fill) {
  const std::string n(name);
  if (n.empty() || n.size() > kMaxNameLen)
    throw Error("gguf writer: tensor name '" + Printable(n) + "' must be 1 to " +
                std::to_string(kMaxNameLen) + " bytes long");
  for (const auto& t : tensors_)
    if (t.name == n) throw Error("gguf writer: duplicate tensor name '" + Printable(n) + "'");
  const size_t bytes = TensorBytes(name, dims, type);
  tensors_.push_back({n, std::move(dims), type, bytes, data, std::move(fill)});
}

void Writer::AddTensor(std::string_view name, std::vector<int64_t> dims, TensorType type,
                       const void* data) {
  if (!data) throw Error("gguf writer: tensor '" + Printable(name) + "' has no data");
  AddTensorImpl(name, std::move(dims), type, data, nullptr);
}

void Writer::AddTensor(std::string_view name, std::vector<int64_t> dims, TensorType type,
                       DataFn fill) {
  if (!fill) throw Error("gguf writer: tensor '" + Printable(name) + "' has no data callback");
  AddTensorImpl(name, std::move(dims), type, nullptr, std::move(fill));
}

uint64_t Writer::Write(const std::string& path) const {
  const size_t align = alignment();

  std::vector<uint8_t> head;
  Append<uint32_t>(head, kMagic);
  Append<uint32_t>(head, kVersion);
  Append<uint64_t>(head, tensors_.size());
  Append<uint64_t>(head, kv_.size());
  for (const auto& e : kv_) {
    AppendString(head, e.key);
    Append<uint32_t>(head, static_cast<uint32_t>(e.type));
    head.insert(head.end(), e.payload.begin(), e.payload.end());
  }
  // Each tensor starts at an aligned offset in the data section; the gaps (and the end of the
  // last tensor) are zero-padded to the alignment, as llama.cpp lays files out.
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    AppendString(head, t.name);
    Append<uint32_t>(head, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Append<uint64_t>(head, static_cast<uint64_t>(d));
    Append<uint32_t>(head, static_cast<uint32_t>(t.type));
    Append<uint64_t>(head, offset);
    offset += PadTo(t.n_bytes, align);
  }

  OutFile out(path);
  out.Write(head.data(), head.size());
  // The data section starts aligned. A file without tensors ends with its metadata (as the
  // vocabulary-only files llama.cpp ships do).
  if (!tensors_.empty()) out.Zeros(PadTo(head.size(), align) - head.size());
  for (const auto& t : tensors_) {
    if (t.data) {
      out.Write(t.data, t.n_bytes);
    } else {
      CountingSink sink(out, path, t.name, t.n_bytes);
      t.fill(sink);
      if (sink.got() != t.n_bytes)
        throw Error(path + ": tensor '" + Printable(t.name) + "': data callback wrote " +
                    std::to_string(sink.got()) + " bytes, expected " + std::to_string(t.n_bytes));
    }
    out.Zeros(PadTo(t.n_bytes, align) - t.n_bytes);
  }
  const uint64_t size = out.written();
  out.Commit();
  return size;
}

}  // namespace es::gguf
