#ifndef OFFSITE_COMMON_CHECKPOINT_H_
#define OFFSITE_COMMON_CHECKPOINT_H_

// Checkpoint and model files: LibTorch archives carrying a format name and
// version, written atomically (temp file + rename) so a kill mid-write leaves
// the previous checkpoint intact.

#include <torch/serialize/archive.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// Writes `archive` to `path` atomically, as it is (for archives that carry
// their own format tag, e.g. SaveConvNextV2's).
absl::Status WriteArchiveFile(torch::serialize::OutputArchive& archive, const std::string& path);
// Reads `path` into `archive`; NotFound / InvalidArgument naming the file.
absl::Status ReadArchiveFile(const std::string& path, torch::serialize::InputArchive* archive);

// Tags `archive` with (format, version) and writes it to `path` atomically.
absl::Status SaveArchive(torch::serialize::OutputArchive& archive, const std::string& format,
                         int64_t version, const std::string& path);

// Reads `path` into `archive`, checking it is `format` at `version`.
// NotFound when the file does not exist; InvalidArgument naming the file when
// it is not such an archive.
absl::Status LoadArchive(const std::string& path, const std::string& format, int64_t version,
                         torch::serialize::InputArchive* archive);

}  // namespace offsite

#endif  // OFFSITE_COMMON_CHECKPOINT_H_
