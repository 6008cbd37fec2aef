#include "models/lora.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "common/splitmix64.h"

namespace offsite {
namespace {

// Dropout on the LoRA branch, keeping a one-byte mask for the backward pass
// (as CUDA's fused kernel does) instead of LibTorch's four-byte CPU noise.
//
// On the CPU the keep decisions come from a counter-based stream: the pair of
// elements (2j, 2j+1) takes the two halves of SplitMix64's j-th output for a
// seed drawn from LibTorch's generator, so torch::manual_seed fixes the draws,
// any thread count gives the same mask, and recomputation (which restores the
// generator) replays it. LibTorch's bernoulli_ draws element by element under
// a lock, as long as the adapter layer's own matmul; this one pass is 4-6x
// faster. Elsewhere (CUDA) bernoulli_ is already fast and is used.
class ByteMaskDropout : public torch::autograd::Function<ByteMaskDropout> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               double p) {
    torch::Tensor out, keep;
    if (x.is_cpu() && x.scalar_type() == torch::kFloat) {
      std::tie(out, keep) = CpuDropout(x.contiguous(), p);
    } else {
      torch::Tensor noise = torch::empty_like(x, torch::MemoryFormat::Contiguous).bernoulli_(1 - p);
      keep = noise.to(torch::kBool);
      out = x * noise.div_(1 - p);
    }
    ctx->save_for_backward({keep});
    ctx->saved_data["p"] = p;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor keep = ctx->get_saved_variables()[0];
    const double p = ctx->saved_data["p"].toDouble();
    return {grads[0].mul(keep).mul_(1 / (1 - p)), torch::Tensor()};
  }

 private:
  // (x * keep / (1 - p), keep) for a contiguous float CPU tensor.
  static std::pair<torch::Tensor, torch::Tensor> CpuDropout(const torch::Tensor& x, double p) {
    const uint64_t seed = static_cast<uint64_t>(
        torch::randint(std::numeric_limits<int64_t>::max(), {1}, torch::kLong).item<int64_t>());
    // keep <=> a 32-bit uniform draw is below (1 - p) * 2^32.
    const uint64_t threshold = static_cast<uint64_t>(std::llround((1 - p) * 4294967296.0));
    const float scale = static_cast<float>(1 / (1 - p));
    torch::Tensor out = torch::empty_like(x);
    torch::Tensor keep = torch::empty(x.sizes(), x.options().dtype(torch::kBool));
    const float* in = x.data_ptr<float>();
    float* y = out.data_ptr<float>();
    bool* k = keep.data_ptr<bool>();
    const int64_t n = x.numel();
    auto decide = [&](int64_t i, uint64_t bits) {
      k[i] = (bits & 0xFFFFFFFFull) < threshold;
      y[i] = k[i] ? in[i] * scale : 0.0f;
    };
    at::parallel_for(0, (n + 1) / 2, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const uint64_t r = SplitMix64Mix((seed + static_cast<uint64_t>(j)) * kSplitMix64Gamma);
        decide(2 * j, r);
        if (2 * j + 1 < n) decide(2 * j + 1, r >> 32);
      }
    });
    return {out, keep};
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
  // y + scale * (dropout(x) A^T) B^T, the second product accumulated into y by
  // one GEMM: on the CPU the branch's passes over the (.., out) output cost
  // more than its rank-r arithmetic.
  const torch::Tensor low_rank =
      torch::nn::functional::linear(LoraDropout(x, lora_.dropout, is_training()), lora_a);
  const double scale = lora_.alpha / static_cast<double>(lora_.rank);
  return torch::addmm(y.reshape({-1, y.size(-1)}), low_rank.reshape({-1, lora_.rank}), lora_b.t(),
                      /*beta=*/1, /*alpha=*/scale)
      .view(y.sizes());
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
