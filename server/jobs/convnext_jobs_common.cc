#include "server/jobs/convnext_jobs_common.h"

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

}  // namespace

absl::Status ValidateArch(const v1::ConvNextV2Arch& arch, const std::string& field) {
  if (!arch.size().empty()) {
    OFFSITE_RETURN_IF_ERROR(ConvNextV2ConfigByName(arch.size()).status());
    if (arch.depths_size() || arch.dims_size() || arch.stem_stride()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": give either size or depths/dims/stem_stride, not both"));
    }
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".drop_path", arch.drop_path(), 0, 0.9));
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config, ResolveArch(arch, 1, 10));
  absl::Status valid = ValidateConfig(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", valid.message()));
  return absl::OkStatus();
}

absl::Status ValidateImageData(const v1::ImageData& data, const std::string& field) {
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".train_subset", data.train_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".test_subset", data.test_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".pad_to", data.pad_to(), -1, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".train_images", data.train_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".train_labels", data.train_labels()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".test_images", data.test_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile(field + ".test_labels", data.test_labels()));
  return absl::OkStatus();
}

absl::StatusOr<ConvNextV2Config> ResolveArch(const v1::ConvNextV2Arch& arch, int64_t in_channels,
                                             int64_t num_classes) {
  ConvNextV2Config config;
  if (!arch.size().empty()) {
    OFFSITE_ASSIGN_OR_RETURN(config, ConvNextV2ConfigByName(arch.size()));
  } else {
    config.depths = {2, 2, 6};
    config.dims = {40, 80, 160};
    config.stem_stride = 2;
    if (arch.depths_size()) config.depths.assign(arch.depths().begin(), arch.depths().end());
    if (arch.dims_size()) config.dims.assign(arch.dims().begin(), arch.dims().end());
    if (arch.stem_stride()) config.stem_stride = arch.stem_stride();
  }
  config.in_channels = in_channels;
  config.num_classes = num_classes;
  config.use_grn = !arch.no_grn();
  config.drop_path = arch.drop_path();
  return config;
}

absl::StatusOr<ImageDataSet> LoadImageData(const v1::ImageData& data, torch::Device device) {
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages train,
      LoadIdxDataset(OrDefault(data.train_images(), "train-images-idx3-ubyte.gz"),
                     OrDefault(data.train_labels(), "train-labels-idx1-ubyte.gz"),
                     data.train_subset()));
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages test,
      LoadIdxDataset(OrDefault(data.test_images(), "t10k-images-idx3-ubyte.gz"),
                     OrDefault(data.test_labels(), "t10k-labels-idx1-ubyte.gz"),
                     data.test_subset()));
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
  torch::Tensor std = train_images.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true).clamp_min(1e-6);
  for (int64_t c = 0; c < mean.size(1); ++c) {
    set.mean.push_back(mean[0][c][0][0].item<double>());
    set.std.push_back(std[0][c][0][0].item<double>());
  }
  set.train_images = ((train_images - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast).to(device);
  set.test_images = ((test_images - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast).to(device);
  set.train_labels = train.labels.to(device);
  set.test_labels = test.labels.to(device);
  set.num_classes = std::max<int64_t>(train.labels.max().item<int64_t>(),
                                      test.labels.numel() ? test.labels.max().item<int64_t>() : 0) +
                    1;
  return set;
}

std::unique_ptr<torch::optim::AdamW> MakeAdamW(torch::nn::Module& module, double lr,
                                               double weight_decay, double beta2,
                                               bool exclude_grn) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : module.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    const bool grn = absl::StrContains(item.key(), "grn.");
    (item.value().dim() <= 1 || (exclude_grn && grn) ? no_decay : decay).push_back(item.value());
  }
  auto options = torch::optim::AdamWOptions(lr).betas({0.9, beta2});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(options).weight_decay(weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(options).weight_decay(0)));
  return std::make_unique<torch::optim::AdamW>(groups, options);
}

}  // namespace offsite
