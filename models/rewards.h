#ifndef OFFSITE_MODELS_REWARDS_H_
#define OFFSITE_MODELS_REWARDS_H_

// Task rewards for REINFORCE tuning ("Tuning computer vision models with task
// rewards", Susano Pinto et al. 2023) and the detection metrics reported next
// to them. Plain functions of predictions and ground truth: no files, no RPC.
//
// Rewards score one model output against its ground truth. The registry
// (MakeReward) gives them one signature so a job can pick one by name:
//
//   RewardOptions options;
//   OFFSITE_ASSIGN_OR_RETURN(RewardFn reward, MakeReward("detection", options));
//   OFFSITE_ASSIGN_OR_RETURN(double r, reward(RewardInput(predicted_boxes),
//                                            RewardInput(scene_boxes)));
//
//   options.cost_matrix = {{0, 1}, {5, 0}};  // missing class 1 costs 5
//   OFFSITE_ASSIGN_OR_RETURN(RewardFn cost, MakeReward("cost_matrix", options));
//   OFFSITE_ASSIGN_OR_RETURN(double r2, cost(RewardInput(int64_t{0}), RewardInput(int64_t{1})));
//   // r2 == -5

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/detection_scenes.h"  // Box, Iou

namespace offsite {

// ---------------------------------------------------------------------------
// Detection reward.

// The IoU thresholds 0.50, 0.55, ..., 0.95 of COCO's mAP@[.5:.95].
std::vector<double> CocoIouThresholds();

struct DetectionRewardOptions {
  std::vector<double> iou_thresholds = CocoIouThresholds();
  // Cost of one duplicate relative to one matched object (big_vision's nms_w).
  double duplicate_weight = 0.3;
};

// OK, or InvalidArgument naming the offending field (thresholds must be in
// (0, 1] and not empty; the weight finite and non-negative).
absl::Status ValidateDetectionRewardOptions(const DetectionRewardOptions& options);

struct DetectionRewardResult {
  double reward = 0;
  double recall = 0;      // mean over thresholds of matched / num_truth (1 if no truth).
  double duplicates = 0;  // mean over thresholds of the number of duplicates.
};

// The detection reward of big_vision's `detection_reward.py` with uniform class
// weights, normalised by the number of ground-truth objects so that a perfect
// answer scores 1 whatever the object count.
//
// For each threshold t (IoU >= t counts, with 1e-9 slack for rounding):
//   1. A prediction p is eligible for a truth g when their labels agree and
//      Iou(p, g) >= t.
//   2. Each prediction is assigned to its eligible truth of highest IoU (the
//      earliest truth on ties), so it matches at most one object.
//   3. Each truth with assigned predictions is matched to the one of highest
//      IoU (the earliest prediction on ties); its other assigned predictions
//      are duplicates.
//   matched_t = number of matched truths, duplicates_t = number of duplicates.
// reward = mean_t (matched_t - duplicate_weight * duplicates_t) / num_truth.
//
// Predictions of the wrong class, or overlapping no object, neither score nor
// cost (as in big_vision); a duplicate costs duplicate_weight at each threshold
// at which it overlaps its object. So a box with IoU 0.72 to the only object
// scores 5/10 (thresholds 0.50..0.70), an exact copy of a perfect box lowers
// the reward from 1 to 1 - duplicate_weight.
//
// With no ground truth the reward is 1 for no predictions and
// -duplicate_weight * (number of predictions) otherwise: every box is spurious.
// The options must be valid (see ValidateDetectionRewardOptions).
DetectionRewardResult DetectionReward(const std::vector<Box>& predictions,
                                      const std::vector<Box>& truth,
                                      const DetectionRewardOptions& options = {});

// For each prediction, its IoU with the same-class truth it overlaps most when
// that IoU is at least `threshold` (with the same slack as the reward), else 0:
// the target of a detector's confidence head (big_vision's match_iou at its
// correct_thr of 0.5). A duplicate gets its IoU too: it does overlap its object.
std::vector<double> MatchIous(const std::vector<Box>& predictions, const std::vector<Box>& truth,
                              double threshold = 0.5);

// ---------------------------------------------------------------------------
// Detection metrics (COCO style) over a set of images.

struct ScoredBox {
  Box box;
  double score = 1;  // Higher is more confident; ranks predictions for AP.
};

struct DetectionMetrics {
  // COCO mAP: AP per (class, threshold) with 101-point interpolated precision,
  // averaged over the classes that have ground truth and then thresholds.
  double map = 0;    // mAP@[.5:.95]
  double map50 = 0;  // mAP@.5
  // Fraction of ground-truth objects matched at IoU 0.5 by any prediction
  // (COCO matching: predictions by descending score, each to the unmatched
  // same-class truth of highest IoU).
  double recall = 0;
  // The same, averaged over the thresholds 0.5:0.05:0.95 (COCO's AR without a
  // detection limit).
  double average_recall = 0;
  // Fraction of predictions that overlap a same-class truth at IoU >= 0.5 but
  // were not matched because a higher-scored prediction already took it.
  double duplicate_rate = 0;
  int64_t num_images = 0;
  int64_t num_truth = 0;
  int64_t num_predictions = 0;
};

// Metrics of predictions[i] against truth[i] for every image i. Predictions
// of classes with no ground truth anywhere do not enter mAP (as in COCO) but do
// enter num_predictions and duplicate_rate. With no ground truth at all every
// figure but the counts is 0. InvalidArgument if the two lists differ in length.
absl::StatusOr<DetectionMetrics> ComputeDetectionMetrics(
    const std::vector<std::vector<ScoredBox>>& predictions,
    const std::vector<std::vector<Box>>& truth);

// ---------------------------------------------------------------------------
// Cost-matrix reward for classifiers.

// OK if `cost` is a non-empty square matrix of finite numbers with
// `num_classes` rows (any number when num_classes is 0); InvalidArgument naming
// the offending row or entry otherwise, e.g. "cost_matrix[2][0] is nan".
absl::Status ValidateCostMatrix(const std::vector<std::vector<double>>& cost,
                                int64_t num_classes = 0);

// -cost[truth][predicted]: cost[i][j] is what predicting class j costs when the
// answer is class i (so the diagonal is usually 0). The matrix must be valid;
// OutOfRange if either class is not a row index.
absl::StatusOr<double> CostMatrixReward(const std::vector<std::vector<double>>& cost,
                                        int64_t predicted, int64_t truth);

// As a tensor for a batch: cost (K, K) float; predicted and truth int64 of one
// shape S; returns -cost[truth, predicted] as float of shape S.
at::Tensor CostMatrixRewards(const at::Tensor& cost, const at::Tensor& predicted,
                             const at::Tensor& truth);

// The Bayes decision rule for a cost matrix: for class probabilities (N, K),
// the class j minimising the expected cost sum_i probs[n][i] * cost[i][j].
// Returns int64 (N). The honest reference for a reward-tuned classifier.
at::Tensor BayesDecisions(const at::Tensor& probs, const at::Tensor& cost);

// ---------------------------------------------------------------------------
// Registry.

// One model output or its ground truth as a reward sees it: the boxes of a
// detector or the class of a classifier.
using RewardInput = std::variant<std::vector<Box>, int64_t>;

// Scores `prediction` against `truth`; higher is better. InvalidArgument when
// the inputs are not the kind the reward takes (boxes for "detection", classes
// for "cost_matrix").
using RewardFn =
    std::function<absl::StatusOr<double>(const RewardInput& prediction, const RewardInput& truth)>;

struct RewardOptions {
  // "detection".
  DetectionRewardOptions detection;
  // "cost_matrix": K x K, cost[truth][predicted]; required.
  std::vector<std::vector<double>> cost_matrix;
  // "cost_matrix": when positive, the matrix must have this many classes.
  int64_t num_classes = 0;
};

// The names MakeReward knows: "cost_matrix", "detection".
std::vector<std::string> RewardNames();

// The reward called `name`, with its options validated up front.
// InvalidArgument listing the valid names for an unknown name, or naming the
// option the reward rejects.
absl::StatusOr<RewardFn> MakeReward(const std::string& name, const RewardOptions& options);

}  // namespace offsite

#endif  // OFFSITE_MODELS_REWARDS_H_
