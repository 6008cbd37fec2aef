#ifndef OFFSITE_MODELS_FCMAE_H_
#define OFFSITE_MODELS_FCMAE_H_

// FCMAE, the fully convolutional masked autoencoder of ConvNeXt V2 (Woo et al.,
// CVPR 2023), after facebookresearch/ConvNeXt-V2 `models/fcmae.py`, with the
// sparse encoder emulated densely (see ConvNextV2Impl::ForwardFeatures).
//
// Example (one pretraining step):
//   OFFSITE_ASSIGN_OR_RETURN(Fcmae fcmae, MakeFcmae(encoder_config, FcmaeOptions{}));
//   OFFSITE_RETURN_IF_ERROR(fcmae->ValidateImageSize(32, 32));
//   FcmaeOutput out = fcmae->forward(images);  // draws a fresh random mask
//   out.loss.backward();
//
// Masks are (N, 1, h, w) float tensors on the patch grid, 1 = masked (removed),
// as in the paper's code.

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/convnext_v2.h"

namespace offsite {

struct FcmaeOptions {
  // Fraction of patches masked per image (an exact count, see MaskedPatchCount).
  double mask_ratio = 0.6;
  // Side in pixels of a mask patch; 0 means the encoder's total stride. Must
  // be a multiple of the total stride so that masks stay aligned with every
  // stage's grid (otherwise visible cells would see masked pixels).
  int64_t patch_size = 0;
  int64_t decoder_dim = 512;
  int64_t decoder_depth = 1;
  // Normalise each target patch to zero mean and unit variance.
  bool norm_pix_loss = true;
  // Mask inside the encoder (the dense emulation of sparse convolution). False
  // is the paper's ablation: masked pixels are zeroed in the input and the
  // encoder runs plain dense convolutions over the whole image.
  bool masked_conv = true;
};

// OK, or InvalidArgument naming the offending field of either argument.
absl::Status ValidateFcmaeOptions(const ConvNextV2Config& encoder, const FcmaeOptions& options);

// Number of patches masked out of num_patches: num_patches minus the paper's
// int(num_patches * (1 - ratio)) kept ones, e.g. 10 of 16 at ratio 0.6.
int64_t MaskedPatchCount(int64_t num_patches, double ratio);

// A random mask (batch, 1, grid_h, grid_w), 1 = masked, with exactly
// MaskedPatchCount(grid_h * grid_w, ratio) ones per image, drawn as the argsort
// of uniform noise from torch's default generator (so torch::manual_seed makes
// it reproducible on a given device).
torch::Tensor RandomPatchMask(int64_t batch, int64_t grid_h, int64_t grid_w, double ratio,
                              torch::Device device);

// Images (N, C, H, W) -> patches (N, (H/p)*(W/p), p*p*C); patches in row-major
// grid order, pixels within a patch in (row, column, channel) order.
torch::Tensor Patchify(const torch::Tensor& images, int64_t patch);
// The inverse: patches (N, h*w, p*p*C) -> images (N, C, h*p, w*p).
torch::Tensor Unpatchify(const torch::Tensor& patches, int64_t patch, int64_t channels,
                         int64_t grid_h, int64_t grid_w);

struct FcmaeOutput {
  torch::Tensor loss;  // Scalar: mean squared error over masked patches only.
  // (N, L, s*s*C), one row per last-stage cell (L = (H/s)*(W/s), s the
  // encoder's total stride), pixels ordered as Patchify's; in per-patch
  // normalised units when norm_pix_loss (see FcmaeImpl::Reconstruct).
  torch::Tensor pred;
  torch::Tensor mask;  // (N, 1, H/p, W/p), 1 = masked; p = patch_size.
};

class FcmaeImpl : public torch::nn::Module {
 public:
  // The arguments must pass ValidateFcmaeOptions (c10::Error otherwise; use
  // MakeFcmae for a Status). The encoder is built from encoder_config with
  // num_classes forced to 0: it has no head.
  FcmaeImpl(const ConvNextV2Config& encoder_config, const FcmaeOptions& options);

  // Images (N, C, H, W) with H and W multiples of patch_size() (see
  // ValidateImageSize). The first form draws a mask with RandomPatchMask.
  FcmaeOutput forward(const torch::Tensor& images);
  FcmaeOutput forward(const torch::Tensor& images, const torch::Tensor& mask);

  // OK, or InvalidArgument if an H x W image does not split into patches.
  absl::Status ValidateImageSize(int64_t height, int64_t width) const;

  // A fresh mask for `images` on the patch grid.
  torch::Tensor RandomMask(const torch::Tensor& images) const;

  // The encoder's last-stage features for masked images; values at masked
  // cells are meaningless (the decoder replaces them by the mask token).
  torch::Tensor Encode(const torch::Tensor& images, const torch::Tensor& mask);
  // Features -> per-cell pixel predictions (N, s*s*C, H/s, W/s).
  torch::Tensor Decode(const torch::Tensor& features, const torch::Tensor& mask);
  // MSE between pred (N, L, s*s*C) and the (normalised) patches of images,
  // averaged over masked patches only.
  torch::Tensor Loss(const torch::Tensor& images, const torch::Tensor& pred,
                     const torch::Tensor& mask) const;

  // Images (N, C, H, W) for display: the prediction in pixel units at masked
  // patches (undoing the per-patch normalisation with the input's own patch
  // statistics, as MAE's visualisation does) and the input at visible ones.
  torch::Tensor Reconstruct(const torch::Tensor& images, const FcmaeOutput& output) const;

  ConvNextV2& encoder() { return encoder_; }
  const ConvNextV2Config& encoder_config() const { return encoder_->config(); }
  const FcmaeOptions& options() const { return options_; }
  int64_t patch_size() const { return patch_size_; }
  // Side in pixels of the region one decoder cell predicts (the total stride).
  int64_t cell_size() const { return cell_size_; }

 private:
  FcmaeOptions options_;
  int64_t patch_size_;
  int64_t cell_size_;
  ConvNextV2 encoder_{nullptr};
  torch::nn::Conv2d proj_{nullptr};
  torch::Tensor mask_token_;
  std::vector<ConvNextV2Block> decoder_;
  torch::nn::Conv2d pred_{nullptr};
};
TORCH_MODULE(Fcmae);

absl::StatusOr<Fcmae> MakeFcmae(const ConvNextV2Config& encoder_config,
                                const FcmaeOptions& options);

struct ReconstructionGridOptions {
  // Undo the input normalisation for display: pixel = x * std + mean, then
  // clamped to [0, 1]. One value, or one per channel.
  std::vector<double> mean = {0.0};
  std::vector<double> std = {1.0};
  int64_t max_images = 8;
  int64_t padding = 2;  // Pixels between and around the tiles, drawn black.
  // Display value painted over masked patches in the middle row.
  double masked_value = 0.5;
};

// An image to look at: a row of inputs, a row of masked inputs and a row of
// reconstructions, one column per image (at most max_images). images and
// reconstruction are (N, C, H, W); mask is (N, 1, h, w) on any grid that tiles
// the images (FcmaeOutput::mask as it is), 1 = masked. Returns uint8
// (rows, cols, C) on the CPU, contiguous, ready for WritePng:
//   FcmaeOutput out = fcmae->forward(images);
//   torch::Tensor grid =
//       ReconstructionGrid(images, out.mask, fcmae->Reconstruct(images, out), options);
//   OFFSITE_RETURN_IF_ERROR(WritePng(path, grid.data_ptr<uint8_t>(), grid.size(1),
//                                    grid.size(0), grid.size(2)));
torch::Tensor ReconstructionGrid(const torch::Tensor& images, const torch::Tensor& mask,
                                 const torch::Tensor& reconstruction,
                                 const ReconstructionGridOptions& options = {});

}  // namespace offsite

#endif  // OFFSITE_MODELS_FCMAE_H_
