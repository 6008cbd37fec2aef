#include "common/image_data.h"

#include <torch/torch.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/idx_writer.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

v1::ImageData Folders(const std::string& root) {
  v1::ImageData data;
  data.set_train_folder(root + "/train");
  data.set_test_folder(root + "/test");
  return data;
}

TEST(ImageDataTest, LoadsPngClassFoldersLikeIdxFiles) {
  testutil::TempDir tmp;
  ASSERT_TRUE(testutil::WriteSyntheticPngFolders(tmp.path(), 3, 4, 2, 1).ok());
  const v1::ImageData data = Folders(tmp.path());
  ASSERT_TRUE(ValidateImageData(data, "data").ok());

  absl::StatusOr<ImageDataSet> set = LoadImageData(data, torch::kCPU);
  ASSERT_TRUE(set.ok()) << set.status();
  // Resized to 28 (unchanged here) and padded to 32, as Fashion-MNIST is.
  EXPECT_EQ(set->train_images.sizes(), (std::vector<int64_t>{12, 1, 32, 32}));
  EXPECT_EQ(set->test_images.sizes(), (std::vector<int64_t>{6, 1, 32, 32}));
  EXPECT_EQ(set->num_classes, 3);
  EXPECT_TRUE(torch::equal(set->test_labels, torch::tensor({0, 0, 1, 1, 2, 2}, torch::kLong)));
  // Class k's bright bar covers rows 6 + 2k and 7 + 2k of the 28 x 28 image,
  // 2 rows lower once padded.
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t k = set->test_labels[i].item<int64_t>();
    const int64_t brightest = set->test_images[i][0].mean(1).argmax().item<int64_t>();
    EXPECT_TRUE(brightest == 8 + 2 * k || brightest == 9 + 2 * k) << "image " << i;
  }

  v1::ImageData two = data;
  two.add_classes(2);
  two.add_classes(0);
  set = LoadImageData(two, torch::kCPU);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->num_classes, 2);
  EXPECT_TRUE(torch::equal(set->test_labels, torch::tensor({1, 1, 0, 0}, torch::kLong)));

  v1::ImageData resized = data;
  resized.set_image_side(16);
  resized.set_pad_to(-1);
  set = LoadImageData(resized, torch::kCPU);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->train_images.sizes(), (std::vector<int64_t>{12, 1, 16, 16}));
}

TEST(ImageDataTest, RefusesHalfFoldersMixedSourcesAndMismatchedClasses) {
  testutil::TempDir tmp;
  ASSERT_TRUE(testutil::WriteSyntheticPngFolders(tmp.path(), 2, 2, 1, 1).ok());
  auto error = [](const v1::ImageData& data) {
    const absl::Status status = ValidateImageData(data, "data");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  };
  v1::ImageData half;
  half.set_train_folder(tmp.path() + "/train");
  EXPECT_THAT(error(half), HasSubstr("data.test_folder is required"));

  v1::ImageData mixed = Folders(tmp.path());
  mixed.set_train_labels(tmp.path() + "/train");
  EXPECT_THAT(error(mixed), HasSubstr("data.train_labels: IDX files and PNG folders"));

  v1::ImageData subset = Folders(tmp.path());
  subset.set_train_subset(10);
  EXPECT_THAT(error(subset), HasSubstr("data.train_subset"));

  v1::ImageData missing = Folders(tmp.path() + "/nowhere");
  EXPECT_THAT(error(missing), HasSubstr("data.train_folder"));

  EXPECT_THAT(std::string(RequireIdxFiles(Folders(tmp.path()), "mic.data").message()),
              HasSubstr("mic.data.train_folder: this job reads IDX files only"));
  EXPECT_TRUE(RequireIdxFiles(v1::ImageData(), "mic.data").ok());

  // The test split must have the training split's classes.
  ASSERT_TRUE(testutil::WriteSyntheticPngFolders(tmp.path() + "/other", 3, 1, 1, 1).ok());
  v1::ImageData other = Folders(tmp.path());
  other.set_test_folder(tmp.path() + "/other/test");
  const absl::StatusOr<ImageDataSet> set = LoadImageData(other, torch::kCPU);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("other/test"));
}

}  // namespace
}  // namespace offsite
