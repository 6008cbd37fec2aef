#include "models/gpt.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/lora.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

GptConfig TinyConfig(int64_t n_layer = 2) {
  GptConfig config;
  config.vocab_size = 11;
  config.n_positions = 16;
  config.n_embd = 8;
  config.n_layer = n_layer;
  config.n_head = 2;
  return config;
}

int64_t CountParameters(torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

// Gives every parameter a random value so that no path (LayerNorm affine,
// biases) is switched off by its initial value.
void Randomize(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.3);
}

torch::Tensor RandomIds(const GptConfig& config, int64_t n, int64_t t) {
  return torch::randint(config.vocab_size, {n, t}, torch::kLong);
}

TEST(GptConfigTest, DefaultIsValidAndByteLevel) {
  const GptConfig config;
  EXPECT_TRUE(ValidateGptConfig(config).ok());
  EXPECT_EQ(config.vocab_size, 257);
}

TEST(GptConfigTest, InvalidConfigsNameTheField) {
  struct Case {
    void (*edit)(GptConfig&);
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](GptConfig& c) { c.vocab_size = 0; }, "vocab_size"},
      {[](GptConfig& c) { c.n_positions = -1; }, "n_positions"},
      {[](GptConfig& c) { c.n_embd = 0; }, "n_embd"},
      {[](GptConfig& c) { c.n_layer = 0; }, "n_layer"},
      {[](GptConfig& c) { c.n_head = 0; }, "n_head"},
      {[](GptConfig& c) { c.n_head = 3; }, "n_head"},  // 128 % 3 != 0
      {[](GptConfig& c) { c.layer_norm_epsilon = 0; }, "layer_norm_epsilon"},
      {[](GptConfig& c) { c.dropout = 1; }, "dropout"},
  };
  for (const Case& c : cases) {
    GptConfig config;
    c.edit(config);
    const absl::Status status = ValidateGptConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(std::string("GptConfig.") + c.field));
    EXPECT_FALSE(MakeGpt(config).ok()) << c.field;
  }
}

TEST(GptTest, ParameterNamesAndShapesAreHuggingFaceGpt2s) {
  const GptConfig config = TinyConfig(2);
  Gpt model(config);
  const int64_t c = config.n_embd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"wte.weight", {config.vocab_size, c}},
      {"wpe.weight", {config.n_positions, c}},
  };
  for (int i = 0; i < 2; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    expected.insert(expected.end(), {
                                        {p + "ln_1.weight", {c}},
                                        {p + "ln_1.bias", {c}},
                                        {p + "attn.c_attn.weight", {3 * c, c}},
                                        {p + "attn.c_attn.bias", {3 * c}},
                                        {p + "attn.c_proj.weight", {c, c}},
                                        {p + "attn.c_proj.bias", {c}},
                                        {p + "ln_2.weight", {c}},
                                        {p + "ln_2.bias", {c}},
                                        {p + "mlp.c_fc.weight", {4 * c, c}},
                                        {p + "mlp.c_fc.bias", {4 * c}},
                                        {p + "mlp.c_proj.weight", {c, 4 * c}},
                                        {p + "mlp.c_proj.bias", {c}},
                                    });
  }
  expected.push_back({"ln_f.weight", {c}});
  expected.push_back({"ln_f.bias", {c}});

  std::vector<std::pair<std::string, std::vector<int64_t>>> actual;
  for (const auto& item : model->named_parameters()) {
    actual.emplace_back(item.key(), item.value().sizes().vec());
  }
  EXPECT_EQ(actual, expected);
  // No causal-mask buffer ("attn.bias" in Hugging Face) or any other buffer.
  EXPECT_TRUE(model->named_buffers().is_empty());
  EXPECT_EQ(model->BlockPrefix(1), "h.1.");
  EXPECT_EQ(BlockIndexOfName(*model, "h.1.mlp.c_fc.weight"), 1);
  EXPECT_EQ(BlockIndexOfName(*model, "wte.weight"), -1);
}

TEST(GptTest, ParameterCountFromConfigMatchesBuiltModel) {
  for (const GptConfig& config : {TinyConfig(1), TinyConfig(3), GptConfig()}) {
    Gpt model(config);
    EXPECT_EQ(GptParameterCount(config), CountParameters(*model));
  }
  // GPT-2 small: 124,439,808 parameters (Hugging Face's count, tied head).
  GptConfig gpt2;
  gpt2.vocab_size = 50257;
  gpt2.n_positions = 1024;
  gpt2.n_embd = 768;
  gpt2.n_layer = 12;
  gpt2.n_head = 12;
  EXPECT_EQ(GptParameterCount(gpt2), 124439808);
}

TEST(GptTest, InitialisesLikeGpt2) {
  torch::manual_seed(0);
  GptConfig config;
  config.n_layer = 8;
  Gpt model(config);
  const double proj_std = 0.02 / std::sqrt(16.0);
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    const torch::Tensor& p = item.value();
    if (name.find("ln_") != std::string::npos) {
      const double value = name.find(".weight") != std::string::npos ? 1.0 : 0.0;
      EXPECT_TRUE(torch::equal(p, torch::full_like(p, value))) << name;
    } else if (name.find(".bias") != std::string::npos) {
      EXPECT_TRUE(torch::equal(p, torch::zeros_like(p))) << name;
    } else {
      const double expected = name.find("c_proj") != std::string::npos ? proj_std : 0.02;
      EXPECT_NEAR(p.std().item<double>(), expected, 0.1 * expected) << name;
      EXPECT_NEAR(p.mean().item<double>(), 0.0, 0.1 * expected) << name;
    }
  }
}

TEST(GptTest, ForwardGivesLogitsPerPosition) {
  const GptConfig config = TinyConfig();
  Gpt model(config);
  const torch::Tensor logits = model->forward(RandomIds(config, 3, 5));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 5, config.vocab_size}));
}

TEST(GptTest, IsCausal) {
  torch::manual_seed(1);
  const GptConfig config = TinyConfig();
  Gpt model(config);
  Randomize(*model);
  model->eval();
  const int64_t t = 10;
  const torch::Tensor ids = RandomIds(config, 2, t);
  const torch::Tensor logits = model->forward(ids);
  for (int64_t changed : {0, 4, 9}) {
    torch::Tensor other = ids.clone();
    other.select(1, changed).add_(1).remainder_(config.vocab_size);
    const torch::Tensor other_logits = model->forward(other);
    EXPECT_TRUE(
        torch::allclose(logits.slice(1, 0, changed), other_logits.slice(1, 0, changed), 1e-5, 1e-5))
        << "changing token " << changed << " changed an earlier position";
    EXPECT_FALSE(
        torch::allclose(logits.slice(1, changed), other_logits.slice(1, changed), 1e-4, 1e-4))
        << "changing token " << changed << " changed nothing";
  }
}

TEST(GptTest, DropoutActsOnlyInTraining) {
  GptConfig config = TinyConfig();
  config.dropout = 0.5;
  Gpt model(config);
  const torch::Tensor ids = RandomIds(config, 2, 6);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(torch::allclose(model->forward(ids), model->forward(ids)));
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(ids), model->forward(ids)));
}

TEST(GptTest, LongerThanContextIsAnError) {
  const GptConfig config = TinyConfig();
  Gpt model(config);
  EXPECT_NO_THROW(model->forward(RandomIds(config, 1, config.n_positions)));
  try {
    model->forward(RandomIds(config, 1, config.n_positions + 1));
    ADD_FAILURE() << "no error for T > n_positions";
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what_without_backtrace(), HasSubstr("n_positions = 16"));
  }
}

TEST(GptTest, PartialNetworkSkipsAbsentBlocksAndKeepsNames) {
  torch::manual_seed(2);
  const GptConfig config = TinyConfig(3);
  Gpt full(config);
  Randomize(*full);
  absl::StatusOr<Gpt> partial = MakeGpt(config, std::vector<int64_t>{0, 2});
  ASSERT_TRUE(partial.ok()) << partial.status();
  Randomize(**partial);
  // Every name of the partial network is one of the full network's, not the
  // other way round (h.1.*).
  EXPECT_FALSE(CopyNamedTensors(*full, **partial).ok());
  ASSERT_TRUE(CopyNamedTensors(**partial, *full).ok());
  EXPECT_EQ((*partial)->PresentBlocks(), (std::vector<int64_t>{0, 2}));
  EXPECT_FALSE((*partial)->has_block(1));
  EXPECT_TRUE((*partial)->block(1).is_empty());
  for (const auto& item : (*partial)->named_parameters()) {
    EXPECT_NE(BlockIndexOfName(**partial, item.key()), 1) << item.key();
  }

  full->eval();
  (*partial)->eval();
  const torch::Tensor ids = RandomIds(config, 2, 6);
  torch::Tensor hidden = full->Embed(ids);
  hidden = full->RunBlocks(hidden, 0, 1);
  hidden = full->RunBlocks(hidden, 2, 3);
  const torch::Tensor expected = full->Head(hidden);
  EXPECT_TRUE(torch::allclose((*partial)->forward(ids), expected, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(full->forward(ids), expected, 1e-4, 1e-4));
}

TEST(GptTest, MakeGptRejectsBlocksOutsideTheNetwork) {
  const absl::StatusOr<Gpt> model = MakeGpt(TinyConfig(3), std::vector<int64_t>{0, 3});
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(model.status().message(), HasSubstr("block 3"));
}

TEST(GptTest, EmbeddingsAreTiedToTheHead) {
  const GptConfig config = TinyConfig();
  Gpt model(config);
  for (const auto& item : model->named_parameters()) {
    EXPECT_THAT(item.key(), ::testing::Not(HasSubstr("lm_head")));
  }
  // Gradient through the head alone reaches wte.
  const torch::Tensor hidden = torch::randn({2, 3, config.n_embd});
  model->Head(hidden).sum().backward();
  ASSERT_TRUE(model->wte->weight.grad().defined());
  EXPECT_GT(model->wte->weight.grad().abs().sum().item<double>(), 0.0);
  // And the logits are ln_f(hidden) @ wte^T.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(
      model->Head(hidden), torch::matmul(model->ln_f(hidden), model->wte->weight.t()), 1e-5, 1e-6));
}

TEST(LanguageModelLossTest, IgnoresPaddingTargets) {
  const torch::Tensor logits = torch::randn({2, 3, 5});
  const torch::Tensor targets = torch::tensor({1, 4, -1, 0, -1, 2}, torch::kLong).reshape({2, 3});
  const torch::Tensor log_probs = torch::log_softmax(logits, -1);
  const double expected =
      -(log_probs[0][0][1] + log_probs[0][1][4] + log_probs[1][0][0] + log_probs[1][2][2])
           .item<double>() /
      4;
  EXPECT_NEAR(LanguageModelLoss(logits, targets).item<double>(), expected, 1e-5);
}

TEST(GptTest, OverfitsOneShortSequence) {
  torch::manual_seed(3);
  GptConfig config = TinyConfig(2);
  config.n_embd = 32;
  config.n_head = 4;
  config.n_positions = 32;
  Gpt model(config);
  const torch::Tensor sequence =
      torch::tensor({1, 5, 2, 9, 3, 3, 7, 0, 4, 8, 6, 10, 2, 5, 1, 9, 7}, torch::kLong)
          .unsqueeze(0);
  const torch::Tensor inputs = sequence.slice(1, 0, -1);
  const torch::Tensor targets = sequence.slice(1, 1);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  const auto start = std::chrono::steady_clock::now();
  double first = 0;
  double last = 0;
  for (int step = 0; step < 150; ++step) {
    optimizer.zero_grad();
    const torch::Tensor loss = LanguageModelLoss(model->forward(inputs), targets);
    loss.backward();
    optimizer.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NEAR(first, std::log(static_cast<double>(config.vocab_size)), 0.5);
  EXPECT_LT(last, 0.05);
  EXPECT_LT(seconds, 5.0);
}

TEST(GptTest, LoraOnABlockStartsAsANoOpAndMergesExactly) {
  torch::manual_seed(4);
  GptConfig config = TinyConfig(3);
  Gpt model(config);
  Randomize(*model);
  model->eval();
  const torch::Tensor ids = RandomIds(config, 2, 7);
  const torch::Tensor before = model->forward(ids).detach();

  for (auto& p : model->parameters()) p.set_requires_grad(false);
  LoraOptions options;
  options.rank = 2;
  EXPECT_EQ(EnableLora(*model->block(1), options), 4);  // c_attn, c_proj, c_fc, mlp.c_proj
  EXPECT_TRUE(torch::allclose(model->forward(ids), before, 1e-6, 1e-6));

  std::vector<std::string> trainable;
  for (const auto& item : model->named_parameters()) {
    if (item.value().requires_grad()) trainable.push_back(item.key());
  }
  EXPECT_THAT(trainable,
              ::testing::UnorderedElementsAre("h.1.attn.c_attn.lora_a", "h.1.attn.c_attn.lora_b",
                                              "h.1.attn.c_proj.lora_a", "h.1.attn.c_proj.lora_b",
                                              "h.1.mlp.c_fc.lora_a", "h.1.mlp.c_fc.lora_b",
                                              "h.1.mlp.c_proj.lora_a", "h.1.mlp.c_proj.lora_b"));

  // Move B off zero so that LoRA changes the output, then merge.
  {
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) {
      if (item.key().find("lora_b") != std::string::npos) item.value().normal_(0.0, 0.1);
    }
  }
  const torch::Tensor with_lora = model->forward(ids).detach();
  EXPECT_FALSE(torch::allclose(with_lora, before, 1e-4, 1e-4));
  MergeLora(*model->block(1));
  for (const auto& item : model->named_parameters()) {
    EXPECT_THAT(item.key(), ::testing::Not(HasSubstr("lora")));
  }
  EXPECT_TRUE(torch::allclose(model->forward(ids), with_lora, 1e-4, 1e-5));
}

// A LoraLinear whose output is its LoRA branch's dropout alone: weight 0,
// A = B = identity, alpha = rank (scale 1).
LoraLinear DropoutOnlyLayer(int64_t features, double p) {
  LoraLinear layer(features, features, /*bias=*/false);
  LoraOptions options;
  options.rank = features;
  options.alpha = static_cast<double>(features);
  options.dropout = p;
  layer->EnableLora(options);
  torch::NoGradGuard no_grad;
  layer->weight.zero_();
  layer->lora_a.copy_(torch::eye(features));
  layer->lora_b.copy_(torch::eye(features));
  layer->train();
  return layer;
}

TEST(GptTest, LoraDropoutKeepsOneMinusPScalesAndMasksTheGradient) {
  const double p = 0.25;
  LoraLinear layer = DropoutOnlyLayer(8, p);
  torch::manual_seed(5);
  const torch::Tensor x = (torch::rand({65536, 2, 8}) + 1).requires_grad_(true);
  const torch::Tensor upstream = torch::randn(x.sizes());
  const torch::Tensor y = layer->forward(x);
  (y * upstream).sum().backward();

  const torch::Tensor keep = y != 0;
  const double n = static_cast<double>(keep.numel());
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(keep.to(torch::kDouble).mean().item<double>(), 1 - p, 5 * sigma);
  // Neighbours share one 64-bit draw; their decisions must still be
  // independent: P(both kept) = (1 - p)^2, for even and for odd positions.
  const torch::Tensor flat = keep.reshape({-1, 2}).to(torch::kDouble);
  EXPECT_NEAR(flat.select(1, 0).mean().item<double>(), 1 - p, 10 * sigma);
  EXPECT_NEAR(flat.select(1, 1).mean().item<double>(), 1 - p, 10 * sigma);
  EXPECT_NEAR((flat.select(1, 0) * flat.select(1, 1)).mean().item<double>(), (1 - p) * (1 - p),
              10 * sigma);

  const torch::Tensor kept = torch::where(keep, x.detach() / (1 - p), torch::zeros({}));
  EXPECT_TRUE(torch::allclose(y.detach(), kept, 1e-6, 1e-6));
  const torch::Tensor masked = torch::where(keep, upstream / (1 - p), torch::zeros({}));
  EXPECT_TRUE(torch::allclose(x.grad(), masked, 1e-6, 1e-6));

  // Evaluation has no dropout.
  layer->eval();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(layer->forward(x), x, 1e-6, 1e-6));
}

TEST(GptTest, LoraDropoutOnAStridedInputMatchesItsContiguousCopy) {
  // ConvNeXt's pointwise layers see permuted (N, H, W, C) views.
  LoraLinear layer = DropoutOnlyLayer(8, 0.3);
  const torch::Tensor strided = torch::randn({4, 8, 6}).transpose(1, 2).requires_grad_(true);
  ASSERT_FALSE(strided.is_contiguous());
  const torch::Tensor upstream = torch::randn({4, 6, 8});
  torch::manual_seed(1);
  const torch::Tensor y = layer->forward(strided);
  (y * upstream).sum().backward();
  torch::manual_seed(1);
  const torch::Tensor expected = layer->forward(strided.detach().contiguous());
  EXPECT_TRUE(torch::equal(y.detach(), expected));
  const torch::Tensor keep = expected != 0;
  EXPECT_TRUE(torch::allclose(strided.grad(), torch::where(keep, upstream / 0.7, torch::zeros({})),
                              1e-6, 1e-6));
}

TEST(GptTest, LoraDropoutIsFixedByTheSeedWhateverTheThreadCount) {
  // Runs, recomputation in the backward pass and results must not depend on
  // how many threads drew the mask.
  LoraLinear layer = DropoutOnlyLayer(8, 0.1);
  const torch::Tensor x = torch::rand({32768, 4, 8}) + 1;
  const int threads = torch::get_num_threads();
  auto mask = [&](uint64_t seed, int num_threads) {
    torch::set_num_threads(num_threads);
    torch::manual_seed(seed);
    torch::NoGradGuard no_grad;
    return layer->forward(x) != 0;
  };
  const torch::Tensor one = mask(7, 1);
  EXPECT_TRUE(torch::equal(mask(7, 2), one));
  EXPECT_TRUE(torch::equal(mask(7, 1), one));
  EXPECT_FALSE(torch::equal(mask(8, 1), one));
  torch::set_num_threads(threads);
}

}  // namespace
}  // namespace offsite
