#include "models/rewards.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::AllOf;
using ::testing::DoubleNear;
using ::testing::HasSubstr;

Box MakeBox(float x0, float y0, float x1, float y1, int64_t label) {
  return Box{x0, y0, x1, y1, label};
}

// Shifted right by d, a 20x20 box keeps IoU (20 - d) / (20 + d) with itself.
Box Shifted(const Box& box, float d) {
  return MakeBox(box.x0 + d, box.y0, box.x1 + d, box.y1, box.label);
}

const std::vector<Box> kScene = {MakeBox(0, 0, 20, 20, 3), MakeBox(30, 5, 50, 25, 1),
                                 MakeBox(10, 40, 30, 60, 3)};

TEST(RewardIouTest, KnownValues) {
  const Box a = MakeBox(0, 0, 10, 10, 0);
  EXPECT_DOUBLE_EQ(Iou(a, a), 1.0);
  EXPECT_DOUBLE_EQ(Iou(a, MakeBox(5, 0, 15, 10, 0)), 50.0 / 150.0);
  EXPECT_DOUBLE_EQ(Iou(a, MakeBox(10, 0, 20, 10, 0)), 0.0);                    // Touching edges.
  EXPECT_DOUBLE_EQ(Iou(a, MakeBox(5, 5, 5, 5, 0)), 0.0);                       // Empty box.
  EXPECT_DOUBLE_EQ(Iou(MakeBox(3, 3, 1, 1, 0), MakeBox(3, 3, 1, 1, 0)), 0.0);  // Inverted.
  EXPECT_DOUBLE_EQ(Iou(a, MakeBox(0, 0, 10, 10, 7)), 1.0);  // Labels are ignored.
}

TEST(DetectionRewardTest, PerfectMatchScoresOne) {
  const std::vector<Box> predictions = {kScene[2], kScene[0], kScene[1]};
  const DetectionRewardResult result = DetectionReward(predictions, kScene);
  EXPECT_DOUBLE_EQ(result.reward, 1.0);
  EXPECT_DOUBLE_EQ(result.recall, 1.0);
  EXPECT_DOUBLE_EQ(result.duplicates, 0.0);
}

TEST(DetectionRewardTest, ShiftedBoxScoresFractionOfThresholds) {
  const std::vector<Box> truth = {kScene[0]};
  // IoU 17/23 = 0.739: matched at 0.50, 0.55, 0.60, 0.65, 0.70.
  ASSERT_NEAR(Iou(Shifted(kScene[0], 3), kScene[0]), 17.0 / 23.0, 1e-6);
  EXPECT_NEAR(DetectionReward({Shifted(kScene[0], 3)}, truth).reward, 0.5, 1e-9);
  // IoU 18/22 = 0.818: matched at 0.50 .. 0.80.
  EXPECT_NEAR(DetectionReward({Shifted(kScene[0], 2)}, truth).reward, 0.7, 1e-9);
  // IoU 15/25 = 0.6 exactly: the threshold 0.60 counts.
  EXPECT_NEAR(DetectionReward({Shifted(kScene[0], 5)}, truth).reward, 0.3, 1e-9);
  // IoU 10/30: never matched.
  EXPECT_NEAR(DetectionReward({Shifted(kScene[0], 10)}, truth).reward, 0.0, 1e-9);
}

TEST(DetectionRewardTest, RewardIsNormalisedByObjectCount) {
  // One of three objects found: 1/3.
  EXPECT_NEAR(DetectionReward({kScene[1]}, kScene).reward, 1.0 / 3.0, 1e-9);
  EXPECT_DOUBLE_EQ(DetectionReward({}, kScene).reward, 0.0);
}

TEST(DetectionRewardTest, DuplicateLowersRewardByPenalty) {
  const std::vector<Box> truth = {kScene[0]};
  const DetectionRewardResult result = DetectionReward({kScene[0], kScene[0]}, truth);
  EXPECT_NEAR(result.reward, 1.0 - 0.3, 1e-9);
  EXPECT_DOUBLE_EQ(result.duplicates, 1.0);
  EXPECT_DOUBLE_EQ(result.recall, 1.0);

  // Among three objects, a duplicate costs 0.3 of one object.
  std::vector<Box> predictions = kScene;
  predictions.push_back(Shifted(kScene[1], 1));  // IoU 19/21 = 0.905: duplicate at 0.5..0.9.
  EXPECT_NEAR(DetectionReward(predictions, kScene).reward, 1.0 - 0.3 * 0.9 / 3.0, 1e-9);

  DetectionRewardOptions options;
  options.duplicate_weight = 0;
  EXPECT_NEAR(DetectionReward({kScene[0], kScene[0]}, truth, options).reward, 1.0, 1e-9);
}

TEST(DetectionRewardTest, WrongClassScoresZero) {
  const std::vector<Box> truth = {kScene[0]};
  Box wrong = kScene[0];
  wrong.label = 4;
  const DetectionRewardResult result = DetectionReward({wrong}, truth);
  EXPECT_DOUBLE_EQ(result.reward, 0.0);
  EXPECT_DOUBLE_EQ(result.duplicates, 0.0);
  // A wrong-class box next to the right one neither helps nor costs.
  EXPECT_DOUBLE_EQ(DetectionReward({wrong, kScene[0]}, truth).reward, 1.0);
}

TEST(DetectionRewardTest, EachPredictionMatchesOneObject) {
  // Two same-class objects side by side and one box covering both: IoU 0.5
  // with each, so it can match only one of them, at the threshold 0.5.
  const std::vector<Box> truth = {MakeBox(0, 0, 10, 10, 2), MakeBox(10, 0, 20, 10, 2)};
  const DetectionRewardResult result = DetectionReward({MakeBox(0, 0, 20, 10, 2)}, truth);
  EXPECT_NEAR(result.reward, 0.5 * 0.1, 1e-9);
  EXPECT_DOUBLE_EQ(result.duplicates, 0.0);
}

TEST(MatchIousTest, IouWithTheBestSameClassObjectFromTheThresholdUp) {
  const std::vector<Box> truth = {kScene[0], kScene[1]};
  Box wrong = kScene[0];
  wrong.label = 4;
  const std::vector<double> ious = MatchIous(
      {kScene[1], Shifted(kScene[0], 3), Shifted(kScene[0], 10), wrong, kScene[1]}, truth);
  ASSERT_EQ(ious.size(), 5u);
  EXPECT_DOUBLE_EQ(ious[0], 1.0);
  EXPECT_NEAR(ious[1], 17.0 / 23.0, 1e-6);
  EXPECT_DOUBLE_EQ(ious[2], 0.0);  // IoU 1/3: below 0.5.
  EXPECT_DOUBLE_EQ(ious[3], 0.0);  // Wrong class.
  EXPECT_DOUBLE_EQ(ious[4], 1.0);  // A duplicate still overlaps its object.
  EXPECT_NEAR(MatchIous({Shifted(kScene[0], 10)}, truth, 0.3)[0], 1.0 / 3.0, 1e-6);
  EXPECT_TRUE(MatchIous({}, truth).empty());
  EXPECT_EQ(MatchIous({kScene[0]}, {}), std::vector<double>{0.0});
}

TEST(DetectionRewardTest, EmptyTruth) {
  EXPECT_DOUBLE_EQ(DetectionReward({}, {}).reward, 1.0);
  EXPECT_NEAR(DetectionReward({kScene[0], kScene[1]}, {}).reward, -0.6, 1e-9);
}

TEST(DetectionRewardTest, ValidatesOptions) {
  DetectionRewardOptions options;
  EXPECT_TRUE(ValidateDetectionRewardOptions(options).ok());
  EXPECT_EQ(options.iou_thresholds.size(), 10u);
  EXPECT_DOUBLE_EQ(options.iou_thresholds.front(), 0.5);
  EXPECT_DOUBLE_EQ(options.iou_thresholds.back(), 0.95);
  options.iou_thresholds = {};
  EXPECT_EQ(ValidateDetectionRewardOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options.iou_thresholds = {0.5, 1.5};
  EXPECT_THAT(ValidateDetectionRewardOptions(options).message(), HasSubstr("iou_thresholds[1]"));
  options = DetectionRewardOptions();
  options.duplicate_weight = -1;
  EXPECT_THAT(ValidateDetectionRewardOptions(options).message(), HasSubstr("duplicate_weight"));
}

std::vector<ScoredBox> Scored(const std::vector<Box>& boxes, double score = 1) {
  std::vector<ScoredBox> scored;
  for (const Box& box : boxes) scored.push_back(ScoredBox{box, score});
  return scored;
}

TEST(DetectionMetricsTest, PerfectPredictionsScoreOne) {
  const std::vector<std::vector<Box>> truth = {kScene, {kScene[1]}};
  absl::StatusOr<DetectionMetrics> metrics =
      ComputeDetectionMetrics({Scored(kScene), Scored({kScene[1]})}, truth);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_DOUBLE_EQ(metrics->map, 1.0);
  EXPECT_DOUBLE_EQ(metrics->map50, 1.0);
  EXPECT_DOUBLE_EQ(metrics->recall, 1.0);
  EXPECT_DOUBLE_EQ(metrics->average_recall, 1.0);
  EXPECT_DOUBLE_EQ(metrics->duplicate_rate, 0.0);
  EXPECT_EQ(metrics->num_images, 2);
  EXPECT_EQ(metrics->num_truth, 4);
  EXPECT_EQ(metrics->num_predictions, 4);
}

TEST(DetectionMetricsTest, ShiftedPredictionsLowerMap) {
  std::vector<Box> shifted;
  for (const Box& box : kScene) shifted.push_back(Shifted(box, 3));  // IoU 0.739 each.
  absl::StatusOr<DetectionMetrics> metrics = ComputeDetectionMetrics({Scored(shifted)}, {kScene});
  ASSERT_TRUE(metrics.ok());
  EXPECT_DOUBLE_EQ(metrics->map50, 1.0);
  EXPECT_NEAR(metrics->map, 0.5, 1e-9);  // AP 1 at 0.50..0.70, 0 above.
  EXPECT_DOUBLE_EQ(metrics->recall, 1.0);
  EXPECT_NEAR(metrics->average_recall, 0.5, 1e-9);
}

TEST(DetectionMetricsTest, MissedObjectAndRankingLowerAp) {
  // One of two class-3 objects found, class 1 found: AP(3) = 51/101 (precision 1
  // up to recall 0.5), AP(1) = 1.
  absl::StatusOr<DetectionMetrics> metrics =
      ComputeDetectionMetrics({Scored({kScene[0], kScene[1]})}, {kScene});
  ASSERT_TRUE(metrics.ok());
  EXPECT_NEAR(metrics->map50, (51.0 / 101.0 + 1.0) / 2.0, 1e-9);
  EXPECT_NEAR(metrics->recall, 2.0 / 3.0, 1e-9);

  // A false positive ranked above the true one halves the precision at recall 1.
  std::vector<ScoredBox> ranked = {ScoredBox{Shifted(kScene[0], 40), 0.9},
                                   ScoredBox{kScene[0], 0.5}};
  metrics = ComputeDetectionMetrics({ranked}, {{kScene[0]}});
  ASSERT_TRUE(metrics.ok());
  EXPECT_NEAR(metrics->map50, 0.5, 1e-9);
  // Ranked below, it costs nothing.
  ranked[0].score = 0.1;
  metrics = ComputeDetectionMetrics({ranked}, {{kScene[0]}});
  ASSERT_TRUE(metrics.ok());
  EXPECT_NEAR(metrics->map50, 1.0, 1e-9);
}

TEST(DetectionMetricsTest, CountsDuplicates) {
  const std::vector<ScoredBox> predictions = {
      ScoredBox{kScene[0], 0.9}, ScoredBox{Shifted(kScene[0], 1), 0.4}, ScoredBox{kScene[1], 0.8}};
  absl::StatusOr<DetectionMetrics> metrics =
      ComputeDetectionMetrics({predictions}, {{kScene[0], kScene[1]}});
  ASSERT_TRUE(metrics.ok());
  EXPECT_NEAR(metrics->duplicate_rate, 1.0 / 3.0, 1e-9);
  EXPECT_DOUBLE_EQ(metrics->map50, 1.0);  // The duplicate ranks below every true box.
}

TEST(DetectionMetricsTest, RejectsMismatchedImageCounts) {
  absl::StatusOr<DetectionMetrics> metrics = ComputeDetectionMetrics({{}, {}}, {kScene});
  EXPECT_EQ(metrics.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RewardCostMatrixTest, RewardIsNegatedCost) {
  const std::vector<std::vector<double>> cost = {{0, 1, 2}, {5, 0, 1}, {3, 3, 0}};
  ASSERT_TRUE(ValidateCostMatrix(cost, 3).ok());
  EXPECT_DOUBLE_EQ(*CostMatrixReward(cost, /*predicted=*/0, /*truth=*/1), -5.0);
  EXPECT_DOUBLE_EQ(*CostMatrixReward(cost, 2, 2), 0.0);
  EXPECT_EQ(CostMatrixReward(cost, 3, 0).status().code(), absl::StatusCode::kOutOfRange);

  const torch::Tensor rewards =
      CostMatrixRewards(torch::tensor({{0., 1., 2.}, {5., 0., 1.}, {3., 3., 0.}}),
                        torch::tensor({0, 2, 1}), torch::tensor({1, 2, 0}));
  EXPECT_TRUE(torch::allclose(rewards, torch::tensor({-5.f, 0.f, -1.f})));
}

TEST(RewardCostMatrixTest, ValidationNamesTheEntry) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_THAT(ValidateCostMatrix({{0, 1}, {nan, 0}}).message(), HasSubstr("cost_matrix[1][0]"));
  EXPECT_THAT(ValidateCostMatrix({{0, inf}, {1, 0}}).message(), HasSubstr("cost_matrix[0][1]"));
  EXPECT_THAT(ValidateCostMatrix({{0, 1}, {1}}).message(), HasSubstr("row 1"));
  EXPECT_EQ(ValidateCostMatrix({}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ValidateCostMatrix({{0, 1}, {1, 0}}, 10).message(), HasSubstr("10"));
}

TEST(RewardCostMatrixTest, BayesDecisionMinimisesExpectedCost) {
  // Missing class 1 costs 5: at p(1) = 0.3 predicting 1 is cheaper (0.7 < 1.5).
  const torch::Tensor cost = torch::tensor({{0., 1.}, {5., 0.}});
  const torch::Tensor probs = torch::tensor({{0.7, 0.3}, {0.9, 0.1}});
  EXPECT_TRUE(torch::equal(BayesDecisions(probs, cost), torch::tensor({1, 0}, torch::kLong)));
}

TEST(RewardRegistryTest, MakesRewardsByName) {
  RewardOptions options;
  absl::StatusOr<RewardFn> detection = MakeReward("detection", options);
  ASSERT_TRUE(detection.ok()) << detection.status();
  absl::StatusOr<double> reward = (*detection)(RewardInput(kScene), RewardInput(kScene));
  ASSERT_TRUE(reward.ok());
  EXPECT_DOUBLE_EQ(*reward, 1.0);
  EXPECT_EQ((*detection)(RewardInput(int64_t{1}), RewardInput(kScene)).status().code(),
            absl::StatusCode::kInvalidArgument);

  options.cost_matrix = {{0, 1}, {5, 0}};
  absl::StatusOr<RewardFn> cost = MakeReward("cost_matrix", options);
  ASSERT_TRUE(cost.ok()) << cost.status();
  reward = (*cost)(RewardInput(int64_t{0}), RewardInput(int64_t{1}));
  ASSERT_TRUE(reward.ok());
  EXPECT_DOUBLE_EQ(*reward, -5.0);
  EXPECT_EQ((*cost)(RewardInput(kScene), RewardInput(int64_t{1})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RewardRegistryTest, RejectsUnknownNamesAndBadOptions) {
  absl::StatusOr<RewardFn> reward = MakeReward("accuracy", RewardOptions());
  EXPECT_EQ(reward.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reward.status().message(),
              AllOf(HasSubstr("accuracy"), HasSubstr("detection"), HasSubstr("cost_matrix")));

  // cost_matrix needs a matrix.
  EXPECT_EQ(MakeReward("cost_matrix", RewardOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
  RewardOptions options;
  options.detection.duplicate_weight = std::nan("");
  EXPECT_EQ(MakeReward("detection", options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace offsite
