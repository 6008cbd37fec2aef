#ifndef OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_
#define OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_

// What the fcmae and finetune jobs share: checking a training spec.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/image_data.h"
#include "common/proto_util.h"
#include "models/convnext_v2.h"
#include "models/model_arch.h"
#include "models/optimizer.h"
#include "offsite/v1/convnext.pb.h"

namespace offsite {

// Checks what every ConvNeXt training spec (FcmaeSpec, FinetuneSpec) has:
// arch, data and the optimisation schedule. `resolved` is `spec` with its
// defaults filled in; `kind` prefixes the field names in errors.
template <typename Spec>
absl::Status ValidateTrainingSpec(const Spec& spec, const Spec& resolved, const std::string& kind) {
  absl::Status status = ValidateArch(spec.arch(), kind + ".arch");
  if (status.ok()) status = ValidateImageData(spec.data(), kind + ".data");
  if (status.ok()) status = CheckRange(kind + ".epochs", spec.epochs(), 0, 10000);
  if (status.ok()) status = CheckRange(kind + ".batch_size", spec.batch_size(), 0, 8192);
  if (status.ok()) status = CheckRange(kind + ".learning_rate", spec.learning_rate(), 0, 1);
  if (status.ok()) status = CheckRange(kind + ".weight_decay", spec.weight_decay(), 0, 1);
  if (status.ok()) status = CheckRange(kind + ".warmup_epochs", spec.warmup_epochs(), 0, 10000);
  if (status.ok() && resolved.warmup_epochs() > resolved.epochs()) {
    status = absl::InvalidArgumentError(absl::StrCat(kind, ".warmup_epochs: ",
                                                     resolved.warmup_epochs(), " exceeds epochs ",
                                                     resolved.epochs()));
  }
  return status;
}

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_CONVNEXT_JOBS_COMMON_H_
