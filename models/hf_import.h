#ifndef OFFSITE_MODELS_HF_IMPORT_H_
#define OFFSITE_MODELS_HF_IMPORT_H_

// Hugging Face checkpoints onto Offsite's modules: a checkpoint's tensors
// (already parsed from its safetensors file or shards) and its config.json
// text become an Offsite model (a v1::ModelArch and tensors under Offsite's
// names, float32), or directly a model file (see models/offsite_tuning.h).
// No file is read here; client/import_command.h reads a checkpoint directory.
//
// Families and what they map to:
//   gpt2        GPT2LMHeadModel / GPT2Model ("transformer.h.N.attn.c_attn.weight"
//               or without "transformer."): a Gpt (models/gpt.h). Conv1D
//               weights (in, out) are transposed to (out, in); the attention
//               mask buffers "attn.bias" / "attn.masked_bias" are skipped; an
//               "lm_head.weight" must equal wte (tied).
//   opt         OPTForCausalLM / OPTModel ("model.decoder.layers.N.self_attn.q_proj.weight"
//               or "decoder.layers..."): a Gpt with ReLU; q, k, v projections are
//               concatenated into c_attn; positions drop OPT's offset of 2 rows.
//               Only pre-LN OPT without projections is representable (not
//               OPT-350m: post-LN, word_embed_proj_dim 512).
//   convnextv2  ConvNextV2ForImageClassification / ConvNextV2Model
//               ("convnextv2.encoder.stages.N.layers.M.dwconv.weight", "classifier.weight"):
//               a ConvNextV2 with a head of num_labels classes. The head's
//               LayerNorm uses eps 1e-6 (the paper's) where Hugging Face uses
//               config.layer_norm_eps (1e-12): the same to ~1e-6 relative
//               unless the pooled features are nearly constant.
//
// F32, F16 and BF16 tensors are accepted and converted to float32. Every
// mismatch is an InvalidArgumentError naming the tensors (the first few of
// each kind, plus a count): unknown tensors, missing ones, wrong shapes,
// other dtypes; and, for config.json, the key that Offsite cannot represent
// (e.g. "opt: do_layer_norm_before false (post-LN) is not supported").
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(HfFamily family, ParseHfFamily("gpt2"));
//   OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile weights, ReadSafetensors(dir + "/model.safetensors"));
//   OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile model_file,
//                            ImportHfModelFile(family, config_json_text, weights));
//   OFFSITE_RETURN_IF_ERROR(WriteSafetensors("model.safetensors", model_file));

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "offsite/v1/offsite_tuning.pb.h"

namespace offsite {

enum class HfFamily { kGpt2, kOpt, kConvNextV2 };

// "gpt2", "opt" or "convnextv2"; InvalidArgument otherwise.
absl::StatusOr<HfFamily> ParseHfFamily(const std::string& name);
std::string HfFamilyName(HfFamily family);

// Metadata key of an imported model file: "huggingface:<family>".
inline constexpr char kMetaSource[] = "offsite.source";

struct ImportedModel {
  v1::ModelArch arch;                // Resolved (every default filled in).
  std::vector<NamedTensor> tensors;  // Offsite's names, float32, contiguous.
};

// Maps the checkpoint `weights` (Hugging Face names) with its config.json
// text onto Offsite's architecture and names.
absl::StatusOr<ImportedModel> ImportHfCheckpoint(HfFamily family, const std::string& config_json,
                                                 const SafetensorsFile& weights);

// As ImportHfCheckpoint, then builds the model and returns its model file
// (ModelToFile), with kMetaSource set. `extra_metadata` (e.g. a tokenizer)
// is added to the file's metadata.
absl::StatusOr<SafetensorsFile> ImportHfModelFile(
    HfFamily family, const std::string& config_json, const SafetensorsFile& weights,
    const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace offsite

#endif  // OFFSITE_MODELS_HF_IMPORT_H_
