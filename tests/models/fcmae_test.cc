#include "models/fcmae.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/convnext_v2.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// 3 stages, stem stride 2: total stride 8, so 32x32 images give a 4x4 grid.
ConvNextV2Config SmallEncoder() {
  ConvNextV2Config config;
  config.in_channels = 1;
  config.num_classes = 0;
  config.depths = {1, 1, 2};
  config.dims = {8, 16, 32};
  config.stem_stride = 2;
  return config;
}

FcmaeOptions SmallOptions() {
  FcmaeOptions options;
  options.decoder_dim = 16;
  return options;
}

void Randomize(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.3);
}

// Smooth random patterns: learnable from context, unlike noise.
torch::Tensor SmoothImages(int64_t n, int64_t channels, int64_t size) {
  const torch::Tensor grid = torch::linspace(0, 2 * M_PI, size);
  const torch::Tensor u = grid.reshape({1, 1, size, 1});
  const torch::Tensor v = grid.reshape({1, 1, 1, size});
  const torch::Tensor fu = torch::randint(1, 3, {n, channels, 1, 1}).to(torch::kFloat);
  const torch::Tensor fv = torch::randint(1, 3, {n, channels, 1, 1}).to(torch::kFloat);
  const torch::Tensor phase = torch::rand({n, channels, 1, 1}) * 2 * M_PI;
  return torch::sin(fu * u + phase) * torch::cos(fv * v);
}

TEST(MaskTest, CountFollowsThePapersRounding) {
  EXPECT_EQ(MaskedPatchCount(16, 0.6), 10);  // int(16 * 0.4) = 6 kept.
  EXPECT_EQ(MaskedPatchCount(49, 0.6), 30);  // int(19.6) = 19 kept.
  EXPECT_EQ(MaskedPatchCount(49, 0.75), 37);
}

TEST(MaskTest, MasksAnExactCountPerImage) {
  const torch::Tensor mask = RandomPatchMask(32, 7, 7, 0.6, torch::kCPU);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{32, 1, 7, 7}));
  EXPECT_TRUE(torch::equal(mask.sum({1, 2, 3}), torch::full({32}, 30.0f)));
  EXPECT_TRUE(torch::logical_or(mask == 0, mask == 1).all().item<bool>());
  // Different images get different masks.
  EXPECT_FALSE(torch::equal(mask[0], mask[1]));
}

TEST(MaskTest, IsDeterministicGivenTheTorchSeed) {
  torch::manual_seed(7);
  const torch::Tensor a = RandomPatchMask(4, 4, 4, 0.6, torch::kCPU);
  torch::manual_seed(7);
  const torch::Tensor b = RandomPatchMask(4, 4, 4, 0.6, torch::kCPU);
  torch::manual_seed(8);
  const torch::Tensor c = RandomPatchMask(4, 4, 4, 0.6, torch::kCPU);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
}

TEST(PatchifyTest, OrdersPixelsByRowColumnChannelAndInverts) {
  const torch::Tensor images = torch::arange(2 * 3 * 4 * 6, torch::kFloat).reshape({2, 3, 4, 6});
  const torch::Tensor patches = Patchify(images, 2);
  ASSERT_EQ(patches.sizes(), (std::vector<int64_t>{2, 6, 12}));
  // Patch 4 is grid row 1, column 1: pixel (row 2, col 2). Its second entry is
  // channel 1 of that pixel; its fourth is channel 0 of the pixel to the right.
  EXPECT_EQ(patches[0][4][0].item<float>(), images[0][0][2][2].item<float>());
  EXPECT_EQ(patches[0][4][1].item<float>(), images[0][1][2][2].item<float>());
  EXPECT_EQ(patches[0][4][3].item<float>(), images[0][0][2][3].item<float>());
  EXPECT_TRUE(torch::equal(Unpatchify(patches, 2, 3, 2, 3), images));
}

TEST(FcmaeOptionsTest, InvalidOptionsNameTheField) {
  struct Case {
    void (*edit)(FcmaeOptions&);
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](FcmaeOptions& o) { o.mask_ratio = 1.0; }, "mask_ratio"},
      {[](FcmaeOptions& o) { o.mask_ratio = 0.0; }, "mask_ratio"},
      {[](FcmaeOptions& o) { o.patch_size = 12; }, "patch_size"},  // Not a multiple of 8.
      {[](FcmaeOptions& o) { o.decoder_dim = 0; }, "decoder_dim"},
      {[](FcmaeOptions& o) { o.decoder_depth = -1; }, "decoder_depth"},
  };
  for (const Case& test_case : cases) {
    FcmaeOptions options = SmallOptions();
    test_case.edit(options);
    const absl::Status status = ValidateFcmaeOptions(SmallEncoder(), options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test_case.field;
    EXPECT_THAT(status.message(), HasSubstr(test_case.field));
    EXPECT_FALSE(MakeFcmae(SmallEncoder(), options).ok());
  }
  ConvNextV2Config bad_encoder = SmallEncoder();
  bad_encoder.dims.pop_back();
  EXPECT_THAT(ValidateFcmaeOptions(bad_encoder, SmallOptions()).message(), HasSubstr("dims"));
}

TEST(FcmaeTest, ValidatesImageSizes) {
  Fcmae fcmae(SmallEncoder(), SmallOptions());
  EXPECT_TRUE(fcmae->ValidateImageSize(32, 32).ok());
  EXPECT_TRUE(fcmae->ValidateImageSize(32, 48).ok());
  EXPECT_THAT(fcmae->ValidateImageSize(28, 28).message(), HasSubstr("28x28"));
  // One patch: ratio 0.6 masks it and leaves nothing visible.
  EXPECT_FALSE(fcmae->ValidateImageSize(8, 8).ok());
}

TEST(FcmaeTest, OutputsLossPredictionAndMask) {
  torch::manual_seed(0);
  Fcmae fcmae(SmallEncoder(), SmallOptions());
  EXPECT_EQ(fcmae->patch_size(), 8);
  EXPECT_FALSE(fcmae->encoder()->has_head());
  const FcmaeOutput out = fcmae->forward(torch::randn({3, 1, 32, 32}));
  EXPECT_EQ(out.loss.dim(), 0);
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  EXPECT_EQ(out.pred.sizes(), (std::vector<int64_t>{3, 16, 64}));
  EXPECT_EQ(out.mask.sizes(), (std::vector<int64_t>{3, 1, 4, 4}));
  EXPECT_TRUE(torch::equal(out.mask.sum({1, 2, 3}), torch::full({3}, 10.0f)));
  // Masking keeps the encoder's activations channels-last (see convnext_v2.h).
  EXPECT_TRUE(fcmae->Encode(torch::randn({3, 1, 32, 32}), out.mask)
                  .is_contiguous(torch::MemoryFormat::ChannelsLast));
}

// The leakage test the paper asks for: with masking inside the encoder, pixels
// inside masked patches cannot influence any visible cell of the encoder output.
class FcmaeLeakageTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(FcmaeLeakageTest, MaskedPixelsDoNotReachVisibleCells) {
  torch::manual_seed(3);
  FcmaeOptions options = SmallOptions();
  options.patch_size = GetParam();
  Fcmae fcmae(SmallEncoder(), options);
  Randomize(*fcmae);  // GRN, LN affine and biases all active.
  const torch::Tensor images = torch::randn({2, 1, 32, 32});
  const torch::Tensor mask = fcmae->RandomMask(images);
  const torch::Tensor pixel_mask = UpsampleMask(mask, 32, 32);
  const torch::Tensor changed = images + pixel_mask * torch::randn({2, 1, 32, 32}) * 5;
  const torch::Tensor visible = 1 - UpsampleMask(mask, 4, 4);

  const torch::Tensor before = fcmae->Encode(images, mask) * visible;
  const torch::Tensor after = fcmae->Encode(changed, mask) * visible;
  EXPECT_TRUE(torch::allclose(before, after, 1e-5, 1e-5))
      << "max change " << (before - after).abs().max().item<double>();
  EXPECT_GT(before.abs().sum().item<double>(), 0);

  // The same comparison with the encoder's masking left out does see the change,
  // so the check above is able to catch a leak.
  const torch::Tensor dense_before = fcmae->encoder()->ForwardFeatures(images) * visible;
  const torch::Tensor dense_after = fcmae->encoder()->ForwardFeatures(changed) * visible;
  EXPECT_FALSE(torch::allclose(dense_before, dense_after, 1e-3, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(PatchSizes, FcmaeLeakageTest, ::testing::Values(8, 16));

TEST(FcmaeMaskedConvAblationTest, ZeroesMaskedPixelsAndRunsDenseConvolutions) {
  torch::manual_seed(4);
  Fcmae masked(SmallEncoder(), SmallOptions());
  FcmaeOptions ablation_options = SmallOptions();
  ablation_options.masked_conv = false;
  Fcmae ablation(SmallEncoder(), ablation_options);
  Randomize(*masked);
  {
    torch::NoGradGuard no_grad;
    const auto source = masked->named_parameters();
    for (auto& item : ablation->named_parameters()) item.value().copy_(source[item.key()]);
  }
  const torch::Tensor images = torch::randn({2, 1, 32, 32});
  const torch::Tensor mask = masked->RandomMask(images);
  const torch::Tensor pixel_mask = UpsampleMask(mask, 32, 32);
  const torch::Tensor visible = 1 - UpsampleMask(mask, 4, 4);

  // The ablation's encoder sees the zeroed image, densely.
  const torch::Tensor ablated = ablation->Encode(images, mask);
  EXPECT_TRUE(torch::allclose(
      ablated, masked->encoder()->ForwardFeatures(images * (1 - pixel_mask)), 1e-5, 1e-5));
  // Dense convolutions spread the masked regions' features into visible cells,
  // so visible cells differ from the sparse emulation's.
  EXPECT_FALSE(
      torch::allclose(ablated * visible, masked->Encode(images, mask) * visible, 1e-3, 1e-3));
}

TEST(FcmaeLossTest, CountsMaskedPatchesOnly) {
  for (bool norm_pix_loss : {true, false}) {
    FcmaeOptions options = SmallOptions();
    options.norm_pix_loss = norm_pix_loss;
    Fcmae fcmae(SmallEncoder(), options);
    torch::manual_seed(0);
    const torch::Tensor images = torch::randn({2, 1, 32, 32});
    // A perfect prediction, so that any change to a masked target shows as a
    // clear rise from zero (a random prediction would hide it on average).
    torch::Tensor pred = Patchify(images, 8);
    if (norm_pix_loss) {
      pred = (pred - pred.mean(-1, true)) / (pred.var(-1, true, true) + 1e-6).sqrt();
    }
    const torch::Tensor mask = fcmae->RandomMask(images);
    const torch::Tensor pixel_mask = UpsampleMask(mask, 32, 32);
    const torch::Tensor noise = torch::randn({2, 1, 32, 32});
    const double loss = fcmae->Loss(images, pred, mask).item<double>();
    EXPECT_NEAR(loss, 0, 1e-4) << norm_pix_loss;
    EXPECT_NEAR(fcmae->Loss(images + (1 - pixel_mask) * noise, pred, mask).item<double>(), loss,
                1e-6)
        << norm_pix_loss;
    EXPECT_GT(fcmae->Loss(images + pixel_mask * noise, pred, mask).item<double>(), loss + 0.1)
        << norm_pix_loss;
  }
}

TEST(FcmaeLossTest, IsMeanSquaredErrorOverMaskedPatches) {
  FcmaeOptions options = SmallOptions();
  options.norm_pix_loss = false;
  Fcmae fcmae(SmallEncoder(), options);
  // Image constant per patch: patch k of image 0 holds value k.
  const torch::Tensor values = torch::arange(16, torch::kFloat).reshape({1, 1, 4, 4});
  const torch::Tensor images = UpsampleMask(values, 32, 32);
  torch::Tensor mask = torch::zeros({1, 1, 4, 4});
  mask[0][0][0][1] = 1;  // Patch 1.
  mask[0][0][2][3] = 1;  // Patch 11.
  const torch::Tensor pred = torch::zeros({1, 16, 64});
  EXPECT_NEAR(fcmae->Loss(images, pred, mask).item<double>(), (1.0 + 121.0) / 2, 1e-4);
}

TEST(FcmaeLossTest, NormalisesEachTargetPatch) {
  Fcmae fcmae(SmallEncoder(), SmallOptions());
  const torch::Tensor images = torch::randn({2, 1, 32, 32}) * 3 + 5;
  const torch::Tensor mask = fcmae->RandomMask(images);
  const torch::Tensor patches = Patchify(images, 8);
  const torch::Tensor normalised =
      (patches - patches.mean(-1, true)) / (patches.var(-1, true, true) + 1e-6).sqrt();
  EXPECT_NEAR(fcmae->Loss(images, normalised, mask).item<double>(), 0.0, 1e-8);
  // Predicting the raw pixels is far off in normalised units.
  EXPECT_GT(fcmae->Loss(images, patches, mask).item<double>(), 1.0);
  // Reconstruct undoes the normalisation with the input's own patch statistics.
  const FcmaeOutput perfect{torch::Tensor(), normalised, mask};
  EXPECT_TRUE(torch::allclose(fcmae->Reconstruct(images, perfect), images, 1e-4, 1e-4));
}

TEST(FcmaeTest, ShortTrainingReducesTheLoss) {
  torch::manual_seed(0);
  Fcmae fcmae(SmallEncoder(), SmallOptions());
  const torch::Tensor images = SmoothImages(16, 1, 32);
  // papers.md: on short schedules lr ~1e-3..3e-3 learns far faster than the
  // paper's 1.5e-4 * batch / 256.
  torch::optim::AdamW optimizer(
      fcmae->parameters(), torch::optim::AdamWOptions(2e-3).betas({0.9, 0.95}).weight_decay(0.05));
  std::vector<double> losses;
  for (int step = 0; step < 60; ++step) {
    optimizer.zero_grad();
    const FcmaeOutput out = fcmae->forward(images);
    out.loss.backward();
    optimizer.step();
    losses.push_back(out.loss.item<double>());
  }
  const double first = (losses[0] + losses[1] + losses[2] + losses[3] + losses[4]) / 5;
  const double last = (losses[55] + losses[56] + losses[57] + losses[58] + losses[59]) / 5;
  // Measured: about 0.98 -> 0.65.
  EXPECT_LT(last, 0.8 * first) << "first " << first << " last " << last;
}

TEST(ReconstructionGridTest, LaysOutInputMaskedAndReconstructionRows) {
  const torch::Tensor images = torch::full({3, 1, 4, 4}, 0.25);
  torch::Tensor mask = torch::zeros({3, 1, 2, 2});
  mask.select(2, 0).select(2, 0).fill_(1);  // Top-left 2x2 pixels masked.
  const torch::Tensor reconstruction = torch::full({3, 1, 4, 4}, 2.0);  // Clamped to 1.
  ReconstructionGridOptions options;
  options.max_images = 2;
  options.padding = 1;
  const torch::Tensor grid = ReconstructionGrid(images, mask, reconstruction, options);
  // 3 rows of 4 + 4 paddings; 2 columns of 4 + 3 paddings.
  ASSERT_EQ(grid.sizes(), (std::vector<int64_t>{16, 11, 1}));
  ASSERT_EQ(grid.scalar_type(), torch::kUInt8);
  auto at = [&](int64_t y, int64_t x) { return grid[y][x][0].item<int>(); };
  EXPECT_EQ(at(0, 0), 0);     // Padding.
  EXPECT_EQ(at(1, 1), 64);    // Input: round(0.25 * 255).
  EXPECT_EQ(at(6, 6), 128);   // Masked row, masked pixel: 0.5.
  EXPECT_EQ(at(9, 9), 64);    // Masked row, visible pixel.
  EXPECT_EQ(at(11, 1), 255);  // Reconstruction row.
  // With a normalisation to undo: x * 0.5 + 0.5.
  options.mean = {0.5};
  options.std = {0.5};
  EXPECT_EQ(ReconstructionGrid(images, mask, reconstruction, options)[1][1][0].item<int>(),
            159);  // round(0.625 * 255).
}

TEST(FcmaeTest, PretrainedEncoderLoadsIntoAClassifier) {
  Fcmae fcmae(SmallEncoder(), SmallOptions());
  Randomize(*fcmae);
  torch::serialize::OutputArchive out;
  ASSERT_TRUE(SaveConvNextV2(fcmae->encoder_config(), *fcmae->encoder(), out).ok());
  std::stringstream stream;
  out.save_to(stream);
  torch::serialize::InputArchive in;
  in.load_from(stream);

  ConvNextV2Config classifier_config = SmallEncoder();
  classifier_config.num_classes = 10;
  ConvNextV2 classifier(classifier_config);
  ASSERT_TRUE(LoadConvNextV2Backbone(classifier_config, *classifier, in).ok());
  const torch::Tensor images = torch::randn({2, 1, 32, 32});
  EXPECT_TRUE(torch::allclose(classifier->ForwardFeatures(images),
                              fcmae->encoder()->ForwardFeatures(images)));
}

}  // namespace
}  // namespace offsite
