#include "models/mic.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "models/optimizer.h"
#include "tests/util/gradient_sync_probe.h"

namespace offsite {
namespace {

torch::Generator Generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

MicNetConfig TinyConfig(MicTask task) {
  MicNetConfig config;
  config.task = task;
  config.backbone.in_channels = 1;
  config.backbone.num_classes = task == MicTask::kSegmentation ? 4 : 3;
  config.backbone.depths = {1, 1};
  config.backbone.dims = {8, 16};
  config.backbone.stem_stride = 2;
  config.decoder_dim = 8;
  return config;
}

std::map<std::string, torch::Tensor> Snapshot(torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& item : module.named_parameters())
    tensors[item.key()] = item.value().detach().clone();
  return tensors;
}

TEST(BlockMaskTest, DropsTheRatioInExpectation) {
  for (double ratio : {0.3, 0.7}) {
    torch::Tensor mask = BlockMask(256, 32, 32, 4, ratio, Generator(1));
    ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{256, 1, 32, 32}));
    // 256 * 64 independent cells: the dropped fraction's std is about 0.004.
    EXPECT_NEAR(1 - mask.mean().item<double>(), ratio, 0.02) << ratio;
  }
  EXPECT_EQ(BlockMask(4, 16, 16, 4, 0.0, Generator(1)).min().item<float>(), 1.0f);
}

TEST(BlockMaskTest, BlocksAreAlignedSquaresEvenAtCutOffEdges) {
  // 18 is not a multiple of 4: the last row and column of cells are 2 px wide.
  torch::Tensor mask = BlockMask(8, 18, 18, 4, 0.5, Generator(3));
  ASSERT_EQ(mask.size(2), 18);
  auto m = mask.accessor<float, 4>();
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t r = 0; r < 18; ++r) {
      for (int64_t c = 0; c < 18; ++c) {
        ASSERT_EQ(m[i][0][r][c], m[i][0][r / 4 * 4][c / 4 * 4]) << i << " " << r << " " << c;
      }
    }
  }
  // Both values occur, and only 0 and 1.
  EXPECT_TRUE(torch::logical_or(mask == 0, mask == 1).all().item<bool>());
  EXPECT_GT(mask.sum().item<double>(), 0);
  EXPECT_LT(mask.sum().item<double>(), mask.numel());
}

TEST(BlockMaskTest, IsDeterminedByTheGeneratorSeed) {
  EXPECT_TRUE(torch::equal(BlockMask(4, 32, 32, 2, 0.7, Generator(5)),
                           BlockMask(4, 32, 32, 2, 0.7, Generator(5))));
  EXPECT_FALSE(torch::equal(BlockMask(4, 32, 32, 2, 0.7, Generator(5)),
                            BlockMask(4, 32, 32, 2, 0.7, Generator(6))));
}

TEST(EmaTest, AlphaFollowsThePaperSchedule) {
  EXPECT_DOUBLE_EQ(EmaAlpha(0, 0.999), 0.0);
  EXPECT_DOUBLE_EQ(EmaAlpha(1, 0.999), 0.5);
  EXPECT_DOUBLE_EQ(EmaAlpha(9, 0.999), 0.9);
  EXPECT_DOUBLE_EQ(EmaAlpha(9, 0.8), 0.8);
  EXPECT_DOUBLE_EQ(EmaAlpha(100000, 0.999), 0.999);
}

TEST(EmaTest, UpdateMixesTeacherAndStudentParameters) {
  torch::manual_seed(0);
  torch::nn::Linear teacher(3, 2), student(3, 2);
  const torch::Tensor t0 = teacher->weight.detach().clone(), s0 = student->weight.detach().clone();
  EmaUpdate(*teacher, *student, /*step=*/3, /*alpha=*/0.999);  // a = 0.75
  EXPECT_TRUE(torch::allclose(teacher->weight, 0.75 * t0 + 0.25 * s0));
  EmaUpdate(*teacher, *student, /*step=*/0, /*alpha=*/0.999);  // a = 0: a copy
  EXPECT_TRUE(torch::equal(teacher->weight, student->weight));
}

TEST(QualityWeightTest, IsTheConfidentShare) {
  // Classification: per sample, 1 when the max probability exceeds tau.
  torch::Tensor p = torch::tensor({{0.98f, 0.01f, 0.01f}, {0.5f, 0.3f, 0.2f}});
  EXPECT_TRUE(torch::equal(QualityWeight(p, 0.968), torch::tensor({1.0f, 0.0f})));
  // Segmentation: per image, the fraction of confident pixels (here 3 of 4, and 0 of 4).
  torch::Tensor confident = torch::tensor({0.99f, 0.01f}).view({2, 1, 1});
  torch::Tensor unsure = torch::tensor({0.6f, 0.4f}).view({2, 1, 1});
  torch::Tensor image0 = torch::cat({confident.expand({2, 1, 3}), unsure}, 2).view({2, 2, 2});
  torch::Tensor image1 = unsure.expand({2, 2, 2});
  torch::Tensor q = QualityWeight(torch::stack({image0, image1}), 0.968);
  EXPECT_TRUE(torch::allclose(q, torch::tensor({0.75f, 0.0f})));
}

TEST(MicAugmentTest, IsDeterministicAndOffWhenItsProbabilitiesAreZero) {
  torch::Tensor images = torch::randn({6, 1, 16, 16});
  MicOptions options;
  EXPECT_TRUE(torch::equal(MicAugment(images, options, Generator(2)),
                           MicAugment(images, options, Generator(2))));
  EXPECT_FALSE(torch::allclose(MicAugment(images, options, Generator(2)), images));
  options.jitter_probability = 0;
  options.blur_probability = 0;
  EXPECT_TRUE(torch::allclose(MicAugment(images, options, Generator(2)), images));
}

TEST(MicNetTest, SegmentationLogitsHaveTheInputSize) {
  MicNet net = MakeMicNet(TinyConfig(MicTask::kSegmentation)).value();
  EXPECT_EQ(net->forward(torch::randn({2, 1, 20, 20})).sizes(),
            (std::vector<int64_t>{2, 4, 20, 20}));
  MicNet classifier = MakeMicNet(TinyConfig(MicTask::kClassification)).value();
  EXPECT_EQ(classifier->forward(torch::randn({2, 1, 16, 16})).sizes(),
            (std::vector<int64_t>{2, 3}));
  MicNetConfig bad = TinyConfig(MicTask::kSegmentation);
  bad.backbone.num_classes = 1;
  EXPECT_NE(MakeMicNet(bad).status().message().find("num_classes"), std::string::npos);
}

TEST(MicNetTest, SavedModelLoadsIntoTheSameConfigOnly) {
  MicNet net = MakeMicNet(TinyConfig(MicTask::kSegmentation)).value();
  torch::serialize::OutputArchive out;
  ASSERT_TRUE(SaveMicNet(net, out).ok());
  std::ostringstream bytes;
  out.save_to(bytes);
  MicNet copy = MakeMicNet(TinyConfig(MicTask::kSegmentation)).value();
  torch::serialize::InputArchive in;
  std::istringstream stream(bytes.str());
  in.load_from(stream);
  ASSERT_TRUE(LoadMicNet(copy, in).ok());
  torch::Tensor x = torch::randn({1, 1, 16, 16});
  net->eval();
  copy->eval();
  EXPECT_TRUE(torch::allclose(net->forward(x), copy->forward(x)));
  MicNetConfig other = TinyConfig(MicTask::kSegmentation);
  other.decoder_dim = 4;
  MicNet different = MakeMicNet(other).value();
  std::istringstream again(bytes.str());
  torch::serialize::InputArchive in2;
  in2.load_from(again);
  EXPECT_FALSE(LoadMicNet(different, in2).ok());
}

class MicStepTest : public ::testing::TestWithParam<MicTask> {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    student_ = MakeMicNet(TinyConfig(GetParam())).value();
    teacher_ = MakeMicNet(TinyConfig(GetParam())).value();
    InitTeacher(*teacher_, *student_);
    optimizer_ = MakeAdamW(*student_, 1e-2, 0.01, 0.999, true);
    const bool segmentation = GetParam() == MicTask::kSegmentation;
    batch_.source_images = torch::randn({4, 1, 16, 16});
    batch_.source_labels = segmentation ? torch::randint(4, {4, 16, 16}, torch::kLong)
                                        : torch::randint(3, {4}, torch::kLong);
    batch_.target_images = torch::randn({4, 1, 16, 16});
    options_.task = GetParam();
    options_.tau = 0.0;  // every pseudo-label counts, so the target terms are non-zero
  }

  MicNet student_{nullptr}, teacher_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  MicBatch batch_;
  MicOptions options_;
};

TEST_P(MicStepTest, TeacherGetsNoGradientOnlyTheEmaOfTheStudent) {
  // Step 2 with alpha 0.999: a = 2/3. Train one step first so teacher != student.
  ASSERT_TRUE(
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 1, options_, Generator(1)).ok());
  auto teacher_before = Snapshot(*teacher_);
  auto student_before = Snapshot(*student_);
  MicStepStats stats =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 2, options_, Generator(2)).value();
  EXPECT_GT(stats.source_loss, 0);
  EXPECT_GT(stats.pseudo_label_loss, 0);
  EXPECT_GT(stats.mic_loss, 0);
  EXPECT_DOUBLE_EQ(stats.ema_alpha, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(stats.quality, 1.0);
  for (const auto& item : teacher_->named_parameters()) {
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
    const torch::Tensor expected =
        2.0 / 3.0 * teacher_before[item.key()] + 1.0 / 3.0 * student_before[item.key()];
    EXPECT_TRUE(torch::allclose(item.value(), expected, 1e-5, 1e-6)) << item.key();
  }
  // The student learned.
  bool changed = false;
  for (const auto& item : student_->named_parameters()) {
    changed |= !torch::equal(item.value(), student_before[item.key()]);
  }
  EXPECT_TRUE(changed);
}

TEST_P(MicStepTest, MethodsAndAblationsSwitchTheirTerms) {
  options_.method = MicMethod::kSourceOnly;
  MicStepStats source_only =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 5, options_, Generator(1)).value();
  EXPECT_EQ(source_only.pseudo_label_loss, 0);
  EXPECT_EQ(source_only.mic_loss, 0);
  options_.method = MicMethod::kSelfTraining;
  MicStepStats self_training =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 5, options_, Generator(1)).value();
  EXPECT_GT(self_training.pseudo_label_loss, 0);
  EXPECT_EQ(self_training.mic_loss, 0);
  // no_ema: the student labels itself, and the teacher stays as it was after the EMA above.
  options_.method = MicMethod::kMic;
  options_.no_ema = true;
  auto teacher_after_ema = Snapshot(*teacher_);
  MicStepStats no_ema =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 6, options_, Generator(1)).value();
  EXPECT_GT(no_ema.mic_loss, 0);
  for (const auto& item : teacher_->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), teacher_after_ema[item.key()])) << item.key();
  }
  // A threshold no probability reaches: zero quality, zero target terms, unless
  // the quality weight is switched off.
  options_.no_ema = false;
  options_.tau = 1.0;
  MicStepStats unsure =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 7, options_, Generator(1)).value();
  EXPECT_EQ(unsure.quality, 0);
  EXPECT_EQ(unsure.mic_loss, 0);
  options_.no_quality_weight = true;
  MicStepStats unweighted =
      MicTrainingStep(student_, teacher_, *optimizer_, batch_, 8, options_, Generator(1)).value();
  EXPECT_EQ(unweighted.quality, 1);
  EXPECT_GT(unweighted.mic_loss, 0);
}

INSTANTIATE_TEST_SUITE_P(Tasks, MicStepTest,
                         ::testing::Values(MicTask::kClassification, MicTask::kSegmentation));

TEST_P(MicStepTest, GradientSyncSeesTheStudentAfterBackwardAndItsFailureStopsTheStep) {
  testutil::GradientSyncProbe probe;
  ASSERT_TRUE(MicTrainingStep(student_, teacher_, *optimizer_, batch_, 1, options_, Generator(1),
                              probe.Sync())
                  .ok());
  EXPECT_EQ(probe.calls, 1);
  EXPECT_TRUE(probe.gradients_ready);
  EXPECT_TRUE(probe.Saw(student_->parameters()));
  EXPECT_FALSE(probe.Saw(teacher_->parameters()));

  probe.result = absl::UnavailableError("peer gone");
  const std::vector<torch::Tensor> before = testutil::Copies(student_->parameters());
  EXPECT_TRUE(absl::IsUnavailable(MicTrainingStep(student_, teacher_, *optimizer_, batch_, 2,
                                                  options_, Generator(2), probe.Sync())
                                      .status()));
  EXPECT_TRUE(testutil::Unchanged(student_->parameters(), before));
}

TEST(EvaluateMicTest, PerfectPredictionsScoreOneAndAbsentClassesAreNaN) {
  // An untrained model scored against its own predictions, then against shifted ones.
  torch::manual_seed(0);
  MicNet net = MakeMicNet(TinyConfig(MicTask::kSegmentation)).value();
  torch::Tensor images = torch::randn({3, 1, 16, 16});
  net->eval();
  torch::Tensor predictions;
  {
    torch::NoGradGuard no_grad;
    predictions = net->forward(images).argmax(1);
  }
  MicEvaluation eval = EvaluateMic(net, images, predictions, 2);
  EXPECT_DOUBLE_EQ(eval.accuracy, 1.0);
  EXPECT_DOUBLE_EQ(eval.miou, 1.0);
  ASSERT_EQ(eval.class_iou.size(), 4u);
  for (int64_t k = 0; k < 4; ++k) {
    const bool occurs = predictions.eq(k).any().item<bool>();
    EXPECT_EQ(std::isnan(eval.class_iou[k]), !occurs) << k;
  }
  // All wrong: IoU 0 for every class that occurs.
  torch::Tensor wrong = (predictions + 1) % 4;
  EXPECT_DOUBLE_EQ(EvaluateMic(net, images, wrong).miou, 0.0);
}

}  // namespace
}  // namespace offsite
