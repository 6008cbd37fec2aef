#include "models/reinforce.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace offsite {

at::Tensor LeaveOneOutAdvantages(const at::Tensor& rewards) {
  TORCH_CHECK(rewards.dim() == 2, "rewards must be (N, K), got ", rewards.sizes());
  const int64_t k = rewards.size(1);
  TORCH_CHECK(k >= 2, "leave-one-out needs K >= 2 samples per input, got ", k);
  // As the mean of pairwise differences, sum_j (r_k - r_j) / (K - 1), rather than
  // r_k - (sum - r_k) / (K - 1): the same value, but exactly 0 for tied rewards.
  const at::Tensor r = rewards.to(at::kFloat);
  return (r.unsqueeze(2) - r.unsqueeze(1)).sum(2) / static_cast<double>(k - 1);
}

at::Tensor SequenceLogProb(const at::Tensor& logits, const at::Tensor& tokens,
                           const at::Tensor& mask) {
  TORCH_CHECK(logits.dim() == 3, "logits must be (N, T, V), got ", logits.sizes());
  TORCH_CHECK(
      tokens.dim() == 2 && tokens.size(0) == logits.size(0) && tokens.size(1) == logits.size(1),
      "tokens must be (N, T) = (", logits.size(0), ", ", logits.size(1), "), got ", tokens.sizes());
  TORCH_CHECK(mask.sizes() == tokens.sizes(), "mask must be shaped like tokens ", tokens.sizes(),
              ", got ", mask.sizes());
  const at::Tensor real = mask.to(logits.device()).to(at::kBool);
  // Padding may hold any id; gather needs a valid one.
  const at::Tensor ids = tokens.to(logits.device()).to(at::kLong).masked_fill(~real, 0);
  const at::Tensor token_logprob = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1);
  return (token_logprob * real.to(token_logprob.scalar_type())).sum(1);
}

at::Tensor MeanTokenEntropy(const at::Tensor& logits, const at::Tensor& mask) {
  TORCH_CHECK(logits.dim() == 3, "logits must be (N, T, V), got ", logits.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == logits.size(0) && mask.size(1) == logits.size(1),
              "mask must be (N, T), got ", mask.sizes());
  const at::Tensor logp = logits.log_softmax(-1);
  const at::Tensor entropy = -(logp.exp() * logp).sum(-1);  // (N, T)
  const at::Tensor weight = mask.to(logits.device()).to(entropy.scalar_type());
  return (entropy * weight).sum() / weight.sum().clamp_min(1);
}

at::Tensor ReinforceLoss(const at::Tensor& advantages, const at::Tensor& seq_logprob) {
  TORCH_CHECK(advantages.sizes() == seq_logprob.sizes(), "advantages ", advantages.sizes(),
              " and log-probs ", seq_logprob.sizes(), " differ in shape");
  return -(advantages.detach().to(seq_logprob.device()).to(seq_logprob.scalar_type()) * seq_logprob)
              .mean();
}

absl::StatusOr<BoxTokenizer> BoxTokenizer::Create(const BoxTokenizerOptions& options) {
  if (options.num_bins < 2) {
    return absl::InvalidArgumentError("BoxTokenizerOptions.num_bins: must be at least 2");
  }
  if (options.num_classes < 1) {
    return absl::InvalidArgumentError("BoxTokenizerOptions.num_classes: must be positive");
  }
  if (!(options.canvas_size > 0) || !std::isfinite(options.canvas_size)) {
    return absl::InvalidArgumentError(
        "BoxTokenizerOptions.canvas_size: must be positive and finite");
  }
  return BoxTokenizer(options);
}

int64_t BoxTokenizer::CoordToken(float coordinate) const {
  const double scaled =
      static_cast<double>(coordinate) / options_.canvas_size * (options_.num_bins - 1);
  if (!(scaled > 0)) return 0;  // Also NaN.
  return std::min<int64_t>(options_.num_bins - 1, std::llround(scaled));
}

float BoxTokenizer::TokenCoord(int64_t token) const {
  return static_cast<float>(static_cast<double>(token) / (options_.num_bins - 1) *
                            options_.canvas_size);
}

absl::StatusOr<std::vector<int64_t>> BoxTokenizer::Encode(
    const std::vector<Box>& boxes, std::optional<uint64_t> order_seed) const {
  std::vector<size_t> order(boxes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (order_seed.has_value()) {
    // Fisher-Yates by hand: std::shuffle's result depends on the library.
    std::mt19937_64 engine(*order_seed);
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[engine() % i]);
  }
  std::vector<int64_t> tokens;
  tokens.reserve(kTokensPerObject * boxes.size() + 1);
  for (size_t i : order) {
    const Box& box = boxes[i];
    if (box.label < 0 || box.label >= options_.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("object ", i, " has label ", box.label,
                                                     ", want [0, ", options_.num_classes, ")"));
    }
    tokens.push_back(CoordToken(box.y0));
    tokens.push_back(CoordToken(box.x0));
    tokens.push_back(CoordToken(box.y1));
    tokens.push_back(CoordToken(box.x1));
    tokens.push_back(options_.num_bins + box.label);
  }
  tokens.push_back(eos());
  return tokens;
}

std::vector<Box> BoxTokenizer::Decode(const std::vector<int64_t>& tokens) const {
  std::vector<Box> boxes;
  size_t i = (!tokens.empty() && tokens[0] == bos()) ? 1 : 0;
  for (; i + kTokensPerObject <= tokens.size(); i += kTokensPerObject) {
    const int64_t* group = tokens.data() + i;
    bool well_formed = IsClass(group[4]);
    for (int j = 0; j < 4; ++j) well_formed = well_formed && IsCoord(group[j]);
    if (!well_formed) break;  // Also stops at EOS and PAD, which are neither.
    Box box;
    box.y0 = TokenCoord(group[0]);
    box.x0 = TokenCoord(group[1]);
    box.y1 = TokenCoord(group[2]);
    box.x1 = TokenCoord(group[3]);
    box.label = group[4] - options_.num_bins;
    boxes.push_back(box);
  }
  return boxes;
}

}  // namespace offsite
