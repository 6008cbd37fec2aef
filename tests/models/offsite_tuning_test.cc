#include "models/offsite_tuning.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/data_parallel.h"
#include "common/sha256.h"
#include "models/gpt.h"
#include "models/model_arch.h"
#include "tests/util/bpe_files.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::ModelArch TinyGpt(int n_layer = 6) {
  v1::ModelArch arch;
  arch.mutable_gpt()->set_n_layer(n_layer);
  arch.mutable_gpt()->set_n_embd(32);
  arch.mutable_gpt()->set_n_head(2);
  arch.mutable_gpt()->set_n_positions(16);
  return arch;
}

v1::ModelArch TinyConvNext() {
  v1::ModelArch arch;
  auto* c = arch.mutable_convnext_v2();
  c->add_depths(2);
  c->add_depths(3);
  c->add_dims(8);
  c->add_dims(16);
  c->set_stem_stride(2);
  arch.set_num_classes(5);
  return arch;
}

// Every tensor made distinct, so that a hash identifies one tensor.
std::shared_ptr<BlockModelImpl> DistinctModel(const v1::ModelArch& arch) {
  torch::manual_seed(1);
  auto model = MakeBlockModel(arch).value();
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);
  return model;
}

std::string Sha(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().contiguous();
  return Sha256Hex(std::string_view(static_cast<const char*>(c.data_ptr()), c.nbytes()));
}

struct Built {
  SplitPlan plan;
  Emulator emulator;
  v1::PackageManifest manifest;
  SafetensorsFile file;
};

Built BuildPackage(const v1::ModelArch& arch, BlockModelImpl& full, int64_t bottom, int64_t top,
                   int64_t k, int64_t new_head = 0) {
  Built built;
  built.plan = PlanSplit(full.num_blocks(), bottom, top, k).value();
  built.emulator = MakeEmulator(arch, full, built.plan, new_head, 0).value();
  PackageOptions options;
  options.package_id = "pkg-test";
  options.model_name = "m";
  options.new_head_classes = new_head;
  built.file = MakePackageFile(built.emulator, built.plan, options, &built.manifest).value();
  return built;
}

TEST(PlanSplitTest, KeepsMiddleBlocksAtThePapersUniformIndices) {
  // 12 blocks, 2-4-2: middle 2..9 (m = 8), kept round(i * 7 / 3) = 0, 2, 5, 7.
  SplitPlan plan = PlanSplit(12, 2, 2, 4).value();
  EXPECT_THAT(plan.kept_middle, ElementsAre(2, 4, 7, 9));
  EXPECT_THAT(plan.AdapterBlocks(), ElementsAre(0, 1, 10, 11));
  EXPECT_THAT(plan.EmulatorModelBlocks(), ElementsAre(0, 1, 2, 4, 7, 9, 10, 11));
  // 24 blocks 2-8-2 (the paper's OPT setting): first and last middle kept.
  SplitPlan opt = PlanSplit(24, 2, 2, 8).value();
  ASSERT_EQ(opt.kept_middle.size(), 8u);
  EXPECT_EQ(opt.kept_middle.front(), 2);
  EXPECT_EQ(opt.kept_middle.back(), 21);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(opt.kept_middle[i], 2 + std::llround(i * 19.0 / 7.0)) << i;
  }
  EXPECT_THAT(PlanSplit(6, 1, 1, 1).value().kept_middle, ElementsAre(1));
  EXPECT_TRUE(PlanSplit(6, 1, 1, 0).value().kept_middle.empty());
}

TEST(PlanSplitTest, RefusesToShipTheWholeMiddle) {
  auto all = PlanSplit(12, 2, 2, 8);
  ASSERT_FALSE(all.ok());
  EXPECT_THAT(all.status().message(), HasSubstr("whole middle"));
  EXPECT_FALSE(PlanSplit(12, 2, 2, 9).ok());
  EXPECT_FALSE(PlanSplit(4, 2, 2, 0).ok());
  EXPECT_FALSE(PlanSplit(4, -1, 1, 0).ok());
}

TEST(OffsiteTuningTest, UntouchedAdapterPluggedInReproducesTheFullModelExactly) {
  for (const v1::ModelArch& arch : {TinyGpt(), TinyConvNext()}) {
    auto full = DistinctModel(arch);
    full->eval();
    Built built = BuildPackage(arch, *full, 1, 1, 2);
    torch::Tensor input = arch.has_gpt() ? torch::randint(0, 257, {2, 16}, torch::kLong)
                                         : torch::randn({2, 1, 16, 16});
    const torch::Tensor before = full->forward(input);
    SafetensorsFile adapter = ExtractAdapter(built.manifest, *built.emulator.model).value();
    ASSERT_TRUE(CheckAdapter(built.manifest, adapter).ok());
    // Plug into a copy whose adapter blocks are scrambled, so the plug-in has
    // to restore them.
    auto base = MakeBlockModel(arch).value();
    ASSERT_TRUE(CopyNamedTensors(*full, *base).ok());
    {
      torch::NoGradGuard no_grad;
      for (auto& item : base->named_parameters()) {
        const int64_t b = BlockIndexOfName(*base, item.key());
        if (b >= 0 && built.plan.IsAdapter(b)) item.value().uniform_();
      }
    }
    auto plugged = PlugIn(*base, built.manifest, adapter).value();
    plugged->eval();
    EXPECT_TRUE(torch::equal(plugged->forward(input), before)) << arch.DebugString();
  }
}

TEST(OffsiteTuningTest, PackageNeverHoldsADroppedBlock) {
  for (const v1::ModelArch& arch : {TinyGpt(8), TinyConvNext()}) {
    auto full = DistinctModel(arch);
    Built built = BuildPackage(arch, *full, 1, 1, 2);
    std::set<std::string> dropped_hashes, kept_hashes;
    for (const auto& item : full->named_parameters()) {
      const int64_t b = BlockIndexOfName(*full, item.key());
      const bool dropped = b >= 0 && !built.plan.IsAdapter(b) &&
                           std::find(built.plan.kept_middle.begin(), built.plan.kept_middle.end(),
                                     b) == built.plan.kept_middle.end();
      (dropped ? dropped_hashes : kept_hashes).insert(Sha(item.value()));
    }
    ASSERT_FALSE(dropped_hashes.empty());
    for (const NamedTensor& t : built.file.tensors) {
      EXPECT_FALSE(dropped_hashes.count(Sha(t.tensor))) << t.name;
      EXPECT_TRUE(kept_hashes.count(Sha(t.tensor))) << t.name;
    }
    for (const v1::TensorInfo& info : built.manifest.tensors()) {
      EXPECT_FALSE(dropped_hashes.count(info.sha256())) << info.name();
    }
  }
}

TEST(OffsiteTuningTest, PackageRoundTripsAndRefusesATamperedTensor) {
  v1::ModelArch arch = TinyGpt();
  auto full = DistinctModel(arch);
  Built built = BuildPackage(arch, *full, 2, 1, 2);
  std::string bytes = SerializeSafetensors(built.file).value();
  OpenedPackage opened = OpenPackage(ParseSafetensors(bytes, "package").value()).value();
  EXPECT_EQ(opened.manifest.package_id(), "pkg-test");
  EXPECT_THAT(opened.emulator->PresentBlocks(), ElementsAre(0, 1, 2, 4, 5));
  // Flip one byte near the end (inside the last tensor's data).
  bytes[bytes.size() - 3] ^= 0x10;
  auto tampered = OpenPackage(ParseSafetensors(bytes, "package").value());
  ASSERT_FALSE(tampered.ok());
  EXPECT_THAT(tampered.status().message(), HasSubstr("SHA-256"));
}

TEST(OffsiteTuningTest, ImportedTokenizerTravelsFromModelToPackage) {
  v1::ModelArch arch = TinyGpt(4);
  arch.mutable_gpt()->set_vocab_size(260);
  auto full = DistinctModel(arch);
  SafetensorsFile model_file = ModelToFile(arch, *full).value();
  model_file.metadata[kMetaTokenizerVocab] = testutil::ByteLevelVocabJson({"he", "<|endoftext|>"});
  model_file.metadata[kMetaTokenizerMerges] = "#version: 0.2\nh e\n";
  const LoadedModel loaded = ModelFromFile(model_file).value();
  EXPECT_EQ(loaded.text_encoder.vocab_size, 258);
  EXPECT_EQ(loaded.text_encoder.end_of_text, 257);
  EXPECT_THAT(loaded.text_encoder.encode("hehe"), ElementsAre(256, 256));

  const SplitPlan plan = PlanSplit(4, 1, 1, 1).value();
  const Emulator emulator = MakeEmulator(loaded.arch, *loaded.model, plan, 0, 0).value();
  PackageOptions options;
  options.package_id = "pkg-bpe";
  options.tokenizer_files = loaded.tokenizer_files;
  v1::PackageManifest manifest;
  const SafetensorsFile package = MakePackageFile(emulator, plan, options, &manifest).value();
  const std::string bytes = SerializeSafetensors(package).value();
  const OpenedPackage opened = OpenPackage(ParseSafetensors(bytes, "package").value()).value();
  EXPECT_EQ(opened.text_encoder.end_of_text, 257);
  EXPECT_THAT(opened.text_encoder.encode("the"), ElementsAre('t', 256));

  // A byte-level model reads bytes; a tokenizer larger than the model is refused.
  EXPECT_EQ(ModelFromFile(ModelToFile(TinyGpt(2), *DistinctModel(TinyGpt(2))).value())
                .value()
                .text_encoder.end_of_text,
            ByteTokenizer::kEndOfText);
  SafetensorsFile too_big = model_file;
  too_big.metadata[kMetaTokenizerVocab] =
      testutil::ByteLevelVocabJson({"he", "<|endoftext|>", "a1", "a2", "a3"});  // 261 tokens > 260.
  too_big.metadata[kMetaTokenizerMerges] = "#version: 0.2\nh e\n";
  absl::StatusOr<LoadedModel> refused = ModelFromFile(too_big);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("vocabulary (260 tokens)"));
  SafetensorsFile half = model_file;
  half.metadata.erase(kMetaTokenizerMerges);
  EXPECT_THAT(ModelFromFile(half).status().message(), HasSubstr(kMetaTokenizerMerges));
}

TEST(OffsiteTuningTest, CheckAdapterRefusesEveryTampering) {
  v1::ModelArch arch = TinyGpt();
  auto full = DistinctModel(arch);
  Built built = BuildPackage(arch, *full, 1, 1, 2);
  const SafetensorsFile good = ExtractAdapter(built.manifest, *built.emulator.model).value();
  ASSERT_TRUE(CheckAdapter(built.manifest, good).ok());
  auto refused = [&](const SafetensorsFile& file, const std::string& expected) {
    absl::Status status = CheckAdapter(built.manifest, file);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << expected;
    EXPECT_THAT(status.message(), HasSubstr(expected));
  };
  SafetensorsFile wrong_shape = good;
  wrong_shape.tensors[0].tensor = torch::zeros({3, 3});
  refused(wrong_shape, good.tensors[0].name);
  SafetensorsFile extra = good;
  extra.tensors.push_back({"h.1.ln_1.weight", torch::ones({32})});  // an emulator tensor
  refused(extra, "not part of the adapter");
  SafetensorsFile unknown = good;
  unknown.tensors.push_back({"h.3.attn.c_attn.weight", torch::ones({96, 32})});  // dropped block
  refused(unknown, "not in the package");
  SafetensorsFile nan = good;
  nan.tensors[1].tensor = nan.tensors[1].tensor.clone();
  nan.tensors[1].tensor.view(-1)[0] = std::nan("");
  refused(nan, "NaN");
  SafetensorsFile other = good;
  other.metadata[kMetaPackageId] = "pkg-other";
  refused(other, "pkg-other");
  SafetensorsFile missing = good;
  missing.tensors.pop_back();
  refused(missing, "lacks");
  SafetensorsFile half = good;
  half.tensors[0].tensor = half.tensors[0].tensor.to(torch::kHalf);
  refused(half, "dtype");
}

TEST(OffsiteTuningTest, NewHeadIsPartOfTheAdapter) {
  v1::ModelArch arch = TinyConvNext();
  auto full = DistinctModel(arch);
  Built built = BuildPackage(arch, *full, 1, 1, 1, /*new_head=*/3);
  EXPECT_EQ(built.manifest.arch().num_classes(), 3);
  int head_adapter = 0;
  for (const v1::TensorInfo& info : built.manifest.tensors()) {
    if (info.name().rfind("head.", 0) == 0) {
      EXPECT_EQ(info.role(), v1::TensorInfo::ADAPTER);
      ++head_adapter;
    }
    if (info.name().rfind("downsample_layers.", 0) == 0) {
      EXPECT_EQ(info.role(), v1::TensorInfo::SHARED);
    }
  }
  EXPECT_EQ(head_adapter, 2);

  // Plugged in, the full model (5 classes) takes the adapter's 3-class head.
  const SafetensorsFile adapter = ExtractAdapter(built.manifest, *built.emulator.model).value();
  auto plugged = PlugIn(*full, built.manifest, adapter).value();
  EXPECT_EQ(plugged->forward(torch::randn({2, 1, 16, 16})).size(1), 3);
  for (const NamedTensor& t : adapter.tensors) {
    if (t.name.rfind("head.", 0) == 0) {
      EXPECT_TRUE(torch::equal(plugged->named_parameters()[t.name], t.tensor)) << t.name;
    }
  }
}

TEST(OffsiteTuningTest, PrepareForTuningTrainsOnlyTheChosenAdapterTensors) {
  v1::ModelArch arch = TinyGpt();
  auto full = DistinctModel(arch);
  Built built = BuildPackage(arch, *full, 2, 2, 1);
  OpenedPackage opened = OpenPackage(built.file).value();
  PrepareForTuning(opened.manifest, *opened.emulator, {});
  for (const auto& item : opened.emulator->named_parameters()) {
    const int64_t b = BlockIndexOfName(*opened.emulator, item.key());
    EXPECT_EQ(item.value().requires_grad(), b >= 0 && built.plan.IsAdapter(b)) << item.key();
  }
  OpenedPackage top = OpenPackage(built.file).value();
  TuneOptions top_only;
  top_only.top_only = true;
  PrepareForTuning(top.manifest, *top.emulator, top_only);
  for (const auto& item : top.emulator->named_parameters()) {
    const int64_t b = BlockIndexOfName(*top.emulator, item.key());
    EXPECT_EQ(item.value().requires_grad(), b >= 4) << item.key();
  }
  OpenedPackage lora = OpenPackage(built.file).value();
  TuneOptions with_lora;
  with_lora.lora = true;
  PrepareForTuning(lora.manifest, *lora.emulator, with_lora);
  int lora_tensors = 0;
  for (const auto& item : lora.emulator->named_parameters()) {
    const bool is_lora = item.key().find("lora_") != std::string::npos;
    lora_tensors += is_lora;
    EXPECT_EQ(item.value().requires_grad(), is_lora) << item.key();
  }
  EXPECT_EQ(lora_tensors, 4 * 4 * 2);  // 4 adapter blocks x 4 linears x (A, B)
}

// One tuning step on a freshly opened package, the emulator's activations kept
// or recomputed in the backward pass.
struct TuningStep {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // Of the trainable tensors.
  int64_t graph_nodes = 0;
  int64_t recomputed_runs = 0;  // Graph nodes that recompute frozen blocks.
  double next_random = 0;       // The RNG after the step: later dropout is unchanged.
};

TuningStep OneTuningStep(BlockModelImpl& model, const torch::Tensor& input,
                         const torch::Tensor& target) {
  model.train();
  torch::manual_seed(7);
  torch::Tensor loss = TaskLoss(model.forward(input), target);
  TuningStep step;
  step.loss = loss.item<double>();
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack = {loss.grad_fn().get()};
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    step.recomputed_runs += node->name().find("RecomputedBlocks") != std::string::npos;
    for (const torch::autograd::Edge& edge : node->next_edges()) {
      stack.push_back(edge.function.get());
    }
  }
  step.graph_nodes = static_cast<int64_t>(seen.size());
  loss.backward();
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) step.grads[item.key()] = item.value().grad().clone();
  }
  step.next_random = torch::rand({1}).item<double>();
  return step;
}

// The same step on a freshly opened package, prepared for tuning.
TuningStep OneTuningStep(const Built& built, const torch::Tensor& input,
                         const torch::Tensor& target, bool recompute) {
  OpenedPackage opened = OpenPackage(built.file).value();
  TuneOptions options;
  options.recompute_emulator = recompute;
  PrepareForTuning(opened.manifest, *opened.emulator, options);
  return OneTuningStep(*opened.emulator, input, target);
}

void ExpectSameStep(const TuningStep& kept, const TuningStep& recomputed) {
  EXPECT_DOUBLE_EQ(recomputed.loss, kept.loss);
  ASSERT_EQ(recomputed.grads.size(), kept.grads.size());
  for (const auto& [name, grad] : kept.grads) {
    ASSERT_TRUE(recomputed.grads.count(name)) << name;
    EXPECT_TRUE(torch::allclose(recomputed.grads.at(name), grad, 1e-5, 1e-7)) << name;
  }
  EXPECT_EQ(recomputed.next_random, kept.next_random);
  // The frozen middle is one node that keeps only its input, not its graph.
  EXPECT_EQ(kept.recomputed_runs, 0);
  EXPECT_EQ(recomputed.recomputed_runs, 1);
  EXPECT_LT(recomputed.graph_nodes, kept.graph_nodes);
}

TEST(OffsiteTuningTest, RecomputedEmulatorGivesTheSameGradients) {
  const v1::ModelArch arch = TinyGpt();
  auto full = DistinctModel(arch);
  const Built built = BuildPackage(arch, *full, 2, 2, 1);
  torch::manual_seed(3);
  const torch::Tensor ids = torch::randint(0, 256, {3, 16}, torch::kLong);
  const torch::Tensor next = torch::randint(0, 256, {3, 16}, torch::kLong);
  ExpectSameStep(OneTuningStep(built, ids, next, false), OneTuningStep(built, ids, next, true));
}

TEST(OffsiteTuningTest, RecomputedFrozenBlocksReplayTheirDropoutMasks) {
  // The package tests' tiny GPT, with dropout (which model files do not carry).
  GptConfig config = ResolveGptArch(TinyGpt().gpt()).value();
  config.dropout = 0.2;
  auto make = [&](bool recompute) {
    torch::manual_seed(1);
    Gpt model(config);
    SetTrainableBlocks(*model, {0, 1, 4, 5});
    model->set_recompute_frozen_blocks(recompute);
    return model;
  };
  torch::manual_seed(3);
  const torch::Tensor ids = torch::randint(0, 256, {3, 16}, torch::kLong);
  const torch::Tensor next = torch::randint(0, 256, {3, 16}, torch::kLong);
  Gpt kept = make(false), recomputed = make(true);
  ExpectSameStep(OneTuningStep(*kept, ids, next), OneTuningStep(*recomputed, ids, next));
}

TEST(OffsiteTuningTest, RecomputedEmulatorGivesTheSameGradientsAcrossADownsampling) {
  const v1::ModelArch arch = TinyConvNext();  // Slot 2 starts a stage: downsampling inside.
  auto full = DistinctModel(arch);
  const Built built = BuildPackage(arch, *full, 1, 1, 2);
  torch::manual_seed(3);
  const torch::Tensor images = torch::randn({4, 1, 16, 16});
  const torch::Tensor labels = torch::randint(0, 5, {4}, torch::kLong);
  ExpectSameStep(OneTuningStep(built, images, labels, false),
                 OneTuningStep(built, images, labels, true));
}

TEST(OffsiteTuningTest, InterruptedTrainingResumesFromItsCheckpointToTheSameModel) {
  const v1::ModelArch arch = TinyGpt(2);
  TaskTensors data;
  data.language = true;
  data.context = 16;
  torch::manual_seed(4);
  data.train_input = torch::randint(0, 60, {3000}, torch::kLong);
  data.valid_input = torch::randint(0, 60, {400}, torch::kLong);
  TrainOptions options;
  options.steps = 12;
  options.batch_size = 4;
  options.warmup_steps = 3;
  options.eval_interval = 4;
  options.seed = 9;

  auto uninterrupted = DistinctModel(arch);
  const TrainResult expected = Train(*uninterrupted, data, options, nullptr).value();

  // The same run, checkpointed every 5 steps in memory and stopped after step 7.
  std::string saved;
  TrainOptions interrupted_options = options;
  interrupted_options.checkpoint.due = [](int64_t step) { return step % 5 == 0; };
  interrupted_options.checkpoint.save = [&](torch::serialize::OutputArchive& archive) {
    std::ostringstream out;
    archive.save_to(out);
    saved = out.str();
    return absl::OkStatus();
  };
  interrupted_options.checkpoint.load = [&](torch::serialize::InputArchive& archive) {
    if (saved.empty()) return absl::NotFoundError("no checkpoint");
    std::istringstream in(saved);
    archive.load_from(in);
    return absl::OkStatus();
  };
  auto first = DistinctModel(arch);
  const auto stopped =
      Train(*first, data, interrupted_options,
            [](int64_t step, const std::map<std::string, double>&) { return step < 7; });
  ASSERT_EQ(stopped.status().code(), absl::StatusCode::kCancelled);
  ASSERT_FALSE(saved.empty());

  // A fresh process: a newly built model resumes at step 6 and ends where
  // the uninterrupted run did.
  auto resumed = DistinctModel(arch);
  std::vector<int64_t> steps_seen;
  const TrainResult result = Train(*resumed, data, interrupted_options,
                                   [&](int64_t step, const std::map<std::string, double>&) {
                                     steps_seen.push_back(step);
                                     return true;
                                   })
                                 .value();
  EXPECT_EQ(steps_seen.front(), 6);
  EXPECT_EQ(result.best_step, expected.best_step);
  EXPECT_DOUBLE_EQ(result.best.loss, expected.best.loss);
  const auto want = uninterrupted->named_parameters();
  for (const auto& item : resumed->named_parameters()) {
    EXPECT_TRUE(torch::allclose(item.value(), want[item.key()], 1e-6, 1e-7)) << item.key();
  }

  // A checkpoint of another model is refused, not half-loaded.
  auto other = DistinctModel(TinyGpt(3));
  const auto refused = Train(*other, data, interrupted_options, nullptr);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("trainable tensors"));
}

// Data-parallel Train: the run that every rank and the reference make.
TaskTensors DataParallelTask() {
  TaskTensors data;
  data.language = true;
  data.context = 16;
  torch::manual_seed(5);
  data.train_input = torch::randint(0, 60, {3000}, torch::kLong);
  data.valid_input = torch::randint(0, 60, {400}, torch::kLong);
  return data;
}

// What is compared: the trained model's logits on fixed windows. (Raw weights
// are not: the key bias of attention gets a gradient of exactly 0 in theory,
// so AdamW turns float noise there into steps that differ between runs and
// change no output.)
torch::Tensor TrainedLogits(BlockModelImpl& model) {
  torch::NoGradGuard no_grad;
  model.eval();
  torch::manual_seed(6);
  return model.forward(torch::randint(0, 60, {4, 16}, torch::kLong));
}

TrainOptions DataParallelOptionsFor(DataParallel* dp) {
  TrainOptions options;
  options.steps = 6;
  options.batch_size = 8;
  options.warmup_steps = 2;
  options.eval_interval = 3;
  options.seed = 11;
  options.data_parallel = dp;
  return options;
}

// Runs as one rank when started by the test below (environment set), else skips.
TEST(OffsiteTuningDataParallelChild, TrainAsOneRank) {
  const char* rank = std::getenv("OFFSITE_DP_RANK");
  const char* address = std::getenv("OFFSITE_DP_STORE");
  const char* out = std::getenv("OFFSITE_DP_OUT");
  if (rank == nullptr || address == nullptr || out == nullptr)
    GTEST_SKIP() << "helper process only";
  torch::set_num_threads(1);
  DataParallelOptions options;
  options.rank = std::atoi(rank);
  options.world_size = 2;
  options.store_address = address;
  options.prefix = "train/1";
  options.timeout = std::chrono::seconds(30);
  absl::StatusOr<std::unique_ptr<DataParallel>> dp = DataParallel::Connect(options);
  ASSERT_TRUE(dp.ok()) << dp.status();
  auto model = DistinctModel(TinyGpt(2));
  if (options.rank == 1) {  // Only the broadcast makes rank 1 start from rank 0's weights.
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(0.1);
  }
  ASSERT_TRUE(Train(*model, DataParallelTask(), DataParallelOptionsFor(dp->get()), nullptr).ok());
  torch::save(TrainedLogits(*model), out);
}

TEST(OffsiteTuningTest, DataParallelTrainOnTwoProcessesMatchesOneProcess) {
  testutil::TempDir tmp;
  const std::string address = absl::StrCat("127.0.0.1:", testutil::FreeLoopbackPort());
  std::vector<std::unique_ptr<testutil::ChildProcess>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ::setenv("OFFSITE_DP_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("OFFSITE_DP_STORE", address.c_str(), 1);
    ::setenv("OFFSITE_DP_OUT", tmp.File(absl::StrCat("rank", rank, ".pt")).c_str(), 1);
    auto child = testutil::ChildProcess::Spawn(
        {"/proc/self/exe", "--gtest_filter=OffsiteTuningDataParallelChild.*"},
        tmp.File(absl::StrCat("rank", rank, ".log")), tmp.File(absl::StrCat("rank", rank, ".log")));
    ASSERT_TRUE(child.ok()) << child.status();
    ranks.push_back(std::move(*child));
  }
  ::unsetenv("OFFSITE_DP_RANK");
  ::unsetenv("OFFSITE_DP_STORE");
  ::unsetenv("OFFSITE_DP_OUT");
  for (int rank = 0; rank < 2; ++rank) {
    absl::StatusOr<int> code = ranks[rank]->Wait(std::chrono::seconds(120));
    ASSERT_TRUE(code.ok()) << code.status();
    ASSERT_EQ(*code, 0) << "rank " << rank << " failed; see its log";
  }
  auto reference = DistinctModel(TinyGpt(2));
  ASSERT_TRUE(Train(*reference, DataParallelTask(), DataParallelOptionsFor(nullptr), nullptr).ok());
  const torch::Tensor expected = TrainedLogits(*reference);
  // Rank 1 started elsewhere: untrained logits differ far beyond the tolerance.
  ASSERT_FALSE(torch::allclose(TrainedLogits(*DistinctModel(TinyGpt(2))), expected, 1e-3, 1e-3));
  for (int rank = 0; rank < 2; ++rank) {
    torch::Tensor logits;
    torch::load(logits, tmp.File(absl::StrCat("rank", rank, ".pt")));
    EXPECT_TRUE(torch::allclose(logits, expected, 1e-4, 1e-4))
        << "rank " << rank << ": max difference " << (logits - expected).abs().max().item<double>();
  }
}

TEST(OffsiteTuningTest, DistillationTrainsOnlyTheKeptMiddleAndLowersItsLoss) {
  v1::ModelArch arch = TinyGpt();
  auto full = DistinctModel(arch);
  SplitPlan plan = PlanSplit(6, 1, 1, 2).value();
  Emulator emulator = MakeEmulator(arch, *full, plan, 0, 0).value();
  TaskTensors data;
  data.language = true;
  data.context = 16;
  torch::manual_seed(3);
  data.train_input = torch::randint(0, 40, {4000}, torch::kLong);
  data.valid_input = torch::randint(0, 40, {600}, torch::kLong);
  std::map<std::string, torch::Tensor> before;
  for (const auto& item : emulator.model->named_parameters())
    before[item.key()] = item.value().clone();
  DistillOptions options;
  options.train.steps = 40;
  options.train.learning_rate = 3e-3;
  options.train.eval_interval = 10;
  options.train.batch_size = 8;
  double first_loss = -1;
  TrainResult result = DistillEmulator(*full, *emulator.model, plan, data, options,
                                       [&](int64_t step, const std::map<std::string, double>& m) {
                                         if (step == 0) first_loss = m.at("valid_loss");
                                         return true;
                                       })
                           .value();
  EXPECT_LT(result.best.loss, first_loss);
  for (const auto& item : emulator.model->named_parameters()) {
    const int64_t b = BlockIndexOfName(*emulator.model, item.key());
    const bool middle = b >= 0 && !plan.IsAdapter(b);
    EXPECT_EQ(!torch::equal(item.value(), before[item.key()]), middle) << item.key();
  }
}

TEST(OffsiteTuningTest, NormalisedMseIsScaleFree) {
  torch::Tensor t = torch::randn({4, 8});
  torch::Tensor s = t + 0.1 * torch::randn({4, 8});
  EXPECT_NEAR(NormalisedMse(s, t).item<double>(), NormalisedMse(10 * s, 10 * t).item<double>(),
              1e-5);
  EXPECT_EQ(NormalisedMse(t, t).item<double>(), 0.0);
}

}  // namespace
}  // namespace offsite
