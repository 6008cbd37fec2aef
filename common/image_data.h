#ifndef OFFSITE_COMMON_IMAGE_DATA_H_
#define OFFSITE_COMMON_IMAGE_DATA_H_

// Labelled image data sets as an ImageData message describes them (IDX files,
// Fashion-MNIST by default, or folders of PNG images, one sub-folder per
// class): loaded, filtered by class, padded and normalised, ready for a
// ConvNeXt V2. Used by server jobs and by the client's local tuning.

#include <torch/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offsite/v1/convnext.pb.h"

namespace offsite {

// InvalidArgument naming `field` and the value: subsets, pad_to, classes,
// files or folders that do not exist, PNG folders mixed with IDX files.
absl::Status ValidateImageData(const v1::ImageData& data, const std::string& field);

// Whether `data` names PNG class folders (train_folder, test_folder) rather
// than IDX files.
bool UsesFolders(const v1::ImageData& data);

// InvalidArgument naming `field` when `data` names PNG folders, for jobs that
// read IDX files only (detection scene items, MIC's rendered domains).
absl::Status RequireIdxFiles(const v1::ImageData& data, const std::string& field);

struct ImageDataSet {
  // float (N, C, S, S), padded and normalised with the training split's
  // per-channel mean and std (kept in `mean` / `std` for display).
  torch::Tensor train_images, test_images;
  torch::Tensor train_labels, test_labels;  // int64 (N)
  std::vector<double> mean, std;
  int64_t num_classes = 0;
};
absl::StatusOr<ImageDataSet> LoadImageData(const v1::ImageData& data, torch::Device device);

}  // namespace offsite

#endif  // OFFSITE_COMMON_IMAGE_DATA_H_
