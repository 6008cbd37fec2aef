#include "models/convnext_v2.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// A 3-stage grayscale network for 28x28 images: 28 -> 28 -> 14 -> 7.
ConvNextV2Config SmallConfig() {
  ConvNextV2Config config;
  config.in_channels = 1;
  config.num_classes = 10;
  config.depths = {1, 1, 2};
  config.dims = {8, 16, 32};
  config.stem_stride = 1;
  return config;
}

int64_t CountParameters(torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

std::vector<std::string> ParameterNames(torch::nn::Module& module) {
  std::vector<std::string> names;
  for (const auto& item : module.named_parameters()) names.push_back(item.key());
  return names;
}

// Gives every parameter a random value so that no path (GRN, LN affine, biases)
// is switched off by its initial value.
void Randomize(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.3);
}

TEST(GrnTest, MatchesHandComputation) {
  // One sample, 1x2 grid, 2 channels: channel 0 holds (3, 4), channel 1 (6, 8).
  const torch::Tensor x = torch::tensor({3.0f, 6.0f, 4.0f, 8.0f}).reshape({1, 1, 2, 2});
  Grn grn(2);
  {
    torch::NoGradGuard no_grad;
    grn->gamma.copy_(torch::tensor({0.5f, -1.0f}).reshape({1, 1, 1, 2}));
    grn->beta.copy_(torch::tensor({0.1f, 0.2f}).reshape({1, 1, 1, 2}));
  }
  // Gx = (5, 10), mean 7.5, so Nx = (5, 10) / (7.5 + 1e-6).
  const double n0 = 5.0 / (7.5 + 1e-6);
  const double n1 = 10.0 / (7.5 + 1e-6);
  const std::vector<double> expected = {
      0.5 * 3 * n0 + 0.1 + 3, -1.0 * 6 * n1 + 0.2 + 6,  // position 0
      0.5 * 4 * n0 + 0.1 + 4, -1.0 * 8 * n1 + 0.2 + 8,  // position 1
  };
  const torch::Tensor out = grn(x).flatten();
  ASSERT_EQ(out.numel(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(out[i].item<double>(), expected[i], 1e-5) << i;
}

TEST(GrnTest, ValuesAndGradientsMatchThePaperFormula) {
  Grn grn(6);
  Randomize(*grn);
  const torch::Tensor x = torch::randn({2, 3, 4, 6}, torch::requires_grad());
  const torch::Tensor upstream = torch::randn({2, 3, 4, 6});
  // The reference code's GRN, term by term.
  const torch::Tensor gx = torch::linalg_vector_norm(x, 2, {1, 2}, true);
  const torch::Tensor nx = gx / (gx.mean(-1, true) + 1e-6);
  const torch::Tensor expected = grn->gamma * (x * nx) + grn->beta + x;
  const auto want = torch::autograd::grad({expected}, {x, grn->gamma, grn->beta}, {upstream});
  const torch::Tensor out = grn(x);
  const auto got = torch::autograd::grad({out}, {x, grn->gamma, grn->beta}, {upstream});
  EXPECT_TRUE(torch::allclose(out, expected, 1e-5, 1e-5));
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-4, 1e-5)) << "gradient " << i;
  }
}

TEST(GrnTest, StartsAsIdentity) {
  Grn grn(6);
  const torch::Tensor x = torch::randn({2, 3, 3, 6});
  EXPECT_TRUE(torch::equal(grn(x), x));
  EXPECT_TRUE(torch::equal(grn->gamma, torch::zeros({1, 1, 1, 6})));
  EXPECT_TRUE(torch::equal(grn->beta, torch::zeros({1, 1, 1, 6})));
}

TEST(GrnTest, StatisticsIgnoreMaskedPositions) {
  Grn grn(4);
  Randomize(*grn);
  torch::Tensor visible = torch::ones({1, 3, 3, 1});
  visible[0][1][2][0] = 0;
  const torch::Tensor x = torch::randn({1, 3, 3, 4});
  const torch::Tensor y = x + (1 - visible) * 100;  // Changes the masked position only.
  EXPECT_TRUE(torch::allclose(grn(x, visible) * visible, grn(y, visible) * visible));
  EXPECT_FALSE(torch::allclose(grn(x) * visible, grn(y) * visible));
}

TEST(ChannelLayerNormTest, ChannelsFirstNormalisesEachPositionOverChannels) {
  ChannelLayerNorm norm(5, ChannelLayout::kChannelsFirst);
  Randomize(*norm);
  const torch::Tensor x = torch::randn({2, 5, 3, 4});
  // The paper code's formula: biased variance, eps 1e-6 inside the sqrt.
  const torch::Tensor mean = x.mean(1, true);
  const torch::Tensor var = (x - mean).square().mean(1, true);
  const torch::Tensor expected =
      norm->weight.reshape({1, 5, 1, 1}) * (x - mean) / (var + 1e-6).sqrt() +
      norm->bias.reshape({1, 5, 1, 1});
  EXPECT_TRUE(torch::allclose(norm(x), expected, 1e-5, 1e-5));
}

TEST(ChannelLayerNormTest, ChannelsLastNormalisesTheLastDimension) {
  ChannelLayerNorm norm(5, ChannelLayout::kChannelsLast);
  const torch::Tensor x = torch::randn({2, 3, 4, 5});
  const torch::Tensor mean = x.mean(-1, true);
  const torch::Tensor var = (x - mean).square().mean(-1, true);
  EXPECT_TRUE(torch::allclose(norm(x), (x - mean) / (var + 1e-6).sqrt(), 1e-5, 1e-5));
}

TEST(DropPathTest, DropsWholeSamplesAndRescalesSurvivors) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::ones({64, 2, 3, 3});
  const torch::Tensor y = DropPath(x, 0.25, /*training=*/true);
  const torch::Tensor per_sample = y.flatten(1);
  int64_t dropped = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const double v = per_sample[i][0].item<double>();
    EXPECT_TRUE(torch::equal(per_sample[i], torch::full({18}, v)));
    if (v == 0) {
      ++dropped;
    } else {
      EXPECT_NEAR(v, 1 / 0.75, 1e-6);
    }
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, 64);
  EXPECT_TRUE(torch::equal(DropPath(x, 0.25, /*training=*/false), x));
}

TEST(ConvNextV2BlockTest, PreservesShape) {
  ConvNextV2Block block(16, 0.0, /*use_grn=*/true);
  const torch::Tensor x = torch::randn({2, 16, 7, 5});
  EXPECT_EQ(block(x).sizes(), x.sizes());
}

TEST(ConvNextV2BlockTest, HasTheV2LayersAndNoLayerScale) {
  ConvNextV2Block block(16, 0.0, /*use_grn=*/true);
  EXPECT_THAT(ParameterNames(*block),
              ::testing::ElementsAre("dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias",
                                     "pwconv1.weight", "pwconv1.bias", "grn.gamma", "grn.beta",
                                     "pwconv2.weight", "pwconv2.bias"));
  EXPECT_EQ(CountParameters(*block), 8 * 16 * 16 + 65 * 16);
  ConvNextV2Block no_grn(16, 0.0, /*use_grn=*/false);
  EXPECT_EQ(CountParameters(*no_grn), 8 * 16 * 16 + 57 * 16);
}

TEST(ConvNextV2BlockTest, MaskedPositionsDoNotReachVisibleOutputs) {
  ConvNextV2Block block(8, 0.0, /*use_grn=*/true);
  Randomize(*block);
  torch::Tensor visible = torch::ones({1, 1, 6, 6});
  visible.slice(2, 0, 3).slice(3, 0, 3).zero_();
  const torch::Tensor x = torch::randn({1, 8, 6, 6});
  const torch::Tensor y = x + (1 - visible) * torch::randn({1, 8, 6, 6}) * 10;
  EXPECT_TRUE(
      torch::allclose(block(x, visible) * visible, block(y, visible) * visible, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(block(x) * visible, block(y) * visible, 1e-3, 1e-3));
}

TEST(ConvNextV2ConfigTest, PaperSizesByName) {
  struct Size {
    const char* name;
    std::vector<int64_t> depths;
    int64_t first_dim;
  };
  const std::vector<Size> sizes = {
      {"atto", {2, 2, 6, 2}, 40},    {"femto", {2, 2, 6, 2}, 48},  {"pico", {2, 2, 6, 2}, 64},
      {"nano", {2, 2, 8, 2}, 80},    {"tiny", {3, 3, 9, 3}, 96},   {"base", {3, 3, 27, 3}, 128},
      {"large", {3, 3, 27, 3}, 192}, {"huge", {3, 3, 27, 3}, 352},
  };
  for (const Size& size : sizes) {
    const absl::StatusOr<ConvNextV2Config> config = ConvNextV2ConfigByName(size.name);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->depths, size.depths) << size.name;
    const int64_t d = size.first_dim;
    EXPECT_EQ(config->dims, (std::vector<int64_t>{d, 2 * d, 4 * d, 8 * d})) << size.name;
    EXPECT_EQ(config->in_channels, 3);
    EXPECT_EQ(config->num_classes, 1000);
    EXPECT_EQ(ConvNextV2TotalStride(*config), 32);
    EXPECT_TRUE(ValidateConfig(*config).ok());
  }
}

TEST(ConvNextV2ConfigTest, UnknownNameIsNotFound) {
  const absl::StatusOr<ConvNextV2Config> config = ConvNextV2ConfigByName("gigantic");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("gigantic"));
}

TEST(ConvNextV2ConfigTest, InvalidConfigsNameTheField) {
  struct Case {
    void (*edit)(ConvNextV2Config&);
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](ConvNextV2Config& c) { c.in_channels = 0; }, "in_channels"},
      {[](ConvNextV2Config& c) { c.num_classes = -1; }, "num_classes"},
      {[](ConvNextV2Config& c) { c.depths.clear(); }, "depths"},
      {[](ConvNextV2Config& c) { c.dims.push_back(64); }, "dims"},
      {[](ConvNextV2Config& c) { c.depths[1] = 0; }, "depths[1]"},
      {[](ConvNextV2Config& c) { c.dims[2] = 0; }, "dims[2]"},
      {[](ConvNextV2Config& c) { c.stem_stride = 0; }, "stem_stride"},
      {[](ConvNextV2Config& c) { c.drop_path = 1.0; }, "drop_path"},
  };
  for (const Case& test_case : cases) {
    ConvNextV2Config config = SmallConfig();
    test_case.edit(config);
    const absl::Status status = ValidateConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test_case.field;
    EXPECT_THAT(status.message(), HasSubstr(test_case.field));
    EXPECT_FALSE(MakeConvNextV2(config).ok());
  }
}

TEST(ConvNextV2ParameterCountTest, PaperSizesMatchTheTableWithinOnePercent) {
  const std::vector<std::pair<const char*, double>> table = {
      {"atto", 3.7e6},  {"femto", 5.2e6}, {"pico", 9.1e6},  {"nano", 15.6e6},
      {"tiny", 28.6e6}, {"base", 89e6},   {"large", 198e6}, {"huge", 660e6},
  };
  for (const auto& [name, paper] : table) {
    const ConvNextV2Config config = ConvNextV2ConfigByName(name).value();
    const double count = static_cast<double>(ConvNextV2ParameterCount(config));
    EXPECT_NEAR(count / paper, 1.0, 0.01) << name << ": " << count;
  }
}

// The formula stands in for building Large and Huge (198M and 660M parameters);
// here it is checked against real modules of every shape it has to cover.
TEST(ConvNextV2ParameterCountTest, FormulaMatchesBuiltModules) {
  std::vector<ConvNextV2Config> configs;
  for (const char* name : {"atto", "femto", "pico", "nano", "tiny"}) {
    configs.push_back(ConvNextV2ConfigByName(name).value());
  }
  configs.push_back(SmallConfig());
  ConvNextV2Config no_grn_no_head = SmallConfig();
  no_grn_no_head.use_grn = false;
  no_grn_no_head.num_classes = 0;
  no_grn_no_head.stem_stride = 2;
  configs.push_back(no_grn_no_head);
  for (const ConvNextV2Config& config : configs) {
    ConvNextV2 model(config);
    EXPECT_EQ(CountParameters(*model), ConvNextV2ParameterCount(config))
        << "dims[0] " << config.dims[0];
  }
}

TEST(ConvNextV2Test, SmallGrayscaleImagesRunForwardAndBackward) {
  torch::manual_seed(0);
  ConvNextV2Config config = SmallConfig();
  config.drop_path = 0.1;
  ConvNextV2 model(config);
  model->train();
  const torch::Tensor images = torch::randn({4, 1, 28, 28});
  EXPECT_EQ(model->ForwardFeatures(images).sizes(), (std::vector<int64_t>{4, 32, 7, 7}));
  const torch::Tensor logits = model->forward(images);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{4, 10}));
  torch::nn::functional::cross_entropy(logits, torch::tensor({0, 1, 2, 3})).backward();
  for (const auto& item : model->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::isfinite(item.value().grad()).all().item<bool>()) << item.key();
  }
  // GRN starts as the identity but learns: its parameters get gradients.
  EXPECT_GT(model->named_parameters()["blocks.0.grn.gamma"].grad().abs().sum().item<double>(), 0);
}

TEST(ConvNextV2Test, StemStrideTwoGivesAFourByFourGridOn32x32) {
  ConvNextV2Config config = SmallConfig();
  config.stem_stride = 2;
  ConvNextV2 model(config);
  EXPECT_EQ(ConvNextV2TotalStride(config), 8);
  EXPECT_EQ(model->ForwardFeatures(torch::randn({2, 1, 32, 32})).sizes(),
            (std::vector<int64_t>{2, 32, 4, 4}));
}

TEST(ConvNextV2Test, IsAFlatSequenceOfBlocksWithStageIndices) {
  ConvNextV2 model(SmallConfig());
  ASSERT_EQ(model->num_stages(), 3);
  ASSERT_EQ(model->num_blocks(), 4);
  EXPECT_EQ(model->block_stage(0), 0);
  EXPECT_EQ(model->block_stage(1), 1);
  EXPECT_EQ(model->block_stage(2), 2);
  EXPECT_EQ(model->block_stage(3), 2);
  EXPECT_TRUE(model->has_head());
  const auto names = ParameterNames(*model);
  EXPECT_THAT(names, ::testing::Contains("downsample_layers.0.0.weight"));  // Stem conv.
  EXPECT_THAT(names, ::testing::Contains("downsample_layers.2.1.weight"));  // Into stage 2.
  EXPECT_THAT(names, ::testing::Contains("blocks.3.grn.gamma"));
  EXPECT_THAT(names, ::testing::Contains("head.weight"));
  EXPECT_EQ(model->block(3)->forward(torch::randn({1, 32, 7, 7})).sizes(),
            (std::vector<int64_t>{1, 32, 7, 7}));
}

TEST(ConvNextV2Test, DropPathRatesRiseLinearlyToTheConfiguredRate) {
  ConvNextV2Config config = SmallConfig();
  config.drop_path = 0.3;
  ConvNextV2 model(config);
  EXPECT_DOUBLE_EQ(model->block(0)->drop_path(), 0.0);
  EXPECT_DOUBLE_EQ(model->block(1)->drop_path(), 0.1);
  EXPECT_DOUBLE_EQ(model->block(3)->drop_path(), 0.3);
  model->eval();
  const torch::Tensor images = torch::randn({2, 1, 28, 28});
  EXPECT_TRUE(torch::equal(model->forward(images), model->forward(images)));
}

TEST(ConvNextV2Test, InitialisesLikeThePaper) {
  torch::manual_seed(0);
  ConvNextV2 model(ConvNextV2ConfigByName("atto").value());
  const auto params = model->named_parameters();
  const torch::Tensor w = params["blocks.5.pwconv1.weight"];
  EXPECT_NEAR(w.std().item<double>(), 0.02, 0.001);
  EXPECT_TRUE(torch::equal(params["blocks.5.pwconv1.bias"], torch::zeros({4 * 160})));
  EXPECT_TRUE(torch::equal(params["downsample_layers.0.1.weight"], torch::ones({40})));
  EXPECT_TRUE(torch::equal(params["blocks.5.grn.gamma"], torch::zeros({1, 1, 1, 640})));
}

// The layout choice the header documents: activations stay NHWC throughout.
TEST(ConvNextV2Test, KeepsActivationsChannelsLast) {
  ConvNextV2 model(SmallConfig());
  const torch::Tensor features = model->ForwardFeatures(torch::randn({2, 1, 28, 28}));
  EXPECT_TRUE(features.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(model->named_parameters()["blocks.0.dwconv.weight"].is_contiguous(
      torch::MemoryFormat::ChannelsLast));
}

TEST(UpsampleMaskTest, RepeatsEachCell) {
  const torch::Tensor mask = torch::tensor({1.0f, 0.0f, 0.0f, 1.0f}).reshape({1, 1, 2, 2});
  const torch::Tensor up = UpsampleMask(mask, 4, 6);
  ASSERT_EQ(up.sizes(), (std::vector<int64_t>{1, 1, 4, 6}));
  const torch::Tensor expected = torch::tensor({1, 1, 1, 0, 0, 0,  //
                                                1, 1, 1, 0, 0, 0,  //
                                                0, 0, 0, 1, 1, 1,  //
                                                0, 0, 0, 1, 1, 1},
                                               torch::kFloat)
                                     .reshape({1, 1, 4, 6});
  EXPECT_TRUE(torch::equal(up, expected));
}

// Round trip through bytes, as a file would.
torch::serialize::InputArchive Reopen(torch::serialize::OutputArchive& out) {
  std::stringstream stream;
  out.save_to(stream);
  torch::serialize::InputArchive in;
  in.load_from(stream);
  return in;
}

torch::serialize::InputArchive Saved(const ConvNextV2Config& config, torch::nn::Module& model) {
  torch::serialize::OutputArchive out;
  EXPECT_TRUE(SaveConvNextV2(config, model, out).ok());
  return Reopen(out);
}

TEST(ConvNextV2CheckpointTest, RoundTripRestoresEveryTensor) {
  torch::manual_seed(1);
  ConvNextV2 source(SmallConfig());
  Randomize(*source);
  torch::serialize::InputArchive archive = Saved(SmallConfig(), *source);
  ConvNextV2 target(SmallConfig());
  ASSERT_TRUE(LoadConvNextV2(SmallConfig(), *target, archive).ok());
  const auto expected = source->named_parameters();
  for (const auto& item : target->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), expected[item.key()])) << item.key();
  }
  const torch::Tensor images = torch::randn({2, 1, 28, 28});
  EXPECT_TRUE(torch::allclose(source->forward(images), target->forward(images)));
}

TEST(ConvNextV2CheckpointTest, LoadsOnlyIntoTheSavedConfig) {
  ConvNextV2 source(SmallConfig());
  torch::serialize::InputArchive archive = Saved(SmallConfig(), *source);
  ConvNextV2Config other = SmallConfig();
  other.dims = {8, 16, 48};
  ConvNextV2 target(other);
  const absl::Status status = LoadConvNextV2(other, *target, archive);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("dims is 8,16,32 in the checkpoint but 8,16,48"));

  other = SmallConfig();
  other.use_grn = false;
  ConvNextV2 no_grn(other);
  EXPECT_THAT(LoadConvNextV2(other, *no_grn, archive).message(), HasSubstr("use_grn"));
}

TEST(ConvNextV2CheckpointTest, DropPathIsATrainingSettingNotCompared) {
  ConvNextV2 source(SmallConfig());
  torch::serialize::InputArchive archive = Saved(SmallConfig(), *source);
  ConvNextV2Config with_drop_path = SmallConfig();
  with_drop_path.drop_path = 0.2;
  ConvNextV2 target(with_drop_path);
  EXPECT_TRUE(LoadConvNextV2(with_drop_path, *target, archive).ok());
}

TEST(ConvNextV2CheckpointTest, TensorMismatchesNameTheTensorAndLeaveTheModelUntouched) {
  ConvNextV2 source(SmallConfig());
  source->register_parameter("extra", torch::zeros({3}));
  torch::serialize::InputArchive archive = Saved(SmallConfig(), *source);

  ConvNextV2 plain(SmallConfig());
  EXPECT_THAT(LoadConvNextV2(SmallConfig(), *plain, archive).message(),
              HasSubstr("checkpoint tensor 'extra' has no counterpart"));

  ConvNextV2 wrong_shape(SmallConfig());
  wrong_shape->register_parameter("extra", torch::zeros({4}));
  const torch::Tensor before = wrong_shape->named_parameters()["head.weight"].clone();
  const absl::Status status = LoadConvNextV2(SmallConfig(), *wrong_shape, archive);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("tensor 'extra' has shape [3] in the checkpoint but [4] in the model"));
  EXPECT_TRUE(torch::equal(wrong_shape->named_parameters()["head.weight"], before));

  ConvNextV2 saved_plain(SmallConfig());
  torch::serialize::InputArchive plain_archive = Saved(SmallConfig(), *saved_plain);
  ConvNextV2 more(SmallConfig());
  more->register_parameter("extra", torch::zeros({3}));
  EXPECT_THAT(LoadConvNextV2(SmallConfig(), *more, plain_archive).message(),
              HasSubstr("tensor 'extra' of the model is missing from the checkpoint"));
}

TEST(ConvNextV2CheckpointTest, RejectsOtherArchivesAndVersions) {
  ConvNextV2 model(SmallConfig());
  torch::serialize::OutputArchive empty;
  empty.write("something", c10::IValue(int64_t{1}));
  torch::serialize::InputArchive not_ours = Reopen(empty);
  EXPECT_THAT(LoadConvNextV2(SmallConfig(), *model, not_ours).message(),
              HasSubstr("not a ConvNeXt V2 checkpoint"));

  torch::serialize::OutputArchive future;
  future.write("offsite_format", c10::IValue(std::string("convnext_v2")));
  future.write("format_version", c10::IValue(kConvNextV2FormatVersion + 1));
  torch::serialize::InputArchive newer = Reopen(future);
  EXPECT_THAT(LoadConvNextV2(SmallConfig(), *model, newer).message(),
              HasSubstr("format version 2"));
}

TEST(ConvNextV2CheckpointTest, BackboneLoadsIntoANetworkWithAnotherHead) {
  ConvNextV2Config encoder_config = SmallConfig();
  encoder_config.num_classes = 0;
  ConvNextV2 encoder(encoder_config);
  Randomize(*encoder);
  torch::serialize::InputArchive archive = Saved(encoder_config, *encoder);

  ConvNextV2Config classifier_config = SmallConfig();
  classifier_config.num_classes = 5;
  ConvNextV2 classifier(classifier_config);
  const torch::Tensor head_before = classifier->named_parameters()["head.weight"].clone();
  EXPECT_FALSE(LoadConvNextV2(classifier_config, *classifier, archive).ok());
  ASSERT_TRUE(LoadConvNextV2Backbone(classifier_config, *classifier, archive).ok());
  const torch::Tensor images = torch::randn({2, 1, 28, 28});
  EXPECT_TRUE(
      torch::allclose(encoder->ForwardFeatures(images), classifier->ForwardFeatures(images)));
  EXPECT_TRUE(torch::equal(classifier->named_parameters()["head.weight"], head_before));
}

}  // namespace
}  // namespace offsite
