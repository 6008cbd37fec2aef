#include "models/gpt.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

absl::Status FieldError(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("GptConfig.", field, ": ", problem));
}

absl::Status CheckPresentBlocks(const GptConfig& config,
                                const std::optional<std::vector<int64_t>>& present_blocks) {
  if (!present_blocks) return absl::OkStatus();
  for (int64_t k : *present_blocks) {
    if (k < 0 || k >= config.n_layer) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", k, " is not in a network of ", config.n_layer, " blocks"));
    }
  }
  return absl::OkStatus();
}

int64_t EmbedDim(const GptConfig& config) {
  return config.embed_dim > 0 ? config.embed_dim : config.n_embd;
}

bool HasFinalNorm(const GptConfig& config) { return config.final_norm && !config.post_ln; }

void InitLinear(LoraLinearImpl& linear, double std) {
  linear.weight.normal_(0.0, std);
  if (linear.bias.defined()) linear.bias.zero_();
}

}  // namespace

absl::Status ValidateGptConfig(const GptConfig& config) {
  auto positive = [](int64_t value, const char* field) -> absl::Status {
    if (value > 0) return absl::OkStatus();
    return FieldError(field, absl::StrCat("must be positive, got ", value));
  };
  OFFSITE_RETURN_IF_ERROR(positive(config.vocab_size, "vocab_size"));
  OFFSITE_RETURN_IF_ERROR(positive(config.n_positions, "n_positions"));
  OFFSITE_RETURN_IF_ERROR(positive(config.n_embd, "n_embd"));
  OFFSITE_RETURN_IF_ERROR(positive(config.n_layer, "n_layer"));
  OFFSITE_RETURN_IF_ERROR(positive(config.n_head, "n_head"));
  if (config.n_embd % config.n_head != 0) {
    return FieldError("n_head",
                      absl::StrCat(config.n_head, " heads do not divide n_embd ", config.n_embd));
  }
  if (config.embed_dim < 0) {
    return FieldError("embed_dim", absl::StrCat("must be positive or 0 (n_embd), got ",
                                                config.embed_dim));
  }
  if (!(config.layer_norm_epsilon > 0)) {
    return FieldError("layer_norm_epsilon",
                      absl::StrCat("must be positive, got ", config.layer_norm_epsilon));
  }
  if (!(config.dropout >= 0 && config.dropout < 1)) {
    return FieldError("dropout", absl::StrCat("must be in [0, 1), got ", config.dropout));
  }
  if (config.activation != "gelu_new" && config.activation != "gelu" &&
      config.activation != "relu") {
    return FieldError("activation", absl::StrCat("must be gelu_new, gelu or relu, got '",
                                                 config.activation, "'"));
  }
  return absl::OkStatus();
}

int64_t GptParameterCount(const GptConfig& config) {
  const int64_t c = config.n_embd;
  const int64_t e = EmbedDim(config);
  const int64_t projections = e != c ? 2 * e * c : 0;
  const int64_t final_norm = HasFinalNorm(config) ? 2 * c : 0;
  // ln_1 2C, c_attn 3C^2 + 3C, attn.c_proj C^2 + C, ln_2 2C, c_fc 4C^2 + 4C,
  // mlp.c_proj 4C^2 + C.
  const int64_t block = 12 * c * c + 13 * c;
  return config.vocab_size * e + projections + config.n_positions * c + config.n_layer * block +
         final_norm;
}

GptAttentionImpl::GptAttentionImpl(int64_t n_embd, int64_t n_head, double dropout)
    : n_head_(n_head) {
  TORCH_CHECK(n_head > 0 && n_embd % n_head == 0, n_head, " heads do not divide width ", n_embd);
  c_attn = register_module("c_attn", LoraLinear(n_embd, 3 * n_embd));
  c_proj = register_module("c_proj", LoraLinear(n_embd, n_embd));
  attn_dropout_ = register_module("attn_dropout", torch::nn::Dropout(dropout));
  resid_dropout_ = register_module("resid_dropout", torch::nn::Dropout(dropout));
}

torch::Tensor GptAttentionImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "attention expects (N, T, C), got ", x.sizes());
  const int64_t n = x.size(0);
  const int64_t t = x.size(1);
  const int64_t c = x.size(2);
  const int64_t d = c / n_head_;
  // (N, T, 3C) -> three (N, heads, T, d).
  const std::vector<torch::Tensor> qkv = c_attn(x).split(c, /*dim=*/2);
  auto heads = [&](const torch::Tensor& m) { return m.view({n, t, n_head_, d}).transpose(1, 2); };
  const torch::Tensor q = heads(qkv[0]);
  const torch::Tensor k = heads(qkv[1]);
  const torch::Tensor v = heads(qkv[2]);

  torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d));
  // Built per call rather than kept as a buffer, so it is never a named tensor.
  const torch::Tensor future =
      torch::ones({t, t}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  const torch::Tensor weights = attn_dropout_(torch::softmax(scores, /*dim=*/-1));
  const torch::Tensor y = torch::matmul(weights, v).transpose(1, 2).reshape({n, t, c});
  return resid_dropout_(c_proj(y));
}

GptMlpImpl::GptMlpImpl(int64_t n_embd, double dropout, std::string activation)
    : activation_(std::move(activation)) {
  TORCH_CHECK(activation_ == "gelu_new" || activation_ == "gelu" || activation_ == "relu",
              "unknown MLP activation '", activation_, "'");
  c_fc = register_module("c_fc", LoraLinear(n_embd, 4 * n_embd));
  c_proj = register_module("c_proj", LoraLinear(4 * n_embd, n_embd));
  dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
}

torch::Tensor GptMlpImpl::forward(const torch::Tensor& x) {
  const torch::Tensor h = c_fc(x);
  torch::Tensor a;
  if (activation_ == "relu") {
    a = torch::relu(h);
  } else if (activation_ == "gelu") {
    a = torch::gelu(h);
  } else {
    a = torch::gelu(h, /*approximate=*/"tanh");
  }
  return dropout_(c_proj(a));
}

GptBlockImpl::GptBlockImpl(const GptConfig& config) : post_ln_(config.post_ln) {
  auto norm_options = [&] {
    return torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon);
  };
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(norm_options()));
  attn = register_module("attn", GptAttention(config.n_embd, config.n_head, config.dropout));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(norm_options()));
  mlp = register_module("mlp", GptMlp(config.n_embd, config.dropout, config.activation));
}

torch::Tensor GptBlockImpl::forward(const torch::Tensor& x) {
  if (post_ln_) {
    const torch::Tensor h = ln_1(x + attn(x));
    return ln_2(h + mlp(h));
  }
  const torch::Tensor h = x + attn(ln_1(x));
  return h + mlp(ln_2(h));
}

GptImpl::GptImpl(GptConfig config, std::optional<std::vector<int64_t>> present_blocks)
    : config_(std::move(config)) {
  const absl::Status status = ValidateGptConfig(config_);
  TORCH_CHECK(status.ok(), status.ToString());
  const absl::Status blocks_status = CheckPresentBlocks(config_, present_blocks);
  TORCH_CHECK(blocks_status.ok(), blocks_status.ToString());

  const int64_t embed_dim = EmbedDim(config_);
  wte = register_module("wte", torch::nn::Embedding(config_.vocab_size, embed_dim));
  wpe = register_module("wpe", torch::nn::Embedding(config_.n_positions, config_.n_embd));
  if (embed_dim != config_.n_embd) {
    project_in = register_module(
        "project_in",
        torch::nn::Linear(torch::nn::LinearOptions(embed_dim, config_.n_embd).bias(false)));
    project_out = register_module(
        "project_out",
        torch::nn::Linear(torch::nn::LinearOptions(config_.n_embd, embed_dim).bias(false)));
  }
  drop_ = register_module("drop", torch::nn::Dropout(config_.dropout));

  // A plain holder rather than a ModuleList, so that absent blocks leave gaps
  // and every block keeps the name "h.<i>" of the full network.
  auto h = register_module("h", std::make_shared<torch::nn::Module>("GptBlocks"));
  std::vector<bool> present(config_.n_layer, !present_blocks.has_value());
  if (present_blocks) {
    for (int64_t k : *present_blocks) present[k] = true;
  }
  for (int64_t k = 0; k < config_.n_layer; ++k) {
    blocks_.push_back(present[k] ? GptBlock(config_) : GptBlock(nullptr));
    if (present[k]) h->register_module(std::to_string(k), blocks_.back());
  }
  if (HasFinalNorm(config_)) {
    ln_f = register_module(
        "ln_f", torch::nn::LayerNorm(
                    torch::nn::LayerNormOptions({config_.n_embd}).eps(config_.layer_norm_epsilon)));
  }

  // GPT-2's initialisation; LayerNorm keeps its own 1 / 0.
  torch::NoGradGuard no_grad;
  constexpr double kStd = 0.02;
  const double proj_std = kStd / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  wte->weight.normal_(0.0, kStd);
  wpe->weight.normal_(0.0, kStd);
  if (project_in) {
    project_in->weight.normal_(0.0, kStd);
    project_out->weight.normal_(0.0, kStd);
  }
  for (GptBlock& block : blocks_) {
    if (block.is_empty()) continue;
    InitLinear(*block->attn->c_attn, kStd);
    InitLinear(*block->attn->c_proj, proj_std);
    InitLinear(*block->mlp->c_fc, kStd);
    InitLinear(*block->mlp->c_proj, proj_std);
  }
}

std::string GptImpl::BlockPrefix(int64_t index) const { return "h." + std::to_string(index) + "."; }

torch::Tensor GptImpl::Embed(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2, "GPT input must be token ids (N, T), got shape ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == torch::kLong, "GPT token ids must be int64, got ",
              ids.scalar_type());
  const int64_t t = ids.size(1);
  TORCH_CHECK(t <= config_.n_positions, "sequence of ", t,
              " tokens is longer than the model's context of n_positions = ", config_.n_positions);
  const torch::Tensor positions =
      torch::arange(t, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));
  torch::Tensor tokens = wte(ids);
  if (project_in) tokens = project_in(tokens);
  return drop_(tokens + wpe(positions));
}

torch::Tensor GptImpl::RunBlocks(torch::Tensor hidden, int64_t begin, int64_t end) {
  TORCH_CHECK(0 <= begin && begin <= end && end <= num_blocks(), "block range [", begin, ", ", end,
              ") is not within [0, ", num_blocks(), "]");
  for (int64_t k = begin; k < end; ++k) {
    if (!blocks_[k].is_empty()) hidden = blocks_[k]->forward(hidden);
  }
  return hidden;
}

torch::Tensor GptImpl::Head(const torch::Tensor& hidden) {
  torch::Tensor x = ln_f ? ln_f(hidden) : hidden;
  if (project_out) x = project_out(x);
  return torch::nn::functional::linear(x, wte->weight);
}

absl::StatusOr<Gpt> MakeGpt(const GptConfig& config,
                            std::optional<std::vector<int64_t>> present_blocks) {
  OFFSITE_RETURN_IF_ERROR(ValidateGptConfig(config));
  OFFSITE_RETURN_IF_ERROR(CheckPresentBlocks(config, present_blocks));
  return Gpt(config, std::move(present_blocks));
}

torch::Tensor LanguageModelLoss(const torch::Tensor& logits, const torch::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 3, "logits must be (N, T, V), got ", logits.sizes());
  TORCH_CHECK(targets.sizes() == logits.sizes().slice(0, 2), "targets ", targets.sizes(),
              " do not match logits ", logits.sizes());
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(2)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
}

}  // namespace offsite
