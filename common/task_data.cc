#include "common/task_data.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/image_data.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "common/text_data.h"

namespace offsite {
namespace {

constexpr double kDefaultValidationFraction = 0.1;

absl::Status WithField(const absl::Status& status, const std::string& field) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
}

}  // namespace

absl::Status ValidateTaskData(const v1::TaskData& data, const std::string& field) {
  switch (data.source_case()) {
    case v1::TaskData::kImages:
      return ValidateImageData(data.images(), field + ".images");
    case v1::TaskData::kText: {
      const v1::TextData& text = data.text();
      if (text.path().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".text.path: required"));
      }
      if (!FileExists(text.path())) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".text.path: \"", text.path(), "\" does not exist"));
      }
      return CheckRange(field + ".text.validation_fraction", text.validation_fraction(), 0, 0.9);
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(field, ": set images or text"));
  }
}

absl::StatusOr<TaskTensors> LoadTaskData(const v1::TaskData& data, int64_t context,
                                         torch::Device device, const std::string& field,
                                         const DocumentEncoder& encoder) {
  OFFSITE_RETURN_IF_ERROR(ValidateTaskData(data, field));
  TaskTensors task;
  if (data.has_images()) {
    absl::StatusOr<ImageDataSet> set = LoadImageData(data.images(), device);
    OFFSITE_RETURN_IF_ERROR(WithField(set.status(), field + ".images"));
    task.train_input = set->train_images;
    task.train_target = set->train_labels;
    task.valid_input = set->test_images;
    task.valid_target = set->test_labels;
    task.num_classes = set->num_classes;
    return task;
  }
  const v1::TextData& text = data.text();
  absl::StatusOr<std::vector<std::string>> documents = ReadTextDocuments(text.path());
  OFFSITE_RETURN_IF_ERROR(WithField(documents.status(), field + ".text.path"));
  const double fraction =
      text.validation_fraction() > 0 ? text.validation_fraction() : kDefaultValidationFraction;
  absl::StatusOr<TokenSplits> splits = TokenizeDocuments(*documents, fraction, text.seed(), encoder);
  OFFSITE_RETURN_IF_ERROR(WithField(splits.status(), field + ".text"));
  if (splits->train.numel() <= context || splits->validation.numel() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".text: \"", text.path(), "\" is too short for windows of ", context, " tokens"));
  }
  task.language = true;
  task.context = context;
  task.train_input = splits->train.to(device);
  task.valid_input = splits->validation.to(device);
  return task;
}

}  // namespace offsite
