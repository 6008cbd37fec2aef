#include "server/jobs/reward_tuning_jobs.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "tests/server/test_dir.h"
#include "tests/util/idx_writer.h"
#include "tests/util/job_helpers.h"

namespace offsite {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A JobContext that keeps artifacts in a store directory (ids "art-N"),
// records metrics and logs, and can cancel after a number of progress steps,
// as a server stop would.
class FakeContext : public JobContext {
 public:
  FakeContext(std::string work_dir, std::string store)
      : dir_(std::move(work_dir)), store_(std::move(store)) {}
  const v1::Job& job() const override { return job_; }
  bool cancelled() const override { return stop_after_ >= 0 && steps_ >= stop_after_; }
  void ReportProgress(absl::string_view, int64_t step, int64_t) override { ++steps_; }
  void ReportMetrics(int64_t, const std::map<std::string, double>& values) override {
    ++metric_events_;
    for (const auto& [name, value] : values) metrics_[name] = value;
  }
  void Log(absl::string_view line) override { logs_.emplace_back(line); }
  const std::string& work_dir() const override { return dir_; }
  bool CheckpointDue() override { return true; }
  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path,
                                           const std::string& name) override {
    const std::string id = absl::StrCat("art-", (*artifacts_).size());
    const std::string stored = store_ + "/" + id;
    std::filesystem::copy_file(path, stored);
    (*artifacts_)[id] = stored;
    names_.push_back(name);
    paths_.push_back(stored);
    v1::Artifact artifact;
    artifact.set_id(id);
    artifact.set_name(name);
    return artifact;
  }
  absl::StatusOr<std::string> ArtifactPath(const std::string& id) override {
    auto it = artifacts_->find(id);
    if (it == artifacts_->end()) return absl::NotFoundError(id);
    return it->second;
  }
  const std::string& device() const override { return device_; }

  int64_t stop_after_ = -1;
  int64_t steps_ = 0;
  int64_t metric_events_ = 0;
  std::map<std::string, double> metrics_;
  std::vector<std::string> logs_;
  std::vector<std::string> names_;
  std::vector<std::string> paths_;  // Stored copies, in the order added.
  // Shared between the contexts of one test, as the server's artifact store is.
  std::shared_ptr<std::map<std::string, std::string>> artifacts_ =
      std::make_shared<std::map<std::string, std::string>>();

 private:
  v1::Job job_;
  std::string dir_;
  std::string store_;
  std::string device_ = "cpu";
};

class RewardTuningJobsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTestDir();
    std::filesystem::create_directories(root_ + "/store");
    absl::StatusOr<testutil::IdxDataSet> data =
        testutil::WriteSyntheticIdxDataSet(root_, 200, 100, 7);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = *data;
  }

  std::unique_ptr<FakeContext> Context(const std::string& job) {
    std::filesystem::create_directories(root_ + "/" + job);
    auto ctx = std::make_unique<FakeContext>(root_ + "/" + job, root_ + "/store");
    ctx->artifacts_ = artifacts_;
    return ctx;
  }

  void SetItems(v1::ImageData* items) const {
    items->set_train_images(data_.train_images);
    items->set_train_labels(data_.train_labels);
    items->set_test_images(data_.test_images);
    items->set_test_labels(data_.test_labels);
  }

  // A detection_mle job small enough for a few seconds: 32 px canvases with
  // one or two items, a one-stage encoder and a one-layer decoder.
  v1::JobSpec TinyMleSpec() const {
    v1::JobSpec spec = testutil::TinyDetectionMleSpec();
    v1::DetectionMleSpec* mle = spec.mutable_detection_mle();
    SetItems(mle->mutable_scenes()->mutable_items());
    mle->mutable_scenes()->set_train_scenes(24);
    mle->set_batch_size(8);
    return spec;
  }

  std::string root_;
  testutil::IdxDataSet data_;
  std::shared_ptr<std::map<std::string, std::string>> artifacts_ =
      std::make_shared<std::map<std::string, std::string>>();
};

std::string MleError(const std::function<void(v1::DetectionMleSpec*)>& edit) {
  v1::JobSpec spec;
  edit(spec.mutable_detection_mle());
  return std::string(DetectionMleJob().Validate(spec).message());
}

std::string TuneError(const std::function<void(v1::RewardTuneSpec*)>& edit) {
  v1::JobSpec spec;
  spec.mutable_reward_tune()->set_pretrained_artifact("art-1");
  edit(spec.mutable_reward_tune());
  return std::string(RewardTuneJob().Validate(spec).message());
}

TEST(RewardTuningSpecTest, BadDetectionMleSpecsAreRejectedNamingFieldAndValue) {
  EXPECT_EQ(MleError([](v1::DetectionMleSpec*) {}), "");
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_scenes()->set_min_objects(5); }),
              HasSubstr("detection_mle.scenes.min_objects: 5"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_scenes()->set_max_scale(-1); }),
              HasSubstr("detection_mle.scenes.max_scale"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) {
                s->mutable_scenes()->mutable_items()->set_train_images("/no/such/file");
              }),
              HasSubstr("detection_mle.scenes.items.train_images"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_arch()->set_decoder_heads(3); }),
              HasSubstr("detection_mle.arch"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_arch()->add_encoder_depths(2); }),
              HasSubstr("detection_mle.arch.encoder_depths"));
  // max_boxes below what a scene may hold (default 4) would cut off objects.
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_arch()->set_max_boxes(3); }),
              AllOf(HasSubstr("detection_mle.arch.max_boxes: 3"), HasSubstr("4 objects")));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->mutable_arch()->set_max_boxes(-1); }),
              HasSubstr("detection_mle.arch.max_boxes: -1"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) { s->set_learning_rate(3); }),
              HasSubstr("detection_mle.learning_rate: 3"));
  EXPECT_THAT(MleError([](v1::DetectionMleSpec* s) {
                s->set_epochs(2);
                s->set_warmup_epochs(4);
              }),
              HasSubstr("detection_mle.warmup_epochs: 4"));
}

TEST(RewardTuningSpecTest, BadRewardTuneSpecsAreRejectedNamingFieldAndValue) {
  EXPECT_EQ(TuneError([](v1::RewardTuneSpec*) {}), "");
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->clear_pretrained_artifact(); }),
              HasSubstr("reward_tune.pretrained_artifact"));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->set_reward("bleu"); }),
              AllOf(HasSubstr("reward_tune.reward: \"bleu\""), HasSubstr("cost_matrix")));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) {
                for (int i = 0; i < 5; ++i) s->add_cost_matrix(1);
              }),
              HasSubstr("reward_tune.cost_matrix: 5 entries"));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) {
                for (int i = 0; i < 4; ++i) s->add_cost_matrix(i == 2 ? NAN : 1);
              }),
              HasSubstr("reward_tune.cost_matrix[1][0] is nan"));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->set_samples_per_input(1); }),
              HasSubstr("reward_tune.samples_per_input: 1"));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->set_confidence_weight(-0.5); }),
              HasSubstr("reward_tune.confidence_weight: -0.5"));
  EXPECT_EQ(TuneError([](v1::RewardTuneSpec* s) { s->set_confidence_weight(0); }), "");
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->set_temperature(-1); }),
              HasSubstr("reward_tune.temperature: -1"));
  EXPECT_THAT(TuneError([](v1::RewardTuneSpec* s) { s->mutable_scenes()->set_canvas_size(-8); }),
              HasSubstr("reward_tune.scenes.canvas_size: -8"));
}

TEST_F(RewardTuningJobsTest, UnsetSceneFieldsTakeTheDocumentedDefaults) {
  const v1::SceneData scenes = ResolveSceneData(v1::SceneData());
  EXPECT_EQ(scenes.train_scenes(), 20000);  // Scenes before epochs (docs/reward_tuning.md).
  EXPECT_EQ(scenes.test_scenes(), 500);
  EXPECT_EQ(scenes.canvas_size(), 64);
  EXPECT_EQ(scenes.min_objects(), 1);
  EXPECT_EQ(scenes.max_objects(), 4);
  EXPECT_DOUBLE_EQ(scenes.min_scale(), 0.5);
  EXPECT_DOUBLE_EQ(scenes.max_scale(), 1.0);
}

TEST_F(RewardTuningJobsTest, MaxBoxesGivesTheDecoderRoomBeyondTheScenesObjects) {
  const v1::SceneData scenes = ResolveSceneData(v1::SceneData());
  v1::Pix2SeqArch arch;
  absl::StatusOr<Pix2SeqConfig> config = ResolvePix2SeqConfig(arch, scenes, 10, "arch");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_objects, scenes.max_objects());
  arch.set_max_boxes(9);
  config = ResolvePix2SeqConfig(arch, scenes, 10, "arch");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_objects, 9);
}

TEST_F(RewardTuningJobsTest, ScenesComeFromTheirSplitsDeterministically) {
  v1::SceneData spec = TinyMleSpec().detection_mle().scenes();
  spec = ResolveSceneData(spec);
  EXPECT_EQ(spec.min_objects(), 1);
  EXPECT_DOUBLE_EQ(spec.min_scale(), 0.4);
  absl::StatusOr<SceneSet> a = LoadScenes(spec, torch::kCPU);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->train.images.sizes(), torch::IntArrayRef({24, 1, 32, 32}));
  EXPECT_EQ(a->test.images.size(0), 8);
  EXPECT_EQ(a->num_classes, 10);
  absl::StatusOr<SceneSet> b = LoadScenes(spec, torch::kCPU);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(torch::equal(a->train.images, b->train.images));
  // Items of the synthetic set are bars whose row depends on the class; the
  // train split has 200 items and the test split 100, so sources differ.
  for (const auto& sources : a->test.sources) {
    for (int64_t source : sources) EXPECT_LT(source, 100);
  }
  spec.mutable_items()->add_classes(3);
  spec.mutable_items()->add_classes(5);
  absl::StatusOr<SceneSet> filtered = LoadScenes(spec, torch::kCPU);
  ASSERT_TRUE(filtered.ok()) << filtered.status();
  EXPECT_EQ(filtered->num_classes, 2);
  for (const auto& objects : filtered->train.objects) {
    for (const Box& box : objects) EXPECT_LT(box.label, 2);
  }
}

TEST_F(RewardTuningJobsTest, MleResumesAfterARestartThenRewardTuningStreamsItsFigures) {
  const v1::JobSpec mle = TinyMleSpec();
  ASSERT_TRUE(DetectionMleJob().Validate(mle).ok());
  // 3 steps per epoch; stop after 4 steps (mid epoch 2), as a server stop would.
  auto first = Context("mle");
  first->stop_after_ = 4;
  EXPECT_TRUE(absl::IsCancelled(DetectionMleJob().Run(mle, *first)));
  EXPECT_EQ(first->metrics_.at("epoch"), 1);
  auto second = Context("mle");
  absl::Status done = DetectionMleJob().Run(mle, *second);
  ASSERT_TRUE(done.ok()) << done;
  EXPECT_THAT(absl::StrJoin(second->logs_, "\n"), HasSubstr("resumed from checkpoint: epoch 2"));
  EXPECT_EQ(second->steps_, 2);  // only the rest of epoch 2
  EXPECT_EQ(second->metrics_.at("epoch"), 2);
  for (const char* name : {"test_map", "test_map50", "test_recall", "test_duplicate_rate"}) {
    ASSERT_TRUE(second->metrics_.count(name)) << name;
    EXPECT_GE(second->metrics_.at(name), 0) << name;
    EXPECT_LE(second->metrics_.at(name), 1) << name;
  }
  ASSERT_EQ(second->names_, std::vector<std::string>{"detector.pt"});

  v1::JobSpec tune;
  tune.mutable_reward_tune()->set_pretrained_artifact("art-0");
  tune.mutable_reward_tune()->set_samples_per_input(4);
  tune.mutable_reward_tune()->set_batch_size(4);
  tune.mutable_reward_tune()->set_steps(4);
  tune.mutable_reward_tune()->set_eval_every(2);
  tune.mutable_reward_tune()->set_learning_rate(1e-4);
  ASSERT_TRUE(RewardTuneJob().Validate(tune).ok());
  auto cut = Context("tune");
  cut->stop_after_ = 2;
  EXPECT_TRUE(absl::IsCancelled(RewardTuneJob().Run(tune, *cut)));
  auto ctx = Context("tune");
  done = RewardTuneJob().Run(tune, *ctx);
  ASSERT_TRUE(done.ok()) << done;
  EXPECT_THAT(absl::StrJoin(ctx->logs_, "\n"), HasSubstr("resumed from checkpoint at step 2"));
  EXPECT_EQ(ctx->steps_, 2);
  for (const char* name :
       {"sampled_reward", "greedy_reward", "entropy", "output_length", "confidence_loss",
        "test_map", "initial_test_map", "initial_greedy_reward"}) {
    EXPECT_TRUE(ctx->metrics_.count(name)) << name;
  }
  EXPECT_GT(ctx->metrics_.at("entropy"), 0);
  EXPECT_GE(ctx->metrics_.at("output_length"), 1);
  EXPECT_EQ(ctx->metrics_.at("step"), 4);
  EXPECT_EQ(ctx->names_, (std::vector<std::string>{"detector.pt", "metrics.json"}));
  EXPECT_THAT(ReadFile(ctx->paths_.at(1)).value(), HasSubstr("\"initial_test_map\""));

  // The tuned detector is itself a starting point; a classifier reward is refused.
  tune.mutable_reward_tune()->set_pretrained_artifact("art-1");
  tune.mutable_reward_tune()->set_reward("cost_matrix");
  auto wrong = Context("wrong");
  absl::Status refused = RewardTuneJob().Run(tune, *wrong);
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("reward_tune.reward"));
}

TEST_F(RewardTuningJobsTest, ClassifierTuningReadsAFinetuneModelFileAndChecksTheCostMatrix) {
  v1::ModelArch arch;
  arch.mutable_convnext_v2()->add_depths(1);
  arch.mutable_convnext_v2()->add_depths(1);
  arch.mutable_convnext_v2()->add_dims(8);
  arch.mutable_convnext_v2()->add_dims(16);
  arch.set_in_channels(1);
  arch.set_num_classes(10);
  arch = ResolveModelArch(arch).value();
  torch::manual_seed(0);
  auto model = MakeBlockModel(arch).value();
  const std::string path = root_ + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, ModelToFile(arch, *model).value()).ok());
  (*artifacts_)["art-cls"] = path;

  v1::JobSpec tune;
  v1::RewardTuneSpec* spec = tune.mutable_reward_tune();
  spec->set_pretrained_artifact("art-cls");
  SetItems(spec->mutable_data());
  spec->set_steps(3);
  spec->set_batch_size(16);
  spec->set_samples_per_input(4);
  spec->set_learning_rate(1e-3);
  for (int i = 0; i < 9; ++i) spec->add_cost_matrix(1);
  auto bad = Context("bad");
  absl::Status status = RewardTuneJob().Run(tune, *bad);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("reward_tune.cost_matrix: 9 entries"));

  spec->clear_cost_matrix();
  for (int i = 0; i < 10; ++i) {
    for (int j = 0; j < 10; ++j) spec->add_cost_matrix(i == j ? 0 : (i == 3 ? 5 : 1));
  }
  auto ctx = Context("cls");
  status = RewardTuneJob().Run(tune, *ctx);
  ASSERT_TRUE(status.ok()) << status;
  for (const char* name : {"sampled_reward", "greedy_reward", "entropy", "test_accuracy",
                           "test_bayes_reward", "initial_test_accuracy"}) {
    EXPECT_TRUE(ctx->metrics_.count(name)) << name;
  }
  EXPECT_LE(ctx->metrics_.at("greedy_reward"), 0);
  EXPECT_EQ(ctx->names_, (std::vector<std::string>{"model.safetensors", "metrics.json"}));
  // The tuned file loads as the same architecture.
  absl::StatusOr<SafetensorsFile> tuned = ReadSafetensors(ctx->paths_.at(0));
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_TRUE(ModelFromFile(*tuned).ok());

  spec->set_reward("detection");
  auto wrong = Context("wrong");
  status = RewardTuneJob().Run(tune, *wrong);
  EXPECT_THAT(status.message(), HasSubstr("does not score classes"));
}

}  // namespace
}  // namespace offsite
