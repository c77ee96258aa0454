#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>

namespace es::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
// Smallest possible tensor info (v1: u32 name length, u32 n_dims, one u32 dim, u32 type,
// u64 offset): bounds the tensor count before anything is reserved for it.
constexpr uint64_t kMinTensorInfoBytes = 24;

// Bounds-checked little-endian cursor over the mapping. `context` names the entry being read
// (a metadata key or a tensor) so every message says where the file is broken.
class Reader {
 public:
  Reader(const uint8_t* base, size_t size, const std::string& path)
      : base_(base), size_(size), limit_(size), path_(path) {}

  // Reads past `limit` (below the file size) fail as over `what_limit` rather than truncated.
  void SetLimit(size_t limit, std::string what_limit) {
    limit_ = std::min(limit, size_);
    what_limit_ = std::move(what_limit);
  }

  void SetContext(std::string c) {
    context_ = std::move(c);
    element_ = -1;
  }
  // Index of the array element being read, reported in messages (-1: none).
  void SetElement(int64_t i) { element_ = i; }

  [[noreturn]] void Fail(const std::string& what) const {
    std::ostringstream os;
    os << path_ << ": ";
    if (!context_.empty()) os << context_;
    if (element_ >= 0) os << " element #" << element_;
    if (!context_.empty()) os << ": ";
    os << what << " (at byte offset " << pos_ << " of " << size_ << ")";
    throw Error(os.str());
  }
  void Need(uint64_t n, const char* what) {
    if (n > size_ - pos_) Fail(std::string("file is truncated while reading the ") + what);
    if (n > limit_ - pos_) Fail(std::string("the ") + what + " crosses " + what_limit_);
  }
  template <typename T>
  T Read(const char* what) {
    Need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint64_t ReadCount(uint32_t version, const char* what) {
    return version == 1 ? Read<uint32_t>(what) : Read<uint64_t>(what);
  }
  // Reads a string of at most `max_len` bytes; returns its characters in the mapping.
  std::string_view ReadStringView(uint32_t version, const char* what, uint64_t max_len) {
    const uint64_t len = ReadCount(version, what);
    if (len > max_len)
      Fail(std::string(what) + " has string length " + std::to_string(len) +
           ", over the limit of " + std::to_string(max_len) + " bytes (corrupt file?)");
    Need(len, what);
    std::string_view s(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return s;
  }
  std::string ReadString(uint32_t version, const char* what, uint64_t max_len) {
    return std::string(ReadStringView(version, what, max_len));
  }
  // `n` elements of at least `each` bytes: checked before anything is reserved for them.
  void NeedElements(uint64_t n, uint64_t each, const std::string& what) {
    if (n > (size_ - pos_) / each) Fail(what + " exceeds what the file can hold (truncated?)");
    if (n > (limit_ - pos_) / each) Fail(what + " crosses " + what_limit_);
  }
  const uint8_t* Here() const { return base_ + pos_; }
  void Skip(uint64_t n, const char* what) {
    Need(n, what);
    pos_ += n;
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return limit_ - pos_; }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t limit_;
  std::string what_limit_;
  size_t pos_ = 0;
  const std::string& path_;
  std::string context_;
  int64_t element_ = -1;
};

template <typename T>
double Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return static_cast<double>(v);
}

double ReadNumberAt(const uint8_t* p, ValueType t) {
  switch (t) {
    case ValueType::kU8:
      return *p;
    case ValueType::kI8:
      return static_cast<int8_t>(*p);
    case ValueType::kBool:
      return *p != 0;
    case ValueType::kU16:
      return Load<uint16_t>(p);
    case ValueType::kI16:
      return Load<int16_t>(p);
    case ValueType::kU32:
      return Load<uint32_t>(p);
    case ValueType::kI32:
      return Load<int32_t>(p);
    case ValueType::kF32:
      return Load<float>(p);
    case ValueType::kU64:
      return Load<uint64_t>(p);
    case ValueType::kI64:
      return Load<int64_t>(p);
    case ValueType::kF64:
      return Load<double>(p);
    default:
      return 0;
  }
}

// Length of the valid UTF-8 sequence `s` starts with, other than a C1 control (U+0080..U+009F,
// which some terminals obey like ESC sequences); 0 if there is none.
size_t Utf8SequenceLength(std::string_view s) {
  const auto c = static_cast<unsigned char>(s[0]);
  const size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xf0 && c <= 0xf4 ? 4
                                              : 0;
  if (len == 0 || len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[k]);
    unsigned char lo = 0x80, hi = 0xbf;
    if (k == 1 && c == 0xc2) lo = 0xa0;  // C1 controls
    if (k == 1 && c == 0xe0) lo = 0xa0;  // overlong
    if (k == 1 && c == 0xed) hi = 0x9f;  // surrogates
    if (k == 1 && c == 0xf0) lo = 0x90;  // overlong
    if (k == 1 && c == 0xf4) hi = 0x8f;  // above U+10FFFF
    if (b < lo || b > hi) return 0;
  }
  return len;
}

bool ValidValueType(uint32_t t) {
  return t <= static_cast<uint32_t>(ValueType::kF64);
}

}  // namespace

std::string Printable(std::string_view s, size_t max_bytes) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  size_t i = 0;
  while (i < s.size() && i < max_bytes) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      if (c == '\\') out += '\\';
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    const size_t len = Utf8SequenceLength(s.substr(i));
    if (len > 0) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
      ++i;
    }
  }
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

double Value::Number(size_t i) const {
  return ReadNumberAt(array_data + i * ValueSize(elem_type), elem_type);
}

std::string_view Value::String(size_t i) const {
  const uint32_t start = string_starts[i];
  return {reinterpret_cast<const char*>(array_data) + start,
          string_starts[i + 1] - string_len_bytes - start};
}

std::vector<double> Value::Numbers() const {
  std::vector<double> v;
  if (!IsArray() || elem_type == ValueType::kString) return v;
  v.reserve(array_len);
  for (size_t i = 0; i < array_len; ++i) v.push_back(Number(i));
  return v;
}

std::vector<std::string> Value::Strings() const {
  std::vector<std::string> v;
  if (!IsArray() || elem_type != ValueType::kString) return v;
  v.reserve(array_len);
  for (size_t i = 0; i < array_len; ++i) v.emplace_back(String(i));
  return v;
}

size_t ValueSize(ValueType t) {
  switch (t) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool:
      return 1;
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    default:
      return 0;
  }
}

const char* ValueTypeName(ValueType t) {
  static const char* names[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                "int32",  "float32", "bool",   "string", "array",
                                "uint64", "int64",   "float64"};
  auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "unknown";
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (auto d : dims) n *= d;
  return n;
}

int64_t TensorInfo::Rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < dims.size(); ++i) n *= dims[i];
  return n;
}

std::string TensorInfo::ShapeString() const {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::unique_ptr<File> File::Open(const std::string& path, bool use_mmap) {
  std::unique_ptr<File> f(new File());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) throw Error(path + ": cannot open model file: " + std::strerror(errno));
  struct stat st {};
  if (fstat(f->fd_, &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw Error(path + ": is a directory, expected a .gguf file");
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ < 8)
    throw Error(path + ": file is too small to be GGUF (" + std::to_string(f->size_) + " bytes)");
  if (use_mmap) {
    void* m = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, f->fd_, 0);
    if (m == MAP_FAILED) throw Error(path + ": cannot mmap: " + std::strerror(errno));
    f->base_ = static_cast<const uint8_t*>(m);
  } else {
    // Anonymous pages rather than malloc: the destructor unmaps either kind alike, and the
    // model can still release pages of weights it copied (MADV_DONTNEED).
    void* m = mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
      throw Error(path + ": --no-mmap: cannot allocate " + std::to_string(f->size_) +
                  " bytes to read the model into (" + std::strerror(errno) +
                  "); run without --no-mmap to map the file instead");
    f->base_ = static_cast<const uint8_t*>(m);
    f->mapped_ = false;
    auto* dst = static_cast<uint8_t*>(m);
    for (size_t done = 0; done < f->size_;) {
      const ssize_t n = pread(f->fd_, dst + done, f->size_ - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw Error(path + ": cannot read the model file at byte " + std::to_string(done) + ": " +
                    (n < 0 ? std::strerror(errno) : "unexpected end of file"));
      done += static_cast<size_t>(n);
    }
    mprotect(m, f->size_, PROT_READ);  // as a mapping: a stray write faults
  }
  f->Parse();
  return f;
}

File::~File() {
  if (base_) munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void File::Parse() {
  Reader r(base_, size_, path_);
  r.SetContext("header");
  const uint32_t magic = r.Read<uint32_t>("magic");
  if (magic != kMagic) {
    std::string got(reinterpret_cast<const char*>(base_), 4);
    for (auto& c : got)
      if (c < 32 || c > 126) c = '?';
    r.Fail("bad magic '" + got + "', expected 'GGUF' (is this a GGUF model file?)");
  }
  version_ = r.Read<uint32_t>("version");
  if (version_ < 1 || version_ > 3)
    r.Fail("unsupported GGUF version " + std::to_string(version_) + ", expected 1, 2 or 3");
  const uint64_t n_tensors = r.ReadCount(version_, "tensor count");
  const uint64_t n_kv = r.ReadCount(version_, "metadata count");
  // Every entry needs several bytes, so counts beyond what the rest of the file holds are
  // corrupt; checking first keeps a corrupt count from reserving gigabytes.
  if (n_tensors > r.remaining() / kMinTensorInfoBytes)
    r.Fail("tensor count " + std::to_string(n_tensors) + " exceeds what the file can hold");
  if (n_tensors > kMaxTensors)
    r.Fail("tensor count " + std::to_string(n_tensors) + " is over the limit of " +
           std::to_string(kMaxTensors));
  if (n_kv > r.remaining() / 8)
    r.Fail("metadata count " + std::to_string(n_kv) + " exceeds what the file can hold");
  if (n_kv > kMaxMetadataEntries)
    r.Fail("metadata count " + std::to_string(n_kv) + " is over the limit of " +
           std::to_string(kMaxMetadataEntries));

  r.SetLimit(kMaxMetadataBytes, "the limit of " + std::to_string(kMaxMetadataBytes >> 20) +
                                    " MiB for the header and metadata (corrupt file?)");
  const uint8_t len_bytes = version_ == 1 ? 4 : 8;
  for (uint64_t i = 0; i < n_kv; ++i) {
    r.SetContext("metadata entry #" + std::to_string(i));
    std::string key = r.ReadString(version_, "key", kMaxKeyBytes);
    r.SetContext("metadata '" + Printable(key) + "'");
    const uint32_t vt = r.Read<uint32_t>("value type");
    if (!ValidValueType(vt)) r.Fail("unknown value type " + std::to_string(vt));
    Value v;
    v.type = static_cast<ValueType>(vt);
    if (v.type == ValueType::kString) {
      v.scalar = r.ReadString(version_, "string value", kMaxStringBytes);
    } else if (v.type == ValueType::kArray) {
      const uint32_t et = r.Read<uint32_t>("array element type");
      if (!ValidValueType(et) || et == static_cast<uint32_t>(ValueType::kArray))
        r.Fail("unsupported array element type " + std::to_string(et));
      v.elem_type = static_cast<ValueType>(et);
      const uint64_t n = r.ReadCount(version_, "array length");
      const std::string what =
          "array length " + std::to_string(n) + " of " + ValueTypeName(v.elem_type);
      v.array_data = r.Here();
      if (v.elem_type == ValueType::kString) {
        // Each string needs at least its length field.
        r.NeedElements(n, len_bytes, what);
        v.string_len_bytes = len_bytes;
        v.string_starts.reserve(n + 1);
        for (uint64_t j = 0; j < n; ++j) {
          r.SetElement(static_cast<int64_t>(j));
          const std::string_view e = r.ReadStringView(version_, "string", kMaxStringBytes);
          v.string_starts.push_back(
              static_cast<uint32_t>(e.data() - reinterpret_cast<const char*>(v.array_data)));
        }
        r.SetElement(-1);
        v.string_starts.push_back(static_cast<uint32_t>(r.Here() - v.array_data + len_bytes));
      } else {
        const size_t es = ValueSize(v.elem_type);
        r.NeedElements(n, es, what);
        r.Skip(n * es, "array data");
      }
      v.array_len = n;
    } else {
      const size_t es = ValueSize(v.type);
      r.Need(es, "value");
      const uint8_t* p = r.Here();
      switch (v.type) {
        case ValueType::kBool:
          v.scalar = (*p != 0);
          break;
        case ValueType::kF32:
        case ValueType::kF64:
          v.scalar = ReadNumberAt(p, v.type);
          break;
        case ValueType::kU64: {
          uint64_t u;
          std::memcpy(&u, p, 8);
          v.scalar = u;
          break;
        }
        case ValueType::kI64: {  // not through double: that loses bits above 2^53
          int64_t x;
          std::memcpy(&x, p, 8);
          v.scalar = x;
          break;
        }
        default:  // 8- to 32-bit integers are exact in a double
          v.scalar = static_cast<int64_t>(ReadNumberAt(p, v.type));
          break;
      }
      r.Skip(es, "value");
    }
    if (kv_.count(key)) r.Fail("duplicate metadata key");
    key_order_.push_back(key);
    kv_.emplace(std::move(key), std::move(v));
  }
  r.SetLimit(size_, "");
  ReadAlignment();

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    r.SetContext("tensor #" + std::to_string(i));
    t.name = r.ReadString(version_, "name", kMaxTensorNameBytes);
    r.SetContext("tensor '" + Printable(t.name) + "'");
    const uint32_t nd = r.Read<uint32_t>("dimension count");
    if (nd == 0 || nd > kMaxDims)
      r.Fail("has " + std::to_string(nd) + " dimensions, expected 1 to " +
             std::to_string(kMaxDims));
    int64_t n_el = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t dim = r.ReadCount(version_, "dimensions");
      if (dim == 0 || dim > kMaxDim)
        r.Fail("dimension " + std::to_string(d) + " is " + std::to_string(dim) +
               ", expected 1 to 2^40");
      if (n_el > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(dim))
        r.Fail("element count overflows (dimension " + std::to_string(d) + " is " +
               std::to_string(dim) + ")");
      n_el *= static_cast<int64_t>(dim);
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type_id = r.Read<uint32_t>("type");
    auto traits = GetTypeTraits(type_id);
    if (!traits) r.Fail("unknown tensor type id " + std::to_string(type_id));
    t.type = static_cast<TensorType>(type_id);
    if (t.dims[0] % traits->block_elems != 0)
      r.Fail("row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
             traits->name + " block size " + std::to_string(traits->block_elems));
    t.offset = r.Read<uint64_t>("data offset");
    const int64_t blocks = n_el / traits->block_elems;
    if (blocks > std::numeric_limits<int64_t>::max() / traits->block_bytes)
      r.Fail("byte size overflows");
    t.n_bytes = static_cast<size_t>(blocks) * traits->block_bytes;
    if (tensor_index_.count(t.name)) r.Fail("duplicate tensor name");
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_offset_ > size_)
    throw Error(path_ + ": file is truncated before the tensor data section (expected at byte " +
                std::to_string(data_offset_) + ", file has " + std::to_string(size_) + ")");
  for (auto& t : tensors_) {
    const std::string name = Printable(t.name);
    if (t.offset % alignment_ != 0)
      throw Error(path_ + ": tensor '" + name + "' data offset " + std::to_string(t.offset) +
                  " is not aligned to " + std::to_string(alignment_));
    if (t.offset > size_ - data_offset_ || t.n_bytes > size_ - data_offset_ - t.offset)
      throw Error(path_ + ": tensor '" + name + "' " + t.ShapeString() + " of type " +
                  TypeName(t.type) + " needs " + std::to_string(t.n_bytes) +
                  " bytes at data offset " + std::to_string(t.offset) +
                  " (data section starts at byte " + std::to_string(data_offset_) +
                  ") but the file ends at byte " + std::to_string(size_) +
                  " (truncated, or a corrupt data offset)");
    // The mapping is page-aligned, so an aligned file offset is an aligned address.
    t.data = base_ + data_offset_ + t.offset;
  }
}

void File::ReadAlignment() {
  const Value* a = Find("general.alignment");
  if (!a) return;
  uint64_t al = 0;
  std::string got = std::string("a ") + ValueTypeName(a->type);
  if (a->type == ValueType::kU32 || a->type == ValueType::kI32) {
    const int64_t i = std::get<int64_t>(a->scalar);
    al = i < 0 ? 0 : static_cast<uint64_t>(i);
    got = std::to_string(i);
  } else if (a->type == ValueType::kU64) {
    al = std::get<uint64_t>(a->scalar);
    got = std::to_string(al);
  }
  if (!ValidAlignment(al))
    throw Error(path_ + ": metadata 'general.alignment' must be an integer power of two from " +
                std::to_string(kMinAlignment) + " to 2^20 (tensor data is read in place and " +
                "needs aligned elements), got " + got +
                "; rewrite the file with the default alignment 32");
  alignment_ = static_cast<size_t>(al);
}

bool File::Has(std::string_view key) const {
  return kv_.find(key) != kv_.end();
}

const Value* File::Find(std::string_view key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
[[noreturn]] void KeyError(const std::string& path, std::string_view key, const std::string& what) {
  throw Error(path + ": metadata '" + Printable(key) + "' " + what);
}
}  // namespace

std::optional<std::string> File::GetStringOr(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::kString)
    KeyError(path_, key, std::string("is ") + ValueTypeName(v->type) + ", expected string");
  return std::get<std::string>(v->scalar);
}

std::optional<int64_t> File::GetIntOr(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return std::nullopt;
  if (auto* i = std::get_if<int64_t>(&v->scalar)) return *i;
  if (auto* u = std::get_if<uint64_t>(&v->scalar)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      KeyError(path_, key, "is out of range");
    return static_cast<int64_t>(*u);
  }
  KeyError(path_, key, std::string("is ") + ValueTypeName(v->type) + ", expected an integer");
}

std::optional<double> File::GetFloatOr(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return std::nullopt;
  if (auto* d = std::get_if<double>(&v->scalar)) return *d;
  if (auto* i = std::get_if<int64_t>(&v->scalar)) return static_cast<double>(*i);
  if (auto* u = std::get_if<uint64_t>(&v->scalar)) return static_cast<double>(*u);
  KeyError(path_, key, std::string("is ") + ValueTypeName(v->type) + ", expected a number");
}

std::optional<bool> File::GetBoolOr(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) return std::nullopt;
  if (auto* b = std::get_if<bool>(&v->scalar)) return *b;
  KeyError(path_, key, std::string("is ") + ValueTypeName(v->type) + ", expected bool");
}

std::string File::GetString(std::string_view key) const {
  auto v = GetStringOr(key);
  if (!v) KeyError(path_, key, "is missing");
  return *v;
}
int64_t File::GetInt(std::string_view key) const {
  auto v = GetIntOr(key);
  if (!v) KeyError(path_, key, "is missing");
  return *v;
}
double File::GetFloat(std::string_view key) const {
  auto v = GetFloatOr(key);
  if (!v) KeyError(path_, key, "is missing");
  return *v;
}
bool File::GetBool(std::string_view key) const {
  auto v = GetBoolOr(key);
  if (!v) KeyError(path_, key, "is missing");
  return *v;
}

const Value& File::GetStringArray(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) KeyError(path_, key, "is missing");
  if (!v->IsArray() || v->elem_type != ValueType::kString)
    KeyError(path_, key, "is not an array of strings");
  return *v;
}

const Value& File::GetNumberArray(std::string_view key) const {
  const Value* v = Find(key);
  if (!v) KeyError(path_, key, "is missing");
  if (!v->IsArray() || v->elem_type == ValueType::kString)
    KeyError(path_, key, "is not a numeric array");
  return *v;
}

const TensorInfo* File::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::GetTensor(std::string_view name) const {
  const TensorInfo* t = FindTensor(name);
  if (!t) throw Error(path_ + ": required tensor '" + Printable(name) + "' is missing");
  return *t;
}

}  // namespace es::gguf
