#include "models/pix2seq.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/detection_scenes.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/reinforce.h"
#include "models/rewards.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

// A model small enough for many forward passes in a unit test.
Pix2SeqConfig TinyConfig() {
  Pix2SeqConfig config;
  config.encoder_depths = {1, 1};
  config.encoder_dims = {16, 32};
  config.n_layer = 2;
  config.n_embd = 32;
  config.n_head = 4;
  config.max_objects = 2;
  return config;
}

Pix2Seq MakeModel(const Pix2SeqConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  absl::StatusOr<Pix2Seq> model = MakePix2Seq(config);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// Four scenes of 1-2 filled squares of random brightness on a 64x64 canvas.
Scenes SquareScenes(int64_t count, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t items = 20;
  torch::Tensor images = torch::zeros({items, 28, 28});
  for (int64_t i = 0; i < items; ++i) {
    const int64_t side = 10 + i % 15;
    const int64_t offset = (28 - side) / 2;
    images[i]
        .slice(0, offset, offset + side)
        .slice(1, offset, offset + side)
        .fill_(0.5 + 0.025 * i);
  }
  const torch::Tensor labels = torch::arange(items) % 10;
  SceneOptions options;
  options.min_objects = 1;
  options.max_objects = 2;
  options.seed = seed;
  absl::StatusOr<Scenes> scenes = GenerateScenes(images, labels, count, options);
  EXPECT_TRUE(scenes.ok()) << scenes.status();
  return *scenes;
}

TokenBatch SceneTargets(const Pix2SeqImpl& model, const Scenes& scenes) {
  std::vector<std::vector<int64_t>> sequences;
  for (const auto& boxes : scenes.objects) {
    absl::StatusOr<std::vector<int64_t>> ids = model.tokenizer().Encode(boxes);
    EXPECT_TRUE(ids.ok()) << ids.status();
    sequences.push_back(*ids);
  }
  return PadTokenSequences(model, sequences);
}

// Adam on teacher forcing; returns the last loss.
double TrainTeacherForcing(Pix2SeqImpl& model, const torch::Tensor& images,
                           const TokenBatch& targets, int64_t steps, double lr) {
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(lr));
  double loss_value = 0;
  for (int64_t step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    const torch::Tensor loss = TeacherForcingLoss(model, images, targets.tokens, targets.mask);
    loss.backward();
    optimizer.step();
    loss_value = loss.item<double>();
  }
  return loss_value;
}

TEST(Pix2SeqTest, DefaultConfigShapes) {
  Pix2Seq model = MakeModel(Pix2SeqConfig{}, 0);
  EXPECT_EQ(model->grid_size(), 8);
  EXPECT_EQ(model->max_len(), 21);
  EXPECT_EQ(model->vocab_size(), 77);
  const torch::Tensor images = torch::rand({2, 1, 64, 64});
  const torch::Tensor memory = model->Encode(images);
  EXPECT_EQ(memory.sizes(), torch::IntArrayRef({2, 64, 128}));
  const torch::Tensor tokens = torch::full({2, 5}, model->tokenizer().bos(), torch::kLong);
  EXPECT_EQ(model->Decode(memory, tokens).sizes(), torch::IntArrayRef({2, 5, 77}));
  EXPECT_THROW(model->Decode(memory, torch::zeros({2, 22}, torch::kLong)), c10::Error);
  EXPECT_THROW(model->Encode(torch::rand({2, 1, 32, 32})), c10::Error);
}

TEST(Pix2SeqTest, InvalidConfigIsNamed) {
  Pix2SeqConfig config;
  config.n_head = 3;
  EXPECT_THAT(ValidatePix2SeqConfig(config).message(), HasSubstr("Pix2SeqConfig.n_head"));
  config = Pix2SeqConfig{};
  config.image_size = 60;
  EXPECT_THAT(ValidatePix2SeqConfig(config).message(), HasSubstr("Pix2SeqConfig.image_size"));
  config = Pix2SeqConfig{};
  config.tokenizer.num_bins = 1;
  EXPECT_THAT(MakePix2Seq(config).status().message(), HasSubstr("Pix2SeqConfig.tokenizer"));
  EXPECT_TRUE(ValidatePix2SeqConfig(Pix2SeqConfig{}).ok());
}

TEST(Pix2SeqTest, DecoderIsCausal) {
  Pix2Seq model = MakeModel(TinyConfig(), 1);
  model->eval();
  const torch::Tensor memory = model->Encode(torch::rand({2, 1, 64, 64}));
  torch::Tensor tokens = torch::randint(0, 64, {2, 9}, torch::kLong);
  const torch::Tensor before = model->Decode(memory, tokens);
  tokens.index_put_({torch::indexing::Slice(), 6}, 70);  // A class token instead of a bin.
  const torch::Tensor after = model->Decode(memory, tokens);
  EXPECT_TRUE(torch::equal(before.slice(1, 0, 6), after.slice(1, 0, 6)));
  EXPECT_FALSE(torch::allclose(before.slice(1, 6), after.slice(1, 6)));
}

TEST(Pix2SeqTest, IncrementalDecodingMatchesTheWholePrefix) {
  Pix2Seq model = MakeModel(TinyConfig(), 4);
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor memory = model->Encode(torch::rand({3, 1, 64, 64}));
  const torch::Tensor tokens = torch::randint(0, 64, {3, model->max_len()}, torch::kLong);
  const DecoderOutput whole = model->DecodeWithConfidence(memory, tokens);
  DecoderCache cache = model->StartDecoding(memory);
  for (int64_t t = 0; t < model->max_len(); ++t) {
    const DecoderOutput next = model->DecodeNext(cache, tokens.select(1, t));
    ASSERT_EQ(next.logits.sizes(), torch::IntArrayRef({3, 1, model->vocab_size()}));
    EXPECT_TRUE(torch::allclose(next.logits.select(1, 0), whole.logits.select(1, t), 1e-5, 1e-5))
        << "position " << t;
    EXPECT_TRUE(
        torch::allclose(next.confidence.select(1, 0), whole.confidence.select(1, t), 1e-5, 1e-5))
        << "position " << t;
  }
  EXPECT_EQ(cache.length, model->max_len());
  EXPECT_THROW(model->DecodeNext(cache, tokens.select(1, 0)), c10::Error);
}

TEST(Pix2SeqTest, GrammarMasksLogits) {
  Pix2Seq model = MakeModel(TinyConfig(), 2);
  const BoxTokenizer& tokenizer = model->tokenizer();
  const torch::Tensor logits = model->forward(
      torch::rand({1, 1, 64, 64}), torch::full({1, model->max_len()}, 5, torch::kLong))[0];
  auto allowed = [&](int64_t t, int64_t v) { return logits[t][v].item<double>() > kMaskedLogit; };
  for (int64_t t = 0; t < model->max_len(); ++t) {
    EXPECT_FALSE(allowed(t, tokenizer.bos())) << t;
    EXPECT_FALSE(allowed(t, tokenizer.pad())) << t;
  }
  EXPECT_TRUE(allowed(0, 0));
  EXPECT_TRUE(allowed(0, tokenizer.eos()));
  EXPECT_FALSE(allowed(0, tokenizer.num_bins()));  // No class first.
  EXPECT_FALSE(allowed(2, tokenizer.eos()));       // No EOS inside a box.
  EXPECT_TRUE(allowed(4, tokenizer.num_bins() + 3));
  EXPECT_FALSE(allowed(4, 7));   // Fifth token is a class.
  EXPECT_FALSE(allowed(10, 0));  // Last position: EOS only.
  EXPECT_TRUE(allowed(10, tokenizer.eos()));
}

TEST(Pix2SeqTest, SampleLogProbEqualsScoreAndTokenSum) {
  Pix2Seq model = MakeModel(TinyConfig(), 3);
  model->eval();
  const int64_t k = 3;
  const torch::Tensor images = torch::rand({2, 1, 64, 64});
  const torch::Tensor repeated = images.repeat_interleave(k, 0);
  for (double temperature : {1.0, 0.7}) {
    SampledSequences samples =
        Sample(*model, images, k, temperature, at::detail::createCPUGenerator(11));
    ASSERT_EQ(samples.tokens.size(0), 2 * k);
    EXPECT_FALSE(samples.log_prob.requires_grad());
    const torch::Tensor scored =
        ScoreSequences(*model, repeated, samples.tokens, samples.mask, temperature);
    EXPECT_TRUE(scored.requires_grad());
    EXPECT_TRUE(torch::allclose(scored.detach(), samples.log_prob, 0, 1e-4))
        << scored << samples.log_prob;
    EXPECT_TRUE(torch::allclose(samples.token_log_probs.sum(1), samples.log_prob, 0, 1e-5));

    // By hand: one prefix at a time, each token's log-prob under the tempered softmax.
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < 2 * k; ++i) {
      double expected = 0;
      torch::Tensor input = torch::full({1, 1}, model->tokenizer().bos(), torch::kLong);
      for (int64_t t = 0; t < samples.tokens.size(1); ++t) {
        if (samples.mask[i][t].item<float>() == 0) break;
        const torch::Tensor logits = model->forward(repeated.slice(0, i, i + 1), input)[0][t];
        const int64_t token = samples.tokens[i][t].item<int64_t>();
        expected += (logits / temperature).log_softmax(0)[token].item<double>();
        input = torch::cat({input, samples.tokens.slice(0, i, i + 1).slice(1, t, t + 1)}, 1);
      }
      EXPECT_NEAR(samples.log_prob[i].item<double>(), expected, 1e-4) << "sequence " << i;
    }
  }
}

TEST(Pix2SeqTest, MasksEndAtEosAndSequencesAreWholeBoxes) {
  Pix2Seq model = MakeModel(TinyConfig(), 4);
  const BoxTokenizer& tokenizer = model->tokenizer();
  const SampledSequences samples =
      Sample(*model, torch::rand({3, 1, 64, 64}), 4, 1.0, at::detail::createCPUGenerator(5));
  ASSERT_EQ(samples.tokens.sizes(), samples.mask.sizes());
  ASSERT_LE(samples.tokens.size(1), model->max_len());
  const std::vector<std::vector<Box>> boxes = DecodeBoxes(tokenizer, samples.tokens);
  for (int64_t i = 0; i < samples.tokens.size(0); ++i) {
    int64_t eos_at = -1;
    for (int64_t t = 0; t < samples.tokens.size(1); ++t) {
      const int64_t token = samples.tokens[i][t].item<int64_t>();
      const float mask = samples.mask[i][t].item<float>();
      if (eos_at < 0) {
        EXPECT_EQ(mask, 1) << i << " " << t;
        EXPECT_NE(token, tokenizer.pad());
        EXPECT_NE(token, tokenizer.bos());
        if (token == tokenizer.eos()) eos_at = t;
      } else {
        EXPECT_EQ(mask, 0) << i << " " << t;
        EXPECT_EQ(token, tokenizer.pad()) << i << " " << t;
        EXPECT_EQ(samples.token_log_probs[i][t].item<float>(), 0);
      }
    }
    ASSERT_GE(eos_at, 0) << "sequence " << i << " has no EOS";
    EXPECT_EQ(eos_at % BoxTokenizer::kTokensPerObject, 0);
    EXPECT_EQ(static_cast<int64_t>(boxes[i].size()), eos_at / BoxTokenizer::kTokensPerObject);
  }
  const std::vector<std::vector<ScoredBox>> scored = DecodeScoredBoxes(tokenizer, samples);
  for (size_t i = 0; i < scored.size(); ++i) {
    ASSERT_EQ(scored[i].size(), boxes[i].size());
    for (size_t j = 0; j < scored[i].size(); ++j) {
      EXPECT_EQ(scored[i][j].box, boxes[i][j]);
      // The class token's probability times the box's predicted IoU.
      const double class_logp = samples.token_log_probs[i][5 * j + 4].item<double>();
      const double confidence = samples.box_confidence[i][5 * j + 4].item<double>();
      EXPECT_NEAR(scored[i][j].score, std::exp(class_logp) * confidence, 1e-6);
    }
  }
}

TEST(Pix2SeqTest, GreedyAndSeededSamplingAreDeterministic) {
  Pix2Seq model = MakeModel(TinyConfig(), 5);
  const torch::Tensor images = torch::rand({3, 1, 64, 64});
  const SampledSequences a = Greedy(*model, images);
  const SampledSequences b = Greedy(*model, images);
  EXPECT_TRUE(torch::equal(a.tokens, b.tokens));
  EXPECT_TRUE(torch::equal(a.mask, b.mask));
  EXPECT_EQ(a.tokens.size(0), 3);
  const SampledSequences c = Sample(*model, images, 2, 1.0, at::detail::createCPUGenerator(9));
  const SampledSequences d = Sample(*model, images, 2, 1.0, at::detail::createCPUGenerator(9));
  EXPECT_TRUE(torch::equal(c.tokens, d.tokens));
  // Greedy's log-prob is at temperature 1 and rescoring agrees.
  EXPECT_TRUE(torch::allclose(ScoreSequences(*model, images, a.tokens, a.mask).detach(), a.log_prob,
                              0, 1e-4));
}

TEST(Pix2SeqTest, OverfitsFourScenesWithTeacherForcing) {
  Pix2SeqConfig config = TinyConfig();
  config.encoder_dims = {32, 64};
  config.n_embd = 64;
  Pix2Seq model = MakeModel(config, 6);
  const Scenes scenes = SquareScenes(4, 6);
  const TokenBatch targets = SceneTargets(*model, scenes);
  // 200 steps: with other initial seeds (7..14) 5 of 6 models pass as well;
  // the slow part is telling the images apart, not learning the sequences.
  const double loss = TrainTeacherForcing(*model, scenes.images, targets, 200, 3e-3);
  EXPECT_LT(loss, 0.3);

  model->eval();
  const SampledSequences greedy = Greedy(*model, scenes.images);
  int64_t reproduced = 0;
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t length = targets.mask[i].sum().item<int64_t>();
    if (greedy.tokens.size(1) >= length &&
        torch::equal(greedy.tokens[i].slice(0, 0, length), targets.tokens[i].slice(0, 0, length))) {
      ++reproduced;
    }
  }
  EXPECT_GE(reproduced, 3) << "loss " << loss << "\n" << greedy.tokens << "\n" << targets.tokens;
}

TEST(Pix2SeqTest, ConfidenceHeadReadsEachBoxAndRanksItWithTheClassToken) {
  Pix2Seq model = MakeModel(TinyConfig(), 9);
  model->eval();
  const Scenes scenes = SquareScenes(3, 9);
  const torch::Tensor memory = model->Encode(scenes.images);
  const torch::Tensor inputs = torch::randint(0, 64, {3, 6}, torch::kLong);
  const DecoderOutput decoded = model->DecodeWithConfidence(memory, inputs);
  EXPECT_TRUE(torch::equal(decoded.logits, model->Decode(memory, inputs)));
  EXPECT_EQ(decoded.confidence.sizes(), torch::IntArrayRef({3, 6}));

  // Untuned, the head is zero: every box's predicted IoU is 0.5, and boxes
  // rank by their class token alone.
  const SampledSequences greedy = Greedy(*model, scenes.images);
  ASSERT_EQ(greedy.box_confidence.sizes(), greedy.tokens.sizes());
  EXPECT_TRUE(torch::equal(greedy.box_confidence, torch::full_like(greedy.box_confidence, 0.5)));
  std::vector<std::vector<ScoredBox>> scored = DecodeScoredBoxes(model->tokenizer(), greedy);
  for (size_t i = 0; i < scored.size(); ++i) {
    for (size_t b = 0; b < scored[i].size(); ++b) {
      const double class_probability =
          std::exp(greedy.token_log_probs[i][5 * b + 4].item<double>());
      EXPECT_NEAR(scored[i][b].score, 0.5 * class_probability, 1e-6);
    }
  }

  // A box's confidence is the head's output at the position after its class
  // token, the one that sees the whole box.
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["confidence.weight"].normal_(0, 1);
  }
  const SampledSequences again = Greedy(*model, scenes.images);
  ASSERT_TRUE(torch::equal(again.tokens, greedy.tokens));  // The head never steers decoding.
  const torch::Tensor inputs_again = ShiftRight(*model, again.tokens);
  const torch::Tensor confidence =
      model->DecodeWithConfidence(memory, inputs_again).confidence.sigmoid();
  scored = DecodeScoredBoxes(model->tokenizer(), again);
  int64_t boxes = 0;
  for (size_t i = 0; i < scored.size(); ++i) {
    for (size_t b = 0; b < scored[i].size(); ++b, ++boxes) {
      const int64_t class_position = 5 * b + 4;
      EXPECT_NEAR(again.box_confidence[i][class_position].item<double>(),
                  confidence[i][class_position + 1].item<double>(), 1e-5);
      EXPECT_NEAR(scored[i][b].score,
                  std::exp(again.token_log_probs[i][class_position].item<double>()) *
                      confidence[i][class_position + 1].item<double>(),
                  1e-5);
    }
  }
  EXPECT_GT(boxes, 0);
}

TEST(Pix2SeqTest, ReinforceStepChangesParametersWithFiniteGradients) {
  Pix2SeqConfig config = TinyConfig();
  config.encoder_dims = {32, 64};
  config.n_embd = 64;
  Pix2Seq model = MakeModel(config, 7);
  const Scenes scenes = SquareScenes(4, 7);
  // A little MLE first, so that samples differ in reward.
  TrainTeacherForcing(*model, scenes.images, SceneTargets(*model, scenes), 60, 3e-3);

  const int64_t k = 4;
  const SampledSequences samples =
      Sample(*model, scenes.images, k, 1.0, at::detail::createCPUGenerator(3));
  absl::StatusOr<RewardFn> reward = MakeReward("detection", RewardOptions{});
  ASSERT_TRUE(reward.ok()) << reward.status();
  const std::vector<std::vector<Box>> predicted = DecodeBoxes(model->tokenizer(), samples.tokens);
  torch::Tensor rewards = torch::zeros({4, k});
  for (int64_t n = 0; n < 4; ++n) {
    for (int64_t j = 0; j < k; ++j) {
      absl::StatusOr<double> r =
          (*reward)(RewardInput(predicted[n * k + j]), RewardInput(scenes.objects[n]));
      ASSERT_TRUE(r.ok()) << r.status();
      rewards[n][j] = *r;
    }
  }
  const torch::Tensor advantages = LeaveOneOutAdvantages(rewards);
  ASSERT_GT(advantages.abs().sum().item<double>(), 0) << "rewards carry no signal: " << rewards;

  std::vector<torch::Tensor> before;
  for (const auto& p : model->parameters()) before.push_back(p.detach().clone());
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-4));
  optimizer.zero_grad();
  const torch::Tensor logprob =
      ScoreSequences(*model, scenes.images.repeat_interleave(k, 0), samples.tokens, samples.mask);
  EXPECT_TRUE(torch::allclose(logprob.detach(), samples.log_prob, 0, 1e-4));
  const torch::Tensor loss = ReinforceLoss(advantages.reshape(-1), logprob);
  ASSERT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  double grad_norm = 0;
  for (const auto& p : model->parameters()) {
    if (!p.grad().defined()) continue;
    ASSERT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
    grad_norm += p.grad().pow(2).sum().item<double>();
  }
  EXPECT_GT(grad_norm, 0);
  torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
  optimizer.step();
  bool changed = false;
  const auto after = model->parameters();
  for (size_t i = 0; i < after.size(); ++i) changed = changed || !torch::equal(after[i], before[i]);
  EXPECT_TRUE(changed);
}

}  // namespace
}  // namespace offsite
