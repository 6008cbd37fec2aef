#ifndef OFFSITE_COMMON_TASK_DATA_H_
#define OFFSITE_COMMON_TASK_DATA_H_

// A supervised task's data as tensors, whatever its source: labelled images
// for classification, token streams for language modelling. What the
// Offsite-Tuning jobs and the client's local tuning train and evaluate on.

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/text_data.h"
#include "offsite/v1/offsite_tuning.pb.h"

namespace offsite {

struct TaskTensors {
  bool language = false;
  // Classification: images (N, C, H, W) float and labels (N) int64.
  // Language modelling: 1-D int64 token streams in *_input; targets unused.
  torch::Tensor train_input, train_target;
  torch::Tensor valid_input, valid_target;
  int64_t num_classes = 0;
  // Language modelling: tokens per window.
  int64_t context = 0;
};

// Loads `data` (images: train split for training, test split for validation;
// text: the document split of TextData, tokenized by `encoder`, the model's
// own tokenizer). `context` is the language model's window. Errors name
// `field` and the offending value or file.
absl::StatusOr<TaskTensors> LoadTaskData(const v1::TaskData& data, int64_t context,
                                         torch::Device device, const std::string& field,
                                         const DocumentEncoder& encoder = DocumentEncoder());

// InvalidArgument naming the field, without reading any data.
absl::Status ValidateTaskData(const v1::TaskData& data, const std::string& field);

}  // namespace offsite

#endif  // OFFSITE_COMMON_TASK_DATA_H_
