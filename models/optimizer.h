#ifndef OFFSITE_MODELS_OPTIMIZER_H_
#define OFFSITE_MODELS_OPTIMIZER_H_

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <memory>

namespace offsite {

// AdamW over `module`'s trainable parameters, with no weight decay on
// one-dimensional parameters (biases, norms) and, if `exclude_grn`, on GRN's
// gamma and beta (the ConvNeXt V2 fine-tuning recipe).
std::unique_ptr<torch::optim::AdamW> MakeAdamW(torch::nn::Module& module, double lr,
                                               double weight_decay, double beta2,
                                               bool exclude_grn);

}  // namespace offsite

#endif  // OFFSITE_MODELS_OPTIMIZER_H_
