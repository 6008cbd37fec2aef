#ifndef OFFSITE_MODELS_MODEL_ARCH_H_
#define OFFSITE_MODELS_MODEL_ARCH_H_

// From architecture messages (the wire and file form) to model configurations
// and modules, for every family.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/block_model.h"
#include "models/convnext_v2.h"
#include "models/gpt.h"
#include "offsite/v1/convnext.pb.h"
#include "offsite/v1/offsite_tuning.pb.h"

namespace offsite {

absl::Status ValidateArch(const v1::ConvNextV2Arch& arch, const std::string& field);

// The model configuration an arch message asks for, with defaults filled in.
absl::StatusOr<ConvNextV2Config> ResolveArch(const v1::ConvNextV2Arch& arch, int64_t in_channels,
                                             int64_t num_classes);

absl::StatusOr<GptConfig> ResolveGptArch(const v1::GptArch& arch);

// `arch` with every default filled in (ConvNeXt: explicit depths/dims/stem,
// in_channels default 1), or InvalidArgument naming the field under `field`.
absl::StatusOr<v1::ModelArch> ResolveModelArch(const v1::ModelArch& arch,
                                               const std::string& field = "arch");

// The model `arch` describes, freshly initialised, holding `present_blocks`
// only (nullopt: all). "classification" or "language_modeling" is its task.
absl::StatusOr<std::shared_ptr<BlockModelImpl>> MakeBlockModel(
    const v1::ModelArch& arch, std::optional<std::vector<int64_t>> present_blocks = std::nullopt);
std::string ModelTask(const v1::ModelArch& arch);

}  // namespace offsite

#endif  // OFFSITE_MODELS_MODEL_ARCH_H_
