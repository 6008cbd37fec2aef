#include "client/cli_args.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace offsite {
namespace {
constexpr char kUsagePrefix[] = "usage: ";
}  // namespace

absl::Status UsageError(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(kUsagePrefix, message));
}

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
      return absl::StartsWith(status.message(), kUsagePrefix) ? kExitUsage : kExitRejected;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      return kExitRejected;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return kExitDenied;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitError;
  }
}

absl::StatusOr<CliArgs> CliArgs::Parse(const std::vector<std::string>& words,
                                       const std::vector<std::string>& switches) {
  CliArgs args;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word == "--") {
      args.positional_.insert(args.positional_.end(), words.begin() + i + 1, words.end());
      break;
    }
    if (!absl::StartsWith(word, "--") || word.size() == 2) {
      args.positional_.push_back(word);
      continue;
    }
    std::string name = word.substr(2);
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      args.flags_.emplace(name.substr(0, eq), name.substr(eq + 1));
    } else if (std::find(switches.begin(), switches.end(), name) != switches.end()) {
      args.flags_.emplace(name, "true");
    } else if (i + 1 < words.size()) {
      args.flags_.emplace(name, words[++i]);
    } else {
      return UsageError(absl::StrCat("--", name, " needs a value"));
    }
  }
  return args;
}

std::string CliArgs::Get(const std::string& flag, const std::string& fallback) const {
  auto range = flags_.equal_range(flag);
  if (range.first == range.second) return fallback;
  return std::prev(range.second)->second;
}

std::vector<std::string> CliArgs::GetAll(const std::string& flag) const {
  std::vector<std::string> values;
  auto range = flags_.equal_range(flag);
  for (auto it = range.first; it != range.second; ++it) values.push_back(it->second);
  return values;
}

std::vector<std::string> CliArgs::FlagNames() const {
  std::vector<std::string> names;
  for (const auto& [name, value] : flags_) {
    if (names.empty() || names.back() != name) names.push_back(name);
  }
  return names;
}

absl::Status CliArgs::CheckFlags(const std::vector<std::string>& known) const {
  for (const std::string& name : FlagNames()) {
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return UsageError(absl::StrCat("unknown flag --", name, "; valid here: --",
                                     absl::StrJoin(known, ", --")));
    }
  }
  return absl::OkStatus();
}

}  // namespace offsite
