#ifndef OFFSITE_TESTS_UTIL_IDX_WRITER_H_
#define OFFSITE_TESTS_UTIL_IDX_WRITER_H_

// Writes IDX files (the MNIST format that common/idx.h reads) so tests can
// make small data sets of their own: uncompressed, unsigned-byte data. Also
// the same synthetic images as folders of PNGs.
//
// Example:
//   absl::StatusOr<IdxDataSet> data = WriteSyntheticIdxDataSet(tmp.path(), 300, 100, 7);
//   spec.set_train_images(data->train_images);  // ... and the other three files

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite::testutil {

// An image file: magic 0x00000803, dimensions {count, rows, cols}, then
// `pixels` (count * rows * cols bytes, row-major).
absl::Status WriteIdxImages(const std::string& path, int count, int rows, int cols,
                            const std::vector<uint8_t>& pixels);
// A label file: magic 0x00000801, dimension {labels.size()}, then the labels.
absl::Status WriteIdxLabels(const std::string& path, const std::vector<uint8_t>& labels);

struct IdxDataSet {
  std::string train_images;
  std::string train_labels;
  std::string test_images;
  std::string test_labels;
};

// A tiny, easily learnt 10-class set of 28 x 28 images in `dir`: class k is a
// bright bar across rows 6 + 2k and 7 + 2k (clear of the first row, where
// Forward-Forward writes the label), over faint noise drawn from `seed`.
absl::StatusOr<IdxDataSet> WriteSyntheticIdxDataSet(const std::string& dir, int train_count,
                                                    int test_count, uint32_t seed);

// The same images as PNG class folders, the layout a user's own images take:
// dir/train/class<k>/<i>.png and dir/test/class<k>/<i>.png for k below
// num_classes (at most 10).
absl::Status WriteSyntheticPngFolders(const std::string& dir, int num_classes, int train_per_class,
                                      int test_per_class, uint32_t seed);

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_IDX_WRITER_H_
