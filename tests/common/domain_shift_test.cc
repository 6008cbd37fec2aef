#include "common/domain_shift.h"

#include <torch/torch.h>

#include <filesystem>
#include <vector>

#include "common/png_image.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

// Light squares of different sizes on black, like Fashion-MNIST items.
torch::Tensor Items(int64_t n) {
  torch::Tensor items = torch::zeros({n, 1, 28, 28});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t margin = 2 + i % 8;
    items[i][0].slice(0, margin, 28 - margin).slice(1, margin, 28 - margin).fill_(0.9);
  }
  return items;
}

TEST(DomainShiftTest, TargetRenderingIsDeterministicAndDiffersFromTheSource) {
  torch::Tensor source = PlaceItems(Items(8), 32, 0.6, 1.0, 3);
  DomainShiftOptions options;
  options.seed = 11;
  torch::Tensor target = RenderTargetDomain(source, options);
  ASSERT_EQ(target.sizes(), source.sizes());
  EXPECT_TRUE(torch::equal(target, RenderTargetDomain(source, options)));
  EXPECT_GE(target.min().item<float>(), 0.0f);
  EXPECT_LE(target.max().item<float>(), 1.0f);
  // Inverted contrast on a light, cluttered ground: far from the source.
  EXPECT_GT((target - source).abs().mean().item<double>(), 0.3);
  options.seed = 12;
  EXPECT_FALSE(torch::equal(target, RenderTargetDomain(source, options)));
  // The background is not flat: clutter and noise vary it.
  torch::Tensor background = target.masked_select(source == 0);
  EXPECT_GT(background.std().item<double>(), 0.05);
  // Image i depends only on (seed, i): rendering a suffix gives the same pixels.
  options.seed = 11;
  EXPECT_TRUE(torch::equal(target.slice(0, 5), RenderTargetDomain(source.slice(0, 5), options, 5)));
}

TEST(DomainShiftTest, KeepContrastAndNoClutterLeaveTheItemsLight) {
  torch::Tensor source = PlaceItems(Items(4), 32, 1.0, 1.0, 0);
  DomainShiftOptions options;
  options.invert = false;
  options.clutter = 0;
  options.noise = 0;
  options.blur = 0;
  torch::Tensor target = RenderTargetDomain(source, options);
  EXPECT_EQ(target.masked_select(source == 0).max().item<float>(), 0.0f);
  EXPECT_GT(target.masked_select(source > 0).min().item<float>(), 0.5f);
  options.noise = 2;
  EXPECT_NE(ValidateDomainShift(options).message().find("noise"), std::string::npos);
}

TEST(DomainShiftTest, ScenesAreDeterministicWithAClassMapOfTheirItems) {
  torch::Tensor items = Items(10);
  torch::Tensor labels = torch::arange(10, torch::kLong);
  SegmentationSceneOptions options;
  options.canvas_size = 40;
  options.min_scale = 0.4;
  options.max_scale = 0.7;
  options.seed = 5;
  SegmentationScenes a = GenerateSegmentationScenes(items, labels, 6, options).value();
  SegmentationScenes b = GenerateSegmentationScenes(items, labels, 6, options).value();
  ASSERT_EQ(a.images.sizes(), (std::vector<int64_t>{6, 1, 40, 40}));
  ASSERT_EQ(a.classes.sizes(), (std::vector<int64_t>{6, 40, 40}));
  EXPECT_TRUE(torch::equal(a.images, b.images));
  EXPECT_TRUE(torch::equal(a.classes, b.classes));
  // Items are ink above the threshold exactly where the class map says so.
  EXPECT_TRUE(torch::equal(a.classes > 0, a.images.squeeze(1) > options.ink_threshold));
  EXPECT_GE(a.classes.min().item<int64_t>(), 0);
  EXPECT_LE(a.classes.max().item<int64_t>(), 10);
  // Every scene shows at least one item.
  for (int64_t s = 0; s < 6; ++s) EXPECT_GT((a.classes[s] > 0).sum().item<int64_t>(), 0);
  options.seed = 6;
  EXPECT_FALSE(
      torch::equal(a.classes, GenerateSegmentationScenes(items, labels, 6, options)->classes));
  options.max_objects = 1;
  EXPECT_NE(
      GenerateSegmentationScenes(items, labels, 6, options).status().message().find("max_objects"),
      std::string::npos);
}

TEST(DomainShiftTest, FoldersOfPngsLoadAsImagesAndClassMaps) {
  testutil::TempDir tmp;
  namespace fs = std::filesystem;
  std::vector<uint8_t> bright(20 * 20, 200), dark(20 * 20, 10), mask(20 * 20, 0);
  for (int i = 0; i < 100; ++i) mask[i] = 2;
  for (const std::string& name : {"coat", "bag"}) fs::create_directories(tmp.File("cls/" + name));
  ASSERT_TRUE(WritePng(tmp.File("cls/coat/a.png"), bright.data(), 20, 20, 1).ok());
  ASSERT_TRUE(WritePng(tmp.File("cls/bag/b.png"), dark.data(), 20, 20, 1).ok());
  FolderImages cls = LoadClassificationFolder(tmp.File("cls"), 32, {}).value();
  EXPECT_EQ(cls.class_names, (std::vector<std::string>{"bag", "coat"}));
  ASSERT_EQ(cls.images.sizes(), (std::vector<int64_t>{2, 1, 32, 32}));
  EXPECT_TRUE(torch::equal(cls.labels, torch::tensor({0, 1}, torch::kLong)));
  EXPECT_NEAR(cls.images[1].mean().item<double>(), 200 / 255.0, 1e-3);
  EXPECT_FALSE(LoadClassificationFolder(tmp.File("cls"), 32, {"coat"}).ok());

  fs::create_directories(tmp.File("seg/images"));
  fs::create_directories(tmp.File("seg/masks"));
  ASSERT_TRUE(WritePng(tmp.File("seg/images/x.png"), bright.data(), 20, 20, 1).ok());
  ASSERT_TRUE(WritePng(tmp.File("seg/masks/x.png"), mask.data(), 20, 20, 1).ok());
  FolderImages seg = LoadSegmentationFolder(tmp.File("seg"), 40, 3).value();
  ASSERT_EQ(seg.labels.sizes(), (std::vector<int64_t>{1, 40, 40}));
  EXPECT_EQ(seg.labels.max().item<int64_t>(), 2);
  EXPECT_EQ((seg.labels == 2).sum().item<int64_t>(), 400);  // 5 rows of 20 -> 10 rows of 40
  EXPECT_NE(LoadSegmentationFolder(tmp.File("seg"), 40, 2).status().message().find("class 2"),
            std::string::npos);
  fs::remove(tmp.File("seg/masks/x.png"));
  EXPECT_NE(LoadSegmentationFolder(tmp.File("seg"), 40, 3).status().message().find("missing mask"),
            std::string::npos);
}

TEST(PngReadTest, ReadsWhatWritePngWrote) {
  testutil::TempDir tmp;
  std::vector<uint8_t> pixels = {0, 50, 100, 150, 200, 250};
  ASSERT_TRUE(WritePng(tmp.File("a.png"), pixels.data(), 3, 2, 1).ok());
  GrayImage image = ReadPngGray(tmp.File("a.png"), /*raw=*/true).value();
  EXPECT_EQ(image.width, 3);
  EXPECT_EQ(image.height, 2);
  EXPECT_EQ(image.pixels, pixels);
  std::vector<uint8_t> rgb(3 * 2 * 3, 100);
  ASSERT_TRUE(WritePng(tmp.File("rgb.png"), rgb.data(), 3, 2, 3).ok());
  EXPECT_EQ(ReadPngGray(tmp.File("rgb.png")).value().pixels.size(), 6u);
  EXPECT_FALSE(ReadPngGray(tmp.File("rgb.png"), /*raw=*/true).ok());
  EXPECT_TRUE(absl::IsNotFound(ReadPngGray(tmp.File("none.png")).status()));
}

}  // namespace
}  // namespace offsite
