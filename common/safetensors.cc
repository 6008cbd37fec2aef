#include "common/safetensors.h"

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cc copies raw bytes and assumes a little-endian host"
#endif

namespace offsite {
namespace {

using Json = nlohmann::json;

// The reference implementation's limit; it keeps a hostile header from costing gigabytes.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";
constexpr size_t kMaxQuoted = 120;

struct DtypeInfo {
  const char* name;
  c10::ScalarType type;
  uint64_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", c10::ScalarType::Double, 8}, {"F32", c10::ScalarType::Float, 4},
    {"F16", c10::ScalarType::Half, 2},   {"BF16", c10::ScalarType::BFloat16, 2},
    {"I64", c10::ScalarType::Long, 8},   {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},  {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},    {"BOOL", c10::ScalarType::Bool, 1},
};

const DtypeInfo* DtypeByName(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* DtypeByType(c10::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// `s` in double quotes, cut short so a hostile name cannot flood a log line.
std::string Quote(absl::string_view s) {
  if (s.size() <= kMaxQuoted) return absl::StrCat("\"", s, "\"");
  return absl::StrCat("\"", s.substr(0, kMaxQuoted), "...\"");
}

// A JSON value as text for an error message, cut short likewise.
std::string Show(const Json& value) {
  const std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() <= kMaxQuoted) return text;
  return absl::StrCat(text.substr(0, kMaxQuoted), "...");
}

struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A non-negative JSON integer that fits int64_t.
bool AsIndex(const Json& value, uint64_t& out) {
  if (!value.is_number_unsigned()) return false;
  out = value.get<uint64_t>();
  return out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

// nlohmann keeps the last of duplicate keys; this records the first duplicate instead.
class DuplicateKeyFinder {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        // Nothing valid nests deeper than an entry's shape array; dropping deeper
        // values keeps "[[[[..." from costing memory; the parse then fails.
        if (depth >= 3) {
          too_deep_ = true;
          return false;
        }
        if (event == Json::parse_event_t::object_start) {
          keys_.resize(depth + 2);
          keys_[depth + 1].clear();
        }
        return true;
      case Json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (depth == 1) tensor_ = key;
        if (static_cast<size_t>(depth) < keys_.size() && !keys_[depth].insert(key).second &&
            duplicate_.empty()) {
          if (depth == 1) {
            duplicate_ = absl::StrCat("duplicate tensor name ", Quote(key));
          } else {
            duplicate_ = absl::StrCat(tensor_ == kMetadataKey ? "" : "tensor ", Quote(tensor_),
                                      ": duplicate key ", Quote(key));
          }
        }
        return true;
      }
      default:
        return true;
    }
  }

  const std::string& duplicate() const { return duplicate_; }
  bool too_deep() const { return too_deep_; }

 private:
  std::vector<absl::flat_hash_set<std::string>> keys_;  // Keys seen at each depth.
  std::string tensor_;                                  // The latest top-level key.
  std::string duplicate_;
  bool too_deep_ = false;
};

absl::StatusOr<Entry> ParseEntry(const std::string& name, const Json& value, uint64_t buffer_size,
                                 absl::string_view source) {
  const std::string where = absl::StrCat(source, ": tensor ", Quote(name), ": ");
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "entry ", Show(value), " is not an object"));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "missing key \"", key, "\""));
    }
  }
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return absl::InvalidArgumentError(absl::StrCat(where, "unexpected key ", Quote(key)));
    }
  }
  Entry entry;
  entry.name = name;

  const Json& dtype = value.at("dtype");
  if (dtype.is_string()) entry.dtype = DtypeByName(dtype.get_ref<const std::string&>());
  if (entry.dtype == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "dtype ", Show(dtype),
        " is not supported (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)"));
  }

  const Json& shape = value.at("shape");
  const auto bad_shape = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "shape ", Show(shape), " is not an array of non-negative integers"));
  };
  if (!shape.is_array()) return bad_shape();
  // Checked like the reference: a product that overflows is an error even if a later dimension is
  // 0.
  uint64_t numel = 1;
  for (const Json& dim : shape) {
    uint64_t d = 0;
    if (!AsIndex(dim, d)) return bad_shape();
    if (__builtin_mul_overflow(numel, d, &numel)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "shape ", Show(shape), " has too many elements"));
    }
    entry.shape.push_back(static_cast<int64_t>(d));
  }

  const Json& offsets = value.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !AsIndex(offsets[0], entry.begin) ||
      !AsIndex(offsets[1], entry.end) || entry.begin > entry.end) {
    return absl::InvalidArgumentError(absl::StrCat(where, "data_offsets ", Show(offsets),
                                                   " is not [begin, end] with 0 <= begin <= end"));
  }
  if (entry.end > buffer_size) {
    return absl::InvalidArgumentError(absl::StrCat(where, "data_offsets ", Show(offsets),
                                                   " end beyond the data buffer of ", buffer_size,
                                                   " bytes"));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, entry.dtype->size, &nbytes) ||
      nbytes != entry.end - entry.begin) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "data_offsets ", Show(offsets), " span ", entry.end - entry.begin,
                     " bytes but dtype ", entry.dtype->name, " shape ", Show(shape), " needs ",
                     numel, " x ", entry.dtype->size, " bytes"));
  }
  return entry;
}

absl::Status CheckMetadata(const Json& value, absl::string_view source) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": __metadata__ ", Show(value), " is not an object"));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": __metadata__ value ", Show(item),
                                                     " for key ", Quote(key), " is not a string"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> TensorFromBytes(const Entry& entry, const char* data,
                                           absl::string_view source) {
  at::Tensor tensor;
  try {
    // Shapes such as [0, 2^62, 2^62] hold no data yet overflow LibTorch's strides.
    tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype->type));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tensor ", Quote(entry.name), ": LibTorch cannot make a tensor of shape [",
        absl::StrJoin(entry.shape, ","), "]: ", e.what()));
  }
  if (entry.end > entry.begin) {
    std::memcpy(tensor.data_ptr(), data + entry.begin, entry.end - entry.begin);
  }
  return tensor;
}

}  // namespace

std::string SafetensorsDtypeName(c10::ScalarType type) {
  const DtypeInfo* dtype = DtypeByType(type);
  return dtype ? dtype->name : c10::toString(type);
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes,
                                                 absl::string_view source) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": file is ", bytes.size(), " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  }
  if (header_size > kMaxHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", header_size,
                                                   " exceeds the limit of ", kMaxHeaderSize,
                                                   " bytes"));
  }
  if (header_size > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", header_size,
                                                   " exceeds the ", bytes.size() - 8,
                                                   " bytes after the length field (truncated?)"));
  }
  const absl::string_view header_text = bytes.substr(8, header_size);
  const absl::string_view buffer = bytes.substr(8 + header_size);

  DuplicateKeyFinder finder;
  Json header;
  try {
    header = Json::parse(header_text.begin(), header_text.end(), std::ref(finder));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header is not valid JSON: ", e.what()));
  }
  if (finder.too_deep()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": header nests arrays or objects deeper than a safetensors header can"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header ", Show(header), " is not a JSON object"));
  }
  if (!finder.duplicate().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", finder.duplicate()));
  }

  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      OFFSITE_RETURN_IF_ERROR(CheckMetadata(value, source));
      for (const auto& [key, item] : value.items()) {
        file.metadata[key] = item.get<std::string>();
      }
      continue;
    }
    OFFSITE_ASSIGN_OR_RETURN(Entry entry, ParseEntry(name, value, buffer.size(), source));
    entries.push_back(std::move(entry));
  }

  // Like the reference implementation: sorted by offset, the ranges must tile the buffer.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::make_pair(a.begin, a.end) < std::make_pair(b.begin, b.end);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    if (entry.begin < covered) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor ", Quote(entry.name), ": data_offsets [", entry.begin,
                       ", ", entry.end, "] overlap tensor ", Quote(previous->name), " at [",
                       previous->begin, ", ", previous->end, "]"));
    }
    if (entry.begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor ", Quote(entry.name), ": data_offsets [", entry.begin, ", ", entry.end,
          "] leave bytes [", covered, ", ", entry.begin, ") of the data buffer in no tensor"));
    }
    covered = entry.end;
    previous = &entry;
  }
  if (covered != buffer.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": bytes [", covered, ", ",
                                                   buffer.size(),
                                                   ") at the end of the data buffer belong to no "
                                                   "tensor"));
  }

  for (const Entry& entry : entries) {
    if (entry.dtype->type == c10::ScalarType::Bool) {
      for (uint64_t i = entry.begin; i < entry.end; ++i) {
        const unsigned char byte = static_cast<unsigned char>(buffer[i]);
        if (byte > 1) {
          return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", Quote(entry.name),
                                                         ": BOOL byte ", static_cast<int>(byte),
                                                         " at offset ", i, " is neither 0 nor 1"));
        }
      }
    }
    OFFSITE_ASSIGN_OR_RETURN(at::Tensor tensor, TensorFromBytes(entry, buffer.data(), source));
    file.tensors.push_back({entry.name, std::move(tensor)});
  }
  return file;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  return ParseSafetensors(bytes, path);
}

absl::StatusOr<std::string> SerializeSafetensors(const SafetensorsFile& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
    for (const auto& [key, value] : file.metadata) metadata[key] = value;
    header[kMetadataKey] = std::move(metadata);
  }
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(file.tensors.size());
  uint64_t offset = 0;
  for (const NamedTensor& named : file.tensors) {
    const std::string where = absl::StrCat("tensor ", Quote(named.name), ": ");
    if (named.name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat(where, "name is reserved for metadata"));
    }
    if (header.contains(named.name)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "name appears twice"));
    }
    if (!named.tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "tensor is undefined"));
    }
    const DtypeInfo* dtype = DtypeByType(named.tensor.scalar_type());
    if (dtype == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, "dtype ",
                                                     c10::toString(named.tensor.scalar_type()),
                                                     " is not supported by safetensors"));
    }
    at::Tensor tensor = named.tensor.detach().cpu().contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(tensor.numel()) * dtype->size;
    header[named.name] = {{"dtype", dtype->name},
                          {"shape", tensor.sizes().vec()},
                          {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(std::move(tensor));
  }

  std::string header_text;
  try {
    header_text = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
  } catch (const nlohmann::ordered_json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("a tensor name or metadata string is not valid UTF-8: ", e.what()));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>(header_size & 0xff));
    header_size >>= 8;
  }
  out += header_text;
  for (const at::Tensor& tensor : contiguous) {
    out.append(static_cast<const char*>(tensor.data_ptr()),
               static_cast<size_t>(tensor.numel()) * tensor.element_size());
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file) {
  OFFSITE_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(file));
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(path, std::string_view(bytes)));
  return absl::OkStatus();
}

}  // namespace offsite
