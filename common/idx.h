#ifndef OFFSITE_COMMON_IDX_H_
#define OFFSITE_COMMON_IDX_H_

// Readers for IDX files, the format of MNIST and Fashion-MNIST: a big-endian
// header (two zero bytes, a dtype code, the number of dimensions, then each
// dimension as a uint32) followed by the data. Only unsigned-byte data (dtype
// code 0x08) is supported, which is all these data sets use. Files may be plain
// or gzip-compressed; zlib reads both.
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(
//       LabeledImages train,
//       LoadIdxDataset(FashionMnistFile("train-images-idx3-ubyte.gz"),
//                      FashionMnistFile("train-labels-idx1-ubyte.gz"), /*limit=*/0));
//   // train.images: float32 [60000, 1, 28, 28]; train.labels: int64 [60000].

#include <ATen/core/Tensor.h>  // at::Tensor is torch::Tensor, without all of torch.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace offsite {

// Reads an IDX image file (magic 0x00000803). Returns uint8 [N, rows, cols].
// NotFoundError if the file does not exist; InvalidArgumentError naming the
// file for a bad magic number, an unsupported dtype, or truncated data.
absl::StatusOr<at::Tensor> ReadIdxImages(const std::string& path);

// Reads an IDX label file (magic 0x00000801). Returns int64 [N].
absl::StatusOr<at::Tensor> ReadIdxLabels(const std::string& path);

struct LabeledImages {
  at::Tensor images;  // float32 [N, 1, H, W], pixel values in [0, 1].
  at::Tensor labels;  // int64 [N].
};

// Reads matching image and label files and keeps the first `limit` examples
// (0 keeps all). InvalidArgumentError if the two files hold different counts
// or `limit` is negative.
absl::StatusOr<LabeledImages> LoadIdxDataset(const std::string& images_path,
                                             const std::string& labels_path, int64_t limit);

// Path of a Fashion-MNIST file as installed by Debian's dataset-fashion-mnist
// package, e.g. FashionMnistFile("t10k-labels-idx1-ubyte.gz").
std::string FashionMnistFile(const std::string& name);

}  // namespace offsite

#endif  // OFFSITE_COMMON_IDX_H_
