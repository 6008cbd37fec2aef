#include "models/reinforce.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

TEST(ReinforceTest, LeaveOneOutAdvantagesSumToZeroPerGroup) {
  torch::manual_seed(0);
  const torch::Tensor rewards = torch::rand({5, 4});
  const torch::Tensor advantages = LeaveOneOutAdvantages(rewards);
  ASSERT_EQ(advantages.sizes(), rewards.sizes());
  EXPECT_TRUE(torch::allclose(advantages.sum(1), torch::zeros({5}), 0, 1e-6));

  const torch::Tensor known = LeaveOneOutAdvantages(torch::tensor({{1.f, 0.f, 0.f}}));
  EXPECT_TRUE(torch::allclose(known, torch::tensor({{1.f, -0.5f, -0.5f}})));
  // Equal rewards carry no signal.
  EXPECT_TRUE(torch::equal(LeaveOneOutAdvantages(torch::full({2, 3}, 0.7f)), torch::zeros({2, 3})));
}

TEST(ReinforceTest, LeaveOneOutNeedsTwoSamples) {
  EXPECT_THROW(LeaveOneOutAdvantages(torch::ones({3, 1})), c10::Error);
  EXPECT_THROW(LeaveOneOutAdvantages(torch::ones({3})), c10::Error);
}

TEST(ReinforceTest, SequenceLogProbIsSumOfSampledTokenLogProbs) {
  torch::manual_seed(1);
  const int64_t n = 3, t = 6, v = 11;
  const torch::Tensor logits = torch::randn({n, t, v});
  // Sample every position from the model's own distribution.
  const torch::Tensor tokens =
      torch::multinomial(logits.softmax(-1).reshape({n * t, v}), 1).reshape({n, t});
  const std::vector<int64_t> lengths = {6, 3, 1};
  torch::Tensor mask = torch::zeros({n, t});
  for (int64_t i = 0; i < n; ++i) mask[i].slice(0, 0, lengths[i]).fill_(1);

  const torch::Tensor logprob = SequenceLogProb(logits, tokens, mask);
  ASSERT_EQ(logprob.sizes(), torch::IntArrayRef({n}));
  for (int64_t i = 0; i < n; ++i) {
    double expected = 0;
    for (int64_t j = 0; j < lengths[i]; ++j) {
      const torch::Tensor row = logits[i][j];
      const int64_t token = tokens[i][j].item<int64_t>();
      expected += std::log(row.softmax(0)[token].item<double>());
    }
    EXPECT_NEAR(logprob[i].item<double>(), expected, 1e-4) << "sequence " << i;
  }
}

TEST(ReinforceTest, SequenceLogProbIgnoresPaddingIds) {
  torch::manual_seed(2);
  const torch::Tensor logits = torch::randn({1, 4, 5});
  const torch::Tensor mask = torch::tensor({{1.f, 1.f, 0.f, 0.f}});
  const torch::Tensor a = SequenceLogProb(logits, torch::tensor({{2, 4, 0, 0}}), mask);
  // Out-of-vocabulary ids under mask 0 are not read.
  const torch::Tensor b = SequenceLogProb(logits, torch::tensor({{2, 4, 99, -1}}), mask);
  EXPECT_TRUE(torch::allclose(a, b));
}

TEST(ReinforceTest, LossGradientFollowsAdvantageSign) {
  torch::manual_seed(3);
  const int64_t t = 5, v = 7;
  const torch::Tensor start = torch::randn({1, t, v});
  const torch::Tensor tokens =
      torch::multinomial(start.softmax(-1).reshape({t, v}), 1).reshape({1, t});
  const torch::Tensor mask = torch::ones({1, t});
  for (float sign : {1.f, -1.f}) {
    SCOPED_TRACE(sign > 0 ? "positive advantage" : "negative advantage");
    torch::Tensor logits = start.clone().requires_grad_(true);
    torch::Tensor advantages = torch::full({1}, sign).requires_grad_(true);
    const torch::Tensor before = SequenceLogProb(logits, tokens, mask);
    const torch::Tensor loss = ReinforceLoss(advantages, before);
    EXPECT_NEAR(loss.item<double>(), -sign * before.item<double>(), 1e-5);
    loss.backward();
    EXPECT_FALSE(advantages.grad().defined());  // Advantages are constants.
    torch::Tensor after;
    {
      torch::NoGradGuard no_grad;
      logits -= 0.1 * logits.grad();
      after = SequenceLogProb(logits, tokens, mask);
    }
    // A gradient step raises the sample's probability when its advantage is
    // positive and lowers it when negative; either way the loss falls.
    if (sign > 0) {
      EXPECT_GT(after.item<double>(), before.item<double>());
    } else {
      EXPECT_LT(after.item<double>(), before.item<double>());
    }
    EXPECT_LT(ReinforceLoss(advantages, after).item<double>(), loss.item<double>());
  }
}

TEST(ReinforceTest, MeanTokenEntropyOfUniformIsLogV) {
  const torch::Tensor logits = torch::zeros({2, 3, 8});
  const torch::Tensor mask = torch::tensor({{1.f, 1.f, 0.f}, {1.f, 0.f, 0.f}});
  EXPECT_NEAR(MeanTokenEntropy(logits, mask).item<double>(), std::log(8.0), 1e-6);
  // A confident model has low entropy.
  torch::Tensor peaked = torch::zeros({1, 1, 8});
  peaked[0][0][3] = 30;
  EXPECT_LT(MeanTokenEntropy(peaked, torch::ones({1, 1})).item<double>(), 1e-6);
}

BoxTokenizer MakeTokenizer() {
  absl::StatusOr<BoxTokenizer> tokenizer = BoxTokenizer::Create(BoxTokenizerOptions());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *tokenizer;
}

const std::vector<Box> kBoxes = {Box{3.2f, 10.f, 20.7f, 30.1f, 4}, Box{40.f, 0.f, 64.f, 17.5f, 0},
                                 Box{10.f, 33.3f, 29.9f, 61.f, 9}};

TEST(BoxTokenizerTest, VocabularyLayout) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  EXPECT_EQ(tokenizer.num_bins(), 64);
  EXPECT_EQ(tokenizer.eos(), 74);
  EXPECT_EQ(tokenizer.bos(), 75);
  EXPECT_EQ(tokenizer.pad(), 76);
  EXPECT_EQ(tokenizer.vocab_size(), 77);
  EXPECT_EQ(tokenizer.MaxLength(4), 21);
  EXPECT_EQ(tokenizer.CoordToken(0), 0);
  EXPECT_EQ(tokenizer.CoordToken(64), 63);
  EXPECT_EQ(tokenizer.CoordToken(-5), 0);
  EXPECT_EQ(tokenizer.CoordToken(100), 63);
}

TEST(BoxTokenizerTest, EncodesObjectsThenEos) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  absl::StatusOr<std::vector<int64_t>> tokens = tokenizer.Encode({kBoxes[1]});
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  // y0, x0, y1, x1, class, EOS.
  EXPECT_EQ(*tokens, (std::vector<int64_t>{0, tokenizer.CoordToken(40), tokenizer.CoordToken(17.5f),
                                           63, 64 + 0, tokenizer.eos()}));
  tokens = tokenizer.Encode({});
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(*tokens, std::vector<int64_t>{tokenizer.eos()});
}

TEST(BoxTokenizerTest, RoundTripIsWithinHalfABin) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  absl::StatusOr<std::vector<int64_t>> tokens = tokenizer.Encode(kBoxes);
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), 16u);
  const std::vector<Box> decoded = tokenizer.Decode(*tokens);
  ASSERT_EQ(decoded.size(), kBoxes.size());
  const double half_bin = 64.0 / 63.0 / 2.0 + 1e-5;
  for (size_t i = 0; i < kBoxes.size(); ++i) {
    EXPECT_EQ(decoded[i].label, kBoxes[i].label);
    EXPECT_NEAR(decoded[i].x0, kBoxes[i].x0, half_bin);
    EXPECT_NEAR(decoded[i].y0, kBoxes[i].y0, half_bin);
    EXPECT_NEAR(decoded[i].x1, kBoxes[i].x1, half_bin);
    EXPECT_NEAR(decoded[i].y1, kBoxes[i].y1, half_bin);
  }
  // Every coordinate of the canvas, not only these.
  for (float c = 0; c <= 64; c += 0.37f) {
    EXPECT_NEAR(tokenizer.TokenCoord(tokenizer.CoordToken(c)), c, half_bin) << c;
  }
  // With a leading BOS and trailing padding as the decoder sees them.
  std::vector<int64_t> framed = {tokenizer.bos()};
  framed.insert(framed.end(), tokens->begin(), tokens->end());
  framed.push_back(tokenizer.pad());
  EXPECT_EQ(tokenizer.Decode(framed), decoded);
}

TEST(BoxTokenizerTest, OrderSeedShufflesDeterministically) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  std::vector<Box> many;
  for (int i = 0; i < 8; ++i) many.push_back(Box{1.f * i, 0, 10.f + i, 10, i});
  const std::vector<int64_t> plain = *tokenizer.Encode(many);
  const std::vector<int64_t> a = *tokenizer.Encode(many, 17);
  EXPECT_EQ(a, *tokenizer.Encode(many, 17));
  std::set<std::vector<int64_t>> orders;
  for (uint64_t seed = 0; seed < 10; ++seed) orders.insert(*tokenizer.Encode(many, seed));
  EXPECT_GT(orders.size(), 5u);
  // A permutation of the same objects.
  std::vector<Box> decoded = tokenizer.Decode(a);
  std::vector<Box> expected = tokenizer.Decode(plain);
  auto by_label = [](const Box& x, const Box& y) { return x.label < y.label; };
  std::sort(decoded.begin(), decoded.end(), by_label);
  std::sort(expected.begin(), expected.end(), by_label);
  EXPECT_EQ(decoded, expected);
}

TEST(BoxTokenizerTest, DecodeIgnoresMalformedTrailingGroups) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  std::vector<int64_t> tokens = *tokenizer.Encode({kBoxes[0], kBoxes[1]});
  tokens.pop_back();  // No EOS: decoding runs to the end.
  EXPECT_EQ(tokenizer.Decode(tokens).size(), 2u);
  // A truncated third group.
  std::vector<int64_t> truncated = tokens;
  truncated.insert(truncated.end(), {5, 6, 7});
  EXPECT_EQ(tokenizer.Decode(truncated).size(), 2u);
  // A class token where a coordinate belongs ends decoding, even if more follows.
  std::vector<int64_t> malformed = tokens;
  malformed.insert(malformed.end(), {5, 66, 7, 8, 65, 1, 2, 3, 4, 65});
  EXPECT_EQ(tokenizer.Decode(malformed).size(), 2u);
  // Objects after EOS are not read.
  std::vector<int64_t> after_eos = *tokenizer.Encode({kBoxes[0]});
  after_eos.insert(after_eos.end(), {1, 2, 3, 4, 65});
  EXPECT_EQ(tokenizer.Decode(after_eos).size(), 1u);
  EXPECT_TRUE(tokenizer.Decode({}).empty());
}

TEST(BoxTokenizerTest, RejectsBadLabelsAndOptions) {
  const BoxTokenizer tokenizer = MakeTokenizer();
  absl::StatusOr<std::vector<int64_t>> tokens = tokenizer.Encode({kBoxes[0], Box{0, 0, 1, 1, 10}});
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokens.status().message(), HasSubstr("object 1"));

  BoxTokenizerOptions options;
  options.num_bins = 1;
  EXPECT_THAT(BoxTokenizer::Create(options).status().message(), HasSubstr("num_bins"));
  options = BoxTokenizerOptions();
  options.num_classes = 0;
  EXPECT_THAT(BoxTokenizer::Create(options).status().message(), HasSubstr("num_classes"));
  options = BoxTokenizerOptions();
  options.canvas_size = 0;
  EXPECT_THAT(BoxTokenizer::Create(options).status().message(), HasSubstr("canvas_size"));
}

}  // namespace
}  // namespace offsite
