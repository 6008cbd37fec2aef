#include "models/model_arch.h"

#include "absl/strings/str_cat.h"
#include "common/proto_util.h"
#include "common/status_macros.h"

namespace offsite {

absl::Status ValidateArch(const v1::ConvNextV2Arch& arch, const std::string& field) {
  if (!arch.size().empty()) {
    OFFSITE_RETURN_IF_ERROR(ConvNextV2ConfigByName(arch.size()).status());
    if (arch.depths_size() || arch.dims_size() || arch.stem_stride()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": give either size or depths/dims/stem_stride, not both"));
    }
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".drop_path", arch.drop_path(), 0, 0.9));
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config, ResolveArch(arch, 1, 10));
  absl::Status valid = ValidateConfig(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", valid.message()));
  return absl::OkStatus();
}

absl::StatusOr<ConvNextV2Config> ResolveArch(const v1::ConvNextV2Arch& arch, int64_t in_channels,
                                             int64_t num_classes) {
  ConvNextV2Config config;
  if (!arch.size().empty()) {
    OFFSITE_ASSIGN_OR_RETURN(config, ConvNextV2ConfigByName(arch.size()));
  } else {
    config.depths = {2, 2, 6};
    config.dims = {40, 80, 160};
    config.stem_stride = 2;
    if (arch.depths_size()) config.depths.assign(arch.depths().begin(), arch.depths().end());
    if (arch.dims_size()) config.dims.assign(arch.dims().begin(), arch.dims().end());
    if (arch.stem_stride()) config.stem_stride = arch.stem_stride();
  }
  config.in_channels = in_channels;
  config.num_classes = num_classes;
  config.use_grn = !arch.no_grn();
  config.drop_path = arch.drop_path();
  return config;
}

absl::StatusOr<GptConfig> ResolveGptArch(const v1::GptArch& arch) {
  GptConfig config;
  if (arch.vocab_size()) config.vocab_size = arch.vocab_size();
  if (arch.n_positions()) config.n_positions = arch.n_positions();
  if (arch.n_embd()) config.n_embd = arch.n_embd();
  if (arch.n_layer()) config.n_layer = arch.n_layer();
  if (arch.n_head()) config.n_head = arch.n_head();
  if (!arch.activation().empty()) config.activation = arch.activation();
  config.post_ln = arch.post_ln();
  config.embed_dim = arch.embed_dim();
  config.final_norm = !arch.no_final_norm();
  OFFSITE_RETURN_IF_ERROR(ValidateGptConfig(config));
  return config;
}

absl::StatusOr<v1::ModelArch> ResolveModelArch(const v1::ModelArch& arch, const std::string& field) {
  v1::ModelArch resolved = arch;
  switch (arch.family_case()) {
    case v1::ModelArch::kConvnextV2: {
      OFFSITE_RETURN_IF_ERROR(ValidateArch(arch.convnext_v2(), field + ".convnext_v2"));
      if (resolved.in_channels() == 0) resolved.set_in_channels(1);
      OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".in_channels", resolved.in_channels(), 1, 64));
      OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".num_classes", resolved.num_classes(), 1, 1e6));
      OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config,
                               ResolveArch(arch.convnext_v2(), resolved.in_channels(),
                                           resolved.num_classes()));
      auto* out = resolved.mutable_convnext_v2();
      out->clear_size();
      out->mutable_depths()->Assign(config.depths.begin(), config.depths.end());
      out->mutable_dims()->Assign(config.dims.begin(), config.dims.end());
      out->set_stem_stride(static_cast<int32_t>(config.stem_stride));
      return resolved;
    }
    case v1::ModelArch::kGpt: {
      absl::StatusOr<GptConfig> config = ResolveGptArch(arch.gpt());
      if (!config.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".gpt: ", config.status().message()));
      }
      auto* out = resolved.mutable_gpt();
      out->set_vocab_size(static_cast<int32_t>(config->vocab_size));
      out->set_n_positions(static_cast<int32_t>(config->n_positions));
      out->set_n_embd(static_cast<int32_t>(config->n_embd));
      out->set_n_layer(static_cast<int32_t>(config->n_layer));
      out->set_n_head(static_cast<int32_t>(config->n_head));
      // Empty stays empty, so the default's arch reads as before.
      if (!arch.gpt().activation().empty()) out->set_activation(config->activation);
      return resolved;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": no model family set (convnext_v2 or gpt)"));
  }
}

absl::StatusOr<std::shared_ptr<BlockModelImpl>> MakeBlockModel(
    const v1::ModelArch& arch, std::optional<std::vector<int64_t>> present_blocks) {
  OFFSITE_ASSIGN_OR_RETURN(v1::ModelArch resolved, ResolveModelArch(arch));
  if (resolved.has_gpt()) {
    OFFSITE_ASSIGN_OR_RETURN(GptConfig config, ResolveGptArch(resolved.gpt()));
    OFFSITE_ASSIGN_OR_RETURN(Gpt model, MakeGpt(config, std::move(present_blocks)));
    return std::static_pointer_cast<BlockModelImpl>(model.ptr());
  }
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config,
                           ResolveArch(resolved.convnext_v2(), resolved.in_channels(),
                                       resolved.num_classes()));
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2 model, MakeConvNextV2(config, std::move(present_blocks)));
  return std::static_pointer_cast<BlockModelImpl>(model.ptr());
}

std::string ModelTask(const v1::ModelArch& arch) {
  return arch.has_gpt() ? "language_modeling" : "classification";
}

}  // namespace offsite
