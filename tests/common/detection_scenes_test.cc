#include "common/detection_scenes.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "common/idx.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// 30 uint8 28x28 items: item i is a solid rectangle, rows 4..23 and columns
// 2 + i % 5 .. 21 + i % 5 minus a notch, labelled i % 10.
struct Items {
  torch::Tensor images;
  torch::Tensor labels;
};

Items MakeItems() {
  const int64_t n = 30;
  Items items;
  items.images = torch::zeros({n, 1, 28, 28}, torch::kUInt8);
  items.labels = torch::arange(n, torch::kLong).remainder(10);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c0 = 2 + i % 5;
    items.images[i][0].slice(0, 4, 24).slice(1, c0, c0 + 20).fill_(255);
  }
  return items;
}

// The tight extent of pixels above `threshold` inside `box` of a canvas (H, W).
Box InkExtentInside(const torch::Tensor& canvas, const Box& box, float threshold) {
  const auto pixels = canvas.accessor<float, 2>();
  Box extent{1e9f, 1e9f, -1e9f, -1e9f, box.label};
  for (int64_t r = static_cast<int64_t>(box.y0); r < static_cast<int64_t>(box.y1); ++r) {
    for (int64_t c = static_cast<int64_t>(box.x0); c < static_cast<int64_t>(box.x1); ++c) {
      if (pixels[r][c] > threshold) {
        extent.x0 = std::min(extent.x0, static_cast<float>(c));
        extent.y0 = std::min(extent.y0, static_cast<float>(r));
        extent.x1 = std::max(extent.x1, static_cast<float>(c + 1));
        extent.y1 = std::max(extent.y1, static_cast<float>(r + 1));
      }
    }
  }
  return extent;
}

bool SameScenes(const Scenes& a, const Scenes& b) {
  return torch::equal(a.images, b.images) && a.objects == b.objects && a.sources == b.sources;
}

TEST(DetectionScenesTest, SameSeedGivesIdenticalScenes) {
  const Items items = MakeItems();
  SceneOptions options;
  options.seed = 11;
  absl::StatusOr<Scenes> a = GenerateScenes(items.images, items.labels, 20, options);
  absl::StatusOr<Scenes> b = GenerateScenes(items.images, items.labels, 20, options);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(SameScenes(*a, *b));
  EXPECT_EQ(a->images.sizes(), torch::IntArrayRef({20, 1, 64, 64}));
  EXPECT_EQ(a->images.scalar_type(), torch::kFloat);
  EXPECT_GE(a->images.min().item<float>(), 0);
  EXPECT_LE(a->images.max().item<float>(), 1);
}

TEST(DetectionScenesTest, DifferentSeedsGiveDifferentScenes) {
  const Items items = MakeItems();
  SceneOptions options;
  options.seed = 1;
  absl::StatusOr<Scenes> a = GenerateScenes(items.images, items.labels, 10, options);
  options.seed = 2;
  absl::StatusOr<Scenes> b = GenerateScenes(items.images, items.labels, 10, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(torch::equal(a->images, b->images));
  EXPECT_NE(a->objects, b->objects);
}

TEST(DetectionScenesTest, LongerRunExtendsShorterOne) {
  const Items items = MakeItems();
  SceneOptions options;
  options.seed = 5;
  absl::StatusOr<Scenes> few = GenerateScenes(items.images, items.labels, 4, options);
  absl::StatusOr<Scenes> many = GenerateScenes(items.images, items.labels, 9, options);
  ASSERT_TRUE(few.ok() && many.ok());
  EXPECT_TRUE(torch::equal(few->images, many->images.slice(0, 0, 4)));
  for (int s = 0; s < 4; ++s) EXPECT_EQ(few->objects[s], many->objects[s]);
}

TEST(DetectionScenesTest, ObjectCountStaysInRange) {
  const Items items = MakeItems();
  SceneOptions options;
  options.min_objects = 2;
  options.max_objects = 3;
  absl::StatusOr<Scenes> scenes = GenerateScenes(items.images, items.labels, 60, options);
  ASSERT_TRUE(scenes.ok()) << scenes.status();
  std::set<size_t> counts;
  for (const std::vector<Box>& objects : scenes->objects) counts.insert(objects.size());
  EXPECT_EQ(counts, (std::set<size_t>{2, 3}));
}

TEST(DetectionScenesTest, BoxesLieInCanvasAndMatchPastedInk) {
  const Items items = MakeItems();
  SceneOptions options;
  options.max_iou = 0;  // Disjoint boxes, so each box's ink is its own item's.
  options.seed = 3;
  absl::StatusOr<Scenes> scenes = GenerateScenes(items.images, items.labels, 30, options);
  ASSERT_TRUE(scenes.ok()) << scenes.status();
  const int64_t max_side = 28;
  for (size_t s = 0; s < scenes->objects.size(); ++s) {
    const torch::Tensor canvas = scenes->images[s][0];
    torch::Tensor covered = torch::zeros({64, 64}, torch::kBool);
    for (size_t i = 0; i < scenes->objects[s].size(); ++i) {
      const Box& box = scenes->objects[s][i];
      SCOPED_TRACE(testing::Message() << "scene " << s << " object " << i);
      EXPECT_GE(box.x0, 0);
      EXPECT_GE(box.y0, 0);
      EXPECT_LE(box.x1, 64);
      EXPECT_LE(box.y1, 64);
      EXPECT_LT(box.x0, box.x1);
      EXPECT_LT(box.y0, box.y1);
      EXPECT_LE(box.x1 - box.x0, max_side);
      EXPECT_LE(box.y1 - box.y0, max_side);
      // The item comes from the split given, with its label.
      const int64_t source = scenes->sources[s][i];
      EXPECT_EQ(box.label, items.labels[source].item<int64_t>());
      // The box is the tight extent of the item's ink.
      const Box extent = InkExtentInside(canvas, box, options.ink_threshold);
      EXPECT_EQ(extent, box);
      covered.slice(0, static_cast<int64_t>(box.y0), static_cast<int64_t>(box.y1))
          .slice(1, static_cast<int64_t>(box.x0), static_cast<int64_t>(box.x1))
          .fill_(true);
    }
    // No ink outside the boxes.
    EXPECT_EQ(
        canvas.gt(options.ink_threshold).logical_and(covered.logical_not()).sum().item<int64_t>(),
        0)
        << "scene " << s;
  }
}

TEST(DetectionScenesTest, OverlapStaysUnderLimit) {
  const Items items = MakeItems();
  SceneOptions options;
  options.min_objects = 4;
  options.max_objects = 4;
  options.max_iou = 0.2;
  absl::StatusOr<Scenes> scenes = GenerateScenes(items.images, items.labels, 40, options);
  ASSERT_TRUE(scenes.ok()) << scenes.status();
  for (const std::vector<Box>& objects : scenes->objects) {
    for (size_t i = 0; i < objects.size(); ++i) {
      for (size_t j = i + 1; j < objects.size(); ++j) {
        EXPECT_LE(Iou(objects[i], objects[j]), 0.2 + 1e-9);
      }
    }
  }
}

TEST(DetectionScenesTest, FloatInputGivesSameScenesAsBytes) {
  const Items items = MakeItems();
  SceneOptions options;
  absl::StatusOr<Scenes> bytes = GenerateScenes(items.images, items.labels, 5, options);
  absl::StatusOr<Scenes> floats =
      GenerateScenes(items.images.to(torch::kFloat).div(255.0), items.labels, 5, options);
  ASSERT_TRUE(bytes.ok() && floats.ok());
  EXPECT_TRUE(SameScenes(*bytes, *floats));
}

TEST(DetectionScenesTest, RejectsBadOptionsAndInputs) {
  const Items items = MakeItems();
  SceneOptions options;
  options.min_objects = 3;
  options.max_objects = 2;
  absl::StatusOr<Scenes> scenes = GenerateScenes(items.images, items.labels, 1, options);
  EXPECT_EQ(scenes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(scenes.status().message(), HasSubstr("max_objects"));

  options = SceneOptions();
  options.canvas_size = 20;  // Smaller than a 28 px item at scale 1.
  scenes = GenerateScenes(items.images, items.labels, 1, options);
  EXPECT_EQ(scenes.status().code(), absl::StatusCode::kInvalidArgument);

  scenes = GenerateScenes(items.images, items.labels.slice(0, 0, 3), 1, SceneOptions());
  EXPECT_EQ(scenes.status().code(), absl::StatusCode::kInvalidArgument);

  options = SceneOptions();
  options.min_objects = 4;
  options.max_objects = 4;
  options.max_iou = 0;
  options.min_scale = 1.0;  // Four disjoint 20x20 ink boxes barely fit a 40x40 canvas.
  options.canvas_size = 40;
  options.max_placement_tries = 3;
  scenes = GenerateScenes(items.images, items.labels, 20, options);
  EXPECT_EQ(scenes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(scenes.status().message(), HasSubstr("loosen"));
}

TEST(DetectionScenesTest, BuildsScenesFromFashionMnist) {
  const std::string images_path = FashionMnistFile("t10k-images-idx3-ubyte.gz");
  if (!std::filesystem::exists(images_path)) GTEST_SKIP() << "no " << images_path;
  absl::StatusOr<LabeledImages> test =
      LoadIdxDataset(images_path, FashionMnistFile("t10k-labels-idx1-ubyte.gz"), 500);
  ASSERT_TRUE(test.ok()) << test.status();
  SceneOptions options;
  options.seed = 42;
  absl::StatusOr<Scenes> scenes = GenerateScenes(test->images, test->labels, 50, options);
  ASSERT_TRUE(scenes.ok()) << scenes.status();
  for (size_t s = 0; s < scenes->objects.size(); ++s) {
    ASSERT_GE(scenes->objects[s].size(), 1u);
    ASSERT_LE(scenes->objects[s].size(), 4u);
    for (const Box& box : scenes->objects[s]) {
      EXPECT_GE(box.label, 0);
      EXPECT_LT(box.label, 10);
      EXPECT_GE(box.x0, 0);
      EXPECT_LE(box.x1, 64);
      // Every box holds ink.
      const torch::Tensor inside =
          scenes->images[s][0]
              .slice(0, static_cast<int64_t>(box.y0), static_cast<int64_t>(box.y1))
              .slice(1, static_cast<int64_t>(box.x0), static_cast<int64_t>(box.x1));
      EXPECT_GT(inside.max().item<float>(), options.ink_threshold);
    }
  }
}

}  // namespace
}  // namespace offsite
