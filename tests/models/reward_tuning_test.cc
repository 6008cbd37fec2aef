#include "models/reward_tuning.h"

#include <torch/torch.h>

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/optimizer.h"
#include "tests/util/gradient_sync_probe.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// 16 px canvases, a 4x4 memory grid, 16 bins, 3 classes, at most 2 objects.
Pix2SeqConfig TinyConfig() {
  Pix2SeqConfig config;
  config.image_size = 16;
  config.encoder_depths = {1};
  config.encoder_dims = {16};
  config.encoder_stem_stride = 4;
  config.n_layer = 1;
  config.n_embd = 32;
  config.n_head = 2;
  config.tokenizer.num_bins = 16;
  config.tokenizer.num_classes = 3;
  config.tokenizer.canvas_size = 16;
  config.max_objects = 2;
  return config;
}

Pix2Seq MakeModel(uint64_t seed) {
  torch::manual_seed(seed);
  absl::StatusOr<Pix2Seq> model = MakePix2Seq(TinyConfig());
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// Four scenes with one or two boxes each.
Scenes TinyScenes() {
  torch::manual_seed(3);
  Scenes scenes;
  scenes.images = torch::rand({4, 1, 16, 16});
  scenes.objects = {{{1, 1, 7, 7, 0}},
                    {{8, 2, 15, 9, 1}, {1, 9, 6, 15, 2}},
                    {{4, 4, 12, 12, 2}},
                    {{0, 0, 5, 5, 1}, {10, 10, 16, 16, 0}}};
  return scenes;
}

// Mean reward of 32 samples per image at temperature 1.
double ExpectedReward(Pix2SeqImpl& model, const at::Tensor& images,
                      const std::vector<std::vector<Box>>& truth, const RewardFn& reward) {
  model.eval();
  SampledSequences samples = Sample(model, images, 32, 1.0, at::detail::createCPUGenerator(12345));
  const std::vector<std::vector<Box>> boxes = DecodeBoxes(model.tokenizer(), samples.tokens);
  double sum = 0;
  for (size_t m = 0; m < boxes.size(); ++m) sum += reward(boxes[m], truth[m / 32]).value();
  return sum / boxes.size();
}

TEST(RewardTuningTest, DetectorArchiveRoundTripsConfigAndWeights) {
  Pix2Seq model = MakeModel(1);
  torch::serialize::OutputArchive out;
  ASSERT_TRUE(SavePix2Seq(*model, out).ok());
  std::ostringstream bytes;
  out.save_to(bytes);

  torch::serialize::InputArchive in;
  std::istringstream stream(bytes.str());
  in.load_from(stream);
  absl::StatusOr<Pix2Seq> loaded = LoadPix2Seq(in);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().image_size, 16);
  EXPECT_EQ((*loaded)->config().encoder_dims, std::vector<int64_t>{16});
  EXPECT_EQ((*loaded)->config().tokenizer.num_classes, 3);
  EXPECT_EQ((*loaded)->config().max_objects, 2);
  model->eval();
  (*loaded)->eval();
  const torch::Tensor images = torch::rand({2, 1, 16, 16});
  EXPECT_TRUE(torch::equal(Greedy(*model, images).tokens, Greedy(**loaded, images).tokens));
  const torch::Tensor tokens = torch::randint(0, 16, {2, 5}, torch::kLong);
  EXPECT_TRUE(torch::allclose(model->forward(images, tokens), (*loaded)->forward(images, tokens)));
}

TEST(RewardTuningTest, ArchiveOfAnotherKindIsRejectedNamingWhatIsMissing) {
  torch::serialize::OutputArchive out;
  out.write("format", c10::IValue(std::string("convnext_v2")));
  out.write("version", c10::IValue(int64_t{1}));
  std::ostringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  std::istringstream stream(bytes.str());
  in.load_from(stream);
  absl::StatusOr<Pix2Seq> loaded = LoadPix2Seq(in);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr("convnext_v2"));
}

TEST(RewardTuningTest, MleStepsLowerTheTeacherForcingLoss) {
  Pix2Seq model = MakeModel(2);
  const Scenes scenes = TinyScenes();
  auto optimizer = MakeAdamW(*model, 3e-3, 0, 0.999, false);
  const torch::Tensor batch = torch::arange(4, torch::kLong);
  const double first = DetectorMleStep(*model, *optimizer, scenes, batch, 0).value();
  double last = first;
  for (int step = 1; step < 40; ++step) {
    last = DetectorMleStep(*model, *optimizer, scenes, batch, step).value();
  }
  EXPECT_LT(last, 0.7 * first);
  EXPECT_FALSE(
      DetectorMleStep(*model, *optimizer, scenes, torch::tensor({7}, torch::kLong), 0).ok());
}

TEST(RewardTuningTest, EvaluateDetectorScoresEveryTestScene) {
  Pix2Seq model = MakeModel(3);
  const Scenes scenes = TinyScenes();
  const RewardFn reward = MakeReward("detection", {}).value();
  absl::StatusOr<DetectorEvaluation> eval = EvaluateDetector(*model, scenes, reward, 3);
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->metrics.num_images, 4);
  EXPECT_EQ(eval->metrics.num_truth, 6);
  EXPECT_GE(eval->mean_length, 1);
  EXPECT_LE(eval->mean_length, 11);
}

// A reward only REINFORCE can follow: 1 for a sequence whose first box has
// class 2, 0 otherwise. A random detector earns it about a third of the time.
TEST(RewardTuningTest, DetectorReinforceStepsRaiseTheExpectedReward) {
  Pix2Seq model = MakeModel(4);
  const Scenes scenes = TinyScenes();
  const RewardFn reward = [](const RewardInput& prediction,
                             const RewardInput&) -> absl::StatusOr<double> {
    const auto& boxes = std::get<std::vector<Box>>(prediction);
    return !boxes.empty() && boxes[0].label == 2 ? 1.0 : 0.0;
  };
  const double before = ExpectedReward(*model, scenes.images, scenes.objects, reward);
  auto optimizer = MakeAdamW(*model, 3e-3, 0, 0.999, false);
  ReinforceOptions options;
  options.samples_per_input = 8;
  for (int step = 0; step < 25; ++step) {
    absl::StatusOr<ReinforceStepStats> stats =
        DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward, options,
                              at::detail::createCPUGenerator(step));
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(std::isfinite(stats->loss));
    EXPECT_GT(stats->entropy, 0);
    EXPECT_GE(stats->mean_length, 1);
  }
  const double after = ExpectedReward(*model, scenes.images, scenes.objects, reward);
  EXPECT_LT(before, 0.6);
  EXPECT_GT(after, before + 0.25) << "before " << before;
}

TEST(RewardTuningTest, DetectorReinforceStepRejectsMismatchedInputs) {
  Pix2Seq model = MakeModel(5);
  const Scenes scenes = TinyScenes();
  auto optimizer = MakeAdamW(*model, 1e-3, 0, 0.999, false);
  const RewardFn reward = MakeReward("detection", {}).value();
  ReinforceOptions options;
  options.samples_per_input = 1;
  EXPECT_FALSE(DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward,
                                     options, at::detail::createCPUGenerator(0))
                   .ok());
  options.samples_per_input = 2;
  const std::vector<std::vector<Box>> short_truth(scenes.objects.begin(),
                                                  scenes.objects.begin() + 2);
  EXPECT_FALSE(DetectorReinforceStep(*model, *optimizer, scenes.images, short_truth, reward,
                                     options, at::detail::createCPUGenerator(0))
                   .ok());
}

// Each step hands every parameter to the gradient sync after backward and
// before clipping and the step; a failed sync fails the step with nothing moved.
TEST(RewardTuningTest, StepsSyncGradientsBeforeTheyMoveAnything) {
  Pix2Seq model = MakeModel(6);
  const Scenes scenes = TinyScenes();
  auto optimizer = MakeAdamW(*model, 1e-3, 0, 0.999, false);
  const RewardFn reward = MakeReward("detection", {}).value();
  ReinforceOptions options;
  options.samples_per_input = 2;
  const torch::Tensor batch = torch::arange(4, torch::kLong);
  testutil::GradientSyncProbe probe;
  ASSERT_TRUE(DetectorMleStep(*model, *optimizer, scenes, batch, 0, 1.0, probe.Sync()).ok());
  ASSERT_TRUE(DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward,
                                    options, at::detail::createCPUGenerator(0), probe.Sync())
                  .ok());
  EXPECT_EQ(probe.calls, 2);
  EXPECT_TRUE(probe.gradients_ready);
  EXPECT_TRUE(probe.Saw(model->parameters()));

  probe.result = absl::UnavailableError("peer gone");
  const std::vector<torch::Tensor> before = testutil::Copies(model->parameters());
  EXPECT_TRUE(absl::IsUnavailable(
      DetectorMleStep(*model, *optimizer, scenes, batch, 1, 1.0, probe.Sync()).status()));
  EXPECT_TRUE(absl::IsUnavailable(
      DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward, options,
                            at::detail::createCPUGenerator(1), probe.Sync())
          .status()));
  EXPECT_TRUE(testutil::Unchanged(model->parameters(), before));
}

// Three classes, labels independent of the inputs (nothing to learn), and a
// cost matrix under which class 2 is cheap whatever the truth: tuning must
// move the argmax decisions to class 2 and raise the reward, toward the
// Bayes rule.
TEST(RewardTuningTest, CostMatrixTuningMovesPredictionsTowardTheCheapClass) {
  torch::manual_seed(6);
  torch::nn::Linear linear(8, 3);
  const torch::Tensor images = torch::randn({256, 8});
  const torch::Tensor labels = torch::randint(0, 2, {256}, torch::kLong);  // classes 0 and 1
  RewardOptions options;
  options.cost_matrix = {{0, 4, 0.5}, {4, 0, 0.5}, {1, 1, 0}};
  const RewardFn reward = MakeReward("cost_matrix", options).value();
  const LogitsFn logits = [&](const at::Tensor& x) { return linear->forward(x); };

  const ClassifierEvaluation before = EvaluateClassifier(logits, images, labels, reward, 3).value();
  // With about half 0s and half 1s, predicting 2 costs 0.5, either other class ~2.
  EXPECT_GT(before.bayes_mean_reward, before.mean_reward);
  torch::optim::AdamW optimizer(linear->parameters(), torch::optim::AdamWOptions(5e-2));
  ReinforceOptions reinforce;
  for (int step = 0; step < 60; ++step) {
    absl::StatusOr<ReinforceStepStats> stats = ClassifierReinforceStep(
        logits, optimizer, images.slice(0, (step % 4) * 64, (step % 4 + 1) * 64),
        labels.slice(0, (step % 4) * 64, (step % 4 + 1) * 64), reward, reinforce,
        at::detail::createCPUGenerator(step));
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->mean_length, 1);
  }
  const ClassifierEvaluation after = EvaluateClassifier(logits, images, labels, reward, 3).value();
  EXPECT_GT(after.prediction_share[2], before.prediction_share[2] + 0.3);
  EXPECT_GT(after.prediction_share[2], 0.8);
  EXPECT_GT(after.mean_reward, before.mean_reward + 0.5);
  EXPECT_NEAR(after.mean_reward, -0.5, 0.2);

  // The classifier step syncs too, and stops when the sync fails.
  testutil::GradientSyncProbe probe;
  probe.result = absl::UnavailableError("peer gone");
  const std::vector<torch::Tensor> weights = testutil::Copies(linear->parameters());
  EXPECT_TRUE(absl::IsUnavailable(
      ClassifierReinforceStep(logits, optimizer, images, labels, reward, reinforce,
                              at::detail::createCPUGenerator(0), probe.Sync())
          .status()));
  EXPECT_TRUE(probe.gradients_ready);
  EXPECT_TRUE(probe.Saw(linear->parameters()));
  EXPECT_TRUE(testutil::Unchanged(linear->parameters(), weights));
}

TEST(RewardTuningTest, BayesRuleMinimisesExpectedCostOfTheProbabilities) {
  // Fixed probabilities (0.6, 0.4) for every image: argmax says class 0, but
  // missing class 1 costs 5, so the Bayes rule says class 1 (expected cost
  // 0.6 * 1 < 0.4 * 5).
  const LogitsFn logits = [](const at::Tensor& x) {
    return torch::tensor({std::log(0.6f), std::log(0.4f)}).expand({x.size(0), 2});
  };
  RewardOptions options;
  options.cost_matrix = {{0, 1}, {5, 0}};
  const RewardFn reward = MakeReward("cost_matrix", options).value();
  const torch::Tensor labels = torch::tensor({0, 0, 0, 1, 1}, torch::kLong);
  const ClassifierEvaluation eval =
      EvaluateClassifier(logits, torch::zeros({5, 1}), labels, reward, 2).value();
  EXPECT_DOUBLE_EQ(eval.accuracy, 0.6);
  EXPECT_DOUBLE_EQ(eval.mean_reward, -2.0);  // two missed 1s at 5 each
  EXPECT_DOUBLE_EQ(eval.bayes_accuracy, 0.4);
  EXPECT_DOUBLE_EQ(eval.bayes_mean_reward, -0.6);  // three 0s called 1 at 1 each
  EXPECT_DOUBLE_EQ(eval.prediction_share[0], 1.0);
  // A detection reward cannot score classes.
  EXPECT_FALSE(EvaluateClassifier(logits, torch::zeros({5, 1}), labels,
                                  MakeReward("detection", {}).value(), 2)
                   .ok());
}

}  // namespace
}  // namespace offsite
