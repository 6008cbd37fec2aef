#include "models/fcmae.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/utils.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

absl::Status OptionError(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("FcmaeOptions.", field, ": ", problem));
}

int64_t ResolvedPatchSize(const ConvNextV2Config& encoder, const FcmaeOptions& options) {
  return options.patch_size > 0 ? options.patch_size : ConvNextV2TotalStride(encoder);
}

// Per-patch statistics of the target as the paper's code takes them (unbiased
// variance), as (mean, sqrt(var + 1e-6)).
std::pair<torch::Tensor, torch::Tensor> PatchStats(const torch::Tensor& patches) {
  torch::Tensor mean = patches.mean(-1, /*keepdim=*/true);
  torch::Tensor var = patches.var(-1, /*unbiased=*/true, /*keepdim=*/true);
  return {mean, (var + 1e-6).sqrt()};
}

}  // namespace

absl::Status ValidateFcmaeOptions(const ConvNextV2Config& encoder, const FcmaeOptions& options) {
  OFFSITE_RETURN_IF_ERROR(ValidateConfig(encoder));
  if (!(options.mask_ratio > 0 && options.mask_ratio < 1)) {
    return OptionError("mask_ratio", "must be in (0, 1)");
  }
  const int64_t stride = ConvNextV2TotalStride(encoder);
  if (options.patch_size < 0) return OptionError("patch_size", "must be >= 0 (0: total stride)");
  if (ResolvedPatchSize(encoder, options) % stride != 0) {
    return OptionError("patch_size",
                       absl::StrFormat("%d is not a multiple of the encoder's total stride %d",
                                       options.patch_size, stride));
  }
  if (options.decoder_dim < 1) return OptionError("decoder_dim", "must be >= 1");
  if (options.decoder_depth < 0) return OptionError("decoder_depth", "must be >= 0");
  if (options.norm_pix_loss && stride * stride * encoder.in_channels < 2) {
    return OptionError("norm_pix_loss", "needs at least 2 pixel values per decoder cell");
  }
  return absl::OkStatus();
}

int64_t MaskedPatchCount(int64_t num_patches, double ratio) {
  return num_patches - static_cast<int64_t>(num_patches * (1.0 - ratio));
}

torch::Tensor RandomPatchMask(int64_t batch, int64_t grid_h, int64_t grid_w, double ratio,
                              torch::Device device) {
  const int64_t num_patches = grid_h * grid_w;
  const int64_t num_keep = num_patches - MaskedPatchCount(num_patches, ratio);
  const torch::Tensor noise = torch::rand({batch, num_patches}, torch::TensorOptions(device));
  // The rank of each patch in a random order; the num_keep lowest stay visible.
  const torch::Tensor rank = noise.argsort(/*dim=*/int64_t{1}).argsort(/*dim=*/int64_t{1});
  return rank.ge(num_keep).to(torch::kFloat).reshape({batch, 1, grid_h, grid_w});
}

torch::Tensor Patchify(const torch::Tensor& images, int64_t patch) {
  TORCH_CHECK(images.dim() == 4, "images must be (N, C, H, W), got ", images.sizes());
  const int64_t n = images.size(0);
  const int64_t c = images.size(1);
  TORCH_CHECK(images.size(2) % patch == 0 && images.size(3) % patch == 0, "a ", images.size(2), "x",
              images.size(3), " image does not split into ", patch, "x", patch, " patches");
  const int64_t h = images.size(2) / patch;
  const int64_t w = images.size(3) / patch;
  return images.reshape({n, c, h, patch, w, patch})
      .permute({0, 2, 4, 3, 5, 1})
      .reshape({n, h * w, patch * patch * c});
}

torch::Tensor Unpatchify(const torch::Tensor& patches, int64_t patch, int64_t channels,
                         int64_t grid_h, int64_t grid_w) {
  const int64_t n = patches.size(0);
  return patches.reshape({n, grid_h, grid_w, patch, patch, channels})
      .permute({0, 5, 1, 3, 2, 4})
      .reshape({n, channels, grid_h * patch, grid_w * patch});
}

FcmaeImpl::FcmaeImpl(const ConvNextV2Config& encoder_config, const FcmaeOptions& options)
    : options_(options) {
  const absl::Status status = ValidateFcmaeOptions(encoder_config, options);
  TORCH_CHECK(status.ok(), status.ToString());
  patch_size_ = ResolvedPatchSize(encoder_config, options);
  cell_size_ = ConvNextV2TotalStride(encoder_config);

  ConvNextV2Config backbone = encoder_config;
  backbone.num_classes = 0;
  encoder_ = register_module("encoder", ConvNextV2(backbone));
  const int64_t dim = options.decoder_dim;
  proj_ = register_module(
      "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(backbone.dims.back(), dim, 1)));
  mask_token_ = register_parameter("mask_token", torch::zeros({1, dim, 1, 1}));
  auto decoder = register_module("decoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.decoder_depth; ++i) {
    // The paper's decoder block is the standard one, GRN included.
    decoder_.push_back(ConvNextV2Block(dim, /*drop_path=*/0.0, /*use_grn=*/true));
    decoder->push_back(decoder_.back());
  }
  pred_ = register_module("pred", torch::nn::Conv2d(torch::nn::Conv2dOptions(
                                      dim, cell_size_ * cell_size_ * backbone.in_channels, 1)));

  // The encoder initialised itself; the rest as fcmae.py's _init_weights.
  InitConvNextV2Weights(*proj_);
  InitConvNextV2Weights(*decoder);
  InitConvNextV2Weights(*pred_);
  {
    torch::NoGradGuard no_grad;
    mask_token_.normal_(0.0, 0.02);
  }
  UseChannelsLast(*this);
}

FcmaeOutput FcmaeImpl::forward(const torch::Tensor& images) {
  return forward(images, RandomMask(images));
}

FcmaeOutput FcmaeImpl::forward(const torch::Tensor& images, const torch::Tensor& mask) {
  const torch::Tensor pred_map = Decode(Encode(images, mask), mask);
  // (N, s*s*C, h, w) -> (N, L, s*s*C), one row per cell as Patchify lays out.
  const torch::Tensor pred = pred_map.flatten(2).transpose(1, 2);
  return {Loss(images, pred, mask), pred, mask};
}

absl::Status FcmaeImpl::ValidateImageSize(int64_t height, int64_t width) const {
  if (height < patch_size_ || width < patch_size_ || height % patch_size_ != 0 ||
      width % patch_size_ != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("FCMAE input %dx%d does not split into %dx%d patches", height, width,
                        patch_size_, patch_size_));
  }
  const int64_t num_patches = (height / patch_size_) * (width / patch_size_);
  const int64_t num_masked = MaskedPatchCount(num_patches, options_.mask_ratio);
  if (num_masked < 1 || num_masked == num_patches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "FCMAE input %dx%d has %d patches: mask ratio %g masks %d, leaving nothing to %s", height,
        width, num_patches, options_.mask_ratio, num_masked, num_masked < 1 ? "predict" : "see"));
  }
  return absl::OkStatus();
}

torch::Tensor FcmaeImpl::RandomMask(const torch::Tensor& images) const {
  return RandomPatchMask(images.size(0), images.size(2) / patch_size_, images.size(3) / patch_size_,
                         options_.mask_ratio, images.device())
      .to(images.scalar_type());
}

torch::Tensor FcmaeImpl::Encode(const torch::Tensor& images, const torch::Tensor& mask) {
  if (options_.masked_conv) return encoder_->ForwardFeatures(images, mask);
  const torch::Tensor pixel_mask =
      UpsampleMask(mask, images.size(2), images.size(3)).to(images.scalar_type());
  return encoder_->ForwardFeatures(images * (1.0 - pixel_mask));
}

torch::Tensor FcmaeImpl::Decode(const torch::Tensor& features, const torch::Tensor& mask) {
  torch::Tensor x = proj_(features);
  const torch::Tensor m = UpsampleMask(mask, x.size(2), x.size(3)).to(x.scalar_type());
  x = x * (1.0 - m) + mask_token_ * m;
  for (auto& block : decoder_) x = block(x);
  return pred_(x);
}

torch::Tensor FcmaeImpl::Loss(const torch::Tensor& images, const torch::Tensor& pred,
                              const torch::Tensor& mask) const {
  torch::Tensor target = Patchify(images, cell_size_);
  if (options_.norm_pix_loss) {
    const auto [mean, scale] = PatchStats(target);
    target = (target - mean) / scale;
  }
  const torch::Tensor per_cell = (pred - target).square().mean(-1);  // (N, L)
  const torch::Tensor m =
      UpsampleMask(mask, images.size(2) / cell_size_, images.size(3) / cell_size_)
          .flatten(1)
          .to(per_cell.scalar_type());
  return (per_cell * m).sum() / m.sum();
}

torch::Tensor FcmaeImpl::Reconstruct(const torch::Tensor& images, const FcmaeOutput& output) const {
  torch::NoGradGuard no_grad;
  torch::Tensor pred = output.pred.detach();
  if (options_.norm_pix_loss) {
    const auto [mean, scale] = PatchStats(Patchify(images, cell_size_));
    pred = pred * scale + mean;
  }
  const torch::Tensor reconstruction = Unpatchify(
      pred, cell_size_, images.size(1), images.size(2) / cell_size_, images.size(3) / cell_size_);
  const torch::Tensor m =
      UpsampleMask(output.mask, images.size(2), images.size(3)).to(images.scalar_type());
  return images * (1.0 - m) + reconstruction * m;
}

absl::StatusOr<Fcmae> MakeFcmae(const ConvNextV2Config& encoder_config,
                                const FcmaeOptions& options) {
  OFFSITE_RETURN_IF_ERROR(ValidateFcmaeOptions(encoder_config, options));
  return Fcmae(encoder_config, options);
}

torch::Tensor ReconstructionGrid(const torch::Tensor& images, const torch::Tensor& mask,
                                 const torch::Tensor& reconstruction,
                                 const ReconstructionGridOptions& options) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(images.dim() == 4 && images.sizes() == reconstruction.sizes(),
              "images and reconstruction must both be (N, C, H, W)");
  const int64_t n = std::min(images.size(0), options.max_images);
  const int64_t c = images.size(1);
  const int64_t h = images.size(2);
  const int64_t w = images.size(3);
  auto per_channel = [c](const std::vector<double>& values, const char* name) {
    TORCH_CHECK(values.size() == 1 || static_cast<int64_t>(values.size()) == c, name,
                " needs 1 or ", c, " values");
    return torch::tensor(values, torch::kFloat).reshape({1, -1, 1, 1});
  };
  const torch::Tensor mean = per_channel(options.mean, "mean");
  const torch::Tensor std = per_channel(options.std, "std");
  auto display = [&](const torch::Tensor& x) {
    return (x.slice(0, 0, n).detach().to(torch::kCPU, torch::kFloat) * std + mean).clamp(0, 1);
  };
  const torch::Tensor inputs = display(images);
  const torch::Tensor m =
      UpsampleMask(mask.slice(0, 0, n).detach().to(torch::kCPU, torch::kFloat), h, w);
  const torch::Tensor rows[] = {inputs, inputs * (1 - m) + options.masked_value * m,
                                display(reconstruction)};

  const int64_t pad = options.padding;
  torch::Tensor grid = torch::zeros({c, 3 * h + 4 * pad, n * w + (n + 1) * pad});
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = pad + r * (h + pad);
      const int64_t x = pad + i * (w + pad);
      grid.slice(1, y, y + h).slice(2, x, x + w).copy_(rows[r][i]);
    }
  }
  return grid.mul(255).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
}

}  // namespace offsite
