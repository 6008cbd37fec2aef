#include "models/rewards.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

// IoU >= t is tested as IoU >= t - kIouSlack so that a box meant to sit exactly
// on a threshold is not lost to rounding.
constexpr double kIouSlack = 1e-9;

// Same-class IoU of every (prediction, truth) pair; 0 across classes.
std::vector<std::vector<double>> ClassIous(const std::vector<Box>& predictions,
                                           const std::vector<Box>& truth) {
  std::vector<std::vector<double>> iou(predictions.size(), std::vector<double>(truth.size(), 0));
  for (size_t p = 0; p < predictions.size(); ++p) {
    for (size_t g = 0; g < truth.size(); ++g) {
      if (predictions[p].label == truth[g].label) iou[p][g] = Iou(predictions[p], truth[g]);
    }
  }
  return iou;
}

// 101-point interpolated average precision of a ranked list of hits.
double InterpolatedAp(const std::vector<bool>& hits, int64_t num_truth) {
  if (num_truth == 0) return 0;
  const size_t n = hits.size();
  std::vector<double> precision(n), recall(n);
  int64_t tp = 0;
  for (size_t i = 0; i < n; ++i) {
    tp += hits[i] ? 1 : 0;
    precision[i] = static_cast<double>(tp) / static_cast<double>(i + 1);
    recall[i] = static_cast<double>(tp) / static_cast<double>(num_truth);
  }
  // Precision envelope: the best precision at this recall or any higher one.
  for (size_t i = n; i-- > 1;) precision[i - 1] = std::max(precision[i - 1], precision[i]);
  double sum = 0;
  for (int k = 0; k <= 100; ++k) {
    const double r = k / 100.0;
    const auto it = std::lower_bound(recall.begin(), recall.end(), r - kIouSlack);
    if (it != recall.end()) sum += precision[it - recall.begin()];
  }
  return sum / 101.0;
}

const std::vector<Box>* BoxesOf(const RewardInput& input) {
  return std::get_if<std::vector<Box>>(&input);
}
const int64_t* ClassOf(const RewardInput& input) { return std::get_if<int64_t>(&input); }

}  // namespace

std::vector<double> CocoIouThresholds() {
  std::vector<double> thresholds;
  for (int i = 0; i < 10; ++i) thresholds.push_back((50 + 5 * i) / 100.0);
  return thresholds;
}

absl::Status ValidateDetectionRewardOptions(const DetectionRewardOptions& options) {
  if (options.iou_thresholds.empty()) {
    return absl::InvalidArgumentError("DetectionRewardOptions.iou_thresholds: must not be empty");
  }
  for (size_t i = 0; i < options.iou_thresholds.size(); ++i) {
    const double t = options.iou_thresholds[i];
    if (!(t > 0 && t <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("DetectionRewardOptions.iou_thresholds[", i, "] is ", t, ", want (0, 1]"));
    }
  }
  if (!(options.duplicate_weight >= 0) || !std::isfinite(options.duplicate_weight)) {
    return absl::InvalidArgumentError(absl::StrCat("DetectionRewardOptions.duplicate_weight is ",
                                                   options.duplicate_weight,
                                                   ", want a finite number >= 0"));
  }
  return absl::OkStatus();
}

DetectionRewardResult DetectionReward(const std::vector<Box>& predictions,
                                      const std::vector<Box>& truth,
                                      const DetectionRewardOptions& options) {
  DetectionRewardResult result;
  const int64_t num_predictions = static_cast<int64_t>(predictions.size());
  if (truth.empty()) {
    result.recall = num_predictions == 0 ? 1 : 0;
    result.duplicates = static_cast<double>(num_predictions);
    result.reward = result.recall - options.duplicate_weight * result.duplicates;
    return result;
  }
  const std::vector<std::vector<double>> iou = ClassIous(predictions, truth);
  const size_t num_truth = truth.size();
  for (double threshold : options.iou_thresholds) {
    const double bar = threshold - kIouSlack;
    // Step 2: each prediction to its best eligible truth.
    std::vector<int64_t> assigned(predictions.size(), -1);
    for (size_t p = 0; p < predictions.size(); ++p) {
      double best = -1;
      for (size_t g = 0; g < num_truth; ++g) {
        if (iou[p][g] >= bar && iou[p][g] > best) {
          best = iou[p][g];
          assigned[p] = static_cast<int64_t>(g);
        }
      }
    }
    // Step 3: each truth keeps its best assigned prediction; the rest duplicate it.
    int64_t matched = 0;
    int64_t duplicates = 0;
    for (size_t g = 0; g < num_truth; ++g) {
      int64_t assigned_count = 0;
      for (size_t p = 0; p < predictions.size(); ++p) {
        if (assigned[p] == static_cast<int64_t>(g)) ++assigned_count;
      }
      if (assigned_count > 0) {
        ++matched;
        duplicates += assigned_count - 1;
      }
    }
    result.recall += static_cast<double>(matched) / static_cast<double>(num_truth);
    result.duplicates += static_cast<double>(duplicates);
  }
  const double num_thresholds = static_cast<double>(options.iou_thresholds.size());
  result.recall /= num_thresholds;
  result.duplicates /= num_thresholds;
  result.reward =
      result.recall - options.duplicate_weight * result.duplicates / static_cast<double>(num_truth);
  return result;
}

std::vector<double> MatchIous(const std::vector<Box>& predictions, const std::vector<Box>& truth,
                              double threshold) {
  std::vector<double> out(predictions.size(), 0);
  const std::vector<std::vector<double>> iou = ClassIous(predictions, truth);
  for (size_t p = 0; p < predictions.size(); ++p) {
    for (double value : iou[p]) {
      if (value >= threshold - kIouSlack) out[p] = std::max(out[p], value);
    }
  }
  return out;
}

absl::StatusOr<DetectionMetrics> ComputeDetectionMetrics(
    const std::vector<std::vector<ScoredBox>>& predictions,
    const std::vector<std::vector<Box>>& truth) {
  if (predictions.size() != truth.size()) {
    return absl::InvalidArgumentError(absl::StrCat("predictions for ", predictions.size(),
                                                   " images but ground truth for ", truth.size()));
  }
  DetectionMetrics metrics;
  metrics.num_images = static_cast<int64_t>(truth.size());
  std::map<int64_t, int64_t> truth_per_class;
  for (const std::vector<Box>& boxes : truth) {
    metrics.num_truth += static_cast<int64_t>(boxes.size());
    for (const Box& box : boxes) ++truth_per_class[box.label];
  }
  for (const std::vector<ScoredBox>& boxes : predictions) {
    metrics.num_predictions += static_cast<int64_t>(boxes.size());
  }
  if (metrics.num_truth == 0) return metrics;

  // Per image, the same-class IoUs of its predictions with its truth.
  std::vector<std::vector<std::vector<double>>> ious(truth.size());
  for (size_t i = 0; i < truth.size(); ++i) {
    std::vector<Box> boxes;
    for (const ScoredBox& scored : predictions[i]) boxes.push_back(scored.box);
    ious[i] = ClassIous(boxes, truth[i]);
  }
  // Predictions (image, index) by descending score; ties keep image order.
  std::vector<std::pair<size_t, size_t>> ranked;
  for (size_t i = 0; i < predictions.size(); ++i) {
    for (size_t p = 0; p < predictions[i].size(); ++p) ranked.emplace_back(i, p);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [&](const auto& a, const auto& b) {
    return predictions[a.first][a.second].score > predictions[b.first][b.second].score;
  });

  const std::vector<double> thresholds = CocoIouThresholds();
  double map_sum = 0;
  double recall_sum = 0;
  for (size_t t = 0; t < thresholds.size(); ++t) {
    const double bar = thresholds[t] - kIouSlack;
    std::vector<std::vector<bool>> taken(truth.size());
    for (size_t i = 0; i < truth.size(); ++i) taken[i].assign(truth[i].size(), false);
    std::map<int64_t, std::vector<bool>> hits;  // per class, in rank order
    int64_t matched = 0;
    int64_t duplicates = 0;
    for (const auto& [image, p] : ranked) {
      const int64_t label = predictions[image][p].box.label;
      int64_t best_g = -1;
      double best = -1;
      bool overlaps_taken = false;
      for (size_t g = 0; g < truth[image].size(); ++g) {
        const double iou = ious[image][p][g];
        if (iou < bar) continue;
        if (taken[image][g]) {
          overlaps_taken = true;
        } else if (iou > best) {
          best = iou;
          best_g = static_cast<int64_t>(g);
        }
      }
      if (best_g >= 0) {
        taken[image][best_g] = true;
        ++matched;
      } else if (overlaps_taken) {
        ++duplicates;
      }
      if (truth_per_class.count(label) > 0) hits[label].push_back(best_g >= 0);
    }
    double ap_sum = 0;
    for (const auto& [label, count] : truth_per_class) ap_sum += InterpolatedAp(hits[label], count);
    const double map_t = ap_sum / static_cast<double>(truth_per_class.size());
    const double recall_t = static_cast<double>(matched) / static_cast<double>(metrics.num_truth);
    map_sum += map_t;
    recall_sum += recall_t;
    if (t == 0) {
      metrics.map50 = map_t;
      metrics.recall = recall_t;
      metrics.duplicate_rate =
          metrics.num_predictions > 0
              ? static_cast<double>(duplicates) / static_cast<double>(metrics.num_predictions)
              : 0;
    }
  }
  metrics.map = map_sum / static_cast<double>(thresholds.size());
  metrics.average_recall = recall_sum / static_cast<double>(thresholds.size());
  return metrics;
}

absl::Status ValidateCostMatrix(const std::vector<std::vector<double>>& cost, int64_t num_classes) {
  if (cost.empty()) return absl::InvalidArgumentError("cost_matrix is empty");
  const size_t k = cost.size();
  if (num_classes > 0 && static_cast<int64_t>(k) != num_classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost_matrix has ", k, " rows, want one per class (", num_classes, ")"));
  }
  for (size_t i = 0; i < k; ++i) {
    if (cost[i].size() != k) {
      return absl::InvalidArgumentError(
          absl::StrCat("cost_matrix row ", i, " has ", cost[i].size(), " entries, want ", k));
    }
    for (size_t j = 0; j < k; ++j) {
      if (!std::isfinite(cost[i][j])) {
        return absl::InvalidArgumentError(absl::StrCat("cost_matrix[", i, "][", j, "] is ",
                                                       cost[i][j], ", want a finite number"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<double> CostMatrixReward(const std::vector<std::vector<double>>& cost,
                                        int64_t predicted, int64_t truth) {
  const int64_t k = static_cast<int64_t>(cost.size());
  if (predicted < 0 || predicted >= k || truth < 0 || truth >= k) {
    return absl::OutOfRangeError(absl::StrCat("classes (predicted ", predicted, ", truth ", truth,
                                              ") outside a ", k, "-class cost matrix"));
  }
  return -cost[truth][predicted];
}

at::Tensor CostMatrixRewards(const at::Tensor& cost, const at::Tensor& predicted,
                             const at::Tensor& truth) {
  TORCH_CHECK(cost.dim() == 2 && cost.size(0) == cost.size(1), "cost must be (K, K), got ",
              cost.sizes());
  TORCH_CHECK(predicted.sizes() == truth.sizes(), "predicted ", predicted.sizes(), " and truth ",
              truth.sizes(), " differ in shape");
  const at::Tensor flat = truth.to(at::kLong) * cost.size(0) + predicted.to(at::kLong);
  return at::take(cost.to(at::kFloat), flat.to(cost.device())).neg();
}

at::Tensor BayesDecisions(const at::Tensor& probs, const at::Tensor& cost) {
  TORCH_CHECK(cost.dim() == 2 && cost.size(0) == cost.size(1), "cost must be (K, K), got ",
              cost.sizes());
  TORCH_CHECK(probs.dim() == 2 && probs.size(1) == cost.size(0), "probs must be (N, ", cost.size(0),
              "), got ", probs.sizes());
  return probs.matmul(cost.to(probs.scalar_type()).to(probs.device())).argmin(1);
}

std::vector<std::string> RewardNames() { return {"cost_matrix", "detection"}; }

absl::StatusOr<RewardFn> MakeReward(const std::string& name, const RewardOptions& options) {
  if (name == "detection") {
    OFFSITE_RETURN_IF_ERROR(ValidateDetectionRewardOptions(options.detection));
    DetectionRewardOptions detection = options.detection;
    return RewardFn([detection](const RewardInput& prediction,
                                const RewardInput& truth) -> absl::StatusOr<double> {
      const std::vector<Box>* predicted_boxes = BoxesOf(prediction);
      const std::vector<Box>* truth_boxes = BoxesOf(truth);
      if (predicted_boxes == nullptr || truth_boxes == nullptr) {
        return absl::InvalidArgumentError("the detection reward scores boxes, not classes");
      }
      return DetectionReward(*predicted_boxes, *truth_boxes, detection).reward;
    });
  }
  if (name == "cost_matrix") {
    OFFSITE_RETURN_IF_ERROR(ValidateCostMatrix(options.cost_matrix, options.num_classes));
    std::vector<std::vector<double>> cost = options.cost_matrix;
    return RewardFn([cost = std::move(cost)](const RewardInput& prediction,
                                             const RewardInput& truth) -> absl::StatusOr<double> {
      const int64_t* predicted_class = ClassOf(prediction);
      const int64_t* true_class = ClassOf(truth);
      if (predicted_class == nullptr || true_class == nullptr) {
        return absl::InvalidArgumentError("the cost_matrix reward scores classes, not boxes");
      }
      return CostMatrixReward(cost, *predicted_class, *true_class);
    });
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "no reward named \"", name, "\"; valid names: ", absl::StrJoin(RewardNames(), ", ")));
}

}  // namespace offsite
