#ifndef OFFSITE_MODELS_CONVNEXT_V2_H_
#define OFFSITE_MODELS_CONVNEXT_V2_H_

// ConvNeXt V2 (Woo et al., CVPR 2023): GRN, the V2 block, and the network, with
// any number of stages so that small-image (28x28, 32x32) networks are ordinary
// configurations. Follows facebookresearch/ConvNeXt-V2 `models/convnextv2.py`.
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config, ConvNextV2ConfigByName("atto"));
//   config.num_classes = 10;
//   OFFSITE_ASSIGN_OR_RETURN(ConvNextV2 model, MakeConvNextV2(config));
//   model->to(device);
//   torch::Tensor logits = model->forward(images);  // (N, 10)
//
// Memory layout: every 4-D convolution weight is kept channels-last, so
// activations flow as NHWC and the block's permute to (N, H, W, C) for
// LayerNorm/Linear is a free view. Measured on CPU (1 thread, batch 32): the
// 7x7 depthwise-conv backward is 4.5x faster at 40 channels x 16x16 and 2.8x at
// 80 x 8x8; forward+backward of a whole 40-320 network on 32x32 images 1.2-1.4x.

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/block_model.h"
#include "models/lora.h"

namespace offsite {

// Architecture of a ConvNeXt V2 network. The number of stages is depths.size();
// stage s has depths[s] blocks of width dims[s]. The stem is a
// stem_stride x stem_stride convolution with that stride, and each later stage
// starts with a 2x2/stride-2 downsampling, so the last stage's grid is
// input / (stem_stride * 2^(stages-1)) (see ConvNextV2TotalStride).
// num_classes == 0 builds a backbone without head (the FCMAE encoder).
struct ConvNextV2Config {
  int64_t in_channels = 3;
  int64_t num_classes = 1000;
  std::vector<int64_t> depths;
  std::vector<int64_t> dims;
  int64_t stem_stride = 4;
  // Stochastic-depth rate of the last block; rates rise linearly from 0.
  double drop_path = 0;
  bool use_grn = true;
};

// OK, or InvalidArgument naming the offending field.
absl::Status ValidateConfig(const ConvNextV2Config& config);

// The paper's eight sizes: "atto", "femto", "pico", "nano", "tiny", "base",
// "large", "huge" (ImageNet: 3 channels, 1000 classes, stem stride 4).
// NotFound for any other name.
absl::StatusOr<ConvNextV2Config> ConvNextV2ConfigByName(std::string_view name);

// Downsampling factor from the input to the last stage's grid:
// stem_stride * 2^(stages - 1). E.g. 32 for the paper sizes, 8 for a 3-stage
// network with stem stride 2 (a 32x32 image gives a 4x4 grid).
int64_t ConvNextV2TotalStride(const ConvNextV2Config& config);

// Learning-rate multiplier of a parameter, by name, under layer-wise decay (the
// reference fine-tuning's "single" type): with B blocks in all, block k's
// parameters get decay^(B - k), a stage's downsampling (the stem for stage 0)
// that of the stage's first block, the final norm and head 1. So the first
// layers, whose pretrained features are most general, move least.
double LayerDecayScale(const ConvNextV2Config& config, std::string_view parameter_name,
                       double decay);

// Number of trainable parameters of the network `config` describes, computed
// from the config alone (no module is built; useful for Huge's 660M).
int64_t ConvNextV2ParameterCount(const ConvNextV2Config& config);

// Global Response Normalization on channels-last input x of shape (N, H, W, C):
//   Gx = ||x||_2 over (H, W), per sample and channel
//   Nx = Gx / (mean over C of Gx + 1e-6)
//   out = gamma * (x * Nx) + beta + x
// gamma and beta start at zero, so a fresh GRN is the identity.
class GrnImpl : public torch::nn::Module {
 public:
  explicit GrnImpl(int64_t dim);

  // `visible`, if defined, is (N, H, W, 1) with 1 at visible and 0 at masked
  // positions; Gx is then taken over visible positions only, as the sparse
  // (FCMAE) encoder does. Outputs at masked positions are meaningless.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& visible = {});

  torch::Tensor gamma;  // (1, 1, 1, C)
  torch::Tensor beta;   // (1, 1, 1, C)
};
TORCH_MODULE(Grn);

enum class ChannelLayout { kChannelsLast, kChannelsFirst };

// LayerNorm over the channel dimension, eps 1e-6: of the last dimension for
// kChannelsLast input (N, ..., C), of dimension 1 for kChannelsFirst input
// (N, C, H, W).
class ChannelLayerNormImpl : public torch::nn::Module {
 public:
  ChannelLayerNormImpl(int64_t dim, ChannelLayout layout);

  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;
  torch::Tensor bias;

 private:
  int64_t dim_;
  ChannelLayout layout_;
};
TORCH_MODULE(ChannelLayerNorm);

// Stochastic depth: in training, zeroes each sample's x with probability p and
// scales survivors by 1 / (1 - p); the identity otherwise.
torch::Tensor DropPath(const torch::Tensor& x, double p, bool training);

// The ConvNeXt V2 block on (N, C, H, W) input:
//   x + DropPath(Linear(4C->C)(GRN(GELU(Linear(C->4C)(LN(DWConv7x7(x)))))))
// No LayerScale (V2 drops it).
class ConvNextV2BlockImpl : public torch::nn::Module {
 public:
  ConvNextV2BlockImpl(int64_t dim, double drop_path, bool use_grn);

  // `visible`, if defined, is (N, 1, H, W) with 1 at visible and 0 at masked
  // positions: the dense emulation of sparse convolution zeroes masked
  // positions before and after the depthwise conv and GRN takes its statistics
  // over visible positions, so no visible output depends on a masked input.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& visible = {});

  double drop_path() const { return drop_path_; }

 private:
  torch::nn::Conv2d dwconv_{nullptr};
  ChannelLayerNorm norm_{nullptr};
  LoraLinear pwconv1_{nullptr};
  Grn grn_{nullptr};  // Null when the config disables GRN.
  LoraLinear pwconv2_{nullptr};
  double drop_path_;
};
TORCH_MODULE(ConvNextV2Block);

// The network, as a flat sequence of blocks plus non-block parts.
//
// Blocks are the units a split (e.g. Offsite-Tuning's adapter / emulator) works
// on: every block is residual and shape-preserving, so any block can be dropped
// or kept independently; dropping blocks of a stage is the same as a config with
// a smaller depths[stage]. Downsampling layers change the shape, so they cannot
// be dropped like blocks; they are non-block parts that go with their stage,
// next to the stem and head: downsample(0) is the stem and downsample(s)
// (s >= 1) runs before the first block of stage s.
//
// Parameter names: "downsample_layers.<s>.<i>.*", "blocks.<k>.*", and with a
// head "norm.*" and "head.*".
//
// As a BlockModelImpl, a network may hold only some of its blocks
// (`present_blocks`, e.g. an Offsite-Tuning emulator); the others are skipped
// and the downsampling layers of every stage always run.
class ConvNextV2Impl : public BlockModelImpl {
 public:
  // The config must be valid (see ValidateConfig); an invalid one throws
  // c10::Error. MakeConvNextV2 returns a Status instead. `present_blocks`
  // (ascending indices) builds only those blocks; nullopt builds all.
  explicit ConvNextV2Impl(ConvNextV2Config config,
                          std::optional<std::vector<int64_t>> present_blocks = std::nullopt);

  // BlockModelImpl: Embed is the stem, Head is ForwardHead.
  int64_t num_blocks() const override { return static_cast<int64_t>(blocks_.size()); }
  bool has_block(int64_t index) const override { return !blocks_.at(index).is_empty(); }
  std::string BlockPrefix(int64_t index) const override;
  std::vector<std::string> HeadPrefixes() const override { return {"norm.", "head."}; }
  torch::Tensor Embed(const torch::Tensor& images) override;
  torch::Tensor RunBlocks(torch::Tensor hidden, int64_t begin, int64_t end) override;
  torch::Tensor Head(const torch::Tensor& features) override { return ForwardHead(features); }

  // Class logits (N, num_classes) of images (N, in_channels, H, W).
  // Requires num_classes > 0.
  torch::Tensor forward(const torch::Tensor& images);

  // The last stage's feature map (N, dims.back(), H / S, W / S), S the total
  // stride. `mask`, if defined, is (N, 1, h, w) on a patch grid, 1 = masked, and
  // each stage's height and width must be multiples of h and w: masked positions
  // are zeroed after the stem and around every depthwise conv (FCMAE's dense
  // emulation of sparse convolution). Features at masked cells are meaningless.
  torch::Tensor ForwardFeatures(const torch::Tensor& images, const torch::Tensor& mask = {});

  // Head on a last-stage feature map: global average pool -> LN -> Linear.
  torch::Tensor ForwardHead(const torch::Tensor& features);

  const ConvNextV2Config& config() const { return config_; }
  int64_t num_stages() const { return static_cast<int64_t>(config_.depths.size()); }
  // Null (is_empty()) for a block this network does not hold.
  ConvNextV2Block& block(int64_t index) { return blocks_.at(index); }
  // Stage of block `index`, in [0, num_stages()).
  int64_t block_stage(int64_t index) const { return block_stage_.at(index); }
  // The stem for stage 0, the downsampling layer before stage s otherwise.
  torch::nn::Sequential& downsample(int64_t stage) { return downsample_.at(stage); }
  bool has_head() const { return !head_.is_empty(); }

 private:
  ConvNextV2Config config_;
  std::vector<torch::nn::Sequential> downsample_;
  std::vector<ConvNextV2Block> blocks_;
  std::vector<int64_t> block_stage_;
  ChannelLayerNorm norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(ConvNextV2);

// Validates the config, then builds the network (initialised as the paper:
// truncated normal std 0.02 for conv and linear weights, zero biases).
absl::StatusOr<ConvNextV2> MakeConvNextV2(
    const ConvNextV2Config& config,
    std::optional<std::vector<int64_t>> present_blocks = std::nullopt);

// The paper's initialisation for every Conv2d and Linear under `module`:
// weights from timm's trunc_normal_(std=0.02) (its bounds +-2 are absolute,
// i.e. 100 std, so in effect a plain normal), biases zero. LayerNorm and GRN
// keep their own (1/0 and 0/0) initial values.
void InitConvNextV2Weights(torch::nn::Module& module);

// Re-lays every 4-D parameter of `module` out channels-last (see the note at
// the top of this file). Modules in this file do it themselves on construction.
void UseChannelsLast(torch::nn::Module& module);

// Nearest-neighbour upsampling of a patch-grid mask (N, 1, h, w) to
// (N, 1, height, width); height and width must be multiples of h and w.
torch::Tensor UpsampleMask(const torch::Tensor& mask, int64_t height, int64_t width);

// Checkpoints. The archive holds a format tag and version, the config, and
// every parameter and buffer of `model` by its dotted name. A model loads only
// into the configuration it was saved from; drop_path is not compared, since it
// is a training setting that does not change any tensor.
//
// Example (file handling is the caller's):
//   torch::serialize::OutputArchive archive;
//   OFFSITE_RETURN_IF_ERROR(SaveConvNextV2(config, *model, archive));
//   archive.save_to(path);
inline constexpr int64_t kConvNextV2FormatVersion = 1;

absl::Status SaveConvNextV2(const ConvNextV2Config& config, torch::nn::Module& model,
                            torch::serialize::OutputArchive& archive);

// Fills `model` from an archive SaveConvNextV2 wrote. InvalidArgument, with the
// field or tensor named, if the format, version or config differ or any tensor
// name or shape does not match; `model` is untouched on error.
absl::Status LoadConvNextV2(const ConvNextV2Config& config, torch::nn::Module& model,
                            torch::serialize::InputArchive& archive);

// As LoadConvNextV2 for everything but the head: num_classes may differ and the
// head tensors ("norm.*", "head.*") keep their values. For fine-tuning from a
// pretrained (e.g. FCMAE) encoder saved with or without a head.
absl::Status LoadConvNextV2Backbone(const ConvNextV2Config& config, torch::nn::Module& model,
                                    torch::serialize::InputArchive& archive);

}  // namespace offsite

#endif  // OFFSITE_MODELS_CONVNEXT_V2_H_
