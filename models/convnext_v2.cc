#include "models/convnext_v2.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <cmath>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr double kNormEps = 1e-6;

absl::Status FieldError(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("ConvNextV2Config.", field, ": ", problem));
}

// Widths double per stage in all paper sizes.
ConvNextV2Config PaperConfig(std::vector<int64_t> depths, int64_t first_dim) {
  ConvNextV2Config config;
  config.depths = std::move(depths);
  config.dims = {first_dim, 2 * first_dim, 4 * first_dim, 8 * first_dim};
  return config;
}

// Parameters of one block of width c: dwconv 49c + c, LN 2c, Linear c*4c + 4c,
// GRN 2*4c, Linear 4c*c + c.
int64_t BlockParameterCount(int64_t c, bool use_grn) {
  return 8 * c * c + 57 * c + (use_grn ? 8 * c : 0);
}

// timm's trunc_normal_: inverse-CDF sampling of N(0, std) restricted to
// [lower, upper].
void TruncatedNormal(torch::Tensor& tensor, double std, double lower, double upper) {
  torch::NoGradGuard no_grad;
  auto normal_cdf = [](double v) { return (1.0 + std::erf(v / std::sqrt(2.0))) / 2.0; };
  const double l = normal_cdf(lower / std);
  const double u = normal_cdf(upper / std);
  tensor.uniform_(2 * l - 1, 2 * u - 1);
  tensor.erfinv_();
  tensor.mul_(std * std::sqrt(2.0));
  tensor.clamp_(lower, upper);
}

std::string Shape(const torch::Tensor& t) { return absl::StrJoin(t.sizes(), ", "); }

// Every parameter and buffer of `model` by dotted name.
std::map<std::string, torch::Tensor> NamedTensors(torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    tensors[item.key()] = item.value();
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    tensors[item.key()] = item.value();
  }
  return tensors;
}

bool IsHeadTensor(const std::string& name) {
  return absl::StartsWith(name, "norm.") || absl::StartsWith(name, "head.");
}

constexpr char kFormatKey[] = "offsite_format";
constexpr char kFormatName[] = "convnext_v2";
constexpr char kVersionKey[] = "format_version";
constexpr char kConfigKey[] = "config";
constexpr char kTensorsKey[] = "tensors";

c10::IValue ConfigToIValue(const ConvNextV2Config& config) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("in_channels", config.in_channels);
  dict.insert("num_classes", config.num_classes);
  dict.insert("depths", config.depths);
  dict.insert("dims", config.dims);
  dict.insert("stem_stride", config.stem_stride);
  dict.insert("drop_path", config.drop_path);
  dict.insert("use_grn", config.use_grn);
  return dict;
}

absl::StatusOr<ConvNextV2Config> ConfigFromIValue(const c10::IValue& value) {
  if (!value.isGenericDict())
    return absl::InvalidArgumentError("checkpoint 'config' is not a dict");
  const c10::impl::GenericDict dict = value.toGenericDict();
  auto get = [&](const std::string& key) -> absl::StatusOr<c10::IValue> {
    auto it = dict.find(key);
    if (it == dict.end()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint config lacks '", key, "'"));
    }
    return it->value();
  };
  auto get_int = [&](const std::string& key) -> absl::StatusOr<int64_t> {
    OFFSITE_ASSIGN_OR_RETURN(c10::IValue v, get(key));
    if (!v.isInt()) return absl::InvalidArgumentError(absl::StrCat("config '", key, "' not int"));
    return v.toInt();
  };
  auto get_ints = [&](const std::string& key) -> absl::StatusOr<std::vector<int64_t>> {
    OFFSITE_ASSIGN_OR_RETURN(c10::IValue v, get(key));
    if (!v.isIntList()) {
      return absl::InvalidArgumentError(absl::StrCat("config '", key, "' not an int list"));
    }
    return v.toIntVector();
  };
  ConvNextV2Config config;
  OFFSITE_ASSIGN_OR_RETURN(config.in_channels, get_int("in_channels"));
  OFFSITE_ASSIGN_OR_RETURN(config.num_classes, get_int("num_classes"));
  OFFSITE_ASSIGN_OR_RETURN(config.depths, get_ints("depths"));
  OFFSITE_ASSIGN_OR_RETURN(config.dims, get_ints("dims"));
  OFFSITE_ASSIGN_OR_RETURN(config.stem_stride, get_int("stem_stride"));
  OFFSITE_ASSIGN_OR_RETURN(c10::IValue use_grn, get("use_grn"));
  if (!use_grn.isBool()) return absl::InvalidArgumentError("config 'use_grn' not bool");
  config.use_grn = use_grn.toBool();
  OFFSITE_ASSIGN_OR_RETURN(c10::IValue drop_path, get("drop_path"));
  if (!drop_path.isDouble()) return absl::InvalidArgumentError("config 'drop_path' not double");
  config.drop_path = drop_path.toDouble();
  return config;
}

// OK when `stored` and `target` describe the same tensors.
absl::Status CompareConfigs(const ConvNextV2Config& stored, const ConvNextV2Config& target,
                            bool compare_num_classes) {
  auto differs = [](const char* field, const auto& in_checkpoint, const auto& in_model) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint config differs from the model's: ", field, " is ",
                     absl::StrJoin(in_checkpoint, ","), " in the checkpoint but ",
                     absl::StrJoin(in_model, ","), " in the model"));
  };
  using V = std::vector<int64_t>;
  if (stored.in_channels != target.in_channels) {
    return differs("in_channels", V{stored.in_channels}, V{target.in_channels});
  }
  if (compare_num_classes && stored.num_classes != target.num_classes) {
    return differs("num_classes", V{stored.num_classes}, V{target.num_classes});
  }
  if (stored.depths != target.depths) return differs("depths", stored.depths, target.depths);
  if (stored.dims != target.dims) return differs("dims", stored.dims, target.dims);
  if (stored.stem_stride != target.stem_stride) {
    return differs("stem_stride", V{stored.stem_stride}, V{target.stem_stride});
  }
  if (stored.use_grn != target.use_grn) {
    return differs("use_grn", V{stored.use_grn}, V{target.use_grn});
  }
  return absl::OkStatus();
}

absl::Status LoadImpl(const ConvNextV2Config& config, torch::nn::Module& model,
                      torch::serialize::InputArchive& archive, bool backbone_only) {
  OFFSITE_RETURN_IF_ERROR(ValidateConfig(config));
  std::map<std::string, torch::Tensor> stored;
  try {
    c10::IValue value;
    if (!archive.try_read(kFormatKey, value) || !value.isString() ||
        value.toStringRef() != kFormatName) {
      return absl::InvalidArgumentError(absl::StrCat("not a ConvNeXt V2 checkpoint: no '",
                                                     kFormatKey, "' = '", kFormatName, "' entry"));
    }
    if (!archive.try_read(kVersionKey, value) || !value.isInt()) {
      return absl::InvalidArgumentError("ConvNeXt V2 checkpoint has no format version");
    }
    if (value.toInt() != kConvNextV2FormatVersion) {
      return absl::InvalidArgumentError(
          absl::StrFormat("ConvNeXt V2 checkpoint format version %d; this build reads version %d",
                          value.toInt(), kConvNextV2FormatVersion));
    }
    if (!archive.try_read(kConfigKey, value)) {
      return absl::InvalidArgumentError("ConvNeXt V2 checkpoint has no config");
    }
    OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config stored_config, ConfigFromIValue(value));
    OFFSITE_RETURN_IF_ERROR(CompareConfigs(stored_config, config, !backbone_only));
    if (!archive.try_read(kTensorsKey, value) || !value.isGenericDict()) {
      return absl::InvalidArgumentError("ConvNeXt V2 checkpoint has no tensors");
    }
    for (const auto& entry : value.toGenericDict()) {
      if (!entry.key().isString() || !entry.value().isTensor()) {
        return absl::InvalidArgumentError("ConvNeXt V2 checkpoint 'tensors' is not name -> tensor");
      }
      const std::string& name = entry.key().toStringRef();
      if (backbone_only && IsHeadTensor(name)) continue;
      stored[name] = entry.value().toTensor();
    }
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat("reading ConvNeXt V2 checkpoint: ", e.what_without_backtrace()));
  }

  // Check everything before copying anything, so a failed load leaves the model as it was.
  std::map<std::string, torch::Tensor> targets = NamedTensors(model);
  if (backbone_only) {
    for (auto it = targets.begin(); it != targets.end();) {
      it = IsHeadTensor(it->first) ? targets.erase(it) : std::next(it);
    }
  }
  for (const auto& [name, target] : targets) {
    auto it = stored.find(name);
    if (it == stored.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' of the model is missing from the checkpoint"));
    }
    if (!it->second.sizes().equals(target.sizes())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape [",
                                                     Shape(it->second), "] in the checkpoint but [",
                                                     Shape(target), "] in the model"));
    }
  }
  for (const auto& [name, tensor] : stored) {
    if (targets.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint tensor '", name, "' has no counterpart in the model"));
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) target.copy_(stored.at(name));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateConfig(const ConvNextV2Config& config) {
  if (config.in_channels < 1) return FieldError("in_channels", "must be >= 1");
  if (config.num_classes < 0) return FieldError("num_classes", "must be >= 0 (0: no head)");
  if (config.depths.empty()) return FieldError("depths", "needs at least one stage");
  if (config.depths.size() != config.dims.size()) {
    return FieldError("dims", absl::StrFormat("needs one entry per stage: %d depths but %d dims",
                                              config.depths.size(), config.dims.size()));
  }
  for (size_t s = 0; s < config.depths.size(); ++s) {
    if (config.depths[s] < 1) {
      return FieldError(absl::StrCat("depths[", s, "]"), "every stage needs >= 1 block");
    }
    if (config.dims[s] < 1) return FieldError(absl::StrCat("dims[", s, "]"), "must be >= 1");
  }
  if (config.stem_stride < 1) return FieldError("stem_stride", "must be >= 1");
  if (!(config.drop_path >= 0 && config.drop_path < 1)) {
    return FieldError("drop_path", "must be in [0, 1)");
  }
  return absl::OkStatus();
}

absl::StatusOr<ConvNextV2Config> ConvNextV2ConfigByName(std::string_view name) {
  // Debian's Abseil has its own string_view, so go through std::string.
  const std::string lower = absl::AsciiStrToLower(std::string(name));
  if (lower == "atto") return PaperConfig({2, 2, 6, 2}, 40);
  if (lower == "femto") return PaperConfig({2, 2, 6, 2}, 48);
  if (lower == "pico") return PaperConfig({2, 2, 6, 2}, 64);
  if (lower == "nano") return PaperConfig({2, 2, 8, 2}, 80);
  if (lower == "tiny") return PaperConfig({3, 3, 9, 3}, 96);
  if (lower == "base") return PaperConfig({3, 3, 27, 3}, 128);
  if (lower == "large") return PaperConfig({3, 3, 27, 3}, 192);
  if (lower == "huge") return PaperConfig({3, 3, 27, 3}, 352);
  return absl::NotFoundError(absl::StrCat("no ConvNeXt V2 size '", std::string(name),
                                          "'; known: atto femto pico nano tiny base large huge"));
}

int64_t ConvNextV2TotalStride(const ConvNextV2Config& config) {
  return config.stem_stride << (config.depths.size() - 1);
}

double LayerDecayScale(const ConvNextV2Config& config, std::string_view parameter_name,
                       double decay) {
  int64_t total_blocks = 0;
  for (int64_t depth : config.depths) total_blocks += depth;
  // Index of the block whose multiplier the parameter shares; B for the head.
  int64_t block = total_blocks;
  const std::vector<std::string> parts =
      absl::StrSplit(absl::string_view(parameter_name.data(), parameter_name.size()), '.');
  int64_t index = 0;
  if (parts.size() > 1 && absl::SimpleAtoi(parts[1], &index)) {
    if (parts[0] == "blocks") {
      block = index;
    } else if (parts[0] == "downsample_layers") {
      block = 0;
      for (int64_t s = 0; s < index && s < static_cast<int64_t>(config.depths.size()); ++s) {
        block += config.depths[s];
      }
    }
  }
  return std::pow(decay, static_cast<double>(total_blocks - block));
}

int64_t ConvNextV2ParameterCount(const ConvNextV2Config& config) {
  const auto& dims = config.dims;
  const int64_t k = config.stem_stride;
  // Stem: conv k x k with bias, LN.
  int64_t count = config.in_channels * k * k * dims[0] + dims[0] + 2 * dims[0];
  for (size_t s = 0; s < dims.size(); ++s) {
    // Downsampling: LN, conv 2x2 with bias.
    if (s > 0) count += 2 * dims[s - 1] + dims[s - 1] * 4 * dims[s] + dims[s];
    count += config.depths[s] * BlockParameterCount(dims[s], config.use_grn);
  }
  if (config.num_classes > 0) {
    count += 2 * dims.back() + dims.back() * config.num_classes + config.num_classes;
  }
  return count;
}

GrnImpl::GrnImpl(int64_t dim) {
  gamma = register_parameter("gamma", torch::zeros({1, 1, 1, dim}));
  beta = register_parameter("beta", torch::zeros({1, 1, 1, dim}));
}

torch::Tensor GrnImpl::forward(const torch::Tensor& x, const torch::Tensor& visible) {
  const torch::Tensor stats_input = visible.defined() ? x * visible : x;
  // linalg_vector_norm's gradient is 0 (not NaN) at an all-zero channel.
  const torch::Tensor gx = torch::linalg_vector_norm(stats_input, 2, {1, 2}, /*keepdim=*/true);
  const torch::Tensor nx = gx / (gx.mean(-1, /*keepdim=*/true) + 1e-6);
  // The paper's gamma * (x * nx) + beta + x, regrouped as beta + x * (1 + gamma * nx):
  // one pass over the (N, H, W, 4C) activations instead of four, forward and backward.
  return torch::addcmul(beta, x, gamma * nx + 1);
}

ChannelLayerNormImpl::ChannelLayerNormImpl(int64_t dim, ChannelLayout layout)
    : dim_(dim), layout_(layout) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor ChannelLayerNormImpl::forward(const torch::Tensor& x) {
  if (layout_ == ChannelLayout::kChannelsLast) {
    return torch::layer_norm(x, {dim_}, weight, bias, kNormEps);
  }
  TORCH_CHECK(x.dim() == 4, "channels-first LayerNorm expects (N, C, H, W), got ", x.sizes());
  // On channels-last memory the permuted view is contiguous, so the fused kernel
  // runs without a copy.
  return torch::layer_norm(x.permute({0, 2, 3, 1}), {dim_}, weight, bias, kNormEps)
      .permute({0, 3, 1, 2});
}

torch::Tensor DropPath(const torch::Tensor& x, double p, bool training) {
  if (!training || p == 0) return x;
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  const double keep = 1 - p;
  return x * torch::empty(shape, x.options()).bernoulli_(keep).div_(keep);
}

ConvNextV2BlockImpl::ConvNextV2BlockImpl(int64_t dim, double drop_path, bool use_grn)
    : drop_path_(drop_path) {
  dwconv_ = register_module(
      "dwconv", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim, 7).padding(3).groups(dim)));
  norm_ = register_module("norm", ChannelLayerNorm(dim, ChannelLayout::kChannelsLast));
  pwconv1_ = register_module("pwconv1", LoraLinear(dim, 4 * dim));
  if (use_grn) grn_ = register_module("grn", Grn(4 * dim));
  pwconv2_ = register_module("pwconv2", LoraLinear(4 * dim, dim));
  UseChannelsLast(*this);
}

torch::Tensor ConvNextV2BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& visible) {
  torch::Tensor h = visible.defined() ? x * visible : x;
  h = dwconv_(h);
  if (visible.defined()) h = h * visible;
  h = h.permute({0, 2, 3, 1});  // (N, H, W, C): a view on channels-last memory.
  h = torch::gelu(pwconv1_(norm_(h)));
  if (grn_) h = grn_(h, visible.defined() ? visible.permute({0, 2, 3, 1}) : torch::Tensor());
  h = pwconv2_(h).permute({0, 3, 1, 2});
  return x + DropPath(h, drop_path_, is_training());
}

ConvNextV2Impl::ConvNextV2Impl(ConvNextV2Config config,
                               std::optional<std::vector<int64_t>> present_blocks)
    : config_(std::move(config)) {
  const absl::Status status = ValidateConfig(config_);
  TORCH_CHECK(status.ok(), status.ToString());
  const auto& dims = config_.dims;

  auto downsample_layers = register_module("downsample_layers", torch::nn::ModuleList());
  downsample_.push_back(torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(config_.in_channels, dims[0], config_.stem_stride)
                            .stride(config_.stem_stride)),
      ChannelLayerNorm(dims[0], ChannelLayout::kChannelsFirst)));
  for (size_t s = 1; s < dims.size(); ++s) {
    downsample_.push_back(torch::nn::Sequential(
        ChannelLayerNorm(dims[s - 1], ChannelLayout::kChannelsFirst),
        torch::nn::Conv2d(torch::nn::Conv2dOptions(dims[s - 1], dims[s], 2).stride(2))));
  }
  for (auto& layer : downsample_) downsample_layers->push_back(layer);

  // A plain holder rather than a ModuleList, so that absent blocks leave gaps
  // and every block keeps the name "blocks.<k>" of the full network.
  auto blocks = register_module("blocks", std::make_shared<torch::nn::Module>("Blocks"));
  int64_t total_blocks = 0;
  for (int64_t depth : config_.depths) total_blocks += depth;
  std::vector<bool> present(total_blocks, !present_blocks.has_value());
  if (present_blocks) {
    for (int64_t k : *present_blocks) {
      TORCH_CHECK(k >= 0 && k < total_blocks, "block ", k, " is not in a network of ",
                  total_blocks, " blocks");
      present[k] = true;
    }
  }
  for (size_t s = 0; s < dims.size(); ++s) {
    for (int64_t i = 0; i < config_.depths[s]; ++i) {
      const int64_t k = static_cast<int64_t>(blocks_.size());
      const double rate =
          total_blocks > 1 ? config_.drop_path * k / static_cast<double>(total_blocks - 1) : 0.0;
      blocks_.push_back(present[k] ? ConvNextV2Block(dims[s], rate, config_.use_grn)
                                   : ConvNextV2Block(nullptr));
      block_stage_.push_back(static_cast<int64_t>(s));
      if (present[k]) blocks->register_module(std::to_string(k), blocks_.back());
    }
  }

  if (config_.num_classes > 0) {
    norm_ = register_module("norm", ChannelLayerNorm(dims.back(), ChannelLayout::kChannelsLast));
    head_ = register_module("head", torch::nn::Linear(dims.back(), config_.num_classes));
  }
  InitConvNextV2Weights(*this);
  UseChannelsLast(*this);
}

torch::Tensor ConvNextV2Impl::forward(const torch::Tensor& images) {
  return ForwardHead(ForwardFeatures(images));
}

std::string ConvNextV2Impl::BlockPrefix(int64_t index) const {
  return "blocks." + std::to_string(index) + ".";
}

torch::Tensor ConvNextV2Impl::Embed(const torch::Tensor& images) {
  return downsample_[0]->forward(images);
}

torch::Tensor ConvNextV2Impl::RunBlocks(torch::Tensor x, int64_t begin, int64_t end) {
  for (int64_t k = begin; k < end; ++k) {
    const int64_t stage = block_stage_[k];
    if (k > 0 && stage != block_stage_[k - 1]) x = downsample_[stage]->forward(x);
    if (!blocks_[k].is_empty()) x = blocks_[k]->forward(x);
  }
  return x;
}

torch::Tensor ConvNextV2Impl::ForwardFeatures(const torch::Tensor& images,
                                              const torch::Tensor& mask) {
  auto visible_like = [&](const torch::Tensor& x) {
    return 1.0 - UpsampleMask(mask, x.size(2), x.size(3)).to(x.scalar_type());
  };
  torch::Tensor x = downsample_[0]->forward(images);
  torch::Tensor visible;
  if (mask.defined()) {
    visible = visible_like(x);
    x = x * visible;
  }
  for (size_t k = 0; k < blocks_.size(); ++k) {
    const int64_t stage = block_stage_[k];
    if (k > 0 && stage != block_stage_[k - 1]) {
      // Masks are patch-aligned, so each 2x2 window is all visible or all
      // masked and no visible output reads a masked position.
      x = downsample_[stage]->forward(x);
      if (mask.defined()) visible = visible_like(x);
    }
    if (!blocks_[k].is_empty()) x = blocks_[k]->forward(x, visible);
  }
  return x;
}

torch::Tensor ConvNextV2Impl::ForwardHead(const torch::Tensor& features) {
  TORCH_CHECK(has_head(), "this ConvNeXt V2 has no head (num_classes == 0)");
  return head_(norm_(features.mean({2, 3})));
}

absl::StatusOr<ConvNextV2> MakeConvNextV2(const ConvNextV2Config& config,
                                          std::optional<std::vector<int64_t>> present_blocks) {
  OFFSITE_RETURN_IF_ERROR(ValidateConfig(config));
  if (present_blocks) {
    int64_t total_blocks = 0;
    for (int64_t depth : config.depths) total_blocks += depth;
    for (int64_t k : *present_blocks) {
      if (k < 0 || k >= total_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("block ", k, " is not in a network of ",
                                                       total_blocks, " blocks"));
      }
    }
  }
  return ConvNextV2(config, std::move(present_blocks));
}

void InitConvNextV2Weights(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  auto init = [](torch::nn::Module& m) {
    torch::Tensor weight;
    torch::Tensor bias;
    if (auto* conv = m.as<torch::nn::Conv2dImpl>()) {
      weight = conv->weight;
      bias = conv->bias;
    } else if (auto* linear = m.as<torch::nn::LinearImpl>()) {
      weight = linear->weight;
      bias = linear->bias;
    } else if (auto* linear = m.as<LoraLinearImpl>()) {
      weight = linear->weight;
      bias = linear->bias;
    } else {
      return;
    }
    TruncatedNormal(weight, 0.02, -2.0, 2.0);
    if (bias.defined()) bias.zero_();
  };
  // include_self would need `module` to be owned by a shared_ptr already, which
  // it is not inside a constructor.
  init(module);
  for (auto& child : module.modules(/*include_self=*/false)) init(*child);
}

void UseChannelsLast(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters(/*recurse=*/true)) {
    if (parameter.dim() == 4) {
      parameter.set_data(parameter.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
}

torch::Tensor UpsampleMask(const torch::Tensor& mask, int64_t height, int64_t width) {
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1, "mask must be (N, 1, h, w), got ",
              mask.sizes());
  const int64_t n = mask.size(0);
  const int64_t h = mask.size(2);
  const int64_t w = mask.size(3);
  TORCH_CHECK(height % h == 0 && width % w == 0, "a ", h, "x", w,
              " mask does not tile a feature map of ", height, "x", width);
  const int64_t fh = height / h;
  const int64_t fw = width / w;
  if (fh == 1 && fw == 1) return mask;
  return mask.reshape({n, 1, h, 1, w, 1})
      .expand({n, 1, h, fh, w, fw})
      .reshape({n, 1, height, width});
}

absl::Status SaveConvNextV2(const ConvNextV2Config& config, torch::nn::Module& model,
                            torch::serialize::OutputArchive& archive) {
  OFFSITE_RETURN_IF_ERROR(ValidateConfig(config));
  try {
    c10::Dict<std::string, torch::Tensor> tensors;
    // Copies on the CPU: the archive must not change if training goes on before
    // it is written out, and a CPU checkpoint loads on any machine.
    for (const auto& [name, tensor] : NamedTensors(model)) {
      tensors.insert(name, tensor.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true));
    }
    archive.write(kFormatKey, c10::IValue(std::string(kFormatName)));
    archive.write(kVersionKey, c10::IValue(kConvNextV2FormatVersion));
    archive.write(kConfigKey, ConfigToIValue(config));
    archive.write(kTensorsKey, c10::IValue(tensors));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("writing ConvNeXt V2 checkpoint: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status LoadConvNextV2(const ConvNextV2Config& config, torch::nn::Module& model,
                            torch::serialize::InputArchive& archive) {
  return LoadImpl(config, model, archive, /*backbone_only=*/false);
}

absl::Status LoadConvNextV2Backbone(const ConvNextV2Config& config, torch::nn::Module& model,
                                    torch::serialize::InputArchive& archive) {
  return LoadImpl(config, model, archive, /*backbone_only=*/true);
}

}  // namespace offsite
