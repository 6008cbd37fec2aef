#include "common/access_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

// Keeps the first error: later ones are usually knock-on effects of it.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (error_.empty()) {
      // The parser counts from zero; editors count from one.
      error_ = absl::StrCat(line + 1, ":", column + 1, ": ", message);
    }
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

absl::StatusOr<v1::AccessConfig> LoadAccessConfig(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  v1::AccessConfig config;
  FirstErrorCollector errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", errors.error()));
  }
  absl::flat_hash_map<std::string, int> index_by_name;
  for (int i = 0; i < config.principals_size(); ++i) {
    const v1::Principal& principal = config.principals(i);
    if (principal.name().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": principals entry ", i + 1, " has an empty name"));
    }
    if (principal.role() == v1::ROLE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": principal \"", principal.name(),
                                                     "\" (entry ", i + 1, ") has no role"));
    }
    auto [it, inserted] = index_by_name.emplace(principal.name(), i);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": principal \"", principal.name(),
                                                     "\" is listed twice (entries ", it->second + 1,
                                                     " and ", i + 1, ")"));
    }
  }
  return config;
}

absl::StatusOr<v1::Role> ParseRole(std::string_view name) {
  if (name == "owner") return v1::OWNER;
  if (name == "data-owner") return v1::DATA_OWNER;
  if (name == "worker") return v1::WORKER;
  return absl::InvalidArgumentError(absl::StrCat("unknown role \"", std::string(name),
                                                 "\"; valid roles: owner, data-owner, worker"));
}

std::string RoleName(v1::Role role) {
  switch (role) {
    case v1::OWNER:
      return "owner";
    case v1::DATA_OWNER:
      return "data-owner";
    case v1::WORKER:
      return "worker";
    case v1::ROLE_UNSPECIFIED:
      return "unspecified";
    default:
      return absl::StrCat("role(", static_cast<int>(role), ")");
  }
}

}  // namespace offsite
