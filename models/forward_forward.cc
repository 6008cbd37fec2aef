#include "models/forward_forward.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr int64_t kForwardForwardFormatVersion = 1;
constexpr int64_t kBackpropMlpFormatVersion = 1;
// Keeps RmsNormalize finite on all-zero rows (a layer whose units are all off).
constexpr double kNormEpsilon = 1e-8;
// Rows of x per forward pass when predicting: goodness mode multiplies them by
// num_classes, and a whole test set at once would need gigabytes.
constexpr int64_t kPredictChunk = 1000;

// [B, ...] on `device` -> float [B, input_dim].
torch::Tensor Flatten(const torch::Tensor& x, int64_t input_dim, const torch::Device& device) {
  TORCH_CHECK(x.dim() >= 1 && x.numel() == x.size(0) * input_dim, "expected ", input_dim,
              " inputs per example, got shape ", x.sizes());
  return x.reshape({x.size(0), input_dim}).to(device, torch::kFloat32);
}

torch::Tensor Labels(const torch::Tensor& y, int64_t batch, const torch::Device& device) {
  TORCH_CHECK(y.dim() == 1 && y.size(0) == batch, "expected ", batch, " labels, got shape ",
              y.sizes());
  return y.to(device, torch::kInt64);
}

// Shape of a checkpointed net: input_dim, num_classes, then the widths.
torch::Tensor ShapeTensor(const ForwardForwardOptions& options) {
  std::vector<int64_t> shape = {options.input_dim, options.num_classes};
  shape.insert(shape.end(), options.layer_widths.begin(), options.layer_widths.end());
  return torch::tensor(shape, torch::kInt64);
}

void WriteVersionAndShape(torch::serialize::OutputArchive& archive, const std::string& key,
                          int64_t version, const ForwardForwardOptions& options) {
  archive.write(key, torch::tensor({version}, torch::kInt64));
  archive.write("shape", ShapeTensor(options));
}

void CheckVersionAndShape(torch::serialize::InputArchive& archive, const std::string& key,
                          int64_t version, const ForwardForwardOptions& options) {
  torch::Tensor stored_version;
  TORCH_CHECK(archive.try_read(key, stored_version), "checkpoint has no '", key,
              "': not a checkpoint of this model");
  TORCH_CHECK(stored_version.numel() == 1 && stored_version.item<int64_t>() == version,
              "checkpoint format version ", stored_version, " is not the supported ", version);
  torch::Tensor shape;
  archive.read("shape", shape);
  TORCH_CHECK(shape.to(torch::kCPU).equal(ShapeTensor(options)),
              "checkpoint is of a net with [input_dim, num_classes, widths...] = ", shape.sizes(),
              " ", shape, ", not ", ShapeTensor(options));
}

template <typename Saveable>
void WriteNested(torch::serialize::OutputArchive& archive, const std::string& key,
                 const Saveable& saveable) {
  torch::serialize::OutputArchive nested(archive.compilation_unit());
  saveable.save(nested);
  archive.write(key, nested);
}

template <typename Loadable>
void ReadNested(torch::serialize::InputArchive& archive, const std::string& key,
                Loadable& loadable) {
  torch::serialize::InputArchive nested;
  archive.read(key, nested);
  loadable.load(nested);
}

void SetAdamLearningRate(torch::optim::Adam& optimizer, double learning_rate) {
  for (torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamOptions&>(group.options()).lr(learning_rate);
  }
}

}  // namespace

absl::Status ValidateForwardForwardOptions(const ForwardForwardOptions& options) {
  if (options.layer_widths.empty()) {
    return absl::InvalidArgumentError("layer_widths must name at least one layer");
  }
  for (int64_t width : options.layer_widths) {
    if (width <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("layer widths must be > 0, got ", width));
    }
  }
  if (options.num_classes < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_classes must be >= 2, got ", options.num_classes));
  }
  if (options.input_dim < options.num_classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_dim (", options.input_dim, ") must be >= num_classes (",
                     options.num_classes, "): the label is written over the first inputs"));
  }
  if (!std::isfinite(options.theta) || options.theta < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("theta must be >= 0 (0: the layer's width), got ", options.theta));
  }
  if (!std::isfinite(options.learning_rate) || options.learning_rate <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning_rate must be > 0, got ", options.learning_rate));
  }
  if (std::isnan(options.hard_negative_temperature) || options.hard_negative_temperature <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("hard_negative_temperature must be > 0, got ",
                                                   options.hard_negative_temperature));
  }
  return absl::OkStatus();
}

torch::Tensor RmsNormalize(const torch::Tensor& x) {
  return x / (x.square().mean(-1, /*keepdim=*/true).sqrt() + kNormEpsilon);
}

torch::Tensor Goodness(const torch::Tensor& h) { return h.square().sum(-1); }

torch::Tensor ForwardForwardLoss(const torch::Tensor& positive_goodness,
                                 const torch::Tensor& negative_goodness, double theta) {
  return torch::softplus(theta - positive_goodness).mean() +
         torch::softplus(negative_goodness - theta).mean();
}

torch::Tensor EmbedLabels(const torch::Tensor& x, const torch::Tensor& labels,
                          int64_t num_classes) {
  torch::Tensor out = x.clone();
  out.slice(1, 0, num_classes).copy_(torch::one_hot(labels, num_classes));
  return out;
}

torch::Tensor EmbedNeutralLabel(const torch::Tensor& x, int64_t num_classes) {
  torch::Tensor out = x.clone();
  out.slice(1, 0, num_classes).fill_(1.0 / static_cast<double>(num_classes));
  return out;
}

torch::Tensor SampleWrongLabels(const torch::Tensor& labels, int64_t num_classes) {
  // A shift in 1..C-1 modulo C reaches each other class exactly once.
  torch::Tensor shift = torch::randint(1, num_classes, labels.sizes(), labels.options());
  return (labels + shift).remainder(num_classes);
}

torch::Tensor HardNegativeProbabilities(const torch::Tensor& scores, const torch::Tensor& labels,
                                        double temperature) {
  // Masking the logit rather than the probability keeps the distribution over
  // the other classes well defined even when softmax puts ~all mass on the
  // true class. The mask goes on after the division: -inf / inf would be NaN.
  torch::Tensor masked = (scores / temperature).to(torch::kFloat32);
  masked.scatter_(1, labels.unsqueeze(1), -std::numeric_limits<float>::infinity());
  return torch::softmax(masked, 1);
}

torch::Tensor SampleHardWrongLabels(const torch::Tensor& scores, const torch::Tensor& labels,
                                    double temperature) {
  return torch::multinomial(HardNegativeProbabilities(scores, labels, temperature), 1).squeeze(1);
}

double Accuracy(const torch::Tensor& predicted, const torch::Tensor& labels) {
  TORCH_CHECK(predicted.sizes() == labels.sizes(), "predicted ", predicted.sizes(), " and labels ",
              labels.sizes(), " differ in shape");
  if (labels.numel() == 0) return 0;
  const int64_t correct = predicted.to(labels.device()).eq(labels).sum().item<int64_t>();
  return static_cast<double>(correct) / static_cast<double>(labels.numel());
}

ForwardForwardNetImpl::ForwardForwardNetImpl(int64_t input_dim,
                                             const std::vector<int64_t>& widths) {
  torch::NoGradGuard no_grad;
  int64_t in = input_dim;
  for (size_t i = 0; i < widths.size(); ++i) {
    torch::nn::Linear layer(in, widths[i]);
    layer->weight.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(widths[i])));
    layer->bias.zero_();
    layers_.push_back(register_module("layer" + std::to_string(i), layer));
    in = widths[i];
  }
}

std::vector<torch::Tensor> ForwardForwardNetImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> activities;
  torch::Tensor h = x;
  for (torch::nn::Linear& layer : layers_) {
    h = torch::relu(layer(RmsNormalize(h.detach())));
    activities.push_back(h);
  }
  return activities;
}

ForwardForwardTrainer::ForwardForwardTrainer(const ForwardForwardOptions& options,
                                             torch::Device device)
    : options_(options), device_(device), net_(nullptr), head_(nullptr) {
  const absl::Status valid = ValidateForwardForwardOptions(options);
  TORCH_CHECK(valid.ok(), std::string(valid.message()));
  net_ = ForwardForwardNet(options.input_dim, options.layer_widths);
  net_->to(device_);
  for (int64_t i = 0; i < net_->num_layers(); ++i) {
    layer_optimizers_.push_back(std::make_unique<torch::optim::Adam>(
        net_->layer(i)->parameters(), torch::optim::AdamOptions(options.learning_rate)));
  }
  int64_t head_inputs = 0;
  for (size_t i = options.layer_widths.size() > 1 ? 1 : 0; i < options.layer_widths.size(); ++i) {
    head_inputs += options.layer_widths[i];
  }
  head_ = torch::nn::Linear(head_inputs, options.num_classes);
  head_->to(device_);
  head_optimizer_ = std::make_unique<torch::optim::Adam>(
      head_->parameters(), torch::optim::AdamOptions(options.learning_rate));
}

double ForwardForwardTrainer::Theta(int64_t layer) const {
  return options_.theta > 0 ? options_.theta : static_cast<double>(options_.layer_widths.at(layer));
}

std::vector<torch::Tensor> ForwardForwardTrainer::LayerLosses(
    const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& negative_labels) {
  const int64_t batch = x.size(0);
  torch::Tensor both = torch::cat({EmbedLabels(x, y, options_.num_classes),
                                   EmbedLabels(x, negative_labels, options_.num_classes)});
  std::vector<torch::Tensor> activities = net_->forward(both);
  std::vector<torch::Tensor> losses;
  for (size_t i = 0; i < activities.size(); ++i) {
    torch::Tensor goodness = Goodness(activities[i]);
    losses.push_back(
        ForwardForwardLoss(goodness.slice(0, 0, batch), goodness.slice(0, batch), Theta(i)));
  }
  return losses;
}

std::vector<torch::Tensor> ForwardForwardTrainer::parameters() const {
  std::vector<torch::Tensor> all = net_->parameters();
  for (const torch::Tensor& p : head_->parameters()) all.push_back(p);
  return all;
}

absl::StatusOr<StepStats> ForwardForwardTrainer::TrainStep(const torch::Tensor& x_in,
                                                           const torch::Tensor& y_in) {
  const torch::Tensor x = Flatten(x_in, options_.input_dim, device_);
  const torch::Tensor y = Labels(y_in, x.size(0), device_);
  torch::Tensor negative_labels;
  if (!options_.hard_negatives) {
    negative_labels = SampleWrongLabels(y, options_.num_classes);
  } else if (options_.hard_negatives_from_softmax) {
    torch::NoGradGuard no_grad;
    negative_labels =
        SampleHardWrongLabels(head_(HeadInput(x)), y, options_.hard_negative_temperature);
  } else {
    negative_labels =
        SampleHardWrongLabels(LabelGoodness(x), y, options_.hard_negative_temperature);
  }

  std::vector<torch::Tensor> losses = LayerLosses(x, y, negative_labels);
  for (auto& optimizer : layer_optimizers_) optimizer->zero_grad();
  // Each layer's input is detached, so the layers' graphs are disjoint and one
  // backward pass of the sum gives every layer exactly its own loss's gradient.
  torch::Tensor total = torch::stack(losses).sum();
  total.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync_, net_->parameters()));
  for (auto& optimizer : layer_optimizers_) optimizer->step();

  head_optimizer_->zero_grad();
  torch::Tensor softmax_loss = torch::cross_entropy_loss(head_(HeadInput(x)), y);
  softmax_loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync_, head_->parameters()));
  head_optimizer_->step();

  StepStats stats;
  stats.loss = total.item<double>() / static_cast<double>(losses.size());
  stats.softmax_loss = softmax_loss.item<double>();
  return stats;
}

torch::Tensor ForwardForwardTrainer::LabelGoodness(const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = Flatten(x_in, options_.input_dim, device_);
  const int64_t classes = options_.num_classes;
  const int64_t first_scored = net_->num_layers() > 1 ? 1 : 0;
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < x.size(0); start += kPredictChunk) {
    torch::Tensor chunk = x.slice(0, start, start + kPredictChunk);
    const int64_t rows = chunk.size(0);
    // [classes, rows, D]: every row once with each label written in.
    torch::Tensor labelled = chunk.unsqueeze(0).repeat({classes, 1, 1});
    labelled.slice(2, 0, classes)
        .copy_(torch::eye(classes, x.options()).unsqueeze(1).expand({classes, rows, classes}));
    std::vector<torch::Tensor> activities = net_->forward(labelled.reshape({classes * rows, -1}));
    torch::Tensor goodness = torch::zeros({classes * rows}, x.options());
    for (size_t i = first_scored; i < activities.size(); ++i) goodness += Goodness(activities[i]);
    chunks.push_back(goodness.reshape({classes, rows}).t());
  }
  if (chunks.empty()) return torch::zeros({0, classes}, x.options());
  return torch::cat(chunks);
}

torch::Tensor ForwardForwardTrainer::PredictGoodness(const torch::Tensor& x) {
  return LabelGoodness(x).argmax(1);
}

torch::Tensor ForwardForwardTrainer::HeadInput(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> activities = net_->forward(EmbedNeutralLabel(x, options_.num_classes));
  std::vector<torch::Tensor> normalised;
  for (size_t i = activities.size() > 1 ? 1 : 0; i < activities.size(); ++i) {
    normalised.push_back(RmsNormalize(activities[i]));
  }
  return torch::cat(normalised, 1);
}

torch::Tensor ForwardForwardTrainer::PredictSoftmax(const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = Flatten(x_in, options_.input_dim, device_);
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < x.size(0); start += kPredictChunk) {
    chunks.push_back(head_(HeadInput(x.slice(0, start, start + kPredictChunk))).argmax(1));
  }
  if (chunks.empty()) return torch::zeros({0}, x.options().dtype(torch::kInt64));
  return torch::cat(chunks);
}

void ForwardForwardTrainer::SetLearningRate(double learning_rate) {
  for (auto& optimizer : layer_optimizers_) SetAdamLearningRate(*optimizer, learning_rate);
  SetAdamLearningRate(*head_optimizer_, learning_rate);
}

void ForwardForwardTrainer::Save(torch::serialize::OutputArchive& archive) {
  WriteVersionAndShape(archive, "forward_forward_format_version", kForwardForwardFormatVersion,
                       options_);
  WriteNested(archive, "net", *net_);
  WriteNested(archive, "head", *head_);
  for (size_t i = 0; i < layer_optimizers_.size(); ++i) {
    WriteNested(archive, "layer_optimizer" + std::to_string(i), *layer_optimizers_[i]);
  }
  WriteNested(archive, "head_optimizer", *head_optimizer_);
}

void ForwardForwardTrainer::Load(torch::serialize::InputArchive& archive) {
  CheckVersionAndShape(archive, "forward_forward_format_version", kForwardForwardFormatVersion,
                       options_);
  ReadNested(archive, "net", *net_);
  ReadNested(archive, "head", *head_);
  for (size_t i = 0; i < layer_optimizers_.size(); ++i) {
    ReadNested(archive, "layer_optimizer" + std::to_string(i), *layer_optimizers_[i]);
  }
  ReadNested(archive, "head_optimizer", *head_optimizer_);
}

BackpropMlpTrainer::BackpropMlpTrainer(const ForwardForwardOptions& options, torch::Device device)
    : options_(options), device_(device) {
  const absl::Status valid = ValidateForwardForwardOptions(options);
  TORCH_CHECK(valid.ok(), std::string(valid.message()));
  // PyTorch's default Linear initialisation: the usual baseline.
  int64_t in = options.input_dim;
  for (int64_t width : options.layer_widths) {
    net_->push_back(torch::nn::Linear(in, width));
    net_->push_back(torch::nn::ReLU());
    in = width;
  }
  net_->push_back(torch::nn::Linear(in, options.num_classes));
  net_->to(device_);
  optimizer_ = std::make_unique<torch::optim::Adam>(
      net_->parameters(), torch::optim::AdamOptions(options.learning_rate));
}

absl::StatusOr<double> BackpropMlpTrainer::TrainStep(const torch::Tensor& x_in,
                                                     const torch::Tensor& y_in) {
  const torch::Tensor x = Flatten(x_in, options_.input_dim, device_);
  const torch::Tensor y = Labels(y_in, x.size(0), device_);
  optimizer_->zero_grad();
  torch::Tensor loss = torch::cross_entropy_loss(net_->forward(x), y);
  loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync_, net_->parameters()));
  optimizer_->step();
  return loss.item<double>();
}

torch::Tensor BackpropMlpTrainer::Predict(const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = Flatten(x_in, options_.input_dim, device_);
  return net_->forward(x).argmax(1);
}

void BackpropMlpTrainer::SetLearningRate(double learning_rate) {
  SetAdamLearningRate(*optimizer_, learning_rate);
}

void BackpropMlpTrainer::Save(torch::serialize::OutputArchive& archive) {
  WriteVersionAndShape(archive, "backprop_mlp_format_version", kBackpropMlpFormatVersion, options_);
  WriteNested(archive, "net", *net_);
  WriteNested(archive, "optimizer", *optimizer_);
}

void BackpropMlpTrainer::Load(torch::serialize::InputArchive& archive) {
  CheckVersionAndShape(archive, "backprop_mlp_format_version", kBackpropMlpFormatVersion, options_);
  ReadNested(archive, "net", *net_);
  ReadNested(archive, "optimizer", *optimizer_);
}

}  // namespace offsite
