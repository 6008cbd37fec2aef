#include "models/block_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace offsite {
namespace {

// A run of frozen blocks whose activations are recomputed in the backward pass.
struct FrozenRun : torch::CustomClassHolder {
  FrozenRun(BlockModelImpl* model, int64_t begin, int64_t end, torch::Device device)
      : model(model), begin(begin), end(end), device(device) {}
  BlockModelImpl* model;  // Outlives the graph: the caller holds the model.
  int64_t begin;
  int64_t end;
  torch::Device device;
  torch::Tensor rng_state;  // Before the forward pass, to replay its dropout.
};

struct RecomputedBlocks : torch::autograd::Function<RecomputedBlocks> {
  // Runs without building a graph (custom functions' forward runs in no-grad
  // mode), so only `hidden` is kept for the backward pass.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor hidden,
                               c10::intrusive_ptr<FrozenRun> run) {
    run->rng_state = at::globalContext().defaultGenerator(run->device).get_state();
    ctx->save_for_backward({hidden});
    torch::Tensor out = run->model->RunBlocks(hidden, run->begin, run->end);
    ctx->saved_data["run"] = c10::IValue::make_capsule(std::move(run));
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const c10::intrusive_ptr<torch::CustomClassHolder> holder = ctx->saved_data["run"].toCapsule();
    const FrozenRun& run = static_cast<const FrozenRun&>(*holder);
    torch::Tensor input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Generator generator = at::globalContext().defaultGenerator(run.device);
    const torch::Tensor rng_now = generator.get_state();
    generator.set_state(run.rng_state);
    torch::Tensor output;
    {
      torch::AutoGradMode grad_mode(true);
      output = run.model->RunBlocks(input, run.begin, run.end);
    }
    generator.set_state(rng_now);
    // Accumulates into any trainable tensor inside the run (e.g. a trained
    // downsampling layer between frozen blocks) as well as into `input`.
    torch::autograd::backward({output}, {grad_outputs[0]});
    return {input.grad(), torch::Tensor()};
  }
};

// Whether each block slot has a parameter that requires grad.
std::vector<bool> BlocksThatTrain(BlockModelImpl& model) {
  std::vector<bool> trains(model.num_blocks(), false);
  for (const auto& item : model.named_parameters()) {
    const int64_t block = BlockIndexOfName(model, item.key());
    if (block >= 0 && item.value().requires_grad()) trains.at(block) = true;
  }
  return trains;
}

}  // namespace

torch::Tensor BlockModelImpl::forward(const torch::Tensor& input) {
  torch::Tensor hidden = Embed(input);
  const int64_t n = num_blocks();
  if (!recompute_frozen_blocks_ || !torch::GradMode::is_enabled()) {
    return Head(RunBlocks(hidden, 0, n));
  }
  const std::vector<bool> trains = BlocksThatTrain(*this);
  for (int64_t begin = 0, end; begin < n; begin = end) {
    end = begin + 1;
    while (end < n && trains[end] == trains[begin]) ++end;
    // Without a gradient to carry (everything below is frozen), no graph is
    // built and there is nothing to save.
    if (!trains[begin] && hidden.requires_grad()) {
      hidden = RecomputedBlocks::apply(
          hidden, c10::make_intrusive<FrozenRun>(this, begin, end, hidden.device()));
    } else {
      hidden = RunBlocks(hidden, begin, end);
    }
  }
  return Head(hidden);
}

std::vector<int64_t> BlockModelImpl::PresentBlocks() const {
  std::vector<int64_t> present;
  for (int64_t i = 0; i < num_blocks(); ++i) {
    if (has_block(i)) present.push_back(i);
  }
  return present;
}

int64_t BlockIndexOfName(const BlockModelImpl& model, const std::string& name) {
  // All families name blocks "<prefix><index>.", so the prefix of block 0 less
  // its index finds every block.
  const std::string prefix0 = model.BlockPrefix(0);
  const std::string stem = prefix0.substr(0, prefix0.size() - 2);  // drop "0."
  if (!absl::StartsWith(name, stem)) return -1;
  const size_t dot = name.find('.', stem.size());
  if (dot == std::string::npos) return -1;
  int64_t index = -1;
  if (!absl::SimpleAtoi(name.substr(stem.size(), dot - stem.size()), &index)) return -1;
  return index;
}

std::vector<int64_t> SplitPlan::AdapterBlocks() const {
  std::vector<int64_t> blocks;
  for (int64_t i = 0; i < num_blocks; ++i) {
    if (IsAdapter(i)) blocks.push_back(i);
  }
  return blocks;
}

std::vector<int64_t> SplitPlan::EmulatorModelBlocks() const {
  std::vector<int64_t> blocks;
  for (int64_t i = 0; i < bottom; ++i) blocks.push_back(i);
  blocks.insert(blocks.end(), kept_middle.begin(), kept_middle.end());
  for (int64_t i = top_begin(); i < num_blocks; ++i) blocks.push_back(i);
  return blocks;
}

absl::StatusOr<SplitPlan> PlanSplit(int64_t num_blocks, int64_t bottom, int64_t top,
                                    int64_t emulator_blocks) {
  if (bottom < 0)
    return absl::InvalidArgumentError(absl::StrCat("bottom adapter blocks ", bottom, " < 0"));
  if (top < 0) return absl::InvalidArgumentError(absl::StrCat("top adapter blocks ", top, " < 0"));
  if (bottom + top >= num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("adapter of ", bottom, " + ", top,
                                                   " blocks leaves no middle in a model of ",
                                                   num_blocks, " blocks"));
  }
  const int64_t middle_size = num_blocks - bottom - top;
  if (emulator_blocks < 0 || emulator_blocks >= middle_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("emulator_blocks ", emulator_blocks, " must be in [0, ", middle_size,
                     "): keeping all ", middle_size, " middle blocks would ship the whole middle"));
  }
  SplitPlan plan;
  plan.num_blocks = num_blocks;
  plan.bottom = bottom;
  plan.top = top;
  for (int64_t i = bottom; i < num_blocks - top; ++i) plan.middle.push_back(i);
  for (int64_t i = 0; i < emulator_blocks; ++i) {
    const int64_t position =
        emulator_blocks == 1
            ? 0
            : static_cast<int64_t>(
                  std::llround(static_cast<double>(i) * (middle_size - 1) / (emulator_blocks - 1)));
    plan.kept_middle.push_back(plan.middle[position]);
  }
  return plan;
}

torch::Tensor NormalisedMse(const torch::Tensor& student, const torch::Tensor& teacher) {
  const torch::Tensor target = teacher.detach();
  return (target - student).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12);
}

std::vector<NamedTensor> NamedTensorsOf(torch::nn::Module& module) {
  std::vector<NamedTensor> tensors;
  for (const auto& item : module.named_parameters()) tensors.push_back({item.key(), item.value()});
  for (const auto& item : module.named_buffers()) tensors.push_back({item.key(), item.value()});
  return tensors;
}

absl::Status LoadNamedTensors(const std::vector<NamedTensor>& tensors, torch::nn::Module& model,
                              const std::vector<std::string>& skip_prefixes) {
  std::unordered_map<std::string, torch::Tensor> targets;
  for (const NamedTensor& t : NamedTensorsOf(model)) targets[t.name] = t.tensor;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const NamedTensor& t : tensors) {
    if (std::any_of(skip_prefixes.begin(), skip_prefixes.end(),
                    [&](const std::string& p) { return absl::StartsWith(t.name, p); })) {
      continue;
    }
    auto it = targets.find(t.name);
    if (it == targets.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has no place in the model"));
    }
    if (it->second.sizes() != t.tensor.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has shape ", c10::str(t.tensor.sizes()),
                       ", the model expects ", c10::str(it->second.sizes())));
    }
    copies.emplace_back(it->second, t.tensor);
  }
  torch::NoGradGuard no_grad;
  for (auto& [to, from] : copies) to.copy_(from);
  return absl::OkStatus();
}

absl::Status CopyNamedTensors(torch::nn::Module& source, torch::nn::Module& target) {
  return LoadNamedTensors(NamedTensorsOf(source), target);
}

void SetTrainableBlocks(BlockModelImpl& model, const std::vector<int64_t>& blocks,
                        bool include_non_block) {
  std::vector<bool> trainable(model.num_blocks(), false);
  for (int64_t b : blocks) trainable.at(b) = true;
  for (auto& item : model.named_parameters()) {
    const int64_t index = BlockIndexOfName(model, item.key());
    const bool on = index < 0 ? include_non_block : trainable.at(index);
    item.value().set_requires_grad(on);
  }
}

}  // namespace offsite
