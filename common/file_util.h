#ifndef OFFSITE_COMMON_FILE_UTIL_H_
#define OFFSITE_COMMON_FILE_UTIL_H_

// Checked file I/O: every error names the file and carries strerror(errno),
// with the code chosen by absl::ErrnoToStatus (ENOENT -> NOT_FOUND, ...).

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// The whole content of `path`, e.g. NotFound("cannot open a.txt: No such file or directory").
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Replaces `path` with `data` so that readers see either the old or the new
// content, never a torn file, even across a crash: writes a temporary file in
// the same directory, fsyncs it, renames it over `path` and fsyncs the
// directory. `mode` is set exactly (the umask does not apply), so key files
// can be written with 0600 and are never readable by others, not even briefly.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode = 0644);

// Like `mkdir -p`: creates `path` and any missing parents with `mode` (less
// the umask). OK if `path` is already a directory.
absl::Status MakeDirs(const std::string& path, mode_t mode = 0755);

// `dir` + "/" + `name`, without doubling a "/" that ends `dir`; `name` alone
// when `dir` is empty.
std::string JoinPath(const std::string& dir, const std::string& name);

// True if `path` names anything (file, directory, ...) that stat() can see.
bool FileExists(const std::string& path);

// Size in bytes of the regular file `path`; FailedPrecondition for a directory
// or other non-regular file.
absl::StatusOr<int64_t> FileSize(const std::string& path);

}  // namespace offsite

#endif  // OFFSITE_COMMON_FILE_UTIL_H_
