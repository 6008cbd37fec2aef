#include "models/pix2seq.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

absl::Status FieldError(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("Pix2SeqConfig.", field, ": ", problem));
}

ConvNextV2Config EncoderConfig(const Pix2SeqConfig& config) {
  ConvNextV2Config encoder;
  encoder.in_channels = config.in_channels;
  encoder.num_classes = 0;  // Backbone only.
  encoder.depths = config.encoder_depths;
  encoder.dims = config.encoder_dims;
  encoder.stem_stride = config.encoder_stem_stride;
  encoder.drop_path = config.encoder_drop_path;
  return encoder;
}

BoxTokenizer CheckedTokenizer(const Pix2SeqConfig& config) {
  const absl::Status status = ValidatePix2SeqConfig(config);
  TORCH_CHECK(status.ok(), status.ToString());
  return *BoxTokenizer::Create(config.tokenizer);
}

// allowed[t][v]: may output position t hold token v (see "Output grammar").
torch::Tensor GrammarMask(const BoxTokenizer& tokenizer, int64_t max_objects, bool constrain) {
  const int64_t max_len = tokenizer.MaxLength(max_objects);
  const int64_t bins = tokenizer.num_bins();
  const int64_t eos = tokenizer.eos();
  torch::Tensor allowed = torch::zeros({max_len, tokenizer.vocab_size()}, torch::kBool);
  for (int64_t t = 0; t < max_len; ++t) {
    torch::Tensor row = allowed[t];
    if (!constrain) {
      row.slice(0, 0, eos + 1).fill_(true);  // All but BOS and PAD.
      continue;
    }
    const int64_t slot = t % BoxTokenizer::kTokensPerObject;
    if (slot == BoxTokenizer::kTokensPerObject - 1) {
      row.slice(0, bins, eos).fill_(true);
    } else {
      if (t < max_len - 1) row.slice(0, 0, bins).fill_(true);
      if (slot == 0) row[eos] = true;
    }
  }
  return allowed;
}

void CheckImages(const Pix2SeqImpl& model, const torch::Tensor& images) {
  const Pix2SeqConfig& config = model.config();
  TORCH_CHECK(images.dim() == 4 && images.size(1) == config.in_channels &&
                  images.size(2) == config.image_size && images.size(3) == config.image_size,
              "images must be (N, ", config.in_channels, ", ", config.image_size, ", ",
              config.image_size, "), got ", images.sizes());
}

// Autoregressive decoding shared by Sample (sampled) and Greedy (argmax).
SampledSequences Generate(Pix2SeqImpl& model, const torch::Tensor& images, int64_t copies,
                          double temperature, std::optional<at::Generator> generator,
                          int64_t max_len) {
  CheckImages(model, images);
  TORCH_CHECK(copies >= 1, "samples_per_image must be positive, got ", copies);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "temperature must be positive and finite, got ", temperature);
  torch::NoGradGuard no_grad;
  const int64_t limit = max_len <= 0 ? model.max_len() : std::min(max_len, model.max_len());
  const BoxTokenizer& tokenizer = model.tokenizer();

  torch::Tensor memory = model.Encode(images);
  if (copies > 1) memory = memory.repeat_interleave(copies, /*dim=*/0);
  const int64_t m = memory.size(0);
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(memory.device());
  DecoderCache cache = model.StartDecoding(memory);
  torch::Tensor input = torch::full({m}, tokenizer.bos(), long_options);
  torch::Tensor finished = torch::zeros({m}, long_options.dtype(torch::kBool));
  std::vector<torch::Tensor> tokens, masks, log_probs;
  // confidences[t]: the head's output at the position whose input is output
  // token t (read one step later).
  std::vector<torch::Tensor> confidences;
  for (int64_t step = 0; step < limit; ++step) {
    const DecoderOutput decoded = model.DecodeNext(cache, input);
    if (step > 0) confidences.push_back(decoded.confidence.select(1, 0).sigmoid());
    const torch::Tensor logits = decoded.logits.select(1, 0);
    const torch::Tensor logp = (logits.to(torch::kFloat) / temperature).log_softmax(-1);
    torch::Tensor next =
        generator.has_value()
            ? torch::multinomial(logp.exp(), 1, /*replacement=*/false, *generator).squeeze(1)
            : logp.argmax(-1);
    const torch::Tensor live = ~finished;
    const torch::Tensor live_float = live.to(torch::kFloat);
    next = torch::where(live, next, torch::full_like(next, tokenizer.pad()));
    tokens.push_back(next);
    masks.push_back(live_float);
    log_probs.push_back(logp.gather(1, next.unsqueeze(1)).squeeze(1) * live_float);
    finished = finished | next.eq(tokenizer.eos());
    input = next;
    if (finished.all().item<bool>()) break;
  }
  SampledSequences out;
  out.tokens = torch::stack(tokens, 1);
  out.mask = torch::stack(masks, 1);
  out.token_log_probs = torch::stack(log_probs, 1);
  out.log_prob = out.token_log_probs.sum(1);
  while (confidences.size() < tokens.size()) {
    confidences.push_back(torch::full({m}, 0.5, memory.options().dtype(torch::kFloat)));
  }
  out.box_confidence = torch::stack(confidences, 1).to(torch::kFloat);
  return out;
}

}  // namespace

absl::Status ValidatePix2SeqConfig(const Pix2SeqConfig& config) {
  const absl::Status encoder = ValidateConfig(EncoderConfig(config));
  if (!encoder.ok()) return FieldError("encoder", std::string(encoder.message()));
  if (config.image_size < 1) return FieldError("image_size", "must be positive");
  const int64_t stride = ConvNextV2TotalStride(EncoderConfig(config));
  if (config.image_size % stride != 0) {
    return FieldError(
        "image_size",
        absl::StrCat(config.image_size, " is not a multiple of the encoder's stride ", stride));
  }
  if (!(config.encoder_drop_path >= 0 && config.encoder_drop_path < 1)) {
    return FieldError("encoder_drop_path", "must be in [0, 1)");
  }
  if (config.n_layer < 1) return FieldError("n_layer", "must be positive");
  if (config.n_embd < 1) return FieldError("n_embd", "must be positive");
  if (config.n_head < 1 || config.n_embd % config.n_head != 0) {
    return FieldError("n_head",
                      absl::StrCat(config.n_head, " heads do not divide n_embd ", config.n_embd));
  }
  if (!(config.dropout >= 0 && config.dropout < 1)) {
    return FieldError("dropout", "must be in [0, 1)");
  }
  const absl::Status tokenizer = BoxTokenizer::Create(config.tokenizer).status();
  if (!tokenizer.ok()) return FieldError("tokenizer", std::string(tokenizer.message()));
  if (config.max_objects < 1) return FieldError("max_objects", "must be positive");
  return absl::OkStatus();
}

Pix2SeqAttentionImpl::Pix2SeqAttentionImpl(int64_t n_embd, int64_t n_head, double dropout)
    : n_head_(n_head), dropout_(dropout) {
  TORCH_CHECK(n_head > 0 && n_embd % n_head == 0, n_head, " heads do not divide width ", n_embd);
  q_ = register_module("q", torch::nn::Linear(n_embd, n_embd));
  kv_ = register_module("kv", torch::nn::Linear(n_embd, 2 * n_embd));
  proj_ = register_module("proj", torch::nn::Linear(n_embd, n_embd));
}

torch::Tensor Pix2SeqAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context,
                                            bool causal) {
  TORCH_CHECK(x.dim() == 3 && context.dim() == 3 && x.size(0) == context.size(0) &&
                  x.size(2) == context.size(2),
              "attention expects x (N, T, C) and context (N, S, C), got ", x.sizes(), " and ",
              context.sizes());
  const auto [k, v] = KeysValues(context);
  return Attend(x, k, v, causal);
}

std::pair<torch::Tensor, torch::Tensor> Pix2SeqAttentionImpl::KeysValues(
    const torch::Tensor& context) {
  const int64_t n = context.size(0);
  const int64_t s = context.size(1);
  const int64_t c = context.size(2);
  const int64_t d = c / n_head_;
  const std::vector<torch::Tensor> kv = kv_(context).split(c, /*dim=*/2);
  return {kv[0].view({n, s, n_head_, d}).transpose(1, 2),
          kv[1].view({n, s, n_head_, d}).transpose(1, 2)};
}

torch::Tensor Pix2SeqAttentionImpl::Attend(const torch::Tensor& x, const torch::Tensor& k,
                                           const torch::Tensor& v, bool causal) {
  const int64_t n = x.size(0);
  const int64_t t = x.size(1);
  const int64_t s = k.size(2);
  const int64_t c = x.size(2);
  const int64_t d = c / n_head_;
  const torch::Tensor q = q_(x).view({n, t, n_head_, d}).transpose(1, 2);

  torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d));
  if (causal) {
    TORCH_CHECK(s == t, "causal attention needs context of x's length");
    const torch::Tensor future =
        torch::ones({t, s}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  }
  const torch::Tensor weights =
      torch::dropout(torch::softmax(scores, /*dim=*/-1), dropout_, is_training());
  const torch::Tensor y = torch::matmul(weights, v).transpose(1, 2).reshape({n, t, c});
  return torch::dropout(proj_(y), dropout_, is_training());
}

Pix2SeqDecoderBlockImpl::Pix2SeqDecoderBlockImpl(int64_t n_embd, int64_t n_head, double dropout)
    : dropout_(dropout) {
  ln_1_ = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  self_attn_ = register_module("self_attn", Pix2SeqAttention(n_embd, n_head, dropout));
  ln_2_ = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  cross_attn_ = register_module("cross_attn", Pix2SeqAttention(n_embd, n_head, dropout));
  ln_3_ = register_module("ln_3", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  fc_ = register_module("fc", torch::nn::Linear(n_embd, 4 * n_embd));
  fc_proj_ = register_module("fc_proj", torch::nn::Linear(4 * n_embd, n_embd));
}

torch::Tensor Pix2SeqDecoderBlockImpl::forward(const torch::Tensor& x,
                                               const torch::Tensor& memory) {
  const torch::Tensor h = ln_1_(x);
  torch::Tensor y = x + self_attn_(h, h, /*causal=*/true);
  y = y + cross_attn_(ln_2_(y), memory, /*causal=*/false);
  return y + Mlp(y);
}

torch::Tensor Pix2SeqDecoderBlockImpl::Mlp(const torch::Tensor& y) {
  return torch::dropout(fc_proj_(torch::gelu(fc_(ln_3_(y)))), dropout_, is_training());
}

DecoderLayerCache Pix2SeqDecoderBlockImpl::StartCache(const torch::Tensor& memory) {
  DecoderLayerCache cache;
  std::tie(cache.cross_keys, cache.cross_values) = cross_attn_->KeysValues(memory);
  return cache;
}

torch::Tensor Pix2SeqDecoderBlockImpl::Step(const torch::Tensor& x, DecoderLayerCache& cache) {
  const torch::Tensor h = ln_1_(x);
  auto [k, v] = self_attn_->KeysValues(h);
  if (cache.self_keys.defined()) {
    k = torch::cat({cache.self_keys, k}, /*dim=*/2);
    v = torch::cat({cache.self_values, v}, /*dim=*/2);
  }
  cache.self_keys = k;
  cache.self_values = v;
  // The new position may see every cached one: no mask needed.
  torch::Tensor y = x + self_attn_->Attend(h, k, v, /*causal=*/false);
  y = y + cross_attn_->Attend(ln_2_(y), cache.cross_keys, cache.cross_values, /*causal=*/false);
  return y + Mlp(y);
}

Pix2SeqImpl::Pix2SeqImpl(Pix2SeqConfig config)
    : config_(std::move(config)), tokenizer_(CheckedTokenizer(config_)) {
  const ConvNextV2Config encoder_config = EncoderConfig(config_);
  grid_size_ = config_.image_size / ConvNextV2TotalStride(encoder_config);
  const int64_t features = config_.encoder_dims.back();
  const int64_t c = config_.n_embd;

  encoder_ = register_module("encoder", ConvNextV2(encoder_config));
  enc_pos_ = register_parameter("enc_pos", torch::zeros({1, grid_size_ * grid_size_, features}));
  enc_proj_ = register_module("enc_proj", torch::nn::Linear(features, c));
  enc_norm_ = register_module("enc_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c})));
  tok_emb_ = register_module("tok_emb", torch::nn::Embedding(vocab_size(), c));
  pos_emb_ = register_module("pos_emb", torch::nn::Embedding(max_len(), c));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layer; ++i) {
    blocks_->push_back(Pix2SeqDecoderBlock(c, config_.n_head, config_.dropout));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c})));
  head_ = register_module("head", torch::nn::Linear(c, vocab_size()));
  confidence_ = register_module("confidence", torch::nn::Linear(c, 1));

  // The encoder initialised itself; the rest as ConvNeXt V2 / GPT-2.
  InitConvNextV2Weights(*enc_proj_);
  InitConvNextV2Weights(*blocks_);
  InitConvNextV2Weights(*head_);
  {
    torch::NoGradGuard no_grad;
    enc_pos_.normal_(0.0, 0.02);
    tok_emb_->weight.normal_(0.0, 0.02);
    pos_emb_->weight.normal_(0.0, 0.02);
    confidence_->weight.zero_();
    confidence_->bias.zero_();
  }
  allowed_ = GrammarMask(tokenizer_, config_.max_objects, config_.constrain_grammar);
}

torch::Tensor Pix2SeqImpl::Encode(const torch::Tensor& images) {
  CheckImages(*this, images);
  // (N, D, h, w) -> (N, h*w, D), row-major cells. LayerNorm after the
  // projection, so the memory the decoder attends to is at unit scale from the
  // start (before it, a tiny model often mixed up its training images).
  const torch::Tensor features = encoder_->ForwardFeatures(images).flatten(2).transpose(1, 2);
  return enc_norm_(enc_proj_(features + enc_pos_));
}

torch::Tensor Pix2SeqImpl::Decode(const torch::Tensor& memory, const torch::Tensor& input_tokens) {
  return DecodeWithConfidence(memory, input_tokens).logits;
}

DecoderOutput Pix2SeqImpl::DecodeWithConfidence(const torch::Tensor& memory,
                                                const torch::Tensor& input_tokens) {
  TORCH_CHECK(memory.dim() == 3 && memory.size(2) == config_.n_embd, "memory must be (N, S, ",
              config_.n_embd, "), got ", memory.sizes());
  TORCH_CHECK(input_tokens.dim() == 2 && input_tokens.size(0) == memory.size(0),
              "input_tokens must be (", memory.size(0), ", T), got ", input_tokens.sizes());
  const int64_t t = input_tokens.size(1);
  TORCH_CHECK(t >= 1 && t <= max_len(), "decoder input length must be in [1, ", max_len(),
              "], got ", t);
  const torch::Tensor positions =
      torch::arange(t, torch::TensorOptions().dtype(torch::kLong).device(input_tokens.device()));
  torch::Tensor x =
      torch::dropout(tok_emb_(input_tokens) + pos_emb_(positions), config_.dropout, is_training());
  for (const auto& block : *blocks_) x = block->as<Pix2SeqDecoderBlock>()->forward(x, memory);
  return Readout(x, /*first_position=*/0);
}

DecoderOutput Pix2SeqImpl::Readout(const torch::Tensor& x, int64_t first_position) {
  const torch::Tensor features = ln_f_(x);
  const torch::Tensor logits = head_(features);
  const torch::Tensor allowed =
      allowed_.slice(0, first_position, first_position + x.size(1)).to(logits.device());
  return {logits.masked_fill(allowed.logical_not(), kMaskedLogit),
          confidence_(features).squeeze(-1)};
}

DecoderCache Pix2SeqImpl::StartDecoding(const torch::Tensor& memory) {
  TORCH_CHECK(memory.dim() == 3 && memory.size(2) == config_.n_embd, "memory must be (N, S, ",
              config_.n_embd, "), got ", memory.sizes());
  DecoderCache cache;
  for (const auto& block : *blocks_) {
    cache.layers.push_back(block->as<Pix2SeqDecoderBlock>()->StartCache(memory));
  }
  return cache;
}

DecoderOutput Pix2SeqImpl::DecodeNext(DecoderCache& cache, const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 1, "tokens must be (N), got ", tokens.sizes());
  TORCH_CHECK(cache.length < max_len(), "decoder input length must be at most ", max_len());
  const int64_t t = cache.length;
  torch::Tensor x =
      torch::dropout(tok_emb_(tokens.unsqueeze(1)) + pos_emb_->weight.slice(0, t, t + 1),
                     config_.dropout, is_training());
  for (size_t i = 0; i < blocks_->size(); ++i) {
    x = (*blocks_)[i]->as<Pix2SeqDecoderBlock>()->Step(x, cache.layers[i]);
  }
  ++cache.length;
  return Readout(x, t);
}

torch::Tensor Pix2SeqImpl::forward(const torch::Tensor& images, const torch::Tensor& input_tokens) {
  return Decode(Encode(images), input_tokens);
}

absl::StatusOr<Pix2Seq> MakePix2Seq(const Pix2SeqConfig& config) {
  OFFSITE_RETURN_IF_ERROR(ValidatePix2SeqConfig(config));
  return Pix2Seq(config);
}

at::Tensor ShiftRight(const Pix2SeqImpl& model, const at::Tensor& targets) {
  TORCH_CHECK(targets.dim() == 2 && targets.size(1) >= 1, "targets must be (N, T), got ",
              targets.sizes());
  const torch::Tensor bos = torch::full({targets.size(0), 1}, model.tokenizer().bos(),
                                        targets.options().dtype(torch::kLong));
  return torch::cat({bos, targets.to(torch::kLong).slice(1, 0, targets.size(1) - 1)}, 1);
}

TokenBatch PadTokenSequences(const Pix2SeqImpl& model,
                             const std::vector<std::vector<int64_t>>& sequences) {
  TORCH_CHECK(!sequences.empty(), "no sequences to pad");
  size_t longest = 0;
  for (const auto& sequence : sequences) {
    TORCH_CHECK(!sequence.empty() && static_cast<int64_t>(sequence.size()) <= model.max_len(),
                "sequence lengths must be in [1, ", model.max_len(), "], got ", sequence.size());
    longest = std::max(longest, sequence.size());
  }
  const int64_t n = static_cast<int64_t>(sequences.size());
  const int64_t t = static_cast<int64_t>(longest);
  TokenBatch batch;
  batch.tokens = torch::full({n, t}, model.tokenizer().pad(), torch::kLong);
  batch.mask = torch::zeros({n, t});
  auto tokens = batch.tokens.accessor<int64_t, 2>();
  auto mask = batch.mask.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < sequences[i].size(); ++j) {
      tokens[i][j] = sequences[i][j];
      mask[i][j] = 1;
    }
  }
  return batch;
}

at::Tensor TeacherForcingLoss(Pix2SeqImpl& model, const at::Tensor& images,
                              const at::Tensor& targets, const at::Tensor& mask) {
  TORCH_CHECK(mask.sizes() == targets.sizes(), "mask must be shaped like targets ", targets.sizes(),
              ", got ", mask.sizes());
  const torch::Tensor logits = model.forward(images, ShiftRight(model, targets));
  const torch::Tensor real = mask.to(logits.device()).to(torch::kBool);
  const torch::Tensor ids = targets.to(logits.device()).to(torch::kLong).masked_fill(~real, 0);
  const torch::Tensor nll =
      -logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1);  // (N, T)
  const torch::Tensor weight = real.to(nll.scalar_type());
  return (nll * weight).sum() / weight.sum().clamp_min(1);
}

SampledSequences Sample(Pix2SeqImpl& model, const at::Tensor& images, int64_t samples_per_image,
                        double temperature, at::Generator generator, int64_t max_len) {
  return Generate(model, images, samples_per_image, temperature, std::move(generator), max_len);
}

SampledSequences Greedy(Pix2SeqImpl& model, const at::Tensor& images, int64_t max_len) {
  return Generate(model, images, 1, 1.0, std::nullopt, max_len);
}

at::Tensor ScoreSequences(Pix2SeqImpl& model, const at::Tensor& images, const at::Tensor& tokens,
                          const at::Tensor& mask, double temperature) {
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "temperature must be positive and finite, got ", temperature);
  torch::Tensor logits = model.forward(images, ShiftRight(model, tokens));
  if (temperature != 1.0) logits = logits / temperature;
  return SequenceLogProb(logits, tokens, mask);
}

std::vector<std::vector<ScoredBox>> DecodeScoredBoxes(const BoxTokenizer& tokenizer,
                                                      const SampledSequences& sequences) {
  const torch::Tensor tokens = sequences.tokens.to(torch::kCPU).to(torch::kLong).contiguous();
  const torch::Tensor log_probs =
      sequences.token_log_probs.to(torch::kCPU).to(torch::kFloat).contiguous();
  TORCH_CHECK(tokens.dim() == 2 && log_probs.sizes() == tokens.sizes(),
              "tokens and token_log_probs must be (M, T) alike, got ", tokens.sizes(), " and ",
              log_probs.sizes());
  const bool has_confidence = sequences.box_confidence.defined();
  const torch::Tensor confidence =
      has_confidence ? sequences.box_confidence.to(torch::kCPU).to(torch::kFloat).contiguous()
                     : torch::Tensor();
  TORCH_CHECK(!has_confidence || confidence.sizes() == tokens.sizes(),
              "box_confidence must be shaped like tokens ", tokens.sizes(), ", got ",
              confidence.sizes());
  const int64_t* ids = tokens.data_ptr<int64_t>();
  const float* logp = log_probs.data_ptr<float>();
  const float* iou = has_confidence ? confidence.data_ptr<float>() : nullptr;
  const int64_t t = tokens.size(1);
  std::vector<std::vector<ScoredBox>> out(tokens.size(0));
  for (int64_t i = 0; i < tokens.size(0); ++i) {
    const int64_t* row = ids + i * t;
    const std::vector<Box> boxes = tokenizer.Decode(std::vector<int64_t>(row, row + t));
    const int64_t first = (t > 0 && row[0] == tokenizer.bos()) ? 1 : 0;  // Decode skips a BOS.
    for (size_t j = 0; j < boxes.size(); ++j) {
      const int64_t class_position =
          i * t + first + BoxTokenizer::kTokensPerObject * static_cast<int64_t>(j) + 4;
      double score = std::exp(static_cast<double>(logp[class_position]));
      if (iou != nullptr) score *= iou[class_position];
      out[i].push_back(ScoredBox{boxes[j], score});
    }
  }
  return out;
}

std::vector<std::vector<Box>> DecodeBoxes(const BoxTokenizer& tokenizer, const at::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be (M, T), got ", tokens.sizes());
  const torch::Tensor ids = tokens.to(torch::kCPU).to(torch::kLong).contiguous();
  const int64_t* data = ids.data_ptr<int64_t>();
  const int64_t t = ids.size(1);
  std::vector<std::vector<Box>> out;
  out.reserve(ids.size(0));
  for (int64_t i = 0; i < ids.size(0); ++i) {
    out.push_back(tokenizer.Decode(std::vector<int64_t>(data + i * t, data + (i + 1) * t)));
  }
  return out;
}

}  // namespace offsite
