#include "common/png_image.h"

#include <png.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

struct DecodedPng {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;
};

// Reads back with libpng in the file's own format, so the test sees what was
// written rather than a conversion of it.
DecodedPng ReadPng(const std::string& path) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  DecodedPng decoded;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    ADD_FAILURE() << "reading " << path << ": " << image.message;
    return decoded;
  }
  decoded.width = static_cast<int>(image.width);
  decoded.height = static_cast<int>(image.height);
  decoded.channels = static_cast<int>(PNG_IMAGE_SAMPLE_CHANNELS(image.format));
  decoded.pixels.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, decoded.pixels.data(), 0, nullptr)) {
    ADD_FAILURE() << "decoding " << path << ": " << image.message;
  }
  return decoded;
}

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(WritePngTest, GrayscaleReadsBack) {
  const int width = 5;
  const int height = 3;
  std::vector<uint8_t> pixels(width * height);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(17 * i);
  const std::string path = TempPath("gray.png");
  ASSERT_TRUE(WritePng(path, pixels.data(), width, height, 1).ok());

  const DecodedPng png = ReadPng(path);
  EXPECT_EQ(png.width, width);
  EXPECT_EQ(png.height, height);
  EXPECT_EQ(png.channels, 1);
  EXPECT_EQ(png.pixels, pixels);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(WritePngTest, RgbReadsBack) {
  const int width = 4;
  const int height = 2;
  std::vector<uint8_t> pixels(width * height * 3, 0);
  // Pixel (row 1, column 2) is pure red; pixel (0, 3) is (10, 20, 30).
  pixels[(1 * width + 2) * 3 + 0] = 255;
  pixels[(0 * width + 3) * 3 + 0] = 10;
  pixels[(0 * width + 3) * 3 + 1] = 20;
  pixels[(0 * width + 3) * 3 + 2] = 30;
  const std::string path = TempPath("rgb.png");
  ASSERT_TRUE(WritePng(path, pixels.data(), width, height, 3).ok());

  const DecodedPng png = ReadPng(path);
  EXPECT_EQ(png.width, width);
  EXPECT_EQ(png.height, height);
  ASSERT_EQ(png.channels, 3);
  ASSERT_EQ(png.pixels.size(), pixels.size());
  EXPECT_EQ(png.pixels[(1 * width + 2) * 3 + 0], 255);
  EXPECT_EQ(png.pixels[(1 * width + 2) * 3 + 1], 0);
  EXPECT_EQ(png.pixels[(0 * width + 3) * 3 + 2], 30);
  EXPECT_EQ(png.pixels, pixels);
}

TEST(WritePngTest, OverwritesAnExistingFile) {
  const std::string path = TempPath("twice.png");
  const uint8_t first[] = {1, 2, 3, 4};
  const uint8_t second[] = {9};
  ASSERT_TRUE(WritePng(path, first, 2, 2, 1).ok());
  ASSERT_TRUE(WritePng(path, second, 1, 1, 1).ok());
  const DecodedPng png = ReadPng(path);
  EXPECT_EQ(png.width, 1);
  EXPECT_EQ(png.pixels, std::vector<uint8_t>{9});
}

TEST(WritePngTest, UnwritablePathIsAnErrorNamingTheFile) {
  const std::string path = TempPath("no/such/dir/out.png");
  const uint8_t pixel = 0;
  const absl::Status status = WritePng(path, &pixel, 1, 1, 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(WritePngTest, RejectsBadDimensions) {
  const uint8_t pixels[8] = {};
  const std::string path = TempPath("bad.png");
  EXPECT_EQ(WritePng(path, pixels, 2, 2, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WritePng(path, pixels, 0, 2, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WritePng(path, nullptr, 2, 2, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(WritePng(path, pixels, 2, 2, 4).message(), HasSubstr(path));
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace offsite
