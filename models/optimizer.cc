#include "models/optimizer.h"

#include <torch/torch.h>

#include "absl/strings/match.h"

namespace offsite {

std::unique_ptr<torch::optim::AdamW> MakeAdamW(torch::nn::Module& module, double lr,
                                               double weight_decay, double beta2,
                                               bool exclude_grn) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : module.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    const bool grn = absl::StrContains(item.key(), "grn.");
    (item.value().dim() <= 1 || (exclude_grn && grn) ? no_decay : decay).push_back(item.value());
  }
  auto options = torch::optim::AdamWOptions(lr).betas({0.9, beta2});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(options).weight_decay(weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(options).weight_decay(0)));
  return std::make_unique<torch::optim::AdamW>(groups, options);
}

}  // namespace offsite
