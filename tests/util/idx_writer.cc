#include "tests/util/idx_writer.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace offsite::testutil {
namespace {

void AppendBigEndian32(std::string* out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

absl::Status WriteSplit(const std::string& images_path, const std::string& labels_path, int count,
                        std::mt19937* random) {
  constexpr int kSide = 28;
  std::uniform_int_distribution<int> noise(0, 40);
  std::vector<uint8_t> pixels(static_cast<size_t>(count) * kSide * kSide);
  std::vector<uint8_t> labels(count);
  for (int i = 0; i < count; ++i) {
    const int label = i % 10;
    labels[i] = static_cast<uint8_t>(label);
    uint8_t* image = pixels.data() + static_cast<size_t>(i) * kSide * kSide;
    for (int p = 0; p < kSide * kSide; ++p) image[p] = static_cast<uint8_t>(noise(*random));
    for (int row = 6 + 2 * label; row < 8 + 2 * label; ++row) {
      for (int col = 2; col < kSide - 2; ++col) image[row * kSide + col] = 255;
    }
  }
  absl::Status status = WriteIdxImages(images_path, count, kSide, kSide, pixels);
  if (!status.ok()) return status;
  return WriteIdxLabels(labels_path, labels);
}

}  // namespace

absl::Status WriteIdxImages(const std::string& path, int count, int rows, int cols,
                            const std::vector<uint8_t>& pixels) {
  if (pixels.size() != static_cast<size_t>(count) * rows * cols) {
    return absl::InvalidArgumentError(absl::StrCat("WriteIdxImages ", path, ": ", pixels.size(),
                                                   " pixels for ", count, " x ", rows, " x ",
                                                   cols));
  }
  std::string data;
  AppendBigEndian32(&data, 0x00000803);
  AppendBigEndian32(&data, count);
  AppendBigEndian32(&data, rows);
  AppendBigEndian32(&data, cols);
  data.append(pixels.begin(), pixels.end());
  return WriteFileAtomic(path, data);
}

absl::Status WriteIdxLabels(const std::string& path, const std::vector<uint8_t>& labels) {
  std::string data;
  AppendBigEndian32(&data, 0x00000801);
  AppendBigEndian32(&data, static_cast<uint32_t>(labels.size()));
  data.append(labels.begin(), labels.end());
  return WriteFileAtomic(path, data);
}

absl::StatusOr<IdxDataSet> WriteSyntheticIdxDataSet(const std::string& dir, int train_count,
                                                    int test_count, uint32_t seed) {
  IdxDataSet set;
  set.train_images = dir + "/synthetic-train-images-idx3-ubyte";
  set.train_labels = dir + "/synthetic-train-labels-idx1-ubyte";
  set.test_images = dir + "/synthetic-t10k-images-idx3-ubyte";
  set.test_labels = dir + "/synthetic-t10k-labels-idx1-ubyte";
  std::mt19937 random(seed);
  absl::Status status = MakeDirs(dir);
  if (status.ok()) status = WriteSplit(set.train_images, set.train_labels, train_count, &random);
  if (status.ok()) status = WriteSplit(set.test_images, set.test_labels, test_count, &random);
  if (!status.ok()) return status;
  return set;
}

}  // namespace offsite::testutil
