#include "common/idx.h"

#include <torch/types.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr int kUnsignedByteCode = 0x08;
constexpr int kImagesDims = 3;
constexpr int kLabelsDims = 1;
// Reads grow the buffer a chunk at a time, so a header that claims more data
// than the file holds costs no more memory than the file itself.
constexpr size_t kReadChunk = size_t{1} << 24;

struct GzCloser {
  void operator()(gzFile file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

// Reads up to `size` bytes; returns how many were read (fewer only at end of file).
absl::StatusOr<size_t> ReadUpTo(gzFile file, const std::string& path, size_t size,
                                std::vector<uint8_t>& out) {
  size_t total = 0;
  while (total < size) {
    const size_t want = std::min(kReadChunk, size - total);
    const size_t old_size = out.size();
    out.resize(old_size + want);
    const int got = gzread(file, out.data() + old_size, static_cast<unsigned>(want));
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(file, &code);
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": read failed: ", message != nullptr ? message : "unknown error"));
    }
    out.resize(old_size + static_cast<size_t>(got));
    total += static_cast<size_t>(got);
    if (static_cast<size_t>(got) < want) break;
  }
  return total;
}

absl::StatusOr<IdxArray> ReadIdx(const std::string& path, int expected_dims) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not an IDX file"));
  }
  errno = 0;
  GzFile file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot open: ", errno != 0 ? std::strerror(errno) : "out of memory"));
  }

  std::vector<uint8_t> header;
  OFFSITE_ASSIGN_OR_RETURN(size_t got, ReadUpTo(file.get(), path, 4, header));
  if (got < 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: truncated header: expected 4 bytes of magic number, got %d", path, got));
  }
  const uint32_t magic = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                         (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  const uint32_t expected_magic = (kUnsignedByteCode << 8) | expected_dims;
  if (header[0] != 0 || header[1] != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: bad magic number 0x%08x (expected 0x%08x); not an IDX file", path,
                        magic, expected_magic));
  }
  if (header[2] != kUnsignedByteCode) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: unsupported dtype code 0x%02x in magic number 0x%08x (only unsigned byte, 0x08)", path,
        header[2], magic));
  }
  if (header[3] != expected_dims) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: bad magic number 0x%08x: %d dimensions, expected %d (0x%08x)", path,
                        magic, header[3], expected_dims, expected_magic));
  }

  const size_t dims_bytes = 4 * static_cast<size_t>(expected_dims);
  header.clear();
  OFFSITE_ASSIGN_OR_RETURN(got, ReadUpTo(file.get(), path, dims_bytes, header));
  if (got < dims_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: truncated header: expected %d bytes of dimensions, got %d", path, dims_bytes, got));
  }
  IdxArray array;
  uint64_t size = 1;
  for (int i = 0; i < expected_dims; ++i) {
    const uint8_t* p = &header[4 * i];
    const uint64_t dim =
        (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | uint64_t{p[3]};
    // Each factor is < 2^32, so this test keeps the product below 2^62.
    if (dim != 0 && size > (uint64_t{1} << 62) / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": dimensions multiply to an impossible size"));
    }
    size *= dim;
    array.dims.push_back(static_cast<int64_t>(dim));
  }

  OFFSITE_ASSIGN_OR_RETURN(got, ReadUpTo(file.get(), path, size, array.data));
  if (got < size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: truncated data: expected %d bytes, got %d", path, size, got));
  }
  return array;
}

at::Tensor ToTensor(IdxArray& array) {
  torch::Tensor tensor = torch::empty(array.dims, torch::kUInt8);
  if (!array.data.empty()) {
    std::memcpy(tensor.data_ptr<uint8_t>(), array.data.data(), array.data.size());
  }
  return tensor;
}

}  // namespace

absl::StatusOr<at::Tensor> ReadIdxImages(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(IdxArray array, ReadIdx(path, kImagesDims));
  return ToTensor(array);
}

absl::StatusOr<at::Tensor> ReadIdxLabels(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(IdxArray array, ReadIdx(path, kLabelsDims));
  return ToTensor(array).to(torch::kInt64);
}

absl::StatusOr<LabeledImages> LoadIdxDataset(const std::string& images_path,
                                             const std::string& labels_path, int64_t limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("limit must be >= 0, got ", limit));
  }
  OFFSITE_ASSIGN_OR_RETURN(torch::Tensor images, ReadIdxImages(images_path));
  OFFSITE_ASSIGN_OR_RETURN(torch::Tensor labels, ReadIdxLabels(labels_path));
  if (images.size(0) != labels.size(0)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s holds %d images but %s holds %d labels",
                                                      images_path, images.size(0), labels_path,
                                                      labels.size(0)));
  }
  if (limit > 0 && limit < images.size(0)) {
    images = images.slice(0, 0, limit);
    labels = labels.slice(0, 0, limit);
  }
  LabeledImages dataset;
  dataset.images = images.to(torch::kFloat32).div_(255.0).unsqueeze(1).contiguous();
  dataset.labels = labels.contiguous();
  return dataset;
}

std::string FashionMnistFile(const std::string& name) {
  return "/usr/share/datasets/fashion-mnist/" + name;
}

}  // namespace offsite
