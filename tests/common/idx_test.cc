#include "common/idx.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/types.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> IdxBytes(uint32_t magic, const std::vector<uint32_t>& dims,
                              const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes;
  auto put32 = [&bytes](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back((v >> shift) & 0xff);
  };
  put32(magic);
  for (uint32_t d : dims) put32(d);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("idx_test_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WritePlain(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return path;
  }

  std::string WriteGzip(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile file = gzopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr);
    EXPECT_EQ(gzwrite(file, bytes.data(), bytes.size()), static_cast<int>(bytes.size()));
    gzclose(file);
    return path;
  }

  std::filesystem::path dir_;
};

// Two 2x3 images with pixels 0..11, labels {7, 2}.
const std::vector<uint8_t> kPixels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255};
const std::vector<uint8_t> kImages = IdxBytes(0x00000803, {2, 2, 3}, kPixels);
const std::vector<uint8_t> kLabels = IdxBytes(0x00000801, {2}, {7, 2});

TEST_F(IdxTest, ReadsPlainImagesAndLabels) {
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(WritePlain("images", kImages));
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_EQ(images->dtype(), torch::kUInt8);
  EXPECT_EQ(images->sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(images->index({1, 0, 1}).item<int>(), 7);
  EXPECT_EQ(images->index({1, 1, 2}).item<int>(), 255);

  absl::StatusOr<torch::Tensor> labels = ReadIdxLabels(WritePlain("labels", kLabels));
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(labels->dtype(), torch::kInt64);
  EXPECT_TRUE(labels->equal(torch::tensor({7, 2}, torch::kInt64)));
}

TEST_F(IdxTest, ReadsGzippedFilesLikePlainOnes) {
  absl::StatusOr<torch::Tensor> plain = ReadIdxImages(WritePlain("images", kImages));
  absl::StatusOr<torch::Tensor> gzipped = ReadIdxImages(WriteGzip("images.gz", kImages));
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(gzipped.ok()) << gzipped.status();
  EXPECT_TRUE(plain->equal(*gzipped));
}

TEST_F(IdxTest, LoadDatasetScalesPixelsAndAddsChannel) {
  absl::StatusOr<LabeledImages> data =
      LoadIdxDataset(WriteGzip("images.gz", kImages), WriteGzip("labels.gz", kLabels), 0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->images.sizes(), (std::vector<int64_t>{2, 1, 2, 3}));
  EXPECT_EQ(data->images.dtype(), torch::kFloat32);
  EXPECT_FLOAT_EQ(data->images.index({1, 0, 1, 2}).item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(data->images.index({0, 0, 0, 1}).item<float>(), 1.0f / 255);
  EXPECT_TRUE(data->labels.equal(torch::tensor({7, 2}, torch::kInt64)));
}

TEST_F(IdxTest, LoadDatasetKeepsFirstLimitExamples) {
  absl::StatusOr<LabeledImages> data =
      LoadIdxDataset(WritePlain("images", kImages), WritePlain("labels", kLabels), 1);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->images.size(0), 1);
  EXPECT_TRUE(data->labels.equal(torch::tensor({7}, torch::kInt64)));
}

TEST_F(IdxTest, BadMagicNumberIsNamed) {
  const std::string path = WritePlain("bad_magic", IdxBytes(0x12345678, {2, 2, 3}, kPixels));
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(path);
  ASSERT_EQ(images.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(images.status().message(), HasSubstr(path));
  EXPECT_THAT(images.status().message(), HasSubstr("0x12345678"));
}

TEST_F(IdxTest, LabelFileIsNotAnImageFile) {
  const std::string path = WritePlain("labels", kLabels);
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(path);
  ASSERT_EQ(images.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(images.status().message(), HasSubstr("0x00000801"));
}

TEST_F(IdxTest, WrongDtypeCodeIsNamed) {
  const std::string path = WritePlain("floats", IdxBytes(0x00000d03, {2, 2, 3}, kPixels));
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(path);
  ASSERT_EQ(images.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(images.status().message(), HasSubstr("dtype code 0x0d"));
}

TEST_F(IdxTest, TruncatedDataReportsExpectedAndGotBytes) {
  std::vector<uint8_t> bytes = kImages;
  bytes.resize(bytes.size() - 5);
  for (const std::string& path : {WritePlain("short", bytes), WriteGzip("short.gz", bytes)}) {
    absl::StatusOr<torch::Tensor> images = ReadIdxImages(path);
    ASSERT_EQ(images.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(images.status().message(), HasSubstr(path));
    EXPECT_THAT(images.status().message(), HasSubstr("expected 12 bytes, got 7"));
  }
}

TEST_F(IdxTest, TruncatedHeaderIsAnError) {
  const std::string empty = WritePlain("empty", {});
  EXPECT_EQ(ReadIdxImages(empty).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> bytes(kImages.begin(), kImages.begin() + 9);
  EXPECT_EQ(ReadIdxImages(WritePlain("short_header", bytes)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IdxTest, HugeClaimedSizeIsAnErrorNotACrash) {
  const std::string path =
      WritePlain("huge", IdxBytes(0x00000803, {0xffffffff, 0xffffffff, 0xffffffff}, kPixels));
  EXPECT_EQ(ReadIdxImages(path).status().code(), absl::StatusCode::kInvalidArgument);
  const std::string big = WritePlain("big", IdxBytes(0x00000803, {60000, 1000, 1000}, kPixels));
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(big);
  ASSERT_EQ(images.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(images.status().message(), HasSubstr("truncated"));
}

TEST_F(IdxTest, CountMismatchNamesBothFiles) {
  const std::string images = WritePlain("images", kImages);
  const std::string labels = WritePlain("labels3", IdxBytes(0x00000801, {3}, {1, 2, 3}));
  absl::StatusOr<LabeledImages> data = LoadIdxDataset(images, labels, 0);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(data.status().message(), HasSubstr(images));
  EXPECT_THAT(data.status().message(), HasSubstr(labels));
}

TEST_F(IdxTest, MissingFileIsNotFound) {
  const std::string path = (dir_ / "missing.gz").string();
  absl::StatusOr<torch::Tensor> images = ReadIdxImages(path);
  ASSERT_EQ(images.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(images.status().message(), HasSubstr(path));
  EXPECT_EQ(LoadIdxDataset(WritePlain("images", kImages), path, 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(IdxTest, NegativeLimitIsInvalid) {
  EXPECT_EQ(LoadIdxDataset(WritePlain("images", kImages), WritePlain("labels", kLabels), -1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FashionMnistTest, TrainSetHas60000LabelledImages) {
  if (!std::filesystem::exists(FashionMnistFile("train-images-idx3-ubyte.gz"))) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  absl::StatusOr<LabeledImages> train =
      LoadIdxDataset(FashionMnistFile("train-images-idx3-ubyte.gz"),
                     FashionMnistFile("train-labels-idx1-ubyte.gz"), 0);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(train->labels.min().item<int64_t>(), 0);
  EXPECT_EQ(train->labels.max().item<int64_t>(), 9);
  EXPECT_LE(train->images.max().item<float>(), 1.0f);
  EXPECT_GE(train->images.min().item<float>(), 0.0f);
}

}  // namespace
}  // namespace offsite
