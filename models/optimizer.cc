#include "models/optimizer.h"

#include <torch/torch.h>

#include <map>
#include <utility>

#include "absl/strings/match.h"

namespace offsite {

std::unique_ptr<torch::optim::AdamW> MakeAdamW(
    torch::nn::Module& module, double lr, double weight_decay, double beta2, bool exclude_grn,
    const std::function<double(const std::string& name)>& lr_scale) {
  // Keyed by (-multiplier, not decayed?): the map's order (largest multiplier
  // first, decayed before not) makes the groups' order, and so the
  // checkpointed optimizer state, deterministic.
  std::map<std::pair<double, bool>, std::vector<torch::Tensor>> groups_by_key;
  for (const auto& item : module.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    const bool grn = absl::StrContains(item.key(), "grn.");
    const bool decayed = item.value().dim() > 1 && !(exclude_grn && grn);
    const double scale = lr_scale ? lr_scale(item.key()) : 1.0;
    groups_by_key[{-scale, !decayed}].push_back(item.value());
  }
  // Without a multiplier there are always the two groups (decayed first),
  // even if one is empty, as before layer-wise decay existed.
  if (!lr_scale) {
    groups_by_key.try_emplace({-1.0, false});
    groups_by_key.try_emplace({-1.0, true});
  }
  auto options = torch::optim::AdamWOptions(lr).betas({0.9, beta2});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (auto& [key, params] : groups_by_key) {
    const auto [negative_scale, no_decay] = key;
    groups.emplace_back(params, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(options)
                                        .lr(lr * -negative_scale)
                                        .weight_decay(no_decay ? 0 : weight_decay)));
  }
  return std::make_unique<torch::optim::AdamW>(groups, options);
}

std::vector<double> LrScales(const torch::optim::Optimizer& optimizer) {
  const double base = optimizer.defaults().get_lr();
  std::vector<double> scales;
  for (const torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    scales.push_back(base > 0 ? group.options().get_lr() / base : 1.0);
  }
  return scales;
}

}  // namespace offsite
