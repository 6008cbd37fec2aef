#ifndef OFFSITE_COMMON_PROTO_UTIL_H_
#define OFFSITE_COMMON_PROTO_UTIL_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace offsite {

// InvalidArgument naming the first field (by path and number) that the
// receiver's schema does not know, e.g. a client built from a newer proto.
absl::Status CheckNoUnknownFields(const google::protobuf::Message& message,
                                  const std::string& path = "");

// Parses a text-format proto, naming the file and line of the first error.
absl::Status ParseTextProto(std::string_view text, const std::string& source,
                            google::protobuf::Message* message);
absl::Status ReadTextProtoFile(const std::string& path, google::protobuf::Message* message);
// `message` in text format, as ParseTextProto reads it back.
std::string TextProto(const google::protobuf::Message& message);

// The descriptor of a field option declared in proto/offsite/v1/options.proto,
// e.g. "offsite.v1.artifact_ref".
const google::protobuf::FieldDescriptor* FieldOption(const std::string& full_name);

// Every non-empty string in `message` (recursively) whose field carries the
// boolean option `option` (e.g. offsite.v1.server_path), as (field path, value).
std::vector<std::pair<std::string, std::string>> MarkedStrings(
    const google::protobuf::Message& message,
    const google::protobuf::FieldDescriptor* option, const std::string& path = "");

// PermissionDenied naming the field when a field marked (offsite.v1.server_path)
// names a path outside every directory in `roots` (symlinks resolved).
absl::Status CheckServerPaths(const google::protobuf::Message& message,
                              const std::vector<std::string>& roots);

// Range checks for spec validation; errors read "FIELD: VALUE is outside [LO, HI]".
absl::Status CheckRange(absl::string_view field, double value, double lo, double hi);

}  // namespace offsite

#endif  // OFFSITE_COMMON_PROTO_UTIL_H_
