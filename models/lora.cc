#include "models/lora.h"

#include <torch/torch.h>

#include <cmath>

namespace offsite {
namespace {

// torch::dropout as LibTorch computes it on the CPU (x * noise, noise =
// bernoulli(1 - p) / (1 - p), the same draws and arithmetic, so results match
// bit for bit), keeping a one-byte mask for the backward pass instead of the
// four-byte noise, as CUDA's fused kernel does. On the LoRA branch of every
// adapter linear layer that is a fifth of the activation memory LoRA adds.
class ByteMaskDropout : public torch::autograd::Function<ByteMaskDropout> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               double p) {
    torch::Tensor noise = torch::empty_like(x, torch::MemoryFormat::Contiguous).bernoulli_(1 - p);
    ctx->save_for_backward({noise.to(torch::kBool)});
    ctx->saved_data["p"] = p;
    return x * noise.div_(1 - p);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor keep = ctx->get_saved_variables()[0];
    const double p = ctx->saved_data["p"].toDouble();
    return {grads[0] * keep.to(grads[0].scalar_type()).div_(1 - p), torch::Tensor()};
  }
};

torch::Tensor LoraDropout(const torch::Tensor& x, double p, bool train) {
  if (!train || p == 0 || x.numel() == 0) return x;
  if (p >= 1) return x * 0;
  return ByteMaskDropout::apply(x, p);
}

}  // namespace

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias) {
  // torch::nn::Linear's initialisation, so a LoraLinear is a drop-in Linear.
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    this->bias = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
  }
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (!has_lora()) return y;
  const torch::Tensor dropped = LoraDropout(x, lora_.dropout, is_training());
  const double scale = lora_.alpha / static_cast<double>(lora_.rank);
  return y + scale * torch::nn::functional::linear(torch::nn::functional::linear(dropped, lora_a),
                                                   lora_b);
}

void LoraLinearImpl::EnableLora(const LoraOptions& options) {
  TORCH_CHECK(options.rank > 0, "LoRA rank must be positive, got ", options.rank);
  if (has_lora()) MergeLora();
  lora_ = options;
  const auto float_options = weight.options().requires_grad(false);
  torch::Tensor a = torch::empty({options.rank, weight.size(1)}, float_options);
  torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
  lora_a = register_parameter("lora_a", a);
  lora_b =
      register_parameter("lora_b", torch::zeros({weight.size(0), options.rank}, float_options));
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);
}

void LoraLinearImpl::MergeLora() {
  if (!has_lora()) return;
  {
    torch::NoGradGuard no_grad;
    const double scale = lora_.alpha / static_cast<double>(lora_.rank);
    weight.add_(torch::matmul(lora_b, lora_a), scale);
  }
  // Module has no unregister_parameter; its parameter dictionary is protected.
  parameters_.erase("lora_a");
  parameters_.erase("lora_b");
  lora_a = torch::Tensor();
  lora_b = torch::Tensor();
  weight.set_requires_grad(true);
  if (bias.defined()) bias.set_requires_grad(true);
}

int64_t EnableLora(torch::nn::Module& module, const LoraOptions& options) {
  int64_t count = 0;
  for (auto& child : module.modules(/*include_self=*/false)) {
    if (auto* linear = child->as<LoraLinearImpl>()) {
      linear->EnableLora(options);
      ++count;
    }
  }
  if (auto* self = module.as<LoraLinearImpl>()) {
    self->EnableLora(options);
    ++count;
  }
  return count;
}

void MergeLora(torch::nn::Module& module) {
  for (auto& child : module.modules(/*include_self=*/false)) {
    if (auto* linear = child->as<LoraLinearImpl>()) linear->MergeLora();
  }
  if (auto* self = module.as<LoraLinearImpl>()) self->MergeLora();
}

}  // namespace offsite
