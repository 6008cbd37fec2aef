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
    if (error.empty())
      error = absl::StrCat("line ", line + 1, " column ", column + 1, ": ", message);
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

const FieldDescriptor* FieldOption(const std::string& full_name) {
  // Linking options.pb.cc registers the extensions in the generated pool.
  (void)v1::server_path;
  return google::protobuf::DescriptorPool::generated_pool()->FindExtensionByName(full_name);
}

std::vector<std::pair<std::string, std::string>> MarkedStrings(const Message& message,
                                                               const FieldDescriptor* option,
                                                               const std::string& path) {
  std::vector<std::pair<std::string, std::string>> found;
  const Reflection* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    std::string name = path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    const int count = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      std::string item = field->is_repeated() ? absl::StrCat(name, "[", i, "]") : name;
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        const Message& child = field->is_repeated()
                                   ? reflection->GetRepeatedMessage(message, field, i)
                                   : reflection->GetMessage(message, field);
        for (auto& entry : MarkedStrings(child, option, item)) found.push_back(std::move(entry));
        continue;
      }
      if (field->cpp_type() != FieldDescriptor::CPPTYPE_STRING) continue;
      const google::protobuf::FieldOptions& options = field->options();
      const Reflection* option_reflection = options.GetReflection();
      if (!option_reflection->HasField(options, option) ||
          !option_reflection->GetBool(options, option)) {
        continue;
      }
      std::string value = field->is_repeated() ? reflection->GetRepeatedString(message, field, i)
                                               : reflection->GetString(message, field);
      if (!value.empty()) found.emplace_back(item, value);
    }
  }
  return found;
}

absl::Status CheckServerPaths(const Message& message, const std::vector<std::string>& roots) {
  for (const auto& [field, value] : MarkedStrings(message, FieldOption("offsite.v1.server_path"))) {
    if (!UnderRoots(value, roots)) {
      return absl::PermissionDeniedError(absl::StrCat(field, ": \"", value,
                                                      "\" is outside the server's data roots (",
                                                      absl::StrJoin(roots, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckNoUnknownFields(const Message& message, const std::string& path) {
  const Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  if (!unknown.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.empty() ? message.GetDescriptor()->name() : path, ": unknown field number ",
        unknown.field(0).number(), " (not in ", message.GetDescriptor()->full_name(), ")"));
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

std::string TextProto(const google::protobuf::Message& message) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(message, &text);
  return text;
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
