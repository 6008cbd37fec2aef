#ifndef OFFSITE_COMMON_SAFETENSORS_H_
#define OFFSITE_COMMON_SAFETENSORS_H_

// Reader and writer for safetensors files, the Hugging Face tensor format:
//
//   8 bytes   N, the header length, a little-endian uint64
//   N bytes   UTF-8 JSON object: tensor name -> {"dtype": "F32", "shape": [2, 3],
//             "data_offsets": [begin, end]}, plus an optional "__metadata__" object of
//             string -> string
//   the rest  the data buffer; offsets are relative to its start, data is raw little-endian
//
// Supported dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
//
// Validation follows the reference implementation (huggingface/safetensors): the
// tensors' byte ranges must tile the data buffer exactly, with no overlap, no gap
// and no trailing bytes (padding belongs in the header, as spaces). Every failure
// is an InvalidArgumentError that names the file, the tensor and the offending
// value, e.g. `model.safetensors: tensor "w": dtype "F8" is not supported`.
//
// Example:
//   SafetensorsFile file;
//   file.tensors.push_back({"embed.weight", torch::randn({10, 4})});
//   file.metadata["format"] = "pt";
//   OFFSITE_RETURN_IF_ERROR(WriteSafetensors("/tmp/m.safetensors", file));
//   OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile loaded, ReadSafetensors("/tmp/m.safetensors"));
//   // loaded.tensors[0].name == "embed.weight", a float32 [10, 4] tensor.

#include <ATen/core/Tensor.h>  // at::Tensor is torch::Tensor, without all of torch.

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace offsite {

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

struct SafetensorsFile {
  std::vector<NamedTensor> tensors;
  std::map<std::string, std::string> metadata;  // The "__metadata__" object.
};

// The safetensors name of a dtype ("F32", "BF16", ...), or torch's own name
// (e.g. "ComplexFloat") for one the format does not have.
std::string SafetensorsDtypeName(c10::ScalarType type);

// Parses a whole safetensors file held in `bytes`; `source` names it in errors.
// Tensors come back in the order of their data in the buffer (for files written
// by SerializeSafetensors, the order they were given in), as contiguous CPU
// tensors of the file's dtype that own their memory. Assumes a little-endian host.
absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes, absl::string_view source);

// Reads and parses the file at `path` (the whole file is read into memory).
// NotFoundError if it does not exist; InvalidArgumentError if it is malformed.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// The bytes of a safetensors file holding `file`: tensors in the given order,
// each contiguous in its own dtype, metadata as "__metadata__" (omitted when
// empty). The header is padded with spaces so the data starts at a multiple of
// 8 bytes. InvalidArgumentError for an undefined tensor, an unsupported dtype,
// a duplicate or reserved ("__metadata__") name, or non-UTF-8 strings.
absl::StatusOr<std::string> SerializeSafetensors(const SafetensorsFile& file);

// Writes SerializeSafetensors(file) to `path` atomically (temporary file + rename).
absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file);

}  // namespace offsite

#endif  // OFFSITE_COMMON_SAFETENSORS_H_
