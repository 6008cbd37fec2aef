#ifndef OFFSITE_MODELS_GPT_H_
#define OFFSITE_MODELS_GPT_H_

// A GPT-2-style decoder-only language model (Radford et al. 2019), following
// Hugging Face `transformers` GPT2Model / GPT2LMHeadModel:
//   x = dropout(wte(ids) + wpe(positions))
//   per block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//   logits = ln_f(x) @ wte.weight^T    (tied embeddings, no lm_head parameter)
// with causal multi-head self-attention and an MLP C -> 4C -> C with GELU in
// its tanh approximation (GPT-2's "gelu_new"; GptConfig::activation picks
// exact GELU or OPT's ReLU instead). One `dropout` rate stands for
// GPT-2's embd_pdrop, attn_pdrop and resid_pdrop.
//
// Example (the default config is a byte-level model, see common/text_data.h):
//   GptConfig config;
//   OFFSITE_ASSIGN_OR_RETURN(Gpt model, MakeGpt(config));
//   torch::Tensor logits = model->forward(ids);          // ids (N, T) int64
//   torch::Tensor loss = LanguageModelLoss(logits, targets);
//
// Parameter names are GPT2Model's, without the "transformer." prefix:
//   wte.weight (vocab, C)              wpe.weight (n_positions, C)
//   h.<i>.ln_1.weight / bias (C)       h.<i>.attn.c_attn.weight (3C, C) / bias (3C)
//   h.<i>.attn.c_proj.weight (C, C)    h.<i>.ln_2.weight / bias (C)
//   h.<i>.mlp.c_fc.weight (4C, C)      h.<i>.mlp.c_proj.weight (C, 4C)
//   ln_f.weight / bias (C)
// (plus "lora_a" / "lora_b" next to a weight while LoRA is on, models/lora.h).
// Linear weights are stored torch-style, (out, in): Hugging Face's Conv1D keeps
// them (in, out), so an importer of a Hugging Face checkpoint must transpose
// every c_attn, c_proj and c_fc weight (biases and everything else load as is).
// There is no "h.<i>.attn.bias" causal-mask buffer: the mask is computed in
// forward, so it is never saved, copied or shipped.

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/block_model.h"
#include "models/lora.h"

namespace offsite {

struct GptConfig {
  int64_t vocab_size = 257;   // Byte tokenizer: 256 bytes + end-of-text.
  int64_t n_positions = 128;  // Longest context.
  int64_t n_embd = 128;       // Width C.
  int64_t n_layer = 12;       // Blocks.
  int64_t n_head = 4;         // Attention heads; must divide n_embd.
  double layer_norm_epsilon = 1e-5;
  double dropout = 0;  // Embedding, attention and residual dropout.
  // MLP activation: "gelu_new" (GELU, tanh approximation: GPT-2), "gelu"
  // (exact GELU) or "relu" (OPT).
  std::string activation = "gelu_new";
  // OPT-350m's variants. post_ln: x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))
  // (LayerNorm after each residual add), and no ln_f. embed_dim > 0 and !=
  // n_embd: wte is (vocab, embed_dim), "project_in" (embed_dim -> n_embd, no
  // bias) follows it and "project_out" (n_embd -> embed_dim, no bias) precedes
  // the tied head. final_norm = false drops ln_f (implied by post_ln).
  bool post_ln = false;
  int64_t embed_dim = 0;
  bool final_norm = true;
};

// OK, or InvalidArgument naming the offending field ("GptConfig.n_head: ...").
absl::Status ValidateGptConfig(const GptConfig& config);

// Number of parameters of the full network `config` describes (all n_layer
// blocks, no LoRA), from the config alone; for the default variant
//   vocab*C + n_positions*C + n_layer*(12C^2 + 13C) + 2C.
int64_t GptParameterCount(const GptConfig& config);

// Causal multi-head self-attention on (N, T, C): position t attends to
// positions <= t. Submodules "c_attn" (C -> 3C: q, k, v) and "c_proj" (C -> C).
class GptAttentionImpl : public torch::nn::Module {
 public:
  GptAttentionImpl(int64_t n_embd, int64_t n_head, double dropout);

  torch::Tensor forward(const torch::Tensor& x);

  LoraLinear c_attn{nullptr};
  LoraLinear c_proj{nullptr};

 private:
  int64_t n_head_;
  torch::nn::Dropout attn_dropout_{nullptr};   // On the attention weights.
  torch::nn::Dropout resid_dropout_{nullptr};  // On the output.
};
TORCH_MODULE(GptAttention);

// The MLP: dropout(c_proj(act(c_fc(x)))), C -> 4C -> C, act one of
// GptConfig::activation (default gelu_new: GELU in its tanh approximation).
class GptMlpImpl : public torch::nn::Module {
 public:
  GptMlpImpl(int64_t n_embd, double dropout, std::string activation = "gelu_new");

  torch::Tensor forward(const torch::Tensor& x);

  LoraLinear c_fc{nullptr};
  LoraLinear c_proj{nullptr};

 private:
  torch::nn::Dropout dropout_{nullptr};
  std::string activation_;
};
TORCH_MODULE(GptMlp);

// One pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(x)); or with
// config.post_ln, ln_1(x + attn(x)), then ln_2(h + mlp(h)). Shape-preserving.
class GptBlockImpl : public torch::nn::Module {
 public:
  explicit GptBlockImpl(const GptConfig& config);

  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm ln_1{nullptr};
  GptAttention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  GptMlp mlp{nullptr};

 private:
  bool post_ln_ = false;
};
TORCH_MODULE(GptBlock);

// The network. As a BlockModelImpl: Embed takes token ids (N, T) int64 to
// wte + wpe (then dropout), (N, T, C); RunBlocks runs the GPT blocks; Head is
// ln_f and the tied projection to logits (N, T, vocab_size). (With
// embed_dim: project_in(wte) + wpe, and project_out before the projection.)
//
// A network may hold only some of its blocks (`present_blocks`, e.g. an
// Offsite-Tuning emulator): absent ones are skipped and the present ones keep
// their names "h.<i>.*" of the full network.
//
// Initialised as GPT-2: every Linear and embedding weight normal(0, 0.02),
// except both c_proj weights of each block, normal(0, 0.02 / sqrt(2 * n_layer))
// (n_layer of the config, whichever blocks are present); biases zero;
// LayerNorms weight 1, bias 0.
class GptImpl : public BlockModelImpl {
 public:
  // The config must be valid (see ValidateGptConfig) and `present_blocks`
  // indices in [0, n_layer); otherwise throws c10::Error. MakeGpt returns a
  // Status instead. nullopt builds all blocks.
  explicit GptImpl(GptConfig config,
                   std::optional<std::vector<int64_t>> present_blocks = std::nullopt);

  int64_t num_blocks() const override { return config_.n_layer; }
  bool has_block(int64_t index) const override { return !blocks_.at(index).is_empty(); }
  // "h.<index>."
  std::string BlockPrefix(int64_t index) const override;
  // Token ids (N, T), int64, T <= n_positions (else c10::Error) -> (N, T, C).
  torch::Tensor Embed(const torch::Tensor& ids) override;
  // Blocks [begin, end) on (N, T, C), skipping absent ones;
  // 0 <= begin <= end <= n_layer.
  torch::Tensor RunBlocks(torch::Tensor hidden, int64_t begin, int64_t end) override;
  // (N, T, C) -> logits (N, T, vocab_size): ln_f (unless post_ln or
  // !final_norm), project_out (with embed_dim), then @ wte.weight^T.
  torch::Tensor Head(const torch::Tensor& hidden) override;

  const GptConfig& config() const { return config_; }
  // Null (is_empty()) for a block this network does not hold.
  GptBlock& block(int64_t index) { return blocks_.at(index); }

  torch::nn::Embedding wte{nullptr};
  torch::nn::Embedding wpe{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};         // Null without a final norm.
  torch::nn::Linear project_in{nullptr};      // Null unless embed_dim != n_embd.
  torch::nn::Linear project_out{nullptr};

 private:
  GptConfig config_;
  torch::nn::Dropout drop_{nullptr};
  std::vector<GptBlock> blocks_;  // One slot per block; null where absent.
};
TORCH_MODULE(Gpt);

// Validates the config and block indices (InvalidArgument), then builds the
// network.
absl::StatusOr<Gpt> MakeGpt(const GptConfig& config,
                            std::optional<std::vector<int64_t>> present_blocks = std::nullopt);

// Mean next-token cross-entropy (nats) of logits (N, T, V) against targets
// (N, T) int64, over the targets that are not -1 (padding). NaN if every
// target is -1. For input windows w (N, T + 1): logits of w[:, :T], targets
// w[:, 1:]. exp(loss) is the perplexity.
torch::Tensor LanguageModelLoss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace offsite

#endif  // OFFSITE_MODELS_GPT_H_
