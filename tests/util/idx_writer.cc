#include "tests/util/idx_writer.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/png_image.h"

namespace offsite::testutil {
namespace {

void AppendBigEndian32(std::string* out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

constexpr int kSide = 28;

// One kSide x kSide image of class `label` (0..9): see WriteSyntheticIdxDataSet.
void SyntheticImage(int label, std::mt19937* random, uint8_t* image) {
  std::uniform_int_distribution<int> noise(0, 40);
  for (int p = 0; p < kSide * kSide; ++p) image[p] = static_cast<uint8_t>(noise(*random));
  for (int row = 6 + 2 * label; row < 8 + 2 * label; ++row) {
    for (int col = 2; col < kSide - 2; ++col) image[row * kSide + col] = 255;
  }
}

absl::Status WriteSplit(const std::string& images_path, const std::string& labels_path, int count,
                        std::mt19937* random) {
  std::vector<uint8_t> pixels(static_cast<size_t>(count) * kSide * kSide);
  std::vector<uint8_t> labels(count);
  for (int i = 0; i < count; ++i) {
    labels[i] = static_cast<uint8_t>(i % 10);
    SyntheticImage(i % 10, random, pixels.data() + static_cast<size_t>(i) * kSide * kSide);
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

absl::Status WriteSyntheticPngFolders(const std::string& dir, int num_classes, int train_per_class,
                                      int test_per_class, uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<uint8_t> image(kSide * kSide);
  for (const auto& [split, count] :
       {std::pair<std::string, int>{"train", train_per_class}, {"test", test_per_class}}) {
    for (int label = 0; label < num_classes; ++label) {
      const std::string class_dir = absl::StrCat(dir, "/", split, "/class", label);
      if (absl::Status status = MakeDirs(class_dir); !status.ok()) return status;
      for (int i = 0; i < count; ++i) {
        SyntheticImage(label, &random, image.data());
        absl::Status status =
            WritePng(absl::StrCat(class_dir, "/", i, ".png"), image.data(), kSide, kSide, 1);
        if (!status.ok()) return status;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace offsite::testutil
