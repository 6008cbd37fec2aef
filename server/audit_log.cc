#include "server/audit_log.h"

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace offsite {

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "ae");
  if (!file) {
    return absl::UnavailableError(
        absl::StrCat("cannot open audit log ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(file));
}

AuditLog::~AuditLog() { std::fclose(file_); }

void AuditLog::Record(const std::string& principal, const std::string& method,
                      const std::string& resource, const absl::Status& outcome) {
  // Quote-free single line: principal names and messages may contain anything.
  auto clean = [](absl::string_view s) {
    return absl::StrReplaceAll(s, {{"\n", " "}, {"\"", "'"}});
  };
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      " principal=\"", clean(principal), "\" method=", method, " resource=\"", clean(resource),
      "\" outcome=", absl::StatusCodeToString(outcome.code()));
  if (!outcome.ok()) absl::StrAppend(&line, " message=\"", clean(outcome.message()), "\"");
  line += "\n";
  std::lock_guard<std::mutex> lock(mu_);
  std::fputs(line.c_str(), file_);
  std::fflush(file_);
}

}  // namespace offsite
