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

// LoadPix2Seq of what `out` holds, once written to bytes and read back.
absl::StatusOr<Pix2Seq> LoadThroughBytes(torch::serialize::OutputArchive& out) {
  std::ostringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  std::istringstream stream(bytes.str());
  in.load_from(stream);
  return LoadPix2Seq(in);
}

TEST(RewardTuningTest, DetectorArchiveRoundTripsConfigAndWeights) {
  Pix2Seq model = MakeModel(1);
  torch::serialize::OutputArchive out;
  ASSERT_TRUE(SavePix2Seq(*model, out).ok());
  absl::StatusOr<Pix2Seq> loaded = LoadThroughBytes(out);
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

// Detectors saved before the confidence head (format version 1) still load,
// the head at its zero start.
TEST(RewardTuningTest, VersionOneDetectorsLoadWithAnUntrainedConfidenceHead) {
  Pix2Seq model = MakeModel(1);
  const Pix2SeqConfig config = TinyConfig();
  torch::serialize::OutputArchive out;
  out.write("format", c10::IValue(std::string("offsite_pix2seq")));
  out.write("version", c10::IValue(int64_t{1}));
  out.write("config.in_channels", c10::IValue(config.in_channels));
  out.write("config.image_size", c10::IValue(config.image_size));
  out.write("config.encoder_depths", c10::IValue(config.encoder_depths));
  out.write("config.encoder_dims", c10::IValue(config.encoder_dims));
  out.write("config.encoder_stem_stride", c10::IValue(config.encoder_stem_stride));
  out.write("config.n_layer", c10::IValue(config.n_layer));
  out.write("config.n_embd", c10::IValue(config.n_embd));
  out.write("config.n_head", c10::IValue(config.n_head));
  out.write("config.dropout", c10::IValue(config.dropout));
  out.write("config.num_bins", c10::IValue(config.tokenizer.num_bins));
  out.write("config.num_classes", c10::IValue(config.tokenizer.num_classes));
  out.write("config.canvas_size", c10::IValue(static_cast<double>(config.tokenizer.canvas_size)));
  out.write("config.max_objects", c10::IValue(config.max_objects));
  out.write("config.constrain_grammar", c10::IValue(config.constrain_grammar));
  for (const auto& item : model->named_parameters()) {
    if (item.key().rfind("confidence.", 0) != 0) {
      out.write("tensor/" + item.key(), item.value().detach());
    }
  }
  for (const auto& item : model->named_buffers()) out.write("tensor/" + item.key(), item.value());
  absl::StatusOr<Pix2Seq> loaded = LoadThroughBytes(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const char* name : {"confidence.weight", "confidence.bias"}) {
    EXPECT_EQ((*loaded)->named_parameters()[name].abs().sum().item<double>(), 0) << name;
  }
  model->eval();
  (*loaded)->eval();
  const torch::Tensor images = torch::rand({2, 1, 16, 16});
  EXPECT_TRUE(torch::equal(Greedy(*model, images).tokens, Greedy(**loaded, images).tokens));
}

TEST(RewardTuningTest, ArchiveOfAnotherKindIsRejectedNamingWhatIsMissing) {
  torch::serialize::OutputArchive out;
  out.write("format", c10::IValue(std::string("convnext_v2")));
  out.write("version", c10::IValue(int64_t{1}));
  absl::StatusOr<Pix2Seq> loaded = LoadThroughBytes(out);
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

TEST(RewardTuningTest, ClassOnlyRankingIgnoresTheConfidenceHead) {
  Pix2Seq model = MakeModel(3);
  const Scenes scenes = TinyScenes();
  const RewardFn reward = MakeReward("detection", {}).value();
  // Fit the four scenes a little, so that some boxes hit and ranking matters.
  auto optimizer = MakeAdamW(*model, 3e-3, 0, 0.999, false);
  for (int step = 0; step < 60; ++step) {
    ASSERT_TRUE(
        DetectorMleStep(*model, *optimizer, scenes, torch::arange(4, torch::kLong), step).ok());
  }
  const DetectorEvaluation untuned = EvaluateDetector(*model, scenes, reward).value();
  ASSERT_GT(untuned.metrics.map50, 0);
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["confidence.weight"].normal_(0, 1);
  }
  const DetectorEvaluation class_only =
      EvaluateDetector(*model, scenes, reward, 100, BoxRanking::kClassOnly).value();
  EXPECT_DOUBLE_EQ(class_only.metrics.map, untuned.metrics.map);
  EXPECT_DOUBLE_EQ(class_only.metrics.map50, untuned.metrics.map50);
  EXPECT_DOUBLE_EQ(class_only.mean_reward, untuned.mean_reward);
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

// big_vision's confidence: tuning teaches the head the IoU of the model's own
// boxes (here mostly 0: a random detector rarely hits), and leaves it alone
// at weight 0.
TEST(RewardTuningTest, DetectorReinforceStepsTeachTheConfidenceHeadTheSampledIous) {
  const Scenes scenes = TinyScenes();
  const RewardFn reward = MakeReward("detection", {}).value();
  auto confidence_head_sum = [](Pix2SeqImpl& model) {
    return model.named_parameters()["confidence.weight"].abs().sum().item<double>() +
           model.named_parameters()["confidence.bias"].abs().sum().item<double>();
  };
  {
    Pix2Seq model = MakeModel(8);
    auto optimizer = MakeAdamW(*model, 1e-2, 0, 0.999, false);
    ReinforceOptions options;
    options.confidence_weight = 0;
    absl::StatusOr<ReinforceStepStats> stats =
        DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward, options,
                              at::detail::createCPUGenerator(0));
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_NEAR(stats->confidence_loss, std::log(2.0), 0.1);  // Reported, not trained.
    EXPECT_EQ(confidence_head_sum(*model), 0);
    options.confidence_weight = -1;
    EXPECT_FALSE(DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward,
                                       options, at::detail::createCPUGenerator(0))
                     .ok());
  }
  Pix2Seq model = MakeModel(8);
  auto optimizer = MakeAdamW(*model, 1e-2, 0, 0.999, false);
  ReinforceOptions options;  // confidence_weight 0.3
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    absl::StatusOr<ReinforceStepStats> stats =
        DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward, options,
                              at::detail::createCPUGenerator(step));
    ASSERT_TRUE(stats.ok()) << stats.status();
    (step == 0 ? first : last) = stats->confidence_loss;
  }
  EXPECT_GT(confidence_head_sum(*model), 0);
  EXPECT_LT(last, 0.5 * first) << "first " << first;
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
  testutil::GradientSyncProbe mle;
  ASSERT_TRUE(DetectorMleStep(*model, *optimizer, scenes, batch, 0, 1.0, mle.Sync()).ok());
  EXPECT_EQ(mle.calls, 1);
  EXPECT_TRUE(mle.Saw(model->parameters()));
  // MLE never reads the confidence head, so only its gradients are missing
  // (a data-parallel all-reduce counts them as zeros).
  for (const auto& item : model->named_parameters()) {
    EXPECT_EQ(item.value().grad().defined(), item.key().rfind("confidence.", 0) != 0) << item.key();
  }
  testutil::GradientSyncProbe probe;
  ASSERT_TRUE(DetectorReinforceStep(*model, *optimizer, scenes.images, scenes.objects, reward,
                                    options, at::detail::createCPUGenerator(0), probe.Sync())
                  .ok());
  EXPECT_EQ(probe.calls, 1);
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
