#include "server/jobs/mic_job.h"

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/idx.h"
#include "gtest/gtest.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

// Records metrics and artifacts; stops the job after `stop_after` steps.
class FakeContext : public JobContext {
 public:
  explicit FakeContext(std::string dir) : dir_(std::move(dir)) {}
  const v1::Job& job() const override { return job_; }
  bool cancelled() const override { return stop_after >= 0 && steps >= stop_after; }
  void ReportProgress(absl::string_view, int64_t step, int64_t) override { steps = step; }
  void ReportMetrics(int64_t, const std::map<std::string, double>& values) override {
    metrics.push_back(values);
  }
  void Log(absl::string_view) override {}
  const std::string& work_dir() const override { return dir_; }
  bool CheckpointDue() override { return true; }
  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path,
                                           const std::string& name) override {
    artifacts[name] = ReadFile(path).value_or("");
    return v1::Artifact();
  }
  absl::StatusOr<std::string> ArtifactPath(const std::string&) override {
    return absl::NotFoundError("none");
  }
  const std::string& device() const override { return device_; }

  int64_t stop_after = -1;
  int64_t steps = 0;
  std::vector<std::map<std::string, double>> metrics;
  std::map<std::string, std::string> artifacts;

 private:
  v1::Job job_;
  std::string dir_;
  std::string device_ = "cpu";
};

bool FashionMnistInstalled() {
  return FileExists(FashionMnistFile("train-images-idx3-ubyte.gz")) &&
         FileExists(FashionMnistFile("t10k-images-idx3-ubyte.gz"));
}

v1::JobSpec TinySpec(const std::string& task) {
  v1::JobSpec job;
  v1::MicSpec* spec = job.mutable_mic();
  spec->set_task(task);
  spec->mutable_data()->set_train_subset(160);
  spec->mutable_data()->set_test_subset(40);
  spec->set_canvas_size(32);
  spec->mutable_arch()->add_depths(1);
  spec->mutable_arch()->add_depths(1);
  spec->mutable_arch()->add_dims(8);
  spec->mutable_arch()->add_dims(16);
  spec->set_steps(6);
  spec->set_batch_size(8);
  spec->set_warmup_steps(2);
  spec->set_eval_every(3);
  spec->set_pseudo_label_threshold(0.05);  // below 1/11: every pixel counts
  spec->set_seed(4);
  return job;
}

std::string Error(const std::function<void(v1::MicSpec*)>& edit) {
  v1::JobSpec job;
  edit(job.mutable_mic());
  return std::string(MicJob().Validate(job).message());
}

TEST(MicJobTest, BadSpecsAreRejectedNamingTheFieldAndValue) {
  EXPECT_EQ(Error([](v1::MicSpec*) {}), "");
  EXPECT_EQ(Error([](v1::MicSpec* s) { s->set_task("segmentation"); }), "");
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_task("detection"); }).find("mic.task: \"detection\""),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_method("dann"); }).find("mic.method: \"dann\""),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_mask_ratio(1.5); }).find("mic.mask_ratio: 1.5"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_ema_alpha(1); }).find("mic.ema_alpha"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) {
              s->mutable_target()->set_clutter(2);
            }).find("mic.target.clutter: 2"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) {
              s->set_min_objects(5);
              s->set_max_objects(3);
            }).find("mic.max_objects: 3"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_source_dir(MakeTestDir()); }).find("mic.source_dir"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) {
              s->set_source_dir("/no/such/dir");
              s->set_target_train_dir("/no/such/dir");
              s->set_target_test_dir("/no/such/dir");
            }).find("/no/such/dir"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->set_mask_block_size(100); }).find("mic.mask_block_size"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->mutable_arch()->add_dims(-1); }).find("mic.arch"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) { s->mutable_data()->add_classes(3); }).find("mic.data"),
            std::string::npos);
  EXPECT_NE(Error([](v1::MicSpec* s) {
              s->set_steps(10);
              s->set_warmup_steps(20);
            }).find("mic.warmup_steps: 20"),
            std::string::npos);
}

TEST(MicJobTest, SegmentationJobStreamsItsMetricsAndLeavesTheStudent) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeContext ctx(MakeTestDir());
  ASSERT_TRUE(MicJob().Run(TinySpec("segmentation"), ctx).ok());
  ASSERT_EQ(ctx.metrics.size(), 2u);  // steps 3 and 6
  const auto& last = ctx.metrics.back();
  for (const char* name :
       {"source_loss", "pseudo_label_loss", "mic_loss", "pseudo_label_confidence", "quality_weight",
        "target_accuracy", "target_miou", "target_iou_0"}) {
    EXPECT_TRUE(last.count(name)) << name;
  }
  EXPECT_GT(last.at("source_loss"), 0);
  EXPECT_GT(last.at("mic_loss"), 0);
  EXPECT_GT(last.at("pseudo_label_confidence"), 0);
  EXPECT_EQ(last.at("step"), 6);
  ASSERT_TRUE(ctx.artifacts.count("mic_student.pt"));
  ASSERT_TRUE(ctx.artifacts.count("mic_metrics.txt"));
  EXPECT_NE(ctx.artifacts.at("mic_metrics.txt").find("target_miou "), std::string::npos);
}

TEST(MicJobTest, ResumedJobEndsExactlyAsAnUninterruptedOne) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const v1::JobSpec spec = TinySpec("classification");
  FakeContext whole(MakeTestDir());
  ASSERT_TRUE(MicJob().Run(spec, whole).ok());

  FakeContext interrupted(MakeTestDir());
  interrupted.stop_after = 4;
  EXPECT_TRUE(absl::IsCancelled(MicJob().Run(spec, interrupted)));
  interrupted.stop_after = -1;
  ASSERT_TRUE(MicJob().Run(spec, interrupted).ok());
  ASSERT_FALSE(whole.metrics.empty());
  ASSERT_FALSE(interrupted.metrics.empty());
  EXPECT_EQ(whole.metrics.back(), interrupted.metrics.back());
  EXPECT_EQ(whole.artifacts.at("mic_metrics.txt"), interrupted.artifacts.at("mic_metrics.txt"));
}

}  // namespace
}  // namespace offsite
