#include "client/spec_builder.h"

#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"

namespace offsite {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string FieldNames(const Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->field_count(); ++i) names.push_back(descriptor->field(i)->name());
  return absl::StrJoin(names, ", ");
}

absl::Status BadValue(const std::string& path, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(
      absl::StrCat("--set ", path, ": \"", value, "\" is not ", want));
}

template <typename Int>
absl::StatusOr<Int> ParseInt(const std::string& path, const std::string& text) {
  int64_t wide = 0;
  uint64_t uwide = 0;
  if constexpr (std::is_signed_v<Int>) {
    if (!absl::SimpleAtoi(text, &wide) || wide < std::numeric_limits<Int>::min() ||
        wide > std::numeric_limits<Int>::max()) {
      return BadValue(path, text,
                      absl::StrCat("an integer in [", std::numeric_limits<Int>::min(), ", ",
                                   std::numeric_limits<Int>::max(), "]"));
    }
    return static_cast<Int>(wide);
  } else {
    if (!absl::SimpleAtoi(text, &uwide) || uwide > std::numeric_limits<Int>::max()) {
      return BadValue(path, text,
                      absl::StrCat("an integer in [0, ", std::numeric_limits<Int>::max(), "]"));
    }
    return static_cast<Int>(uwide);
  }
}

// Sets (or, for repeated fields, appends) one scalar value.
absl::Status SetScalar(Message* message, const FieldDescriptor* field, const std::string& path,
                       const std::string& text) {
  const Reflection* r = message->GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      OFFSITE_ASSIGN_OR_RETURN(int32_t v, ParseInt<int32_t>(path, text));
      rep ? r->AddInt32(message, field, v) : r->SetInt32(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      OFFSITE_ASSIGN_OR_RETURN(int64_t v, ParseInt<int64_t>(path, text));
      rep ? r->AddInt64(message, field, v) : r->SetInt64(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      OFFSITE_ASSIGN_OR_RETURN(uint32_t v, ParseInt<uint32_t>(path, text));
      rep ? r->AddUInt32(message, field, v) : r->SetUInt32(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      OFFSITE_ASSIGN_OR_RETURN(uint64_t v, ParseInt<uint64_t>(path, text));
      rep ? r->AddUInt64(message, field, v) : r->SetUInt64(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double v = 0;
      if (!absl::SimpleAtod(text, &v) || !std::isfinite(v)) return BadValue(path, text, "a number");
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
        rep ? r->AddFloat(message, field, static_cast<float>(v))
            : r->SetFloat(message, field, static_cast<float>(v));
      } else {
        rep ? r->AddDouble(message, field, v) : r->SetDouble(message, field, v);
      }
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool v = false;
      if (!absl::SimpleAtob(text, &v)) return BadValue(path, text, "true or false");
      rep ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(message, field, text) : r->SetString(message, field, text);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumValueDescriptor* value = field->enum_type()->FindValueByName(text);
      if (value == nullptr) {
        std::vector<std::string> names;
        for (int i = 0; i < field->enum_type()->value_count(); ++i) {
          names.push_back(field->enum_type()->value(i)->name());
        }
        return BadValue(path, text, absl::StrCat("one of ", absl::StrJoin(names, ", ")));
      }
      rep ? r->AddEnum(message, field, value) : r->SetEnum(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--set ", path, ": is a message; set its fields with ", path, ".FIELD=VALUE"));
}

const FieldDescriptor* FindKindField(const std::string& kind) {
  std::string name = absl::StrReplaceAll(absl::AsciiStrToLower(kind), {{"-", "_"}});
  const FieldDescriptor* field = v1::JobSpec::descriptor()->FindFieldByName(name);
  if (field == nullptr || field->containing_oneof() == nullptr) return nullptr;
  return field;
}

}  // namespace

std::vector<std::string> JobKinds() {
  std::vector<std::string> kinds;
  const google::protobuf::OneofDescriptor* oneof =
      v1::JobSpec::descriptor()->FindOneofByName("kind");
  for (int i = 0; i < oneof->field_count(); ++i) kinds.push_back(oneof->field(i)->name());
  return kinds;
}

absl::Status SetField(Message* message, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set \"", assignment, "\": expected FIELD=VALUE"));
  }
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  Message* target = message;
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    const Descriptor* descriptor = target->GetDescriptor();
    const FieldDescriptor* field = descriptor->FindFieldByName(parts[i]);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": unknown field \"", parts[i],
                                                     "\" in ", descriptor->name(),
                                                     "; valid fields: ", FieldNames(descriptor)));
    }
    const bool last = i + 1 == parts.size();
    if (!last) {
      if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--set ", path, ": \"", parts[i], "\" has no sub-fields"));
      }
      target = target->GetReflection()->MutableMessage(target, field);
      continue;
    }
    if (field->is_repeated()) {
      target->GetReflection()->ClearField(target, field);
      if (value.empty()) return absl::OkStatus();
      for (absl::string_view item : absl::StrSplit(value, ',')) {
        OFFSITE_RETURN_IF_ERROR(
            SetScalar(target, field, path, std::string(absl::StripAsciiWhitespace(item))));
      }
      return absl::OkStatus();
    }
    return SetScalar(target, field, path, value);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JobSpec> BuildJobSpec(const std::string& kind, const std::string& spec_file,
                                         const std::vector<std::string>& assignments) {
  const FieldDescriptor* kind_field = FindKindField(kind);
  if (kind_field == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown job kind \"", kind, "\"; kinds: ", absl::StrJoin(JobKinds(), ", ")));
  }
  v1::JobSpec spec;
  Message* typed = spec.GetReflection()->MutableMessage(&spec, kind_field);
  if (!spec_file.empty()) OFFSITE_RETURN_IF_ERROR(ReadTextProtoFile(spec_file, typed));
  constexpr absl::string_view kResources = "resources.";
  for (const std::string& assignment : assignments) {
    // What the job asks of its workers is not part of the kind's spec:
    // --set resources.workers=2 sets JobSpec.resources.
    if (absl::StartsWith(assignment, kResources)) {
      absl::Status set = SetField(spec.mutable_resources(), assignment.substr(kResources.size()));
      if (!set.ok()) return absl::InvalidArgumentError(absl::StrCat("resources.", set.message()));
      continue;
    }
    OFFSITE_RETURN_IF_ERROR(SetField(typed, assignment));
  }
  return spec;
}

}  // namespace offsite
