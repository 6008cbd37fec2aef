#include "common/checkpoint.h"

#include <torch/torch.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace offsite {

absl::Status WriteArchiveFile(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string tmp = path + ".tmp";
  try {
    archive.save_to(tmp);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", e.what()));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::Status SaveArchive(torch::serialize::OutputArchive& archive, const std::string& format,
                         int64_t version, const std::string& path) {
  archive.write("offsite_format", c10::IValue(format));
  archive.write("offsite_format_version", c10::IValue(version));
  return WriteArchiveFile(archive, path);
}

absl::Status ReadArchiveFile(const std::string& path, torch::serialize::InputArchive* archive) {
  if (!FileExists(path)) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  try {
    archive->load_from(path);
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a LibTorch archive"));
  }
  return absl::OkStatus();
}

absl::Status LoadArchive(const std::string& path, const std::string& format, int64_t version,
                         torch::serialize::InputArchive* archive) {
  absl::Status read = ReadArchiveFile(path, archive);
  if (!read.ok()) return read;
  c10::IValue stored_format, stored_version;
  if (!archive->try_read("offsite_format", stored_format) || !stored_format.isString() ||
      !archive->try_read("offsite_format_version", stored_version) || !stored_version.isInt()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not an Offsite file"));
  }
  if (stored_format.toStringRef() != format) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds a ", stored_format.toStringRef(),
                                                   ", not a ", format));
  }
  if (stored_version.toInt() != version) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", format, " format version ",
                                                   stored_version.toInt(), ", this build reads ",
                                                   version));
  }
  return absl::OkStatus();
}

}  // namespace offsite
