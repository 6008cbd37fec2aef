#include "common/proto_util.h"

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/unknown_field_set.h"
#include "offsite/v1/options.pb.h"

namespace offsite {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (error.empty()) error = absl::StrCat("line ", line + 1, " column ", column + 1, ": ", message);
  }
  std::string error;
};

// True when `path`, made absolute and normal and with symlinks resolved as far
// as it exists, lies inside one of `roots`.
bool UnderRoots(const std::string& path, const std::vector<std::string>& roots) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::path resolved = fs::weakly_canonical(fs::absolute(path, error), error);
  if (error) return false;
  for (const std::string& root : roots) {
    fs::path base = fs::weakly_canonical(fs::absolute(root, error), error);
    if (error) continue;
    auto mismatch = std::mismatch(base.begin(), base.end(), resolved.begin(), resolved.end());
    if (mismatch.first == base.end()) return true;
  }
  return false;
}

}  // namespace

absl::Status CheckServerPaths(const Message& message, const std::vector<std::string>& roots,
                              const std::string& path) {
  const Reflection* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    std::string name = path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
          OFFSITE_RETURN_IF_ERROR(CheckServerPaths(reflection->GetRepeatedMessage(message, field, i),
                                                   roots, absl::StrCat(name, "[", i, "]")));
        }
      } else {
        OFFSITE_RETURN_IF_ERROR(CheckServerPaths(reflection->GetMessage(message, field), roots, name));
      }
      continue;
    }
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_STRING ||
        !field->options().GetExtension(v1::server_path)) {
      continue;
    }
    std::vector<std::string> values;
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        values.push_back(reflection->GetRepeatedString(message, field, i));
      }
    } else {
      values.push_back(reflection->GetString(message, field));
    }
    for (const std::string& value : values) {
      if (!value.empty() && !UnderRoots(value, roots)) {
        return absl::PermissionDeniedError(absl::StrCat(
            name, ": \"", value, "\" is outside the server's data roots (",
            absl::StrJoin(roots, ", "), ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckNoUnknownFields(const Message& message, const std::string& path) {
  const Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  if (!unknown.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.empty() ? message.GetDescriptor()->name() : path,
                     ": unknown field number ", unknown.field(0).number(), " (not in ",
                     message.GetDescriptor()->full_name(), ")"));
  }
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    std::string child = path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        OFFSITE_RETURN_IF_ERROR(CheckNoUnknownFields(
            reflection->GetRepeatedMessage(message, field, i), absl::StrCat(child, "[", i, "]")));
      }
    } else {
      OFFSITE_RETURN_IF_ERROR(CheckNoUnknownFields(reflection->GetMessage(message, field), child));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTextProto(std::string_view text, const std::string& source, Message* message) {
  google::protobuf::TextFormat::Parser parser;
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), message)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", errors.error));
  }
  return absl::OkStatus();
}

absl::Status ReadTextProtoFile(const std::string& path, Message* message) {
  OFFSITE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseTextProto(text, path, message);
}

absl::Status CheckRange(absl::string_view field, double value, double lo, double hi) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", value, " is outside [", lo, ", ", hi, "]"));
}

}  // namespace offsite
