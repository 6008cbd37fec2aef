#ifndef OFFSITE_MODELS_LORA_H_
#define OFFSITE_MODELS_LORA_H_

// LoRA (Hu et al. 2021) as Offsite-Tuning uses it on the adapter: a Linear
// layer that can carry a low-rank update
//   y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T,
// A (rank, in) Kaiming-uniform, B (out, rank) zero, so enabling LoRA does not
// change the output. Parameter names are those of torch::nn::Linear ("weight",
// "bias") plus "lora_a" / "lora_b" while LoRA is on; merging folds the update
// into "weight" and removes them, so a merged model has the plain names.

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace offsite {

struct LoraOptions {
  int64_t rank = 4;
  double alpha = 32;
  double dropout = 0.1;
};

class LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias = true);

  torch::Tensor forward(const torch::Tensor& x);

  // Adds A and B (trainable) and freezes weight and bias.
  void EnableLora(const LoraOptions& options);
  // weight += (alpha / rank) * B A; drops A and B. No-op without LoRA.
  void MergeLora();
  bool has_lora() const { return lora_a.defined(); }

  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out), undefined without bias
  torch::Tensor lora_a;  // (rank, in)
  torch::Tensor lora_b;  // (out, rank)

 private:
  LoraOptions lora_;
};
TORCH_MODULE(LoraLinear);

// EnableLora on every LoraLinear under `module` (e.g. one adapter block).
// Returns how many layers got LoRA.
int64_t EnableLora(torch::nn::Module& module, const LoraOptions& options);
// MergeLora on every LoraLinear under `module`.
void MergeLora(torch::nn::Module& module);

}  // namespace offsite

#endif  // OFFSITE_MODELS_LORA_H_
