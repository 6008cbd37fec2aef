#include "models/forward_forward.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "tests/util/gradient_sync_probe.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// Ten classes in 200 dimensions: each example is its class's random prototype
// plus as much uniform noise, so telling classes apart needs the whole input.
struct Synthetic {
  torch::Tensor x;  // float [N, 200] in [0, 1].
  torch::Tensor y;  // int64 [N].
};

Synthetic MakeSynthetic(int64_t n, const torch::Tensor& prototypes) {
  Synthetic data;
  data.y = torch::randint(0, prototypes.size(0), {n}, torch::kInt64);
  data.x = 0.5 * prototypes.index_select(0, data.y) + 0.5 * torch::rand({n, prototypes.size(1)});
  return data;
}

ForwardForwardOptions SmallOptions() {
  ForwardForwardOptions options;
  options.layer_widths = {100, 100};
  options.input_dim = 200;
  options.num_classes = 10;
  return options;
}

class SyntheticTaskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(1);
    const torch::Tensor prototypes = torch::rand({10, 200});
    train_ = MakeSynthetic(2000, prototypes);
    test_ = MakeSynthetic(500, prototypes);
  }

  template <typename Trainer>
  void Train(Trainer& trainer, int epochs) {
    constexpr int64_t kBatch = 50;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      const torch::Tensor order = torch::randperm(train_.x.size(0), torch::kInt64);
      for (int64_t start = 0; start < order.size(0); start += kBatch) {
        const torch::Tensor index = order.slice(0, start, start + kBatch);
        ASSERT_TRUE(
            trainer.TrainStep(train_.x.index_select(0, index), train_.y.index_select(0, index))
                .ok());
      }
    }
  }

  Synthetic train_;
  Synthetic test_;
};

TEST(RmsNormalizeTest, RowsHaveUnitRootMeanSquare) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::rand({4, 37}) * 5;
  const torch::Tensor rms = RmsNormalize(x).square().mean(1).sqrt();
  EXPECT_TRUE(torch::allclose(rms, torch::ones({4}), 1e-5, 1e-5)) << rms;
  // Same as x * sqrt(D) / ||x||.
  EXPECT_TRUE(torch::allclose(RmsNormalize(x), x * std::sqrt(37.0) / x.norm(2, 1, true)));
}

TEST(RmsNormalizeTest, ZeroRowStaysZero) {
  const torch::Tensor normalised = RmsNormalize(torch::zeros({2, 5}));
  EXPECT_TRUE(normalised.isfinite().all().item<bool>());
  EXPECT_TRUE(normalised.eq(0).all().item<bool>());
}

TEST(GoodnessTest, IsSumOfSquares) {
  const torch::Tensor h = torch::tensor({{1.0f, 2.0f}, {0.0f, 3.0f}});
  EXPECT_TRUE(Goodness(h).equal(torch::tensor({5.0f, 9.0f})));
}

TEST(ForwardForwardLossTest, MatchesHandComputedSoftplus) {
  // Positive goodness 5 and negative goodness 9 against theta 6.
  const double expected = std::log1p(std::exp(1.0)) + std::log1p(std::exp(3.0));
  const torch::Tensor loss =
      ForwardForwardLoss(torch::tensor({5.0f}), torch::tensor({9.0f}), /*theta=*/6);
  EXPECT_NEAR(loss.item<double>(), expected, 1e-5);
  // A mean over the batch: adding a perfectly separated pair (loss ~0) halves it.
  const torch::Tensor batch_loss =
      ForwardForwardLoss(torch::tensor({5.0f, 100.0f}), torch::tensor({9.0f, -100.0f}), 6);
  EXPECT_NEAR(batch_loss.item<double>(), expected / 2, 1e-5);
}

TEST(EmbedLabelsTest, WritesOneHotOverFirstInputs) {
  const torch::Tensor x = torch::full({2, 6}, 0.5f);
  const torch::Tensor embedded = EmbedLabels(x, torch::tensor({2, 0}, torch::kInt64), 3);
  EXPECT_TRUE(embedded.equal(
      torch::tensor({{0.0f, 0.0f, 1.0f, 0.5f, 0.5f, 0.5f}, {1.0f, 0.0f, 0.0f, 0.5f, 0.5f, 0.5f}})));
  EXPECT_TRUE(x.eq(0.5f).all().item<bool>()) << "input must not be modified";
  const torch::Tensor neutral = EmbedNeutralLabel(x, 4);
  EXPECT_TRUE(torch::allclose(neutral.slice(1, 0, 4), torch::full({2, 4}, 0.25f)));
  EXPECT_TRUE(neutral.slice(1, 4).eq(0.5f).all().item<bool>());
}

TEST(SampleWrongLabelsTest, NeverTrueAndCoversEveryOtherClassUniformly) {
  torch::manual_seed(0);
  constexpr int64_t kDraws = 100000;
  const torch::Tensor labels = torch::full({kDraws}, 3, torch::kInt64);
  const torch::Tensor wrong = SampleWrongLabels(labels, 10);
  EXPECT_FALSE(wrong.eq(labels).any().item<bool>());
  const torch::Tensor counts = torch::bincount(wrong, {}, 10);
  for (int64_t c = 0; c < 10; ++c) {
    if (c == 3) continue;
    // Expected 100000 / 9 = 11111 per class; 5 sigma is about 500.
    EXPECT_NEAR(counts[c].item<int64_t>(), kDraws / 9, 600) << "class " << c;
  }
  // Mixed true labels too.
  const torch::Tensor mixed = torch::randint(0, 10, {kDraws}, torch::kInt64);
  EXPECT_FALSE(SampleWrongLabels(mixed, 10).eq(mixed).any().item<bool>());
}

TEST(SampleHardWrongLabelsTest, NeverTrueAndFollowsScores) {
  torch::manual_seed(0);
  constexpr int64_t kDraws = 20000;
  const torch::Tensor labels = torch::randint(0, 10, {kDraws}, torch::kInt64);
  const torch::Tensor random_scores = torch::randn({kDraws, 10}) * 3;
  EXPECT_FALSE(SampleHardWrongLabels(random_scores, labels).eq(labels).any().item<bool>());

  // All mass on the true class (as a well-trained net gives): still a wrong label.
  const torch::Tensor sure = torch::one_hot(labels, 10).to(torch::kFloat32) * 1000;
  EXPECT_FALSE(SampleHardWrongLabels(sure, labels).eq(labels).any().item<bool>());

  // The runner-up class dominates the sample.
  const torch::Tensor true_three = torch::full({kDraws}, 3, torch::kInt64);
  torch::Tensor scores = torch::zeros({kDraws, 10});
  scores.select(1, 3).fill_(50);
  scores.select(1, 7).fill_(std::log(91.0));  // p(7 | not 3) = 91 / (91 + 8) = 0.92.
  const torch::Tensor hard = SampleHardWrongLabels(scores, true_three);
  EXPECT_FALSE(hard.eq(3).any().item<bool>());
  EXPECT_NEAR(hard.eq(7).to(torch::kFloat64).mean().item<double>(), 91.0 / 99.0, 0.01);
}

TEST(HardNegativeProbabilitiesTest, TemperatureSoftensTowardUniform) {
  const torch::Tensor label = torch::full({1}, 3, torch::kInt64);
  torch::Tensor scores = torch::zeros({1, 10});
  scores[0][3] = 50;
  scores[0][7] = 2 * std::log(91.0);
  // At temperature 2 the runner-up gets exp(log 91) / (91 + 8), as at 1 with half the score.
  const torch::Tensor warm = HardNegativeProbabilities(scores, label, 2);
  EXPECT_EQ(warm[0][3].item<float>(), 0);
  EXPECT_NEAR(warm[0][7].item<double>(), 91.0 / 99.0, 1e-5);
  EXPECT_NEAR(warm.sum().item<double>(), 1, 1e-5);
  // Infinity: uniform over the nine wrong labels, still never the true one.
  const torch::Tensor uniform =
      HardNegativeProbabilities(scores, label, std::numeric_limits<double>::infinity());
  EXPECT_EQ(uniform[0][3].item<float>(), 0);
  EXPECT_TRUE(torch::allclose(uniform.index_select(1, torch::tensor({0, 1, 2, 4, 5, 6, 7, 8, 9})),
                              torch::full({1, 9}, 1.0 / 9)));
}

TEST(ForwardForwardTest, LayerLossHasGradientsOnlyForItsOwnLayer) {
  torch::manual_seed(0);
  ForwardForwardOptions options = SmallOptions();
  options.layer_widths = {20, 20, 20};
  ForwardForwardTrainer trainer(options, torch::kCPU);
  const torch::Tensor x = torch::rand({8, 200});
  const torch::Tensor y = torch::randint(0, 10, {8}, torch::kInt64);
  std::vector<torch::Tensor> losses = trainer.LayerLosses(x, y, SampleWrongLabels(y, 10));
  ASSERT_EQ(losses.size(), 3u);

  losses[1].backward();
  ForwardForwardNet& net = trainer.net();
  EXPECT_FALSE(net->layer(0)->weight.grad().defined());
  EXPECT_FALSE(net->layer(0)->bias.grad().defined());
  ASSERT_TRUE(net->layer(1)->weight.grad().defined());
  EXPECT_GT(net->layer(1)->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_FALSE(net->layer(2)->weight.grad().defined());
}

TEST(ForwardForwardTest, ActivitiesPassedOnAreNormalisedAndDetached) {
  torch::manual_seed(0);
  ForwardForwardNet net(/*input_dim=*/12, std::vector<int64_t>{6, 4});
  const torch::Tensor x = torch::rand({3, 12});
  std::vector<torch::Tensor> activities = net->forward(x);
  ASSERT_EQ(activities.size(), 2u);
  const torch::Tensor expected = torch::relu(net->layer(1)(RmsNormalize(activities[0])));
  EXPECT_TRUE(torch::allclose(activities[1], expected));
}

TEST(ForwardForwardTest, LabelGoodnessSumsLayersAfterTheFirst) {
  torch::manual_seed(0);
  ForwardForwardOptions options = SmallOptions();
  ForwardForwardTrainer trainer(options, torch::kCPU);
  const torch::Tensor x = torch::rand({3, 200});
  const torch::Tensor scores = trainer.LabelGoodness(x);
  ASSERT_EQ(scores.sizes(), (std::vector<int64_t>{3, 10}));
  for (int64_t label = 0; label < 10; ++label) {
    const torch::Tensor labelled = EmbedLabels(x, torch::full({3}, label, torch::kInt64), 10);
    const torch::Tensor expected = Goodness(trainer.net()->forward(labelled)[1]);
    EXPECT_TRUE(torch::allclose(scores.select(1, label), expected, 1e-4, 1e-3));
  }
}

TEST(ForwardForwardTest, PredictionsDoNotDependOnChunking) {
  torch::manual_seed(0);
  ForwardForwardTrainer trainer(SmallOptions(), torch::kCPU);
  const torch::Tensor x = torch::rand({2100, 200});
  const torch::Tensor whole = trainer.LabelGoodness(x);
  const torch::Tensor parts = torch::cat(
      {trainer.LabelGoodness(x.slice(0, 0, 700)), trainer.LabelGoodness(x.slice(0, 700))});
  EXPECT_TRUE(torch::allclose(whole, parts, 1e-4, 1e-2));
  EXPECT_EQ(trainer.PredictSoftmax(x).size(0), 2100);
}

TEST(ForwardForwardTest, RejectsInvalidOptions) {
  ForwardForwardOptions options = SmallOptions();
  EXPECT_TRUE(ValidateForwardForwardOptions(options).ok());
  options.layer_widths = {};
  EXPECT_FALSE(ValidateForwardForwardOptions(options).ok());
  EXPECT_THROW(ForwardForwardTrainer(options, torch::kCPU), c10::Error);
  options = SmallOptions();
  options.input_dim = 5;
  EXPECT_FALSE(ValidateForwardForwardOptions(options).ok());
  options = SmallOptions();
  options.learning_rate = 0;
  EXPECT_FALSE(ValidateForwardForwardOptions(options).ok());
  for (const double temperature : {0.0, -1.0, std::nan("")}) {
    options = SmallOptions();
    options.hard_negative_temperature = temperature;
    const absl::Status status = ValidateForwardForwardOptions(options);
    EXPECT_FALSE(status.ok()) << temperature;
    EXPECT_THAT(std::string(status.message()), HasSubstr("hard_negative_temperature"));
  }
  options = SmallOptions();
  options.hard_negative_temperature = std::numeric_limits<double>::infinity();  // Uniform.
  EXPECT_TRUE(ValidateForwardForwardOptions(options).ok());
}

TEST_F(SyntheticTaskTest, ForwardForwardBeatsChanceInBothModes) {
  torch::manual_seed(2);
  ForwardForwardTrainer trainer(SmallOptions(), torch::kCPU);
  const torch::Tensor x = train_.x.slice(0, 0, 100);
  const torch::Tensor y = train_.y.slice(0, 0, 100);
  const StepStats first = trainer.TrainStep(x, y).value();
  Train(trainer, /*epochs=*/6);
  const StepStats last = trainer.TrainStep(x, y).value();
  EXPECT_LT(last.loss, first.loss);
  EXPECT_LT(last.softmax_loss, first.softmax_loss);

  const double goodness_accuracy = Accuracy(trainer.PredictGoodness(test_.x), test_.y);
  const double softmax_accuracy = Accuracy(trainer.PredictSoftmax(test_.x), test_.y);
  EXPECT_GT(goodness_accuracy, 0.8);  // Chance is 0.1; 6 epochs reach ~0.99.
  EXPECT_GT(softmax_accuracy, 0.8);
}

TEST_F(SyntheticTaskTest, HardNegativesTrainToo) {
  struct Variant {
    bool from_softmax;
    double temperature;
  };
  for (const Variant variant : {Variant{false, 1}, Variant{true, 1}, Variant{false, 10}}) {
    torch::manual_seed(2);
    ForwardForwardOptions options = SmallOptions();
    options.hard_negatives = true;
    options.hard_negatives_from_softmax = variant.from_softmax;
    options.hard_negative_temperature = variant.temperature;
    ForwardForwardTrainer trainer(options, torch::kCPU);
    Train(trainer, /*epochs=*/6);
    EXPECT_GT(Accuracy(trainer.PredictGoodness(test_.x), test_.y), 0.8)
        << "hard negatives from " << (variant.from_softmax ? "softmax" : "goodness")
        << ", temperature " << variant.temperature;
  }
}

TEST_F(SyntheticTaskTest, BackpropBaselineLearns) {
  torch::manual_seed(2);
  BackpropMlpTrainer trainer(SmallOptions(), torch::kCPU);
  Train(trainer, /*epochs=*/3);
  EXPECT_GT(Accuracy(trainer.Predict(test_.x), test_.y), 0.8);
}

TEST_F(SyntheticTaskTest, SaveLoadRestoresModelAndOptimisers) {
  torch::manual_seed(3);
  ForwardForwardTrainer trained(SmallOptions(), torch::kCPU);
  Train(trained, /*epochs=*/1);
  std::stringstream buffer;
  {
    torch::serialize::OutputArchive archive;
    trained.Save(archive);
    archive.save_to(buffer);
  }
  torch::manual_seed(4);
  ForwardForwardTrainer restored(SmallOptions(), torch::kCPU);
  {
    torch::serialize::InputArchive archive;
    archive.load_from(buffer);
    restored.Load(archive);
  }
  EXPECT_TRUE(trained.PredictGoodness(test_.x).equal(restored.PredictGoodness(test_.x)));
  EXPECT_TRUE(trained.PredictSoftmax(test_.x).equal(restored.PredictSoftmax(test_.x)));

  // With the Adam moments restored, one more step lands on the same weights.
  const torch::Tensor x = train_.x.slice(0, 0, 50);
  const torch::Tensor y = train_.y.slice(0, 0, 50);
  torch::manual_seed(5);
  ASSERT_TRUE(trained.TrainStep(x, y).ok());
  torch::manual_seed(5);
  ASSERT_TRUE(restored.TrainStep(x, y).ok());
  for (int64_t i = 0; i < trained.net()->num_layers(); ++i) {
    EXPECT_TRUE(torch::allclose(trained.net()->layer(i)->weight, restored.net()->layer(i)->weight,
                                1e-6, 1e-7))
        << "layer " << i;
  }
}

TEST(ForwardForwardTest, ZeroLearningRateFreezesEveryLayerAndTheHead) {
  torch::manual_seed(0);
  ForwardForwardTrainer trainer(SmallOptions(), torch::kCPU);
  const torch::Tensor x = torch::rand({16, 200});
  const torch::Tensor y = torch::randint(0, 10, {16}, torch::kInt64);
  ASSERT_TRUE(
      trainer.TrainStep(x, y).ok());  // Non-zero Adam moments, which must not move anything either.
  const torch::Tensor before = trainer.LabelGoodness(x);
  const torch::Tensor softmax_before = trainer.PredictSoftmax(x);
  trainer.SetLearningRate(0);
  ASSERT_TRUE(trainer.TrainStep(x, y).ok());
  EXPECT_TRUE(trainer.LabelGoodness(x).equal(before));
  EXPECT_TRUE(trainer.PredictSoftmax(x).equal(softmax_before));
}

TEST(ForwardForwardTest, LoadRejectsOtherWidthsAndOtherModels) {
  torch::manual_seed(0);
  ForwardForwardTrainer small(SmallOptions(), torch::kCPU);
  std::stringstream buffer;
  {
    torch::serialize::OutputArchive archive;
    small.Save(archive);
    archive.save_to(buffer);
  }
  ForwardForwardOptions wider = SmallOptions();
  wider.layer_widths = {100, 120};
  ForwardForwardTrainer other(wider, torch::kCPU);
  torch::serialize::InputArchive archive;
  archive.load_from(buffer);
  EXPECT_THROW(other.Load(archive), c10::Error);
  BackpropMlpTrainer backprop(SmallOptions(), torch::kCPU);
  EXPECT_THROW(backprop.Load(archive), c10::Error);
}

TEST_F(SyntheticTaskTest, BackpropSaveLoadGivesIdenticalPredictions) {
  torch::manual_seed(3);
  BackpropMlpTrainer trained(SmallOptions(), torch::kCPU);
  Train(trained, /*epochs=*/1);
  std::stringstream buffer;
  {
    torch::serialize::OutputArchive archive;
    trained.Save(archive);
    archive.save_to(buffer);
  }
  torch::manual_seed(4);
  BackpropMlpTrainer restored(SmallOptions(), torch::kCPU);
  torch::serialize::InputArchive archive;
  archive.load_from(buffer);
  restored.Load(archive);
  EXPECT_TRUE(trained.Predict(test_.x).equal(restored.Predict(test_.x)));
}

TEST(AccuracyTest, IsFractionCorrect) {
  EXPECT_DOUBLE_EQ(Accuracy(torch::tensor({1, 2, 3, 4}, torch::kInt64),
                            torch::tensor({1, 0, 3, 0}, torch::kInt64)),
                   0.5);
  EXPECT_DOUBLE_EQ(Accuracy(torch::zeros({0}, torch::kInt64), torch::zeros({0}, torch::kInt64)),
                   0.0);
}

TEST(ForwardForwardTest, GradientSyncSeesEveryTrainedParameterAndItsFailureStopsTheStep) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::rand({16, 200});
  const torch::Tensor y = torch::randint(0, 10, {16}, torch::kInt64);
  ForwardForwardTrainer ff(SmallOptions(), torch::kCPU);
  BackpropMlpTrainer bp(SmallOptions(), torch::kCPU);
  testutil::GradientSyncProbe probe;
  ff.set_gradient_sync(probe.Sync());
  bp.set_gradient_sync(probe.Sync());
  ASSERT_TRUE(ff.TrainStep(x, y).ok());
  EXPECT_EQ(probe.calls, 2);  // the layers', then the head's
  ASSERT_TRUE(bp.TrainStep(x, y).ok());
  EXPECT_EQ(probe.calls, 3);
  EXPECT_TRUE(probe.gradients_ready);
  EXPECT_TRUE(probe.Saw(ff.parameters()));
  EXPECT_TRUE(probe.Saw(bp.parameters()));

  // A lost peer: the step fails and no weight moves.
  probe.result = absl::UnavailableError("peer gone");
  const std::vector<torch::Tensor> ff_before = testutil::Copies(ff.parameters());
  const std::vector<torch::Tensor> bp_before = testutil::Copies(bp.parameters());
  EXPECT_TRUE(absl::IsUnavailable(ff.TrainStep(x, y).status()));
  EXPECT_TRUE(absl::IsUnavailable(bp.TrainStep(x, y).status()));
  EXPECT_TRUE(testutil::Unchanged(ff.parameters(), ff_before));
  EXPECT_TRUE(testutil::Unchanged(bp.parameters(), bp_before));
}

}  // namespace
}  // namespace offsite
