#ifndef OFFSITE_MODELS_OFFSITE_TUNING_H_
#define OFFSITE_MODELS_OFFSITE_TUNING_H_

// Offsite-Tuning (Xiao, Lin, Han 2023) on any BlockModelImpl, as plain
// functions: model and package files in memory (safetensors), adapter checks
// and plug-in, and the three trainings (emulator distillation on the owner's
// side, adapter tuning on the data owner's side, and plain training used for
// pretraining and the full fine-tuning baseline). Callers read and write files.
//
// Roles of a package's tensors: ADAPTER (first `bottom` and last `top` blocks,
// plus a new task head) is what the data owner trains and pushes back;
// EMULATOR (the kept middle blocks) and SHARED (stem / embeddings, norms) are
// frozen. The dropped middle blocks are never in a package.

#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/data_parallel.h"
#include "common/safetensors.h"
#include "common/task_data.h"
#include "common/text_data.h"
#include "models/block_model.h"
#include "offsite/v1/offsite_tuning.pb.h"

namespace offsite {

// Metadata keys of Offsite's safetensors files.
inline constexpr char kMetaFormat[] = "offsite.format";      // "model", "package", "adapter"
inline constexpr char kMetaArch[] = "offsite.arch";          // text-format ModelArch
inline constexpr char kMetaManifest[] = "offsite.manifest";  // text-format PackageManifest
inline constexpr char kMetaPackageId[] = "offsite.package_id";
// An imported language model's tokenizer files, verbatim (vocab.json and
// merges.txt); a model without them reads bytes. Packages carry them on, so the
// data owner tokenizes exactly as the model owner.
inline constexpr char kMetaTokenizerVocab[] = "offsite.tokenizer.vocab_json";
inline constexpr char kMetaTokenizerMerges[] = "offsite.tokenizer.merges_txt";

// The tokenizer of a model or package file of architecture `arch`: the BPE of
// its tokenizer metadata, else bytes. InvalidArgument if the metadata's
// tokenizer does not load or has more tokens than the model's vocabulary.
absl::StatusOr<DocumentEncoder> DocumentEncoderOf(const SafetensorsFile& file,
                                                  const v1::ModelArch& arch);
// The tokenizer metadata entries of `file` (none for a byte-level model).
std::map<std::string, std::string> TokenizerMetadata(const SafetensorsFile& file);

// A model file: every tensor by name, the architecture in the metadata.
absl::StatusOr<SafetensorsFile> ModelToFile(const v1::ModelArch& arch, BlockModelImpl& model);

struct LoadedModel {
  v1::ModelArch arch;
  std::shared_ptr<BlockModelImpl> model;
  DocumentEncoder text_encoder;                        // See DocumentEncoderOf.
  std::map<std::string, std::string> tokenizer_files;  // See TokenizerMetadata.
};
// InvalidArgument naming the tensor for a missing, extra or misshapen tensor.
absl::StatusOr<LoadedModel> ModelFromFile(const SafetensorsFile& file);

// What the package is for, beyond the split.
struct PackageOptions {
  std::string package_id;
  std::string model_name;
  // Classification: a head of this many classes, freshly initialised and
  // trained by the data owner; 0 keeps the model's head, frozen.
  int64_t new_head_classes = 0;
  // The model's tokenizer metadata (LoadedModel::tokenizer_files), carried on.
  std::map<std::string, std::string> tokenizer_files;
};

// The emulator a package holds, built from `full`: adapter and kept middle
// blocks with their weights, non-block parts, and a new head if asked.
// `arch` is the full model's; the returned arch has the package's head.
struct Emulator {
  v1::ModelArch arch;
  std::shared_ptr<BlockModelImpl> model;
};
absl::StatusOr<Emulator> MakeEmulator(const v1::ModelArch& arch, BlockModelImpl& full,
                                      const SplitPlan& plan, int64_t new_head_classes,
                                      uint64_t seed);

// The package file of an emulator: its tensors and a manifest (names, shapes,
// dtypes, SHA-256, roles, block map) stored in the metadata and returned.
absl::StatusOr<SafetensorsFile> MakePackageFile(const Emulator& emulator, const SplitPlan& plan,
                                                const PackageOptions& options,
                                                v1::PackageManifest* manifest);

// Opens a package file: checks every tensor against the manifest (name,
// shape, dtype, SHA-256) and builds the emulator.
struct OpenedPackage {
  v1::PackageManifest manifest;
  std::shared_ptr<BlockModelImpl> emulator;
  DocumentEncoder text_encoder;  // The model's tokenizer (DocumentEncoderOf).
};
absl::StatusOr<OpenedPackage> OpenPackage(const SafetensorsFile& file);

// The ADAPTER tensors of `model` (LoRA merged first), as the file to push.
absl::StatusOr<SafetensorsFile> ExtractAdapter(const v1::PackageManifest& manifest,
                                               BlockModelImpl& model);

// OK only if `adapter` is for this package and holds exactly its ADAPTER
// tensors with the issued shapes and dtypes, all finite. InvalidArgument
// naming the tensor otherwise.
absl::Status CheckAdapter(const v1::PackageManifest& manifest, const SafetensorsFile& adapter);

// The full model with a data owner's adapter plugged in: a copy of `base` (the
// model the package was made from) in the package's architecture, whose head
// is the adapter's when the package issued a new one, then the adapter's
// tensors. The adapter is checked first (CheckAdapter).
absl::StatusOr<std::shared_ptr<BlockModelImpl>> PlugIn(BlockModelImpl& base,
                                                       const v1::PackageManifest& manifest,
                                                       const SafetensorsFile& adapter);

// Makes the model the data owner trains: sets requires_grad on the ADAPTER
// tensors only (with `top_only`, the top adapter and head only), LoRA on the
// adapter blocks if `lora` is set (the base weights then stay frozen). With
// `recompute_emulator`, the frozen blocks between the adapters keep no
// activations and are recomputed in the backward pass (less memory, one more
// forward pass of the emulator; see BlockModelImpl::set_recompute_frozen_blocks).
struct TuneOptions {
  bool top_only = false;
  bool lora = false;
  int64_t lora_rank = 4;
  double lora_alpha = 32;
  double lora_dropout = 0.1;
  bool recompute_emulator = false;
};
void PrepareForTuning(const v1::PackageManifest& manifest, BlockModelImpl& model,
                      const TuneOptions& options);

// --- Training -------------------------------------------------------------

// Cross-entropy of class logits (N, K) against labels (N), or of token logits
// (N, T, V) against next tokens (N, T); targets of -1 are ignored.
torch::Tensor TaskLoss(const torch::Tensor& logits, const torch::Tensor& targets);

struct Evaluation {
  double loss = 0;        // mean per example / token
  double accuracy = 0;    // classification
  double perplexity = 0;  // language modelling: exp(loss)
  int64_t count = 0;
  // "accuracy" or "perplexity" with its value, for reports.
  std::map<std::string, double> AsMetrics(const std::string& prefix) const;
};
// On the validation split, in eval mode and without gradients.
Evaluation Evaluate(BlockModelImpl& model, const TaskTensors& data, int64_t batch_size);

// Makes a run resumable. The caller does the I/O: `save` persists the archive
// it is handed (the whole training state: trainable tensors, optimiser, step,
// best state so far) after a step when `due(step)` says so; `load` fills an
// archive with the last saved state, or returns NotFound for a fresh run. A
// resumed run continues at the next step with the same batches (they depend
// only on seed and step), so it ends where an uninterrupted one would.
struct TrainCheckpoint {
  std::function<bool(int64_t step)> due;
  std::function<absl::Status(torch::serialize::OutputArchive&)> save;
  std::function<absl::Status(torch::serialize::InputArchive&)> load;
};

struct TrainOptions {
  int64_t steps = 1000;
  int64_t batch_size = 32;
  double learning_rate = 1e-3;
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double clip_norm = 1.0;
  // Validation every N steps and at the end; the best state by validation
  // loss is restored at the end.
  int64_t eval_interval = 100;
  uint64_t seed = 0;
  // Empty functions: no checkpoints.
  TrainCheckpoint checkpoint;
  // Data-parallel (common/data_parallel.h): every rank draws the same global
  // batch of batch_size, trains on its share, and the gradients are reduced
  // over the ranks before the step; the ranks start from rank 0's trainable
  // tensors (after any resume) and only rank 0 saves checkpoints. nullptr:
  // one process.
  DataParallel* data_parallel = nullptr;
};

// Called after every step with that step's metrics (train_loss, lr, and the
// validation figures on evaluation steps). Returning false stops training
// (e.g. a cancelled job) with CancelledError.
using StepCallback = std::function<bool(int64_t step, const std::map<std::string, double>&)>;

struct TrainResult {
  int64_t best_step = 0;
  Evaluation best;
};

// AdamW (warm-up then cosine) on `model`'s parameters that require grad,
// with gradient clipping; task loss on training batches.
absl::StatusOr<TrainResult> Train(BlockModelImpl& model, const TaskTensors& data,
                                  const TrainOptions& options, const StepCallback& callback);

struct DistillOptions {
  TrainOptions train;
  double task_weight = 0;
  double kd_weight = 1;
};

// Distils the emulator's kept middle blocks against `full`'s middle (the
// teacher, frozen), on the same input at the emulator's entry:
// loss = task_weight * TaskLoss + kd_weight * NormalisedMse at the boundary.
// Validation loss is the same loss on the validation split; the best
// emulator is kept. Only the emulator's kept middle blocks change.
absl::StatusOr<TrainResult> DistillEmulator(BlockModelImpl& full, BlockModelImpl& emulator,
                                            const SplitPlan& plan, const TaskTensors& data,
                                            const DistillOptions& options,
                                            const StepCallback& callback);

}  // namespace offsite

#endif  // OFFSITE_MODELS_OFFSITE_TUNING_H_
