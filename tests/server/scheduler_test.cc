#include "server/scheduler.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "gtest/gtest.h"
#include "server/database.h"
#include "server/job_manager.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

using namespace std::chrono_literals;

// A runner whose behaviour the spec's epochs field selects:
//   1: succeed at once and leave an artifact; 2: run until cancelled;
//   3: throw; 4: fail with a status; 5: count runs, resume from a checkpoint;
//   6: its inputs cannot be resolved; 7: its outputs cannot be recorded.
class FakeRunner : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override {
    if (spec.forward_forward().epochs() < 0) {
      return absl::InvalidArgumentError("forward_forward.epochs: negative");
    }
    return absl::OkStatus();
  }
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override {
    switch (spec.forward_forward().epochs()) {
      case 1: {
        if (ctx.inputs().model().name() != "resolved-model") {
          return absl::InternalError("ran without its resolved inputs");
        }
        ctx.ReportMetrics(1, {{"accuracy", 0.9}});
        std::string path = ctx.work_dir() + "/out.txt";
        std::ofstream(path) << "result";
        return ctx.AddArtifact(path, "out.txt").status();
      }
      case 2:
        while (!ctx.cancelled()) std::this_thread::sleep_for(5ms);
        return absl::CancelledError("cancelled");
      case 3:
        throw std::runtime_error("tensor shape mismatch");
      case 4:
        return absl::InvalidArgumentError("bad data file x.idx");
      default: {
        std::string marker = ctx.work_dir() + "/checkpoint";
        bool resumed = std::ifstream(marker).good();
        std::ofstream(marker) << "step 1";
        ctx.Log(resumed ? "resumed" : "fresh");
        return absl::OkStatus();
      }
    }
  }
  absl::StatusOr<v1::JobInputs> ResolveInputs(const v1::Job& job) const override {
    if (job.spec().forward_forward().epochs() == 6) {
      return absl::InvalidArgumentError("emulator.model: model \"gone\" not found");
    }
    v1::JobInputs inputs;
    inputs.mutable_model()->set_name("resolved-model");
    return inputs;
  }
  absl::Status RecordOutputs(const v1::Job& job) const override {
    const int mode = job.spec().forward_forward().epochs();
    if (mode == 7) return absl::DataLossError("package file unreadable");
    if (mode == 1 && job.artifact_ids_size() != 1) {
      return absl::FailedPreconditionError("outputs recorded before the artifact was in");
    }
    return absl::OkStatus();
  }
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = Database::Open(dir_ + "/offsite.db").value();
    jobs_ = JobStore::Create(db_.get()).value();
    artifacts_ = ArtifactStore::Create(db_.get(), dir_).value();
    runners_[v1::JobSpec::kForwardForward] = std::make_unique<FakeRunner>();
  }
  void StartScheduler(int workers = 1) {
    SchedulerOptions options;
    options.data_dir = dir_;
    options.workers = workers;
    scheduler_ = std::make_unique<Scheduler>(jobs_.get(), artifacts_.get(), &runners_, &bus_,
                                             options);
    manager_ = std::make_unique<JobManager>(jobs_.get(), artifacts_.get(), scheduler_.get(),
                                            &runners_, &bus_,
                                            std::vector<std::string>{dir_ + "/datasets"});
    ASSERT_TRUE(scheduler_->Start().ok());
  }
  v1::Job Submit(int mode, const Caller& caller = {"owner", v1::OWNER}) {
    v1::JobSpec spec;
    spec.mutable_forward_forward()->set_epochs(mode);
    absl::StatusOr<v1::Job> job = manager_->Submit(caller, spec);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }
  v1::Job WaitFor(const std::string& id, v1::JobState state) {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    v1::Job job;
    while (std::chrono::steady_clock::now() < deadline) {
      job = jobs_->Get(id).value();
      if (job.state() == state) return job;
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << id << " never reached " << v1::JobState_Name(state) << ", is "
                  << v1::JobState_Name(job.state());
    return job;
  }

  std::string dir_ = MakeTestDir();
  std::unique_ptr<Database> db_;
  std::unique_ptr<JobStore> jobs_;
  std::unique_ptr<ArtifactStore> artifacts_;
  RunnerRegistry runners_;
  EventBus bus_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<JobManager> manager_;
  const Caller owner_{"owner", v1::OWNER};
};

TEST_F(SchedulerTest, JobRunsToSucceededWithMetricsAndArtifact) {
  StartScheduler();
  v1::Job job = WaitFor(Submit(1).id(), v1::SUCCEEDED);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_DOUBLE_EQ(job.metrics().at("accuracy"), 0.9);
  ASSERT_EQ(job.artifact_ids_size(), 1);
  v1::Artifact artifact = artifacts_->Get(job.artifact_ids(0)).value();
  EXPECT_EQ(artifact.owner(), "owner");
  EXPECT_EQ(artifact.job_id(), job.id());
  EXPECT_EQ(artifact.size(), 6);
}

TEST_F(SchedulerTest, CancelStopsRunningJobPromptly) {
  StartScheduler();
  v1::Job job = Submit(2);
  WaitFor(job.id(), v1::RUNNING);
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(manager_->Cancel(owner_, job.id()).ok());
  WaitFor(job.id(), v1::CANCELLED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_TRUE(absl::IsFailedPrecondition(manager_->Cancel(owner_, job.id()).status()));
}

TEST_F(SchedulerTest, CancelOfQueuedJobIsImmediate) {
  StartScheduler(1);
  v1::Job blocker = Submit(2);
  WaitFor(blocker.id(), v1::RUNNING);
  v1::Job queued = Submit(1);
  v1::Job cancelled = manager_->Cancel(owner_, queued.id()).value();
  EXPECT_EQ(cancelled.state(), v1::CANCELLED);
  ASSERT_TRUE(manager_->Cancel(owner_, blocker.id()).ok());
  WaitFor(blocker.id(), v1::CANCELLED);
}

TEST_F(SchedulerTest, ExceptionFailsJobAndWorkerKeepsServing) {
  StartScheduler();
  v1::Job failed = WaitFor(Submit(3).id(), v1::FAILED);
  EXPECT_NE(failed.error().find("tensor shape mismatch"), std::string::npos);
  v1::Job bad = WaitFor(Submit(4).id(), v1::FAILED);
  EXPECT_NE(bad.error().find("x.idx"), std::string::npos);
  WaitFor(Submit(1).id(), v1::SUCCEEDED);
}

// The server-side halves of a job (JobRunner::ResolveInputs before Run,
// RecordOutputs after it, with the run's artifacts in): either failing fails the job.
TEST_F(SchedulerTest, InputsResolveBeforeAndOutputsRecordAfterTheRunOrTheJobFails) {
  StartScheduler();
  WaitFor(Submit(1).id(), v1::SUCCEEDED);  // mode 1 checks both
  v1::Job unresolvable = WaitFor(Submit(6).id(), v1::FAILED);
  EXPECT_NE(unresolvable.error().find("model \"gone\" not found"), std::string::npos);
  EXPECT_EQ(unresolvable.attempts(), 1);
  v1::Job unrecordable = WaitFor(Submit(7).id(), v1::FAILED);
  EXPECT_NE(unrecordable.error().find("package file unreadable"), std::string::npos);
}

TEST_F(SchedulerTest, RunningJobIsRequeuedAfterRestartAndResumes) {
  // A previous process claimed the job and died with it RUNNING.
  StartScheduler();
  scheduler_->Stop();
  v1::Job job = Submit(5);
  ASSERT_TRUE(jobs_->ClaimNextQueued(1).value().has_value());
  std::filesystem::create_directories(scheduler_->WorkDir(job.id()));
  std::ofstream(scheduler_->WorkDir(job.id()) + "/checkpoint") << "step 1";

  StartScheduler();
  v1::Job done = WaitFor(job.id(), v1::SUCCEEDED);
  EXPECT_EQ(done.attempts(), 2);
  auto events = jobs_->Events(job.id(), 0, 0, false).value();
  bool requeued = false, resumed = false;
  for (const v1::JobEvent& event : events) {
    if (event.has_state() && event.state().state() == v1::QUEUED &&
        event.state().message().find("restarted") != std::string::npos) {
      requeued = true;
    }
    if (event.has_log() && event.log().text() == "resumed") resumed = true;
  }
  EXPECT_TRUE(requeued);
  EXPECT_TRUE(resumed);
}

TEST_F(SchedulerTest, StopRequeuesRunningJobInsteadOfCancellingIt) {
  StartScheduler();
  v1::Job job = Submit(2);
  WaitFor(job.id(), v1::RUNNING);
  scheduler_->Stop();
  EXPECT_EQ(jobs_->Get(job.id())->state(), v1::QUEUED);
}

TEST_F(SchedulerTest, CancelRequestedBeforeCrashEndsCancelledAtRestart) {
  StartScheduler();
  scheduler_->Stop();
  v1::Job job = Submit(2);
  ASSERT_TRUE(jobs_->ClaimNextQueued(1).value().has_value());
  ASSERT_TRUE(manager_->Cancel(owner_, job.id()).ok());  // RUNNING: only requested
  StartScheduler();
  WaitFor(job.id(), v1::CANCELLED);
}

TEST_F(SchedulerTest, WatchStreamsEveryEventInOrderUntilTheFinalState) {
  StartScheduler();
  v1::Job job = Submit(1);
  std::vector<v1::JobEvent> seen;
  absl::Status status = manager_->Watch(
      owner_, job.id(), 0,
      [&](const v1::JobEvent& event) {
        seen.push_back(event);
        return true;
      },
      [] { return false; });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_FALSE(seen.empty());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].seq(), static_cast<int64_t>(i + 1));
  EXPECT_EQ(seen.back().state().state(), v1::SUCCEEDED);

  // Resuming after a sequence number replays only what came after it.
  std::vector<v1::JobEvent> rest;
  ASSERT_TRUE(manager_
                  ->Watch(
                      owner_, job.id(), 2,
                      [&](const v1::JobEvent& event) {
                        rest.push_back(event);
                        return true;
                      },
                      [] { return false; })
                  .ok());
  ASSERT_EQ(rest.size(), seen.size() - 2);
  EXPECT_EQ(rest.front().seq(), 3);
}

TEST_F(SchedulerTest, DataOwnerSeesOnlyOwnJobs) {
  StartScheduler();
  Caller alice{"alice", v1::DATA_OWNER}, bob{"bob", v1::DATA_OWNER};
  v1::Job job = Submit(1, alice);
  EXPECT_TRUE(manager_->Get(alice, job.id()).ok());
  EXPECT_TRUE(absl::IsNotFound(manager_->Get(bob, job.id()).status()));
  EXPECT_TRUE(absl::IsNotFound(manager_->Cancel(bob, job.id()).status()));
  v1::GetJobLogsRequest logs;
  logs.set_id(job.id());
  EXPECT_TRUE(absl::IsNotFound(manager_->Logs(bob, logs).status()));
  EXPECT_EQ(manager_->List(bob, {})->jobs_size(), 0);
  EXPECT_EQ(manager_->List(alice, {})->jobs_size(), 1);
  EXPECT_EQ(manager_->List(owner_, {})->jobs_size(), 1);
  EXPECT_TRUE(absl::IsPermissionDenied(
      manager_->List(Caller{"w", v1::WORKER}, {}).status()));
}

TEST_F(SchedulerTest, SubmitRejectsBadSpecsNamingTheProblem) {
  StartScheduler();
  v1::JobSpec none;
  absl::Status status = manager_->Submit(owner_, none).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("forward_forward"), std::string::npos);

  v1::JobSpec negative;
  negative.mutable_forward_forward()->set_epochs(-1);
  status = manager_->Submit(owner_, negative).status();
  EXPECT_NE(status.message().find("forward_forward.epochs"), std::string::npos);

  v1::JobSpec unknown;
  v1::ForwardForwardSpec* ff = unknown.mutable_forward_forward();
  ff->GetReflection()->MutableUnknownFields(ff)->AddVarint(999, 1);
  status = manager_->Submit(owner_, unknown).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("999"), std::string::npos);
  EXPECT_NE(status.message().find("forward_forward"), std::string::npos);

  // This runner does not train data-parallel: two workers are refused.
  v1::JobSpec two_workers;
  two_workers.mutable_forward_forward()->set_epochs(1);
  two_workers.mutable_resources()->set_workers(2);
  status = manager_->Submit(owner_, two_workers).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("resources.workers: 2 workers"), std::string::npos) << status;
}

TEST_F(SchedulerTest, DataOwnerMayNameOnlyFilesUnderTheDataRoots) {
  StartScheduler();
  Caller alice{"alice", v1::DATA_OWNER};
  for (const std::string& path :
       {std::string("/etc/passwd"), dir_ + "/datasets/../offsite.db", std::string("relative")}) {
    v1::JobSpec spec;
    spec.mutable_forward_forward()->set_epochs(1);
    spec.mutable_forward_forward()->set_train_images(path);
    absl::Status status = manager_->Submit(alice, spec).status();
    EXPECT_TRUE(absl::IsPermissionDenied(status)) << path << ": " << status;
    EXPECT_NE(status.message().find("forward_forward.train_images"), std::string::npos);
  }
  std::filesystem::create_directories(dir_ + "/datasets");
  std::ofstream(dir_ + "/datasets/train.idx") << "x";
  v1::JobSpec inside;
  inside.mutable_forward_forward()->set_epochs(1);
  inside.mutable_forward_forward()->set_train_images(dir_ + "/datasets/train.idx");
  EXPECT_TRUE(manager_->Submit(alice, inside).ok());
  // The owner is trusted with any path.
  v1::JobSpec anywhere;
  anywhere.mutable_forward_forward()->set_epochs(1);
  anywhere.mutable_forward_forward()->set_train_images("/etc/passwd");
  EXPECT_TRUE(manager_->Submit(owner_, anywhere).ok());
}

}  // namespace
}  // namespace offsite
