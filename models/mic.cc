#include "models/mic.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

namespace F = torch::nn::functional;

constexpr char kMicNetFormat[] = "mic_net";

torch::Tensor GaussianBlur(const torch::Tensor& images, double sigma) {
  const int64_t radius = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(2 * sigma)));
  torch::Tensor x = torch::arange(-radius, radius + 1, images.options());
  torch::Tensor kernel = torch::exp(-x * x / (2 * sigma * sigma));
  kernel = kernel / kernel.sum();
  const int64_t c = images.size(1);
  torch::Tensor padded =
      F::pad(images.contiguous(),
             F::PadFuncOptions({radius, radius, radius, radius}).mode(torch::kReplicate));
  torch::Tensor rows = F::conv2d(padded, kernel.view({1, 1, 1, -1}).repeat({c, 1, 1, 1}),
                                 F::Conv2dFuncOptions().groups(c));
  return F::conv2d(rows, kernel.view({1, 1, -1, 1}).repeat({c, 1, 1, 1}),
                   F::Conv2dFuncOptions().groups(c));
}

// Per-element CE (N) or (N, H, W), never reduced.
torch::Tensor PixelCrossEntropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().reduction(torch::kNone));
}

// Mean over samples of q_i * mean CE of sample i.
torch::Tensor WeightedCrossEntropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                   const torch::Tensor& quality) {
  torch::Tensor loss = PixelCrossEntropy(logits, labels);
  if (loss.dim() > 1) loss = loss.flatten(1).mean(1);
  return (loss * quality).mean();
}

}  // namespace

absl::StatusOr<MicTask> ParseMicTask(const std::string& name) {
  if (name == "classification") return MicTask::kClassification;
  if (name == "segmentation") return MicTask::kSegmentation;
  return absl::InvalidArgumentError(
      absl::StrCat("task: \"", name, "\" is not classification or segmentation"));
}

absl::StatusOr<MicMethod> ParseMicMethod(const std::string& name) {
  if (name == "source_only") return MicMethod::kSourceOnly;
  if (name == "self_training") return MicMethod::kSelfTraining;
  if (name == "mic") return MicMethod::kMic;
  return absl::InvalidArgumentError(
      absl::StrCat("method: \"", name, "\" is not source_only, self_training or mic"));
}

std::string MicMethodName(MicMethod method) {
  switch (method) {
    case MicMethod::kSourceOnly:
      return "source_only";
    case MicMethod::kSelfTraining:
      return "self_training";
    case MicMethod::kMic:
      return "mic";
  }
  return "";
}

at::Tensor BlockMask(int64_t n, int64_t height, int64_t width, int64_t block, double ratio,
                     at::Generator generator) {
  const int64_t rows = (height + block - 1) / block, columns = (width + block - 1) / block;
  torch::Tensor keep =
      (torch::rand({n, 1, rows, columns}, generator, torch::TensorOptions(torch::kFloat)) >= ratio)
          .to(torch::kFloat);
  return keep.repeat_interleave(block, 2)
      .repeat_interleave(block, 3)
      .slice(2, 0, height)
      .slice(3, 0, width)
      .contiguous();
}

double EmaAlpha(int64_t step, double alpha) {
  return std::min(1.0 - 1.0 / (static_cast<double>(step) + 1.0), alpha);
}

void EmaUpdate(torch::nn::Module& teacher, torch::nn::Module& student, int64_t step, double alpha) {
  torch::NoGradGuard no_grad;
  const double a = EmaAlpha(step, alpha);
  auto teacher_params = teacher.parameters();
  auto student_params = student.parameters();
  TORCH_CHECK(teacher_params.size() == student_params.size(), "EMA: different architectures");
  for (size_t i = 0; i < teacher_params.size(); ++i) {
    teacher_params[i].mul_(a).add_(student_params[i].detach(), 1.0 - a);
  }
  auto teacher_buffers = teacher.buffers();
  auto student_buffers = student.buffers();
  for (size_t i = 0; i < teacher_buffers.size() && i < student_buffers.size(); ++i) {
    teacher_buffers[i].copy_(student_buffers[i]);
  }
}

void InitTeacher(torch::nn::Module& teacher, torch::nn::Module& student) {
  EmaUpdate(teacher, student, /*step=*/0, /*alpha=*/0);
  for (auto& parameter : teacher.parameters()) parameter.set_requires_grad(false);
}

at::Tensor QualityWeight(const at::Tensor& probabilities, double tau) {
  torch::Tensor confident = (std::get<0>(probabilities.max(1)) > tau).to(torch::kFloat);
  if (confident.dim() == 1) return confident;
  return confident.flatten(1).mean(1);
}

at::Tensor MicAugment(const at::Tensor& images, const MicOptions& options,
                      at::Generator generator) {
  torch::NoGradGuard no_grad;
  const int64_t n = images.size(0);
  torch::TensorOptions cpu(torch::kFloat);
  torch::Tensor draws = torch::rand({n, 5}, generator, cpu).to(images.device());
  torch::Tensor out = images;
  // Colour jitter: contrast around the image mean, then a brightness shift
  // (in normalised units, where the data's std is about 1).
  torch::Tensor jitter = (draws.select(1, 0) < options.jitter_probability).to(torch::kFloat);
  torch::Tensor contrast = 1 + options.jitter_strength * (2 * draws.select(1, 1) - 1) * jitter;
  torch::Tensor brightness = options.jitter_strength * (2 * draws.select(1, 2) - 1) * jitter;
  torch::Tensor mean = out.mean({1, 2, 3}, /*keepdim=*/true);
  out = (out - mean) * contrast.view({n, 1, 1, 1}) + mean + brightness.view({n, 1, 1, 1});
  // Blur: each image with its own sigma, applied one by one (cheap at these sizes).
  auto blur = draws.select(1, 3).cpu();
  auto sigma = draws.select(1, 4).cpu();
  std::vector<torch::Tensor> blurred;
  for (int64_t i = 0; i < n; ++i) {
    torch::Tensor image = out.slice(0, i, i + 1);
    if (blur[i].item<double>() < options.blur_probability) {
      image = GaussianBlur(image, 0.15 + sigma[i].item<double>());
    }
    blurred.push_back(image);
  }
  return torch::cat(blurred).contiguous(torch::MemoryFormat::ChannelsLast);
}

MicNetImpl::MicNetImpl(const MicNetConfig& config) : config_(config) {
  ConvNextV2Config backbone = config.backbone;
  if (config.task == MicTask::kSegmentation) backbone.num_classes = 0;
  backbone_ = register_module("backbone", ConvNextV2(backbone));
  if (config.task == MicTask::kSegmentation) {
    projections_ = register_module("projections", torch::nn::ModuleList());
    for (int64_t dim : backbone.dims) {
      projections_->push_back(
          torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, config.decoder_dim, 1)));
    }
    fuse_ = register_module(
        "fuse",
        torch::nn::Conv2d(
            torch::nn::Conv2dOptions(config.decoder_dim, config.decoder_dim, 3).padding(1)));
    classifier_ =
        register_module("classifier", torch::nn::Conv2d(torch::nn::Conv2dOptions(
                                          config.decoder_dim, config.backbone.num_classes, 1)));
    InitConvNextV2Weights(*projections_);
    InitConvNextV2Weights(*fuse_);
    InitConvNextV2Weights(*classifier_);
    UseChannelsLast(*this);
  }
}

at::Tensor MicNetImpl::forward(const at::Tensor& images) {
  if (config_.task == MicTask::kClassification) return backbone_->forward(images);
  std::vector<torch::Tensor> stages;
  torch::Tensor x = images;
  int64_t k = 0;
  for (int64_t s = 0; s < backbone_->num_stages(); ++s) {
    x = backbone_->downsample(s)->forward(x);
    for (; k < backbone_->num_blocks() && backbone_->block_stage(k) == s; ++k) {
      x = backbone_->block(k)->forward(x);
    }
    stages.push_back(x);
  }
  const int64_t h = stages[0].size(2), w = stages[0].size(3);
  torch::Tensor fused;
  for (size_t s = 0; s < stages.size(); ++s) {
    torch::Tensor y = projections_[s]->as<torch::nn::Conv2d>()->forward(stages[s]);
    if (s > 0) {
      y = F::interpolate(y, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{h, w})
                                .mode(torch::kBilinear)
                                .align_corners(false));
    }
    fused = fused.defined() ? fused + y : y;
  }
  torch::Tensor logits = classifier_->forward(torch::gelu(fuse_->forward(fused)));
  return F::interpolate(logits, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{images.size(2), images.size(3)})
                                    .mode(torch::kBilinear)
                                    .align_corners(false));
}

absl::StatusOr<MicNet> MakeMicNet(const MicNetConfig& config) {
  OFFSITE_RETURN_IF_ERROR(ValidateConfig(config.backbone));
  if (config.backbone.num_classes < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MicNetConfig.backbone.num_classes: ", config.backbone.num_classes, " is below 2"));
  }
  if (config.task == MicTask::kSegmentation &&
      (config.decoder_dim < 1 || config.decoder_dim > 4096)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MicNetConfig.decoder_dim: ", config.decoder_dim, " is outside [1, 4096]"));
  }
  return MicNet(config);
}

absl::Status SaveMicNet(MicNet& model, torch::serialize::OutputArchive& archive) {
  const MicNetConfig& config = model->config();
  archive.write("format", c10::IValue(std::string(kMicNetFormat)));
  archive.write("version", c10::IValue(kMicNetFormatVersion));
  archive.write("task", c10::IValue(static_cast<int64_t>(config.task)));
  archive.write("decoder_dim", c10::IValue(config.decoder_dim));
  torch::serialize::OutputArchive backbone;
  OFFSITE_RETURN_IF_ERROR(SaveConvNextV2(config.backbone, *model, backbone));
  archive.write("model", backbone);
  return absl::OkStatus();
}

absl::Status LoadMicNet(MicNet& model, torch::serialize::InputArchive& archive) {
  c10::IValue format, version, task, decoder_dim;
  if (!archive.try_read("format", format) || !format.isString() ||
      format.toStringRef() != kMicNetFormat) {
    return absl::InvalidArgumentError("not a MIC model file");
  }
  archive.read("version", version);
  if (version.toInt() != kMicNetFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("MIC model file version ", version.toInt(), " is not ", kMicNetFormatVersion));
  }
  archive.read("task", task);
  archive.read("decoder_dim", decoder_dim);
  if (task.toInt() != static_cast<int64_t>(model->config().task) ||
      decoder_dim.toInt() != model->config().decoder_dim) {
    return absl::InvalidArgumentError("MIC model file: saved for another task or decoder");
  }
  torch::serialize::InputArchive backbone;
  archive.read("model", backbone);
  return LoadConvNextV2(model->config().backbone, *model, backbone);
}

absl::StatusOr<MicStepStats> MicTrainingStep(MicNet& student, MicNet& teacher,
                                             torch::optim::Optimizer& optimizer,
                                             const MicBatch& batch, int64_t step,
                                             const MicOptions& options, at::Generator generator,
                                             const GradientSync& sync) {
  MicStepStats stats;
  const bool adapt = options.method != MicMethod::kSourceOnly;
  const bool mic = options.method == MicMethod::kMic;
  torch::Tensor pseudo_labels, quality;
  if (adapt) {
    // Labels from the full, clean target image, without gradient.
    MicNet& labeller = options.no_ema ? student : teacher;
    if (!options.no_ema) {
      EmaUpdate(*teacher, *student, step, options.ema_alpha);
      stats.ema_alpha = EmaAlpha(step, options.ema_alpha);
    }
    torch::NoGradGuard no_grad;
    labeller->eval();
    torch::Tensor probabilities = torch::softmax(labeller->forward(batch.target_images), 1);
    auto [confidence, labels] = probabilities.max(1);
    pseudo_labels = labels;
    quality = options.no_quality_weight
                  ? torch::ones({probabilities.size(0)}, probabilities.options())
                  : QualityWeight(probabilities, options.tau);
    stats.confidence = confidence.mean().item<double>();
    stats.quality = quality.mean().item<double>();
  }

  // One student forward over source, (augmented) target and masked target.
  student->train();
  std::vector<torch::Tensor> inputs = {batch.source_images};
  torch::Tensor target;
  if (adapt) {
    target = options.no_augmentation ? batch.target_images
                                     : MicAugment(batch.target_images, options, generator);
    inputs.push_back(target);
  }
  if (mic) {
    torch::Tensor masked = target;
    if (!options.no_masking) {
      // Zero in normalised space, as the paper.
      masked = target * BlockMask(target.size(0), target.size(2), target.size(3),
                                  options.mask_block_size, options.mask_ratio, generator)
                            .to(target.device());
    }
    inputs.push_back(masked);
  }
  torch::Tensor logits = student->forward(torch::cat(inputs));
  const int64_t n = batch.source_images.size(0), m = adapt ? batch.target_images.size(0) : 0;
  torch::Tensor source_loss = PixelCrossEntropy(logits.slice(0, 0, n), batch.source_labels).mean();
  torch::Tensor loss = source_loss;
  stats.source_loss = source_loss.item<double>();
  if (adapt) {
    torch::Tensor pseudo = WeightedCrossEntropy(logits.slice(0, n, n + m), pseudo_labels, quality);
    loss = loss + pseudo;
    stats.pseudo_label_loss = pseudo.item<double>();
  }
  if (mic) {
    torch::Tensor consistency =
        options.mic_weight *
        WeightedCrossEntropy(logits.slice(0, n + m, n + 2 * m), pseudo_labels, quality);
    loss = loss + consistency;
    stats.mic_loss = consistency.item<double>();
  }
  optimizer.zero_grad();
  loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, student->parameters()));
  optimizer.step();
  return stats;
}

MicEvaluation EvaluateMic(MicNet& model, const at::Tensor& images, const at::Tensor& labels,
                          int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t k = model->config().backbone.num_classes;
  const bool segmentation = model->config().task == MicTask::kSegmentation;
  torch::Tensor intersection = torch::zeros({k}, torch::kDouble);
  torch::Tensor predicted = torch::zeros({k}, torch::kDouble);
  torch::Tensor actual = torch::zeros({k}, torch::kDouble);
  double correct = 0, total = 0, confidence = 0;
  for (int64_t start = 0; start < images.size(0); start += batch_size) {
    const int64_t end = std::min<int64_t>(start + batch_size, images.size(0));
    torch::Tensor probabilities = torch::softmax(model->forward(images.slice(0, start, end)), 1);
    auto [max_probability, prediction] = probabilities.max(1);
    torch::Tensor truth = labels.slice(0, start, end);
    correct += prediction.eq(truth).sum().item<double>();
    total += static_cast<double>(truth.numel());
    confidence += max_probability.sum().item<double>();
    if (segmentation) {
      torch::Tensor p = prediction.flatten().cpu(), t = truth.flatten().cpu();
      intersection += torch::bincount(t.masked_select(p.eq(t)), {}, k).to(torch::kDouble);
      predicted += torch::bincount(p, {}, k).to(torch::kDouble);
      actual += torch::bincount(t, {}, k).to(torch::kDouble);
    }
  }
  MicEvaluation eval;
  eval.accuracy = total > 0 ? correct / total : 0;
  eval.confidence = total > 0 ? confidence / total : 0;
  if (segmentation) {
    torch::Tensor iou = intersection / (predicted + actual - intersection);
    double sum = 0;
    int64_t present = 0;
    for (int64_t c = 0; c < k; ++c) {
      const bool occurs = actual[c].item<double>() > 0;
      const double value =
          occurs ? iou[c].item<double>() : std::numeric_limits<double>::quiet_NaN();
      eval.class_iou.push_back(value);
      if (occurs) {
        sum += value;
        ++present;
      }
    }
    eval.miou = present > 0 ? sum / present : 0;
  }
  return eval;
}

}  // namespace offsite
