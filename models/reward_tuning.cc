#include "models/reward_tuning.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "models/block_model.h"
#include "models/reinforce.h"

namespace offsite {
namespace {

constexpr char kFormatKey[] = "format";
constexpr char kVersionKey[] = "version";
constexpr char kTensorPrefix[] = "tensor/";

// Config keys and their values, in one place for saving and loading.
std::vector<std::pair<std::string, c10::IValue>> ConfigEntries(const Pix2SeqConfig& config) {
  return {
      {"config.in_channels", c10::IValue(config.in_channels)},
      {"config.image_size", c10::IValue(config.image_size)},
      {"config.encoder_depths", c10::IValue(config.encoder_depths)},
      {"config.encoder_dims", c10::IValue(config.encoder_dims)},
      {"config.encoder_stem_stride", c10::IValue(config.encoder_stem_stride)},
      {"config.n_layer", c10::IValue(config.n_layer)},
      {"config.n_embd", c10::IValue(config.n_embd)},
      {"config.n_head", c10::IValue(config.n_head)},
      {"config.dropout", c10::IValue(config.dropout)},
      {"config.num_bins", c10::IValue(config.tokenizer.num_bins)},
      {"config.num_classes", c10::IValue(config.tokenizer.num_classes)},
      {"config.canvas_size", c10::IValue(static_cast<double>(config.tokenizer.canvas_size))},
      {"config.max_objects", c10::IValue(config.max_objects)},
      {"config.constrain_grammar", c10::IValue(config.constrain_grammar)},
  };
}

absl::StatusOr<c10::IValue> ReadKey(torch::serialize::InputArchive& archive,
                                    const std::string& key) {
  c10::IValue value;
  if (!archive.try_read(key, value)) {
    return absl::InvalidArgumentError(absl::StrCat("not a Pix2Seq detector: no \"", key, "\""));
  }
  return value;
}

absl::StatusOr<Pix2SeqConfig> ReadConfig(torch::serialize::InputArchive& archive) {
  Pix2SeqConfig config;
  for (const auto& [key, unused] : ConfigEntries(config)) {
    OFFSITE_ASSIGN_OR_RETURN(c10::IValue value, ReadKey(archive, key));
    const std::string name = key.substr(std::string("config.").size());
    if (name == "in_channels") config.in_channels = value.toInt();
    if (name == "image_size") config.image_size = value.toInt();
    if (name == "encoder_depths") config.encoder_depths = value.toIntVector();
    if (name == "encoder_dims") config.encoder_dims = value.toIntVector();
    if (name == "encoder_stem_stride") config.encoder_stem_stride = value.toInt();
    if (name == "n_layer") config.n_layer = value.toInt();
    if (name == "n_embd") config.n_embd = value.toInt();
    if (name == "n_head") config.n_head = value.toInt();
    if (name == "dropout") config.dropout = value.toDouble();
    if (name == "num_bins") config.tokenizer.num_bins = value.toInt();
    if (name == "num_classes") config.tokenizer.num_classes = value.toInt();
    if (name == "canvas_size") config.tokenizer.canvas_size = static_cast<float>(value.toDouble());
    if (name == "max_objects") config.max_objects = value.toInt();
    if (name == "constrain_grammar") config.constrain_grammar = value.toBool();
  }
  return config;
}

// Clips the gradients of every parameter the optimizer updates; returns the
// norm before clipping.
std::vector<torch::Tensor> OptimizedParameters(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> params;
  for (const auto& group : optimizer.param_groups()) {
    for (const torch::Tensor& p : group.params()) params.push_back(p);
  }
  return params;
}

double ClipGradients(torch::optim::Optimizer& optimizer, double max_norm) {
  std::vector<torch::Tensor> params;
  for (const torch::Tensor& p : OptimizedParameters(optimizer)) {
    if (p.grad().defined()) params.push_back(p);
  }
  if (params.empty()) return 0;
  const double limit = max_norm > 0 ? max_norm : std::numeric_limits<double>::infinity();
  return torch::nn::utils::clip_grad_norm_(params, limit);
}

}  // namespace

absl::Status SavePix2Seq(Pix2SeqImpl& model, torch::serialize::OutputArchive& archive) {
  try {
    archive.write(kFormatKey, c10::IValue(std::string(kPix2SeqFormat)));
    archive.write(kVersionKey, c10::IValue(kPix2SeqFormatVersion));
    for (const auto& [key, value] : ConfigEntries(model.config())) archive.write(key, value);
    for (const NamedTensor& tensor : NamedTensorsOf(model)) {
      archive.write(kTensorPrefix + tensor.name,
                    tensor.tensor.detach().to(torch::kCPU, false, /*copy=*/true));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("writing a Pix2Seq detector: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Pix2Seq> LoadPix2Seq(torch::serialize::InputArchive& archive) {
  OFFSITE_ASSIGN_OR_RETURN(c10::IValue format, ReadKey(archive, kFormatKey));
  OFFSITE_ASSIGN_OR_RETURN(c10::IValue version, ReadKey(archive, kVersionKey));
  if (!format.isString() || format.toStringRef() != kPix2SeqFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a Pix2Seq detector: format is \"",
                     format.isString() ? format.toStringRef() : format.tagKind(), "\""));
  }
  if (!version.isInt() || version.toInt() < 1 || version.toInt() > kPix2SeqFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("Pix2Seq detector version ", version.isInt() ? version.toInt() : -1,
                     " is not one of the supported 1..", kPix2SeqFormatVersion));
  }
  const bool has_confidence_head = version.toInt() >= 2;
  OFFSITE_ASSIGN_OR_RETURN(Pix2SeqConfig config, ReadConfig(archive));
  OFFSITE_ASSIGN_OR_RETURN(Pix2Seq model, MakePix2Seq(config));
  std::vector<NamedTensor> tensors = NamedTensorsOf(*model);
  for (NamedTensor& tensor : tensors) {
    if (!has_confidence_head && absl::StartsWith(tensor.name, "confidence.")) continue;
    torch::Tensor stored;
    if (!archive.try_read(kTensorPrefix + tensor.name, stored)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Pix2Seq detector: tensor \"", tensor.name, "\" is missing"));
    }
    tensor.tensor = stored;
  }
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(tensors, *model));
  return model;
}

absl::StatusOr<double> DetectorMleStep(Pix2SeqImpl& model, torch::optim::Optimizer& optimizer,
                                       const Scenes& scenes, const at::Tensor& batch,
                                       uint64_t order_seed, double max_grad_norm,
                                       const GradientSync& sync) {
  const torch::Tensor index = batch.to(torch::kCPU).to(torch::kLong).contiguous();
  const int64_t* ids = index.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> sequences;
  sequences.reserve(index.numel());
  for (int64_t i = 0; i < index.numel(); ++i) {
    if (ids[i] < 0 || ids[i] >= static_cast<int64_t>(scenes.objects.size())) {
      return absl::InvalidArgumentError(absl::StrCat("batch index ", ids[i], " is not a scene"));
    }
    OFFSITE_ASSIGN_OR_RETURN(
        std::vector<int64_t> tokens,
        model.tokenizer().Encode(scenes.objects[ids[i]],
                                 order_seed * 1000003 + static_cast<uint64_t>(ids[i])));
    sequences.push_back(std::move(tokens));
  }
  model.train();
  const torch::Tensor images = scenes.images.index_select(0, batch.to(scenes.images.device()));
  TokenBatch targets = PadTokenSequences(model, sequences);
  torch::Tensor loss = TeacherForcingLoss(model, images, targets.tokens.to(images.device()),
                                          targets.mask.to(images.device()));
  optimizer.zero_grad();
  loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, OptimizedParameters(optimizer)));
  ClipGradients(optimizer, max_grad_norm);
  optimizer.step();
  return loss.item<double>();
}

absl::StatusOr<DetectorEvaluation> EvaluateDetector(Pix2SeqImpl& model, const Scenes& scenes,
                                                    const RewardFn& reward, int64_t batch_size,
                                                    BoxRanking ranking) {
  const int64_t n = scenes.images.size(0);
  if (static_cast<int64_t>(scenes.objects.size()) != n || batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("EvaluateDetector: ", n, " images, ",
                                                   scenes.objects.size(), " box lists, batch ",
                                                   batch_size));
  }
  model.eval();
  torch::NoGradGuard no_grad;
  std::vector<std::vector<ScoredBox>> predictions;
  double length_sum = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    SampledSequences greedy =
        Greedy(model, scenes.images.slice(0, start, std::min(n, start + batch_size)));
    if (ranking == BoxRanking::kClassOnly) greedy.box_confidence = at::Tensor();
    for (std::vector<ScoredBox>& boxes : DecodeScoredBoxes(model.tokenizer(), greedy)) {
      predictions.push_back(std::move(boxes));
    }
    length_sum += greedy.mask.sum().item<double>();
  }
  OFFSITE_ASSIGN_OR_RETURN(DetectorEvaluation out, ScorePredictions(predictions, scenes, reward));
  out.mean_length = n ? length_sum / n : 0;
  return out;
}

absl::StatusOr<DetectorEvaluation> ScorePredictions(
    const std::vector<std::vector<ScoredBox>>& predictions, const Scenes& scenes,
    const RewardFn& reward) {
  if (predictions.size() != scenes.objects.size()) {
    return absl::InvalidArgumentError(absl::StrCat("ScorePredictions: ", predictions.size(),
                                                   " prediction lists for ", scenes.objects.size(),
                                                   " scenes"));
  }
  double reward_sum = 0;
  for (size_t s = 0; s < predictions.size(); ++s) {
    std::vector<Box> boxes;
    for (const ScoredBox& box : predictions[s]) boxes.push_back(box.box);
    OFFSITE_ASSIGN_OR_RETURN(double r, reward(RewardInput(boxes), RewardInput(scenes.objects[s])));
    reward_sum += r;
  }
  DetectorEvaluation out;
  OFFSITE_ASSIGN_OR_RETURN(out.metrics, ComputeDetectionMetrics(predictions, scenes.objects));
  out.mean_reward = predictions.empty() ? 0 : reward_sum / static_cast<double>(predictions.size());
  return out;
}

absl::StatusOr<ClassifierEvaluation> EvaluateClassifier(const LogitsFn& logits_fn,
                                                        const at::Tensor& images,
                                                        const at::Tensor& labels,
                                                        const RewardFn& reward, int64_t num_classes,
                                                        int64_t batch_size) {
  if (images.size(0) != labels.size(0) || num_classes < 1 || batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("EvaluateClassifier: ", images.size(0),
                                                   " images, ", labels.size(0), " labels, ",
                                                   num_classes, " classes"));
  }
  // reward_table[j][i] = reward of predicting j when the truth is i.
  std::vector<std::vector<double>> reward_table(num_classes, std::vector<double>(num_classes));
  for (int64_t j = 0; j < num_classes; ++j) {
    for (int64_t i = 0; i < num_classes; ++i) {
      OFFSITE_ASSIGN_OR_RETURN(reward_table[j][i], reward(RewardInput(j), RewardInput(i)));
    }
  }
  torch::Tensor expected_cost_matrix = torch::empty({num_classes, num_classes}, torch::kDouble);
  for (int64_t i = 0; i < num_classes; ++i) {
    for (int64_t j = 0; j < num_classes; ++j) expected_cost_matrix[i][j] = -reward_table[j][i];
  }
  torch::NoGradGuard no_grad;
  const int64_t n = images.size(0);
  ClassifierEvaluation out;
  out.prediction_share.assign(num_classes, 0);
  int64_t correct = 0, bayes_correct = 0;
  double reward_sum = 0, bayes_reward_sum = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t end = std::min(n, start + batch_size);
    torch::Tensor logits =
        logits_fn(images.slice(0, start, end)).to(torch::kCPU).to(torch::kDouble);
    if (logits.dim() != 2 || logits.size(1) != num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("EvaluateClassifier: logits of shape ",
                                                     logits.size(0), "x", logits.size(-1), " for ",
                                                     num_classes, " classes"));
    }
    const torch::Tensor argmax = logits.argmax(1).contiguous();
    const torch::Tensor bayes =
        BayesDecisions(logits.softmax(1), expected_cost_matrix).contiguous();
    const torch::Tensor truth =
        labels.slice(0, start, end).to(torch::kCPU).to(torch::kLong).contiguous();
    for (int64_t k = 0; k < end - start; ++k) {
      const int64_t t = truth.data_ptr<int64_t>()[k];
      const int64_t p = argmax.data_ptr<int64_t>()[k];
      const int64_t b = bayes.data_ptr<int64_t>()[k];
      if (t < 0 || t >= num_classes) {
        return absl::InvalidArgumentError(
            absl::StrCat("label ", t, " is not one of ", num_classes, " classes"));
      }
      correct += p == t;
      bayes_correct += b == t;
      reward_sum += reward_table[p][t];
      bayes_reward_sum += reward_table[b][t];
      out.prediction_share[p] += 1;
    }
  }
  if (n > 0) {
    out.accuracy = static_cast<double>(correct) / n;
    out.bayes_accuracy = static_cast<double>(bayes_correct) / n;
    out.mean_reward = reward_sum / n;
    out.bayes_mean_reward = bayes_reward_sum / n;
    for (double& share : out.prediction_share) share /= n;
  }
  return out;
}

absl::StatusOr<ReinforceStepStats> DetectorReinforceStep(
    Pix2SeqImpl& model, torch::optim::Optimizer& optimizer, const at::Tensor& images,
    const std::vector<std::vector<Box>>& truth, const RewardFn& reward,
    const ReinforceOptions& options, at::Generator generator, const GradientSync& sync) {
  const int64_t n = images.size(0);
  const int64_t k = options.samples_per_input;
  if (static_cast<int64_t>(truth.size()) != n || k < 2 || !(options.temperature > 0) ||
      !(options.confidence_weight >= 0) || !std::isfinite(options.confidence_weight)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DetectorReinforceStep: ", n, " images, ", truth.size(), " box lists, K ", k,
        ", temperature ", options.temperature, ", confidence weight ", options.confidence_weight));
  }
  model.train();
  SampledSequences samples = Sample(model, images, k, options.temperature, generator);
  const std::vector<std::vector<Box>> boxes = DecodeBoxes(model.tokenizer(), samples.tokens);
  std::vector<float> rewards(n * k);
  for (int64_t m = 0; m < n * k; ++m) {
    OFFSITE_ASSIGN_OR_RETURN(double r, reward(RewardInput(boxes[m]), RewardInput(truth[m / k])));
    rewards[m] = static_cast<float>(r);
  }
  const torch::Tensor reward_tensor = torch::tensor(rewards).view({n, k});
  const torch::Tensor advantages =
      LeaveOneOutAdvantages(reward_tensor).reshape({-1}).to(images.device());

  // Confidence targets at the decoder input position of each box's class
  // token (output 5b + 4, input 5b + 5), where the head reads the whole box.
  const int64_t length = samples.tokens.size(1);
  torch::Tensor iou_target = torch::zeros({n * k, length});
  torch::Tensor iou_mask = torch::zeros({n * k, length});
  {
    auto target = iou_target.accessor<float, 2>();
    auto target_mask = iou_mask.accessor<float, 2>();
    for (int64_t m = 0; m < n * k; ++m) {
      const std::vector<double> ious = MatchIous(boxes[m], truth[m / k]);
      for (size_t b = 0; b < ious.size(); ++b) {
        const int64_t position = BoxTokenizer::kTokensPerObject * static_cast<int64_t>(b + 1);
        if (position >= length) break;
        target[m][position] = static_cast<float>(ious[b]);
        target_mask[m][position] = 1;
      }
    }
  }

  // One encoder pass per image; its memory serves the image's K sequences.
  const torch::Tensor tokens = samples.tokens.to(images.device());
  const torch::Tensor mask = samples.mask.to(images.device());
  torch::Tensor memory = model.Encode(images).repeat_interleave(k, /*dim=*/0);
  const DecoderOutput decoded = model.DecodeWithConfidence(memory, ShiftRight(model, tokens));
  torch::Tensor logits = decoded.logits;
  if (options.temperature != 1.0) logits = logits / options.temperature;
  const torch::Tensor log_prob = SequenceLogProb(logits, tokens, mask);
  torch::Tensor loss = ReinforceLoss(advantages, log_prob);
  // Cross-entropy of the predicted IoU against the matched IoU (a soft label).
  iou_target = iou_target.to(images.device());
  iou_mask = iou_mask.to(images.device());
  const torch::Tensor confidence_nll =
      -(iou_target * torch::log_sigmoid(decoded.confidence) +
        (1 - iou_target) * torch::log_sigmoid(-decoded.confidence));
  const torch::Tensor confidence_loss =
      (confidence_nll * iou_mask).sum() / iou_mask.sum().clamp_min(1);
  if (options.confidence_weight > 0) loss = loss + options.confidence_weight * confidence_loss;
  optimizer.zero_grad();
  loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, OptimizedParameters(optimizer)));
  ReinforceStepStats stats;
  stats.grad_norm = ClipGradients(optimizer, options.max_grad_norm);
  optimizer.step();
  stats.mean_reward = reward_tensor.mean().item<double>();
  stats.entropy = MeanTokenEntropy(logits.detach(), mask).item<double>();
  stats.mean_length = mask.sum().item<double>() / static_cast<double>(n * k);
  stats.loss = loss.item<double>();
  stats.confidence_loss = confidence_loss.item<double>();
  return stats;
}

absl::StatusOr<ReinforceStepStats> ClassifierReinforceStep(
    const LogitsFn& logits_fn, torch::optim::Optimizer& optimizer, const at::Tensor& images,
    const at::Tensor& labels, const RewardFn& reward, const ReinforceOptions& options,
    at::Generator generator, const GradientSync& sync) {
  const int64_t n = images.size(0);
  const int64_t k = options.samples_per_input;
  if (labels.size(0) != n || k < 2 || !(options.temperature > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ClassifierReinforceStep: ", n, " images, ",
                                                   labels.size(0), " labels, K ", k,
                                                   ", temperature ", options.temperature));
  }
  torch::Tensor logits = logits_fn(images);
  if (options.temperature != 1.0) logits = logits / options.temperature;
  const torch::Tensor log_probs = logits.log_softmax(1);
  torch::Tensor sampled;
  {
    torch::NoGradGuard no_grad;
    sampled = torch::multinomial(log_probs.detach().exp().to(torch::kCPU).to(torch::kFloat), k,
                                 /*replacement=*/true, generator);  // (N, K)
  }
  const torch::Tensor truth = labels.to(torch::kCPU).to(torch::kLong).contiguous();
  const torch::Tensor picks = sampled.contiguous();
  std::vector<float> rewards(n * k);
  for (int64_t m = 0; m < n * k; ++m) {
    OFFSITE_ASSIGN_OR_RETURN(double r, reward(RewardInput(picks.data_ptr<int64_t>()[m]),
                                              RewardInput(truth.data_ptr<int64_t>()[m / k])));
    rewards[m] = static_cast<float>(r);
  }
  const torch::Tensor reward_tensor = torch::tensor(rewards).view({n, k});
  const torch::Tensor advantages = LeaveOneOutAdvantages(reward_tensor).to(logits.device());
  const torch::Tensor sample_log_prob = log_probs.gather(1, picks.to(logits.device()));  // (N, K)
  torch::Tensor loss = ReinforceLoss(advantages, sample_log_prob);
  optimizer.zero_grad();
  loss.backward();
  OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, OptimizedParameters(optimizer)));
  ReinforceStepStats stats;
  stats.grad_norm = ClipGradients(optimizer, options.max_grad_norm);
  optimizer.step();
  stats.mean_reward = reward_tensor.mean().item<double>();
  stats.entropy = -(log_probs.detach().exp() * log_probs.detach()).sum(1).mean().item<double>();
  stats.mean_length = 1;
  stats.loss = loss.item<double>();
  return stats;
}

}  // namespace offsite
