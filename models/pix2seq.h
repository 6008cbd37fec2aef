#ifndef OFFSITE_MODELS_PIX2SEQ_H_
#define OFFSITE_MODELS_PIX2SEQ_H_

// A Pix2Seq-style detector (Chen et al. 2022) for the small detection scenes of
// common/detection_scenes.h, as used by "Tuning computer vision models with task
// rewards" (Susano Pinto et al. 2023): an image encoder and an autoregressive
// decoder that reads the image features by cross-attention and emits the box
// tokens of models/reinforce.h (per object y0 x0 y1 x1 class, then EOS).
//
//   encoder:  ConvNeXt V2 backbone (no head) -> (N, D, h, w) features
//             -> flatten to (N, h*w, D) + learned 2-D position embedding
//             -> Linear(D -> n_embd) -> LayerNorm                 = memory (N, S, C)
//   decoder:  token + position embeddings of the input tokens (BOS first)
//             -> n_layer pre-LN blocks, each
//                  x = x + causal_self_attn(ln_1(x))
//                  x = x + cross_attn(ln_2(x), memory)
//                  x = x + mlp(ln_3(x))                      (C -> 4C -> C, GELU)
//             -> ln_f -> Linear(C -> vocab)                        = logits (N, T, V)
//                     -> Linear(C -> 1)                            = confidence (N, T)
//
// The confidence head is big_vision's confidence token for reward tuning: at
// the decoder position whose input is a box's class token (the position that
// predicts what follows the box), sigmoid(confidence) is the box's predicted
// IoU with its object (0 for a box of the wrong class or overlapping no object
// by IoU 0.5). MLE leaves it untouched; reward tuning trains it on the model's
// own samples (DetectorReinforceStep), and it ranks boxes for mAP together
// with the class-token probability (DecodeScoredBoxes). It starts at zero, so
// an untuned detector predicts 0.5 for every box and ranks by the class token
// alone, as Pix2Seq does.
//
// The default configuration: 64x64 one-channel canvases; a ConvNeXt V2 stem of
// stride 4 and two stages (depths {2, 2}, dims {64, 128}), so the memory is an
// 8x8 grid of S = 64 cells of 8x8 pixels (fine enough to place boxes of 14-28
// px items, coarse enough to stay cheap on a CPU); a decoder of 2 layers, width
// 128 and 4 heads; BoxTokenizer defaults (64 bins, 10 classes, vocab 77) and at
// most 4 objects, so at most MaxLength(4) = 21 output tokens.
//
// Output grammar. The logits that Decode returns are constrained by position
// alone: at output position t (t = 0 is the first token after BOS) only
//   t % 5 in {1, 2, 3}  coordinate bins,
//   t % 5 == 4          class tokens,
//   t % 5 == 0          a coordinate bin (a new object) or EOS; only EOS at
//                       t == 5 * max_objects (the last position),
// have finite logits; every other token's logit is kMaskedLogit, so BOS and PAD
// are never predicted and every sampled sequence decodes into whole boxes.
// (Set Pix2SeqConfig::constrain_grammar = false to mask only BOS and PAD.)
// Because the constraint is part of the logits, teacher forcing, scoring and
// sampling all see one and the same distribution: the log-prob Sample reports
// for a sequence equals ScoreSequences on it.
//
// Example (MLE step, then one REINFORCE step):
//   OFFSITE_ASSIGN_OR_RETURN(Pix2Seq model, MakePix2Seq(Pix2SeqConfig{}));
//   torch::Tensor loss = TeacherForcingLoss(*model, images, targets, mask);
//   ...
//   SampledSequences samples = Sample(*model, images, /*samples_per_image=*/4,
//                                     /*temperature=*/1.0, generator);
//   at::Tensor rewards = ...;  // (N, 4), e.g. DetectionReward of DecodeBoxes(...)
//   at::Tensor logprob = ScoreSequences(*model, images.repeat_interleave(4, 0),
//                                       samples.tokens, samples.mask);
//   ReinforceLoss(LeaveOneOutAdvantages(rewards).reshape(-1), logprob).backward();
//
// Tensor functions check their arguments with TORCH_CHECK (c10::Error), as
// torch operators do; callers validate user input before.

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/convnext_v2.h"
#include "models/reinforce.h"  // BoxTokenizer
#include "models/rewards.h"    // ScoredBox

namespace offsite {

struct Pix2SeqConfig {
  // Images are (N, in_channels, image_size, image_size).
  int64_t in_channels = 1;
  int64_t image_size = 64;
  // Encoder: a ConvNeXt V2 backbone; image_size must be a multiple of
  // encoder_stem_stride * 2^(stages - 1), which gives the memory grid side.
  std::vector<int64_t> encoder_depths = {2, 2};
  std::vector<int64_t> encoder_dims = {64, 128};
  int64_t encoder_stem_stride = 4;
  double encoder_drop_path = 0;
  // Decoder.
  int64_t n_layer = 2;
  int64_t n_embd = 128;
  int64_t n_head = 4;  // Must divide n_embd.
  double dropout = 0;  // Attention, residual and embedding dropout.
  // Output tokens: the vocabulary is tokenizer's, and the decoder reads at most
  // MaxLength(max_objects) input tokens (BOS and all but the last output).
  BoxTokenizerOptions tokenizer;
  int64_t max_objects = 4;
  // See "Output grammar" above.
  bool constrain_grammar = true;
};

// OK, or InvalidArgument naming the offending field ("Pix2SeqConfig.n_head: ...").
absl::Status ValidatePix2SeqConfig(const Pix2SeqConfig& config);

// The logit Decode gives to tokens the grammar rules out: finite, so that
// softmax gives them exactly 0 and entropies stay finite (no 0 * -inf).
inline constexpr double kMaskedLogit = -1e9;

// One decoder block's state during incremental decoding: keys and values
// (N, n_head, T or S, C / n_head).
struct DecoderLayerCache {
  torch::Tensor self_keys, self_values;    // of the positions decoded so far; T grows.
  torch::Tensor cross_keys, cross_values;  // of the memory; computed once.
};

// The decoder's state between DecodeNext calls.
struct DecoderCache {
  std::vector<DecoderLayerCache> layers;
  int64_t length = 0;  // positions decoded so far.
};

// Multi-head attention of queries x (N, T, C) over context (N, S, C); with
// `causal`, query t sees context positions <= t (context is then x itself).
// Submodules "q" (C -> C), "kv" (C -> 2C) and "proj" (C -> C).
class Pix2SeqAttentionImpl : public torch::nn::Module {
 public:
  Pix2SeqAttentionImpl(int64_t n_embd, int64_t n_head, double dropout);

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, bool causal);

  // The keys and values of context (N, S, C), each (N, n_head, S, C / n_head):
  // what incremental decoding caches instead of recomputing every step.
  std::pair<torch::Tensor, torch::Tensor> KeysValues(const torch::Tensor& context);
  // Attention of queries x (N, T, C) over precomputed keys and values.
  torch::Tensor Attend(const torch::Tensor& x, const torch::Tensor& keys,
                       const torch::Tensor& values, bool causal);

 private:
  int64_t n_head_;
  double dropout_;
  torch::nn::Linear q_{nullptr};
  torch::nn::Linear kv_{nullptr};
  torch::nn::Linear proj_{nullptr};
};
TORCH_MODULE(Pix2SeqAttention);

// One pre-LN decoder block (see the top of this file). Shape-preserving on x.
class Pix2SeqDecoderBlockImpl : public torch::nn::Module {
 public:
  Pix2SeqDecoderBlockImpl(int64_t n_embd, int64_t n_head, double dropout);

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory);

  // forward for one new position x (N, 1, C), given this block's cache: the
  // self-attention keys and values of the earlier positions (appended to) and
  // the cross-attention keys and values of the memory.
  torch::Tensor Step(const torch::Tensor& x, DecoderLayerCache& cache);
  // The cache of a decoding that has not started, over memory (N, S, C).
  DecoderLayerCache StartCache(const torch::Tensor& memory);

 private:
  // The residual branch after attention: ln_3, fc, GELU, fc_proj, dropout.
  torch::Tensor Mlp(const torch::Tensor& y);

  torch::nn::LayerNorm ln_1_{nullptr};
  Pix2SeqAttention self_attn_{nullptr};
  torch::nn::LayerNorm ln_2_{nullptr};
  Pix2SeqAttention cross_attn_{nullptr};
  torch::nn::LayerNorm ln_3_{nullptr};
  torch::nn::Linear fc_{nullptr};
  torch::nn::Linear fc_proj_{nullptr};
  double dropout_;
};
TORCH_MODULE(Pix2SeqDecoderBlock);

// What the decoder computes for N input sequences of length T.
struct DecoderOutput {
  torch::Tensor logits;      // (N, T, V): logits[:, t] predicts output token t.
  torch::Tensor confidence;  // (N, T): the confidence head's logit at each position.
};

// The detector. Parameter names: "encoder.*" (ConvNextV2's names), "enc_pos"
// (1, S, D), "enc_proj.*", "enc_norm.*" (over n_embd), "tok_emb.weight" (V, C),
// "pos_emb.weight" (max_len, C), "blocks.<i>.*", "ln_f.*", "head.*",
// "confidence.*". Initialised as ConvNeXt V2 / GPT-2: Linear, embedding and
// position weights normal(0, 0.02), biases zero, LayerNorms 1 / 0; the
// confidence head all zero.
class Pix2SeqImpl : public torch::nn::Module {
 public:
  // The config must be valid (see ValidatePix2SeqConfig); an invalid one
  // throws c10::Error. MakePix2Seq returns a Status instead.
  explicit Pix2SeqImpl(Pix2SeqConfig config);

  // images (N, in_channels, image_size, image_size) float -> memory (N, S, n_embd).
  torch::Tensor Encode(const torch::Tensor& images);

  // memory (N, S, n_embd), input_tokens (N, T) int64 with T <= max_len()
  // (input_tokens[:, 0] is normally BOS) -> logits (N, T, vocab_size()), where
  // logits[:, t] predicts output token t and depends only on input tokens
  // <= t. Grammar-excluded tokens get kMaskedLogit.
  torch::Tensor Decode(const torch::Tensor& memory, const torch::Tensor& input_tokens);

  // Decode's logits and the confidence head's logits from one pass.
  DecoderOutput DecodeWithConfidence(const torch::Tensor& memory,
                                     const torch::Tensor& input_tokens);

  // Incremental decoding: DecodeWithConfidence for one more position at a
  // time, with the keys and values of earlier positions (and of the memory)
  // cached, so T steps cost O(T) token passes instead of O(T^2). StartDecoding
  // over memory (N, S, n_embd); each DecodeNext feeds tokens (N) int64 at the
  // next position and returns its logits (N, 1, V) and confidence (N, 1),
  // equal (to rounding) to those of DecodeWithConfidence on the whole prefix.
  DecoderCache StartDecoding(const torch::Tensor& memory);
  DecoderOutput DecodeNext(DecoderCache& cache, const torch::Tensor& tokens);

  // Decode(Encode(images), input_tokens).
  torch::Tensor forward(const torch::Tensor& images, const torch::Tensor& input_tokens);

  const Pix2SeqConfig& config() const { return config_; }
  const BoxTokenizer& tokenizer() const { return tokenizer_; }
  int64_t vocab_size() const { return tokenizer_.vocab_size(); }
  // Longest output (and decoder input): MaxLength(max_objects).
  int64_t max_len() const { return tokenizer_.MaxLength(config_.max_objects); }
  // Side of the encoder's square feature grid; S = grid_size()^2.
  int64_t grid_size() const { return grid_size_; }

 private:
  Pix2SeqConfig config_;
  BoxTokenizer tokenizer_;
  int64_t grid_size_;
  ConvNextV2 encoder_{nullptr};
  torch::Tensor enc_pos_;
  torch::nn::Linear enc_proj_{nullptr};
  torch::nn::LayerNorm enc_norm_{nullptr};
  torch::nn::Embedding tok_emb_{nullptr};
  torch::nn::Embedding pos_emb_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::nn::Linear head_{nullptr};
  torch::nn::Linear confidence_{nullptr};
  torch::Tensor allowed_;  // (max_len, V) bool: the grammar; not a buffer, never saved.

  // Logits (grammar applied) and confidence of the decoder's last hidden
  // states x (N, T, C) for positions first_position .. first_position + T - 1.
  DecoderOutput Readout(const torch::Tensor& x, int64_t first_position);
};
TORCH_MODULE(Pix2Seq);

// Validates the config, then builds the model.
absl::StatusOr<Pix2Seq> MakePix2Seq(const Pix2SeqConfig& config);

// The decoder input for output tokens: BOS followed by targets[:, :-1].
// targets (N, T) int64 -> (N, T) int64.
at::Tensor ShiftRight(const Pix2SeqImpl& model, const at::Tensor& targets);

// Targets for teacher forcing: each sequence of BoxTokenizer::Encode (objects
// and EOS) padded with PAD to the longest, as tokens (N, T) int64 and mask
// (N, T) float (1 on real tokens, the EOS included). Every sequence must be
// non-empty and at most model.max_len() long (else c10::Error).
struct TokenBatch {
  at::Tensor tokens;
  at::Tensor mask;
};
TokenBatch PadTokenSequences(const Pix2SeqImpl& model,
                             const std::vector<std::vector<int64_t>>& sequences);

// Mean next-token cross-entropy (nats) over the real targets (mask 1) of the
// teacher-forced model: input = BOS + targets[:, :-1]. targets (N, T) int64
// with T <= max_len, mask (N, T) (tokens under mask 0 are ignored). Scalar,
// differentiable.
at::Tensor TeacherForcingLoss(Pix2SeqImpl& model, const at::Tensor& images,
                              const at::Tensor& targets, const at::Tensor& mask);

// Sequences drawn from (or chosen by) the model. M sequences of length T
// (T = the longest one's length, at most max_len).
struct SampledSequences {
  at::Tensor tokens;           // (M, T) int64, PAD after EOS.
  at::Tensor mask;             // (M, T) float: 1 up to and including EOS, 0 after.
  at::Tensor token_log_probs;  // (M, T) float: log-prob of each token, 0 under mask 0.
  at::Tensor log_prob;         // (M) float: token_log_probs summed.
  // (M, T) float: at each class token, its box's predicted IoU (the sigmoid
  // of the confidence head at the next position; 0.5 for a class token that
  // ends a sequence cut at max_len). Meaningless at other tokens.
  at::Tensor box_confidence;
};

// K = samples_per_image sequences per image by ancestral sampling from
// softmax(logits / temperature): images (N, ...) give M = N * K sequences,
// sequence n * K + k the k-th of image n. Sequences stop at EOS; one that
// reaches max_len without EOS (only possible with max_len below
// model.max_len() or an unconstrained grammar) keeps mask 1 throughout.
// The log-probs are those of the sampling distribution (the temperature
// included) and carry no gradient: for a differentiable one, rescore with
// ScoreSequences, which returns the same values. Runs without autograd; the
// caller chooses train/eval mode. max_len <= 0 means model.max_len().
// Deterministic for a given generator state (it advances the generator).
SampledSequences Sample(Pix2SeqImpl& model, const at::Tensor& images, int64_t samples_per_image,
                        double temperature, at::Generator generator, int64_t max_len = 0);

// The most probable token at each step (ties to the lowest id), one sequence
// per image, with its log-probs at temperature 1. Deterministic.
SampledSequences Greedy(Pix2SeqImpl& model, const at::Tensor& images, int64_t max_len = 0);

// SequenceLogProb of a teacher-forced pass at `temperature`: log P(tokens)
// with gradient, for REINFORCE. images (M, ...) one per sequence (for Sample's
// output, images.repeat_interleave(K, 0)); tokens and mask (M, T) as Sample
// returns them. Returns (M).
at::Tensor ScoreSequences(Pix2SeqImpl& model, const at::Tensor& images, const at::Tensor& tokens,
                          const at::Tensor& mask, double temperature = 1.0);

// The boxes of each sequence (BoxTokenizer::Decode: whole groups up to EOS),
// each scored by the probability of its class token (Pix2Seq's score:
// exp(token_log_probs) at the group's fifth token) times its box_confidence,
// when the sequences have one. For ranking predictions in
// ComputeDetectionMetrics; RewardInput takes the boxes alone (see DecodeBoxes).
std::vector<std::vector<ScoredBox>> DecodeScoredBoxes(const BoxTokenizer& tokenizer,
                                                      const SampledSequences& sequences);

// The boxes alone, one list per sequence.
std::vector<std::vector<Box>> DecodeBoxes(const BoxTokenizer& tokenizer, const at::Tensor& tokens);

}  // namespace offsite

#endif  // OFFSITE_MODELS_PIX2SEQ_H_
