#ifndef OFFSITE_SERVER_AUDIT_LOG_H_
#define OFFSITE_SERVER_AUDIT_LOG_H_

// One line per RPC: time, principal, method, resource, outcome. Appended to a
// file in the data directory and flushed per line, so a crash loses none.

#include <cstdio>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

class AuditLog {
 public:
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  void Record(const std::string& principal, const std::string& method,
              const std::string& resource, const absl::Status& outcome);

 private:
  explicit AuditLog(std::FILE* file) : file_(file) {}
  std::mutex mu_;
  std::FILE* file_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_AUDIT_LOG_H_
