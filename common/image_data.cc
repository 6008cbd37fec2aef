#include "common/image_data.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/domain_shift.h"
#include "common/file_util.h"
#include "common/idx.h"
#include "common/proto_util.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

absl::Status CheckFile(const std::string& field, const std::string& path) {
  if (path.empty() || FileExists(path)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": \"", path, "\" does not exist on the server"));
}

std::string OrDefault(const std::string& value, const std::string& fashion_mnist_file) {
  return value.empty() ? FashionMnistFile(fashion_mnist_file) : value;
}

// Keeps the images of data.classes(), relabelled by their position in it.
absl::Status KeepClasses(const v1::ImageData& data, LabeledImages& set) {
  torch::Tensor relabel =
      torch::full({std::max<int64_t>(set.labels.max().item<int64_t>(), 0) + 1}, -1, torch::kLong);
  for (int i = 0; i < data.classes_size(); ++i) {
    if (data.classes(i) < relabel.size(0)) relabel[data.classes(i)] = i;
  }
  torch::Tensor labels = relabel.index_select(0, set.labels);
  torch::Tensor keep = (labels >= 0).nonzero().squeeze(1);
  set.images = set.images.index_select(0, keep);
  set.labels = labels.index_select(0, keep);
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateImageData(const v1::ImageData& data, const std::string& field) {
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".train_subset", data.train_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".test_subset", data.test_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".pad_to", data.pad_to(), -1, 4096));
  for (int i = 0; i < data.classes_size(); ++i) {
    OFFSITE_RETURN_IF_ERROR(
        CheckRange(absl::StrCat(field, ".classes[", i, "]"), data.classes(i), 0, 1e6));
    for (int j = 0; j < i; ++j) {
      if (data.classes(j) == data.classes(i)) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".classes: class ", data.classes(i), " is listed twice"));
      }
    }
  }
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".train_images", data.train_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".train_labels", data.train_labels()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".test_images", data.test_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".test_labels", data.test_labels()));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".image_side", data.image_side(), 0, 4096));
  if (!UsesFolders(data)) return absl::OkStatus();
  if (data.train_folder().empty() || data.test_folder().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".", data.train_folder().empty() ? "train_folder" : "test_folder",
        " is required with ", data.train_folder().empty() ? "test_folder" : "train_folder",
        " (PNG folders give both splits)"));
  }
  for (const auto& [name, value] :
       {std::pair<const char*, const std::string&>{"train_images", data.train_images()},
        {"train_labels", data.train_labels()},
        {"test_images", data.test_images()},
        {"test_labels", data.test_labels()}}) {
    if (!value.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".", name,
                                                     ": IDX files and PNG folders "
                                                     "(train_folder, test_folder) exclude "
                                                     "each other"));
    }
  }
  if (data.train_subset() != 0 || data.test_subset() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".", data.train_subset() != 0 ? "train_subset" : "test_subset",
        ": subsets are for IDX files (a folder's first images are all of its first class)"));
  }
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".train_folder", data.train_folder()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".test_folder", data.test_folder()));
  return absl::OkStatus();
}

bool UsesFolders(const v1::ImageData& data) {
  return !data.train_folder().empty() || !data.test_folder().empty();
}

absl::Status RequireIdxFiles(const v1::ImageData& data, const std::string& field) {
  if (!UsesFolders(data)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ".", data.train_folder().empty() ? "test_folder" : "train_folder",
      ": this job reads IDX files only (train_images, train_labels, test_images, test_labels)"));
}

absl::StatusOr<ImageDataSet> LoadImageData(const v1::ImageData& data, torch::Device device) {
  LabeledImages train, test;
  if (UsesFolders(data)) {
    const int64_t side = data.image_side() > 0 ? data.image_side() : 28;
    OFFSITE_ASSIGN_OR_RETURN(FolderImages train_folder,
                             LoadClassificationFolder(data.train_folder(), side, {}));
    OFFSITE_ASSIGN_OR_RETURN(
        FolderImages test_folder,
        LoadClassificationFolder(data.test_folder(), side, train_folder.class_names));
    train = LabeledImages{train_folder.images, train_folder.labels};
    test = LabeledImages{test_folder.images, test_folder.labels};
  } else {
    OFFSITE_ASSIGN_OR_RETURN(
        train, LoadIdxDataset(OrDefault(data.train_images(), "train-images-idx3-ubyte.gz"),
                              OrDefault(data.train_labels(), "train-labels-idx1-ubyte.gz"),
                              data.train_subset()));
    OFFSITE_ASSIGN_OR_RETURN(
        test, LoadIdxDataset(OrDefault(data.test_images(), "t10k-images-idx3-ubyte.gz"),
                             OrDefault(data.test_labels(), "t10k-labels-idx1-ubyte.gz"),
                             data.test_subset()));
  }
  if (data.classes_size() > 0) {
    OFFSITE_RETURN_IF_ERROR(KeepClasses(data, train));
    OFFSITE_RETURN_IF_ERROR(KeepClasses(data, test));
  }
  if (train.images.size(0) == 0) return absl::InvalidArgumentError("data: no training images");
  if (train.images.sizes().slice(1) != test.images.sizes().slice(1)) {
    return absl::InvalidArgumentError("data: test images differ in size from training images");
  }
  const int64_t pad_to = data.pad_to() == 0 ? 32 : data.pad_to();
  auto pad = [&](const torch::Tensor& images) -> absl::StatusOr<torch::Tensor> {
    if (pad_to < 0) return images;
    const int64_t h = images.size(2), w = images.size(3);
    if (h > pad_to || w > pad_to) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.pad_to: ", pad_to, " is smaller than the images (", h, "x", w, ")"));
    }
    const int64_t top = (pad_to - h) / 2, left = (pad_to - w) / 2;
    return torch::constant_pad_nd(images, {left, pad_to - w - left, top, pad_to - h - top}, 0);
  };
  ImageDataSet set;
  OFFSITE_ASSIGN_OR_RETURN(torch::Tensor train_images, pad(train.images));
  OFFSITE_ASSIGN_OR_RETURN(torch::Tensor test_images, pad(test.images));
  torch::Tensor mean = train_images.mean({0, 2, 3}, /*keepdim=*/true);
  torch::Tensor std =
      train_images.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true).clamp_min(1e-6);
  for (int64_t c = 0; c < mean.size(1); ++c) {
    set.mean.push_back(mean[0][c][0][0].item<double>());
    set.std.push_back(std[0][c][0][0].item<double>());
  }
  set.train_images =
      ((train_images - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast).to(device);
  set.test_images =
      ((test_images - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast).to(device);
  set.train_labels = train.labels.to(device);
  set.test_labels = test.labels.to(device);
  set.num_classes =
      data.classes_size() > 0
          ? data.classes_size()
          : std::max<int64_t>(train.labels.max().item<int64_t>(),
                              test.labels.numel() ? test.labels.max().item<int64_t>() : 0) +
                1;
  return set;
}

}  // namespace offsite
