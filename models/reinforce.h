#ifndef OFFSITE_MODELS_REINFORCE_H_
#define OFFSITE_MODELS_REINFORCE_H_

// REINFORCE with a leave-one-out baseline ("Tuning computer vision models with
// task rewards", Susano Pinto et al. 2023), and the Pix2Seq-style box
// tokenizer a detector speaks.
//
// One tuning step, for N images and K samples each drawn from the model at
// temperature 1 (the log-probs must be those of the sampling distribution):
//
//   at::Tensor rewards = ...;                                   // (N, K), one per sample
//   at::Tensor advantages = LeaveOneOutAdvantages(rewards);     // (N, K)
//   at::Tensor logits = decoder(images, inputs);                // (N*K, T, V), teacher-forced
//   at::Tensor logprob = SequenceLogProb(logits, tokens, mask); // (N*K)
//   at::Tensor loss = ReinforceLoss(advantages.reshape(-1), logprob);
//   loss.backward();
//
// Tensor functions check their arguments with TORCH_CHECK (c10::Error), as
// torch operators do; callers validate user input before.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/detection_scenes.h"  // Box

namespace offsite {

// rewards (N, K) with K >= 2 -> advantages (N, K), float:
//   A[n][k] = r[n][k] - mean of r[n][j] over the other K - 1 samples j != k.
// Each row of advantages sums to zero, and tied rewards get exactly 0.
at::Tensor LeaveOneOutAdvantages(const at::Tensor& rewards);

// log P(sequence) under the logits: sum over t of
// log_softmax(logits[n][t])[tokens[n][t]] * mask[n][t].
// logits (N, T, V); tokens (N, T) int64; mask (N, T), 1 for real tokens (the
// EOS included) and 0 for padding. Tokens under mask 0 are ignored and may be
// any value. Returns (N), differentiable in logits.
at::Tensor SequenceLogProb(const at::Tensor& logits, const at::Tensor& tokens,
                           const at::Tensor& mask);

// Mean entropy (nats) of the predicted next-token distributions over the real
// positions (mask 1) of all sequences: a health signal while tuning. Scalar.
at::Tensor MeanTokenEntropy(const at::Tensor& logits, const at::Tensor& mask);

// -mean(advantages.detach() * seq_logprob); both of one shape. Descending it
// raises the probability of samples with positive advantage.
at::Tensor ReinforceLoss(const at::Tensor& advantages, const at::Tensor& seq_logprob);

struct BoxTokenizerOptions {
  // Coordinates are quantised into num_bins levels spanning [0, canvas_size].
  int64_t num_bins = 64;
  int64_t num_classes = 10;
  float canvas_size = 64;
};

// Pix2Seq-style tokens for a set of boxes: per object y0, x0, y1, x1 (each a
// coordinate bin) then its class, and one EOS after the last object.
//
// Vocabulary: [0, num_bins) coordinate bins, then num_classes class tokens,
// then EOS, BOS (the decoder's start token) and PAD; vocab_size() in all.
// Coordinate c becomes bin round(c / canvas_size * (num_bins - 1)), clamped,
// and bin b decodes to b / (num_bins - 1) * canvas_size, so a round trip moves
// a coordinate inside the canvas by at most half a bin,
// canvas_size / (num_bins - 1) / 2.
//
// Example (64 bins, 10 classes, 64 px canvas):
//   OFFSITE_ASSIGN_OR_RETURN(BoxTokenizer tokenizer, BoxTokenizer::Create({}));
//   OFFSITE_ASSIGN_OR_RETURN(std::vector<int64_t> ids,
//                            tokenizer.Encode(scene_boxes, /*order_seed=*/step));
//   std::vector<Box> boxes = tokenizer.Decode(sampled_ids);
class BoxTokenizer {
 public:
  static constexpr int64_t kTokensPerObject = 5;

  // InvalidArgument naming the field for num_bins < 2, num_classes < 1 or a
  // canvas size that is not positive and finite.
  static absl::StatusOr<BoxTokenizer> Create(const BoxTokenizerOptions& options);

  int64_t num_bins() const { return options_.num_bins; }
  int64_t num_classes() const { return options_.num_classes; }
  int64_t eos() const { return options_.num_bins + options_.num_classes; }
  int64_t bos() const { return eos() + 1; }
  int64_t pad() const { return eos() + 2; }
  int64_t vocab_size() const { return eos() + 3; }
  // Longest encoding of max_objects objects: 5 per object plus EOS.
  int64_t MaxLength(int64_t max_objects) const { return kTokensPerObject * max_objects + 1; }

  int64_t CoordToken(float coordinate) const;
  float TokenCoord(int64_t token) const;  // token must be a coordinate bin.
  bool IsCoord(int64_t token) const { return token >= 0 && token < options_.num_bins; }
  bool IsClass(int64_t token) const { return token >= num_bins() && token < eos(); }

  // The tokens of `boxes` and EOS (no BOS). With order_seed the objects are
  // shuffled by a generator seeded with it (the same seed, the same order), as
  // Pix2Seq's MLE targets; without it they keep their order.
  // InvalidArgument naming the object whose label is not a class.
  absl::StatusOr<std::vector<int64_t>> Encode(const std::vector<Box>& boxes,
                                              std::optional<uint64_t> order_seed = {}) const;

  // The boxes in `tokens` (a leading BOS is skipped). Reading stops at EOS,
  // PAD, the end, or the first group of five that is not four coordinate bins
  // and a class; a malformed or truncated group and everything after it is
  // ignored. Coordinates are decoded as given, so y1 < y0 may come back (such
  // a box has no area).
  std::vector<Box> Decode(const std::vector<int64_t>& tokens) const;

 private:
  explicit BoxTokenizer(const BoxTokenizerOptions& options) : options_(options) {}

  BoxTokenizerOptions options_;
};

}  // namespace offsite

#endif  // OFFSITE_MODELS_REINFORCE_H_
