#ifndef OFFSITE_MODELS_REWARD_TUNING_H_
#define OFFSITE_MODELS_REWARD_TUNING_H_

// The two stages of "Tuning computer vision models with task rewards" (Susano
// Pinto et al. 2023) as plain training steps: maximum-likelihood training of a
// Pix2Seq detector, then REINFORCE with a task reward for a detector or a plain
// classifier; plus the evaluations reported around them and the detector's
// archive form. No files, no RPC: the reward_tuning jobs and the experiment
// binary drive these.
//
// Example (a detector, after MLE):
//   OFFSITE_ASSIGN_OR_RETURN(RewardFn reward, MakeReward("detection", {}));
//   auto optimizer = MakeAdamW(*model, 1e-4, 0, 0.999, false);
//   ReinforceOptions options;  // K = 8, temperature 1, clip at 1
//   for (int64_t step = 0; step < 500; ++step) {
//     at::Generator generator = at::detail::createCPUGenerator(step);
//     OFFSITE_ASSIGN_OR_RETURN(ReinforceStepStats stats,
//         DetectorReinforceStep(*model, *optimizer, images, boxes, reward, options, generator));
//   }
//   OFFSITE_ASSIGN_OR_RETURN(DetectorEvaluation eval,
//                            EvaluateDetector(*model, test_scenes, reward));

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_parallel.h"
#include "common/detection_scenes.h"
#include "models/pix2seq.h"
#include "models/rewards.h"

namespace offsite {

// ---------------------------------------------------------------------------
// Detector archives.

inline constexpr char kPix2SeqFormat[] = "offsite_pix2seq";
// Version 2 added the confidence head; version 1 detectors still load, with
// the head at its zero start.
inline constexpr int64_t kPix2SeqFormatVersion = 2;

// Writes the format tag and version, the whole Pix2SeqConfig and every
// parameter and buffer of `model` into `archive` (the caller writes the file,
// e.g. with WriteArchiveFile, and may add keys of its own).
absl::Status SavePix2Seq(Pix2SeqImpl& model, torch::serialize::OutputArchive& archive);

// Rebuilds the detector SavePix2Seq stored: its config, then its weights.
// InvalidArgument naming the key or tensor when the archive is not such a
// detector (another format or version, a missing or misshapen tensor).
absl::StatusOr<Pix2Seq> LoadPix2Seq(torch::serialize::InputArchive& archive);

// ---------------------------------------------------------------------------
// Maximum-likelihood training.

// One teacher-forced AdamW step (TeacherForcingLoss) on scenes `batch` (int64
// indices into `scenes`): the targets list each scene's objects in a random
// order drawn from (order_seed, scene index), so a new order_seed per epoch
// gives new orders and a replayed epoch the same ones. Gradients are clipped
// to max_grad_norm when it is positive. Returns the loss (nats per token).
// Every step function here calls `sync` (data-parallel training) between
// backward and clipping, so clipping sees the whole global batch's gradient.
absl::StatusOr<double> DetectorMleStep(Pix2SeqImpl& model, torch::optim::Optimizer& optimizer,
                                       const Scenes& scenes, const at::Tensor& batch,
                                       uint64_t order_seed, double max_grad_norm = 1.0,
                                       const GradientSync& sync = nullptr);

// ---------------------------------------------------------------------------
// Evaluation.

// How EvaluateDetector ranks boxes for mAP.
enum class BoxRanking {
  kClassAndConfidence,  // P(class token) x predicted IoU (DecodeScoredBoxes).
  kClassOnly,           // P(class token), Pix2Seq's score: the confidence head ablated.
};

struct DetectorEvaluation {
  // COCO-style metrics of greedy decoding, boxes ranked as asked.
  DetectionMetrics metrics;
  double mean_reward = 0;  // `reward` of the greedy boxes, averaged over scenes.
  double mean_length = 0;  // Output tokens per scene, the EOS included.
};

// Greedy decoding of every scene in eval mode without autograd, in batches.
absl::StatusOr<DetectorEvaluation> EvaluateDetector(
    Pix2SeqImpl& model, const Scenes& scenes, const RewardFn& reward, int64_t batch_size = 100,
    BoxRanking ranking = BoxRanking::kClassAndConfidence);

// COCO metrics and mean `reward` of given predictions, one scored list per
// scene of `scenes`: what EvaluateDetector reports of greedy decoding, for
// boxes that were post-processed (diagnostics). mean_length is left 0: only
// the caller knows what its boxes cost in tokens.
absl::StatusOr<DetectorEvaluation> ScorePredictions(
    const std::vector<std::vector<ScoredBox>>& predictions, const Scenes& scenes,
    const RewardFn& reward);

// A classifier as REINFORCE sees it: images (N, ...) -> logits (N, C).
using LogitsFn = std::function<at::Tensor(const at::Tensor&)>;

struct ClassifierEvaluation {
  // Argmax decisions.
  double accuracy = 0;
  double mean_reward = 0;
  // The Bayes decision rule on the model's softmax probabilities p: predict
  // argmax_j sum_i p_i reward(j, i), i.e. argmin_j sum_i p_i cost[i][j] for
  // the cost_matrix reward. The reference a reward-tuned classifier should
  // approach: it is optimal if the probabilities are calibrated.
  double bayes_accuracy = 0;
  double bayes_mean_reward = 0;
  // Fraction of argmax decisions per class (C entries).
  std::vector<double> prediction_share;
};

// Evaluates `logits_fn` on (images, labels) in batches without autograd;
// `reward` scores class indices (RewardInput int64). The caller sets the
// module's mode. InvalidArgument if the reward rejects class inputs.
absl::StatusOr<ClassifierEvaluation> EvaluateClassifier(const LogitsFn& logits_fn,
                                                        const at::Tensor& images,
                                                        const at::Tensor& labels,
                                                        const RewardFn& reward, int64_t num_classes,
                                                        int64_t batch_size = 500);

// ---------------------------------------------------------------------------
// REINFORCE with a leave-one-out baseline.

struct ReinforceOptions {
  // K samples per input (at least 2, for the leave-one-out baseline).
  int64_t samples_per_input = 8;
  // Sampling temperature; 1 samples from the model itself. The log-probs in
  // the loss are those of the sampling distribution.
  double temperature = 1.0;
  // Gradient-norm clipping; 0 disables it.
  double max_grad_norm = 1.0;
  // Detectors: weight of the confidence loss added to the REINFORCE loss
  // (big_vision's conf_w); 0 leaves the confidence head untrained.
  double confidence_weight = 0.3;
};

struct ReinforceStepStats {
  double mean_reward = 0;      // Over all N * K samples.
  double entropy = 0;          // Mean next-token entropy (nats) at the sampled positions.
  double mean_length = 0;      // Output tokens per sample (EOS included; 1 for a classifier).
  double loss = 0;             // REINFORCE loss plus the weighted confidence loss.
  double confidence_loss = 0;  // Detectors: mean cross-entropy of the predicted IoUs.
  double grad_norm = 0;        // Before clipping.
};

// One REINFORCE step of a detector: K sequences per image by ancestral
// sampling, each rewarded against truth[n] (boxes), advantages by
// LeaveOneOutAdvantages, loss -mean(advantage * log P(sequence)) with the
// log-prob rescored with gradient (one encoder pass per image), then clipping
// and an optimizer step. As in big_vision, the same pass teaches the
// confidence head each sampled box's MatchIous (at 0.5) by a cross-entropy
// averaged over the boxes, weighted by options.confidence_weight.
// images (N, 1, S, S); truth has N entries. InvalidArgument for mismatched
// inputs, a negative confidence weight or a reward that rejects boxes.
absl::StatusOr<ReinforceStepStats> DetectorReinforceStep(
    Pix2SeqImpl& model, torch::optim::Optimizer& optimizer, const at::Tensor& images,
    const std::vector<std::vector<Box>>& truth, const RewardFn& reward,
    const ReinforceOptions& options, at::Generator generator, const GradientSync& sync = nullptr);

// The same for a classifier: K classes sampled per image from
// softmax(logits / temperature), rewarded with reward(class, labels[n]).
// Clipping covers the optimizer's parameters.
absl::StatusOr<ReinforceStepStats> ClassifierReinforceStep(
    const LogitsFn& logits_fn, torch::optim::Optimizer& optimizer, const at::Tensor& images,
    const at::Tensor& labels, const RewardFn& reward, const ReinforceOptions& options,
    at::Generator generator, const GradientSync& sync = nullptr);

}  // namespace offsite

#endif  // OFFSITE_MODELS_REWARD_TUNING_H_
