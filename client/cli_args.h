#ifndef OFFSITE_CLIENT_CLI_ARGS_H_
#define OFFSITE_CLIENT_CLI_ARGS_H_

// The command line as words and flags: `offsite jobs submit KIND --set a=1
// --set b=2 --json`. Flags take a value (`--x v` or `--x=v`) unless listed as
// switches; a flag may repeat.

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// Exit codes the CLI returns, so scripts can tell failures apart.
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,           // anything else (internal, data loss, ...)
  kExitUsage = 2,           // bad command line
  kExitJobFailed = 3,       // the watched job ended FAILED
  kExitJobCancelled = 4,    // the watched job ended CANCELLED
  kExitNotFound = 5,        // no such job / artifact (or not yours)
  kExitDenied = 6,          // unauthenticated or permission denied
  kExitUnavailable = 7,     // server unreachable
  kExitRejected = 8,        // the server rejected the request (invalid / wrong state)
};

int ExitCodeFor(const absl::Status& status);

class CliArgs {
 public:
  // `switches` are flags that take no value.
  static absl::StatusOr<CliArgs> Parse(const std::vector<std::string>& words,
                                       const std::vector<std::string>& switches);

  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& flag) const { return flags_.count(flag) > 0; }
  // Last value given, or `fallback`.
  std::string Get(const std::string& flag, const std::string& fallback = "") const;
  std::vector<std::string> GetAll(const std::string& flag) const;
  // Every flag name given, to reject unknown ones.
  std::vector<std::string> FlagNames() const;
  // UsageError naming the first flag not in `known`.
  absl::Status CheckFlags(const std::vector<std::string>& known) const;

 private:
  std::vector<std::string> positional_;
  std::multimap<std::string, std::string> flags_;
};

// Usage errors are InvalidArgument with this prefix, mapped to kExitUsage.
absl::Status UsageError(const std::string& message);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_CLI_ARGS_H_
