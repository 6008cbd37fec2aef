#ifndef OFFSITE_MODELS_OPTIMIZER_H_
#define OFFSITE_MODELS_OPTIMIZER_H_

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace offsite {

// AdamW over `module`'s trainable parameters, with no weight decay on
// one-dimensional parameters (biases, norms) and, if `exclude_grn`, on GRN's
// gamma and beta (the ConvNeXt V2 fine-tuning recipe). `lr_scale`, if set,
// gives each parameter (by name) a multiplier of `lr`, for layer-wise decay:
// parameters with equal multipliers share a group, and LrScales recovers them.
std::unique_ptr<torch::optim::AdamW> MakeAdamW(
    torch::nn::Module& module, double lr, double weight_decay, double beta2, bool exclude_grn,
    const std::function<double(const std::string& name)>& lr_scale = nullptr);

// Every parameter group's learning rate over the optimizer's default one:
// call it before scheduling starts, and pass the result to SetLearningRate.
std::vector<double> LrScales(const torch::optim::Optimizer& optimizer);

}  // namespace offsite

#endif  // OFFSITE_MODELS_OPTIMIZER_H_
