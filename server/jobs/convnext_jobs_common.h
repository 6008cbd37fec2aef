#ifndef OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_
#define OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_

// What the fcmae and finetune jobs share: resolving an architecture and a
// data set from their specs, and AdamW with the recipes' weight-decay groups.

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/proto_util.h"
#include "models/convnext_v2.h"
#include "offsite/v1/convnext.pb.h"

namespace offsite {

absl::Status ValidateArch(const v1::ConvNextV2Arch& arch, const std::string& field);
absl::Status ValidateImageData(const v1::ImageData& data, const std::string& field);

// Checks what every ConvNeXt training spec (FcmaeSpec, FinetuneSpec) has:
// arch, data and the optimisation schedule. `resolved` is `spec` with its
// defaults filled in; `kind` prefixes the field names in errors.
template <typename Spec>
absl::Status ValidateTrainingSpec(const Spec& spec, const Spec& resolved, const std::string& kind) {
  absl::Status status = ValidateArch(spec.arch(), kind + ".arch");
  if (status.ok()) status = ValidateImageData(spec.data(), kind + ".data");
  if (status.ok()) status = CheckRange(kind + ".epochs", spec.epochs(), 0, 10000);
  if (status.ok()) status = CheckRange(kind + ".batch_size", spec.batch_size(), 0, 8192);
  if (status.ok()) status = CheckRange(kind + ".learning_rate", spec.learning_rate(), 0, 1);
  if (status.ok()) status = CheckRange(kind + ".weight_decay", spec.weight_decay(), 0, 1);
  if (status.ok()) status = CheckRange(kind + ".warmup_epochs", spec.warmup_epochs(), 0, 10000);
  if (status.ok() && resolved.warmup_epochs() > resolved.epochs()) {
    status = absl::InvalidArgumentError(absl::StrCat(kind, ".warmup_epochs: ",
                                                     resolved.warmup_epochs(), " exceeds epochs ",
                                                     resolved.epochs()));
  }
  return status;
}

// The model configuration an arch message asks for, with defaults filled in.
absl::StatusOr<ConvNextV2Config> ResolveArch(const v1::ConvNextV2Arch& arch, int64_t in_channels,
                                             int64_t num_classes);

struct ImageDataSet {
  // float (N, C, S, S), padded and normalised with the training split's
  // per-channel mean and std (kept in `mean` / `std` for display).
  torch::Tensor train_images, test_images;
  torch::Tensor train_labels, test_labels;  // int64 (N)
  std::vector<double> mean, std;
  int64_t num_classes = 0;
};
absl::StatusOr<ImageDataSet> LoadImageData(const v1::ImageData& data, torch::Device device);

// AdamW over `module`'s trainable parameters, with no weight decay on
// one-dimensional parameters (biases, norms) and, if `exclude_grn`, on GRN's
// gamma and beta (the ConvNeXt V2 fine-tuning recipe).
std::unique_ptr<torch::optim::AdamW> MakeAdamW(torch::nn::Module& module, double lr,
                                               double weight_decay, double beta2,
                                               bool exclude_grn);

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_
