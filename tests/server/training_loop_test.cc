#include "server/jobs/training_loop.h"

#include <torch/torch.h>

#include <filesystem>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

// A JobContext that records what the loop reports and can stop it after a
// number of steps, as a cancel or a server stop would.
class FakeContext : public JobContext {
 public:
  explicit FakeContext(std::string dir) : dir_(std::move(dir)) {}
  const v1::Job& job() const override { return job_; }
  bool cancelled() const override { return stop_after_ >= 0 && steps_ >= stop_after_; }
  void ReportProgress(absl::string_view, int64_t step, int64_t) override { steps_ = step; }
  void ReportMetrics(int64_t, const std::map<std::string, double>&) override {}
  void Log(absl::string_view) override {}
  const std::string& work_dir() const override { return dir_; }
  bool CheckpointDue() override { return true; }
  absl::StatusOr<v1::Artifact> AddArtifact(const std::string&, const std::string&) override {
    return v1::Artifact();
  }
  absl::StatusOr<std::string> ArtifactPath(const std::string&) override {
    return absl::NotFoundError("none");
  }
  const std::string& device() const override { return device_; }

  int64_t stop_after_ = -1;
  int64_t steps_ = 0;

 private:
  v1::Job job_;
  std::string dir_;
  std::string device_ = "cpu";
};

struct Recorder {
  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> global_steps;
  std::vector<int64_t> epochs_ended;
  int64_t state = 0;  // stands in for model weights: the number of steps taken

  TrainingLoopHooks Hooks() {
    TrainingLoopHooks hooks;
    hooks.step = [this](const torch::Tensor& batch, int64_t global_step) {
      batches.emplace_back(batch.data_ptr<int64_t>(), batch.data_ptr<int64_t>() + batch.numel());
      global_steps.push_back(global_step);
      ++state;
      return absl::OkStatus();
    };
    hooks.end_epoch = [this](int64_t epoch) {
      epochs_ended.push_back(epoch);
      return absl::OkStatus();
    };
    hooks.save = [this](torch::serialize::OutputArchive& archive) {
      archive.write("state", c10::IValue(state));
    };
    hooks.load = [this](torch::serialize::InputArchive& archive) {
      c10::IValue value;
      archive.read("state", value);
      state = value.toInt();
    };
    return hooks;
  }
};

TrainingLoopOptions Options() {
  TrainingLoopOptions options;
  options.num_examples = 10;
  options.batch_size = 4;  // 3 steps per epoch, the last one short
  options.epochs = 3;
  options.seed = 7;
  options.checkpoint_format = "test_checkpoint";
  return options;
}

TEST(TrainingLoopTest, EveryExampleOncePerEpochInBatches) {
  FakeContext ctx(MakeTestDir());
  Recorder recorder;
  ASSERT_TRUE(RunTrainingLoop(Options(), recorder.Hooks(), ctx).ok());
  ASSERT_EQ(recorder.batches.size(), 9u);
  EXPECT_EQ(recorder.batches[2].size(), 2u);
  std::vector<int64_t> epoch;
  for (int i = 0; i < 3; ++i) {
    epoch.insert(epoch.end(), recorder.batches[i].begin(), recorder.batches[i].end());
  }
  std::sort(epoch.begin(), epoch.end());
  EXPECT_EQ(epoch, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(recorder.epochs_ended, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_NE(recorder.batches[0], recorder.batches[3]);  // reshuffled each epoch
}

TEST(TrainingLoopTest, InterruptedRunResumesAtTheExactStepWithTheSameOrder) {
  Recorder uninterrupted;
  FakeContext clean(MakeTestDir());
  ASSERT_TRUE(RunTrainingLoop(Options(), uninterrupted.Hooks(), clean).ok());

  const std::string dir = MakeTestDir();
  Recorder first;
  FakeContext interrupted(dir);
  interrupted.stop_after_ = 4;  // mid-epoch 2
  EXPECT_TRUE(absl::IsCancelled(RunTrainingLoop(Options(), first.Hooks(), interrupted)));
  ASSERT_EQ(first.batches.size(), 4u);

  Recorder second;  // a fresh process: state comes only from the checkpoint
  FakeContext resumed(dir);
  ASSERT_TRUE(RunTrainingLoop(Options(), second.Hooks(), resumed).ok());
  EXPECT_EQ(second.state, 9);  // 4 restored + 5 new steps
  EXPECT_EQ(second.global_steps.front(), 4);
  std::vector<std::vector<int64_t>> combined = first.batches;
  combined.insert(combined.end(), second.batches.begin(), second.batches.end());
  EXPECT_EQ(combined, uninterrupted.batches);
  EXPECT_EQ(second.epochs_ended, (std::vector<int64_t>{2, 3}));
}

TEST(TrainingLoopTest, CheckpointOfAnotherKindIsRefused) {
  const std::string dir = MakeTestDir();
  FakeContext ctx(dir);
  ctx.stop_after_ = 2;
  Recorder recorder;
  ASSERT_TRUE(absl::IsCancelled(RunTrainingLoop(Options(), recorder.Hooks(), ctx)));
  TrainingLoopOptions other = Options();
  other.checkpoint_format = "other_checkpoint";
  FakeContext again(dir);
  absl::Status status = RunTrainingLoop(other, recorder.Hooks(), again);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("test_checkpoint"), std::string::npos);
}

}  // namespace
}  // namespace offsite
