#ifndef OFFSITE_MODELS_BLOCK_MODEL_H_
#define OFFSITE_MODELS_BLOCK_MODEL_H_

// The one view of a model that Offsite-Tuning needs: non-block parts (stem or
// embeddings, head) around an ordered list of residual, shape-preserving
// blocks. Split, layer-drop, distillation, plug-in and LoRA are written once
// against this interface; ConvNeXt V2 and the GPT decoder implement it.
//
// A model may hold only some of its architecture's blocks (an emulator holds
// the adapter and the kept middle blocks): absent blocks are skipped, and their
// slots keep their original indices and parameter names, so a tensor has the
// same name in the full model, the emulator and the package.
//
// Example (distillation at the emulator's boundary):
//   torch::Tensor entry = full->RunBlocks(full->Embed(x), 0, plan.bottom);
//   torch::Tensor teacher = full->RunBlocks(entry, plan.bottom, plan.top_begin());
//   torch::Tensor student = emulator->RunBlocks(entry, plan.bottom, plan.top_begin());

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"

namespace offsite {

class BlockModelImpl : public torch::nn::Module {
 public:
  // Number of block slots in the architecture (present or not).
  virtual int64_t num_blocks() const = 0;
  virtual bool has_block(int64_t index) const = 0;
  // Parameter-name prefix of block `index`, with the trailing dot:
  // "blocks.3." for ConvNeXt V2, "h.3." for GPT.
  virtual std::string BlockPrefix(int64_t index) const = 0;

  // Prefixes of the task head's parameters ("norm.", "head." for ConvNeXt V2),
  // which a downstream task may replace; none for a tied language-model head.
  virtual std::vector<std::string> HeadPrefixes() const { return {}; }

  // Non-block entry: images -> stem features, token ids -> embeddings.
  virtual torch::Tensor Embed(const torch::Tensor& input) = 0;
  // Runs block slots [begin, end) on `hidden`, skipping absent blocks. Shape
  // changes between slots that are not blocks (ConvNeXt's downsampling before a
  // stage) always run, so any subset of blocks gives a well-formed model.
  virtual torch::Tensor RunBlocks(torch::Tensor hidden, int64_t begin, int64_t end) = 0;
  // Non-block exit: features -> class logits, hidden states -> token logits.
  virtual torch::Tensor Head(const torch::Tensor& hidden) = 0;

  // Head(RunBlocks(Embed(input))), with frozen blocks recomputed if set below.
  torch::Tensor forward(const torch::Tensor& input);

  // Activation checkpointing of frozen blocks: when a gradient has to flow
  // through a run of blocks whose parameters are all frozen (an emulator's
  // middle between two trained adapters), the forward pass keeps only the
  // run's input and the backward pass recomputes the run (with the same dropout
  // masks) to get its activations. Gradients are unchanged; the run's
  // activations no longer stay in memory, for one more forward pass of it.
  void set_recompute_frozen_blocks(bool on) { recompute_frozen_blocks_ = on; }
  bool recompute_frozen_blocks() const { return recompute_frozen_blocks_; }

  // Indices of the present blocks, ascending.
  std::vector<int64_t> PresentBlocks() const;

 private:
  bool recompute_frozen_blocks_ = false;
};

// Which block a parameter name belongs to: its index, or -1 for a non-block
// parameter (e.g. "blocks.12.dwconv.weight" -> 12 with prefix "blocks.").
int64_t BlockIndexOfName(const BlockModelImpl& model, const std::string& name);

// Offsite-Tuning's split of n blocks into bottom adapter (first `bottom`),
// middle, and top adapter (last `top`), and the middle blocks an emulator of
// `emulator_blocks` keeps: uniform layer-drop at middle positions
// round(i * (m - 1) / (k - 1)), i = 0..k-1, so the first and last middle blocks
// are always kept (k = 1 keeps the first). "2-8-2" is bottom 2, k 8, top 2.
struct SplitPlan {
  int64_t num_blocks = 0;
  int64_t bottom = 0;
  int64_t top = 0;
  std::vector<int64_t> middle;       // All middle block indices.
  std::vector<int64_t> kept_middle;  // The emulator's blocks (original indices).

  int64_t top_begin() const { return num_blocks - top; }
  bool IsAdapter(int64_t index) const { return index < bottom || index >= top_begin(); }
  std::vector<int64_t> AdapterBlocks() const;
  // Adapter blocks and kept middle blocks: what a package holds, ascending.
  std::vector<int64_t> EmulatorModelBlocks() const;
};

// InvalidArgument, naming the field, unless 0 <= bottom, 0 <= top,
// bottom + top < num_blocks and 0 <= emulator_blocks < middle size; a k equal
// to the middle size would ship the whole middle and is refused.
absl::StatusOr<SplitPlan> PlanSplit(int64_t num_blocks, int64_t bottom, int64_t top,
                                    int64_t emulator_blocks);

// Offsite-Tuning's distillation loss at the emulator's output boundary:
// mean((teacher - student)^2) / mean(teacher^2); teacher carries no gradient.
torch::Tensor NormalisedMse(const torch::Tensor& student, const torch::Tensor& teacher);

// Every parameter and buffer of `module` by its dotted name.
std::vector<NamedTensor> NamedTensorsOf(torch::nn::Module& module);

// Copies the named tensors into `model`'s tensors of the same names.
// InvalidArgument (model untouched) for a name the model lacks or a shape that
// differs; names in `skip_prefixes` are ignored. Builds an emulator from a full
// model and plugs an adapter into the full model.
absl::Status LoadNamedTensors(const std::vector<NamedTensor>& tensors, torch::nn::Module& model,
                              const std::vector<std::string>& skip_prefixes = {});

// LoadNamedTensors of every tensor of `source` into `target`.
absl::Status CopyNamedTensors(torch::nn::Module& source, torch::nn::Module& target);

// Freezes every parameter, then unfreezes those of the given blocks (and, with
// `include_non_block`, every non-block parameter).
void SetTrainableBlocks(BlockModelImpl& model, const std::vector<int64_t>& blocks,
                        bool include_non_block = false);

}  // namespace offsite

#endif  // OFFSITE_MODELS_BLOCK_MODEL_H_
