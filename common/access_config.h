#ifndef OFFSITE_COMMON_ACCESS_CONFIG_H_
#define OFFSITE_COMMON_ACCESS_CONFIG_H_

// The server's access configuration: which client certificate common names may
// call it, and with which role. Stored as a text proto, e.g.
//
//   principals { name: "owner" role: OWNER }
//   principals { name: "alice" role: DATA_OWNER }

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "offsite/v1/config.pb.h"

namespace offsite {

// Parses the text-format offsite.v1.AccessConfig at `path`. Syntax errors read
// "PATH:LINE:COLUMN: message"; every principal must have a non-empty, unique
// name and a role other than ROLE_UNSPECIFIED (InvalidArgument naming the entry).
absl::StatusOr<v1::AccessConfig> LoadAccessConfig(const std::string& path);

// "owner" -> OWNER, "data-owner" -> DATA_OWNER, "worker" -> WORKER; anything
// else is InvalidArgument listing these.
absl::StatusOr<v1::Role> ParseRole(std::string_view name);

// Inverse of ParseRole(); "unspecified" for ROLE_UNSPECIFIED, "role(N)" for
// values this build does not know.
std::string RoleName(v1::Role role);

}  // namespace offsite

#endif  // OFFSITE_COMMON_ACCESS_CONFIG_H_
