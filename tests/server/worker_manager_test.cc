#include "server/worker_manager.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "server/database.h"
#include "server/scheduler.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

constexpr int64_t kTimeoutMs = 1000;

// Stands in for the forward_forward runner on the server's side: what it
// resolves for a job and what recording its outputs answers. A job named
// "unresolvable" has inputs that cannot be resolved.
class FakeRunner : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec&) const override { return absl::OkStatus(); }
  absl::Status Run(const v1::JobSpec&, JobContext&) const override { return absl::OkStatus(); }
  absl::StatusOr<v1::JobInputs> ResolveInputs(const v1::Job& job) const override {
    if (job.spec().display_name() == "unresolvable") {
      return absl::InvalidArgumentError("emulator.model: model \"gone\" not found");
    }
    return inputs;
  }
  absl::Status RecordOutputs(const v1::Job& job) const override {
    recorded.push_back(job.id());
    return record_outcome;
  }

  v1::JobInputs inputs;
  absl::Status record_outcome;
  mutable std::vector<std::string> recorded;
};

class WorkerManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = Database::Open(dir_ + "/offsite.db").value();
    auto runner = std::make_unique<FakeRunner>();
    runner_ = runner.get();
    runners_[v1::JobSpec::kForwardForward] = std::move(runner);
    jobs_ = JobStore::Create(db_.get()).value();
    artifacts_ = ArtifactStore::Create(db_.get(), dir_).value();
    NewManager();
  }

  // A fresh manager over the same database: what a server restart sees.
  void NewManager() {
    manager_.reset();
    leases_ = LeaseStore::Create(db_.get()).value();
    WorkerManagerOptions options;
    options.data_dir = dir_;
    options.lease_timeout_ms = kTimeoutMs;
    options.checkpoint_interval_s = 7;
    options.now_ms = [this] { return now_; };
    manager_ = std::make_unique<WorkerManager>(jobs_.get(), leases_.get(), artifacts_.get(),
                                               &runners_, &bus_, options);
  }

  v1::Job Queue(const v1::JobResources& resources = {}, const std::string& owner = "alice",
                const std::string& display_name = "") {
    v1::Job job;
    job.set_id(NewId("job"));
    job.set_owner(owner);
    job.set_kind("forward_forward");
    job.mutable_spec()->mutable_forward_forward()->set_epochs(1);
    job.mutable_spec()->set_display_name(display_name);
    *job.mutable_spec()->mutable_resources() = resources;
    job.set_state(v1::QUEUED);
    job.set_create_time_ms(++created_);
    v1::JobEvent event;
    event.mutable_state()->set_state(v1::QUEUED);
    EXPECT_TRUE(jobs_->Insert(job, event).ok());
    return job;
  }

  static v1::WorkerCapabilities Caps(int threads = 4, const std::string& rendezvous = "") {
    v1::WorkerCapabilities caps;
    caps.set_name("host");
    caps.set_threads(threads);
    caps.set_memory_mb(8000);
    caps.set_device("cpu");
    caps.add_kinds("forward_forward");
    caps.set_rendezvous_address(rendezvous);
    return caps;
  }

  absl::StatusOr<v1::LeaseResponse> Lease(const Caller& caller,
                                          const v1::WorkerCapabilities& caps = Caps()) {
    v1::LeaseRequest request;
    *request.mutable_capabilities() = caps;
    return manager_->Lease(caller, request, nullptr);
  }

  absl::Status Heartbeat(const Caller& caller, const std::string& lease_id) {
    v1::HeartbeatRequest request;
    request.set_lease_id(lease_id);
    return manager_->Heartbeat(caller, request).status();
  }

  absl::StatusOr<v1::CompleteResponse> Complete(const Caller& caller, const std::string& lease_id,
                                                absl::Status outcome, bool requeue = false) {
    v1::CompleteRequest request;
    request.set_lease_id(lease_id);
    request.set_code(static_cast<int>(outcome.code()));
    request.set_message(std::string(outcome.message()));
    request.set_requeue(requeue);
    return manager_->Complete(caller, request);
  }

  // An artifact uploaded by `owner` with `content`.
  v1::Artifact Upload(const std::string& owner, const std::string& content) {
    const std::string path = dir_ + "/upload.tmp";
    std::ofstream(path) << content;
    return artifacts_->AddFile(path, "upload", owner, "").value();
  }

  v1::JobState State(const std::string& id) { return jobs_->Get(id)->state(); }

  std::string dir_ = MakeTestDir();
  int64_t now_ = 1000000;
  int64_t created_ = 0;
  std::unique_ptr<Database> db_;
  std::unique_ptr<JobStore> jobs_;
  std::unique_ptr<ArtifactStore> artifacts_;
  std::unique_ptr<LeaseStore> leases_;
  EventBus bus_;
  RunnerRegistry runners_;
  FakeRunner* runner_ = nullptr;
  std::unique_ptr<WorkerManager> manager_;
  const Caller worker_a_{"worker-a", v1::WORKER};
  const Caller worker_b_{"worker-b", v1::WORKER};
};

TEST_F(WorkerManagerTest, OnlyWorkersMayLease) {
  Queue();
  for (const Caller& caller : {Caller{"alice", v1::DATA_OWNER}, Caller{"owner", v1::OWNER}}) {
    absl::StatusOr<v1::LeaseResponse> lease = Lease(caller);
    EXPECT_TRUE(absl::IsPermissionDenied(lease.status())) << lease.status();
  }
}

TEST_F(WorkerManagerTest, LeaseMarksOldestJobRunningWithExpiryAndInterval) {
  v1::Job first = Queue();
  Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  ASSERT_FALSE(lease.lease_id().empty());
  EXPECT_EQ(lease.job().id(), first.id());
  EXPECT_EQ(lease.job().state(), v1::RUNNING);
  EXPECT_EQ(lease.job().attempts(), 1);
  EXPECT_EQ(lease.expiry_ms(), now_ + kTimeoutMs);
  EXPECT_EQ(lease.lease_timeout_ms(), kTimeoutMs);
  EXPECT_EQ(lease.checkpoint_interval_s(), 7);
  EXPECT_FALSE(lease.has_rendezvous());
  EXPECT_EQ(State(first.id()), v1::RUNNING);
  EXPECT_TRUE(manager_->IsLeased(first.id()));
  auto events = jobs_->Events(first.id(), 0, 0, false).value();
  EXPECT_NE(events.back().state().message().find("worker-a"), std::string::npos);
}

TEST_F(WorkerManagerTest, JobIsLeasedOnlyToWorkersItFits) {
  v1::JobResources big;
  big.set_threads(8);
  v1::Job job = Queue(big);
  EXPECT_TRUE(Lease(worker_a_, Caps(4))->lease_id().empty());
  v1::WorkerCapabilities other_kinds = Caps(16);
  other_kinds.clear_kinds();
  other_kinds.add_kinds("fcmae");
  EXPECT_TRUE(Lease(worker_a_, other_kinds)->lease_id().empty());
  v1::JobResources memory;
  memory.set_memory_mb(9000);
  Queue(memory);
  v1::LeaseResponse lease = Lease(worker_a_, Caps(16)).value();
  EXPECT_EQ(lease.job().id(), job.id());  // the 16-thread worker fits the first, not the second
  EXPECT_TRUE(Lease(worker_b_, Caps(16))->lease_id().empty());
  EXPECT_EQ(WhyUnfit(jobs_->Get(job.id()).value(), Caps(4)), "needs 8 threads, worker has 4");
}

TEST_F(WorkerManagerTest, HeartbeatsKeepTheLeasePastItsFirstExpiry) {
  v1::Job job = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  for (int i = 0; i < 5; ++i) {
    now_ += kTimeoutMs * 2 / 3;
    ASSERT_TRUE(Heartbeat(worker_a_, lease.lease_id()).ok());
    EXPECT_EQ(manager_->ExpireLeases().value(), 0);
  }
  EXPECT_EQ(State(job.id()), v1::RUNNING);
  // Another principal cannot renew it.
  EXPECT_TRUE(absl::IsNotFound(Heartbeat(worker_b_, lease.lease_id())));
}

TEST_F(WorkerManagerTest, ExpiredLeaseRequeuesJobAndItsHolderIsToldToStop) {
  v1::Job job = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  now_ += kTimeoutMs + 1;
  // Expired but not yet swept: the lease cannot be renewed any more.
  EXPECT_TRUE(absl::IsNotFound(Heartbeat(worker_a_, lease.lease_id())));
  EXPECT_EQ(manager_->ExpireLeases().value(), 1);
  EXPECT_EQ(State(job.id()), v1::QUEUED);
  EXPECT_FALSE(manager_->IsLeased(job.id()));
  v1::ReportRequest report;
  report.set_lease_id(lease.lease_id());
  EXPECT_TRUE(absl::IsNotFound(manager_->Report(worker_a_, report).status()));
  EXPECT_TRUE(absl::IsNotFound(Complete(worker_a_, lease.lease_id(), absl::OkStatus()).status()));

  v1::LeaseResponse again = Lease(worker_b_).value();
  EXPECT_EQ(again.job().id(), job.id());
  EXPECT_EQ(again.job().attempts(), 2);
  auto events = jobs_->Events(job.id(), 0, 0, false).value();
  bool requeued = false;
  for (const v1::JobEvent& event : events) {
    requeued |= event.state().state() == v1::QUEUED &&
                event.state().message().find("stopped renewing") != std::string::npos;
  }
  EXPECT_TRUE(requeued);
}

TEST_F(WorkerManagerTest, ExpiredLeaseOfCancelledJobEndsItCancelled) {
  v1::Job job = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  ASSERT_TRUE(jobs_
                  ->Update(
                      job.id(),
                      [](v1::Job& j) {
                        j.set_cancel_requested(true);
                        return absl::OkStatus();
                      },
                      v1::JobEvent())
                  .ok());
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_lease_id(lease.lease_id());
  EXPECT_TRUE(manager_->Heartbeat(worker_a_, heartbeat)->cancel_requested());
  now_ += kTimeoutMs + 1;
  EXPECT_EQ(manager_->ExpireLeases().value(), 0);
  EXPECT_EQ(State(job.id()), v1::CANCELLED);
}

TEST_F(WorkerManagerTest, CompleteRecordsOutcomeAndReleasesLease) {
  v1::Job ok = Queue();
  v1::Job bad = Queue();
  v1::Job stopping = Queue();
  v1::LeaseResponse a = Lease(worker_a_).value();
  v1::LeaseResponse b = Lease(worker_b_).value();
  EXPECT_EQ(Complete(worker_a_, a.lease_id(), absl::OkStatus())->state(), v1::SUCCEEDED);
  EXPECT_EQ(Complete(worker_b_, b.lease_id(), absl::InvalidArgumentError("bad x.idx"))->state(),
            v1::FAILED);
  EXPECT_EQ(State(ok.id()), v1::SUCCEEDED);
  EXPECT_NE(jobs_->Get(bad.id())->error().find("bad x.idx"), std::string::npos);
  EXPECT_FALSE(manager_->IsLeased(ok.id()));

  v1::LeaseResponse c = Lease(worker_a_).value();
  ASSERT_EQ(c.job().id(), stopping.id());
  EXPECT_EQ(Complete(worker_a_, c.lease_id(), absl::CancelledError(), /*requeue=*/true)->state(),
            v1::QUEUED);
  EXPECT_EQ(State(stopping.id()), v1::QUEUED);
}

TEST_F(WorkerManagerTest, SuccessRecordsTheJobsOutputsOrFailsItWhenThatFails) {
  v1::Job recorded = Queue();
  v1::Job unrecordable = Queue();
  v1::LeaseResponse a = Lease(worker_a_).value();
  EXPECT_EQ(Complete(worker_a_, a.lease_id(), absl::OkStatus())->state(), v1::SUCCEEDED);
  EXPECT_EQ(runner_->recorded, std::vector<std::string>{recorded.id()});

  runner_->record_outcome = absl::InvalidArgumentError("package.safetensors: no manifest");
  v1::LeaseResponse b = Lease(worker_a_).value();
  EXPECT_EQ(Complete(worker_a_, b.lease_id(), absl::OkStatus())->state(), v1::FAILED);
  EXPECT_NE(jobs_->Get(unrecordable.id())->error().find("no manifest"), std::string::npos);
  EXPECT_FALSE(manager_->IsLeased(unrecordable.id()));
}

TEST_F(WorkerManagerTest, LeaseCarriesResolvedInputsWhoseArtifactsItsHolderMayRead) {
  // A model registered by another owner than the job's: readable through the
  // inputs only, by the lease holder only.
  const v1::Artifact model = Upload("owner", "model weights");
  runner_->inputs.mutable_model()->set_name("m");
  runner_->inputs.mutable_model()->set_artifact_id(model.id());
  Queue();
  EXPECT_FALSE(manager_->MayRead(worker_a_, model));
  v1::LeaseResponse lease = Lease(worker_a_).value();
  EXPECT_EQ(lease.inputs().model().artifact_id(), model.id());
  EXPECT_TRUE(manager_->MayRead(worker_a_, model));
  EXPECT_FALSE(manager_->MayRead(worker_b_, model));
  EXPECT_FALSE(manager_->MayRead(worker_a_, Upload("owner", "another model")));
}

TEST_F(WorkerManagerTest, JobWhoseInputsCannotBeResolvedFailsAndTheNextIsLeased) {
  v1::Job unresolvable = Queue({}, "alice", "unresolvable");
  v1::Job next = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  EXPECT_EQ(lease.job().id(), next.id());
  EXPECT_EQ(State(unresolvable.id()), v1::FAILED);
  EXPECT_NE(jobs_->Get(unresolvable.id())->error().find("model \"gone\" not found"),
            std::string::npos);
  EXPECT_FALSE(manager_->IsLeased(unresolvable.id()));
}

TEST_F(WorkerManagerTest, LeasesSurviveAServerRestart) {
  v1::Job job = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  NewManager();
  // The restarted scheduler does not take the leased job for an orphan.
  EventBus bus;
  RunnerRegistry runners;
  SchedulerOptions options;
  options.data_dir = dir_;
  options.workers = 0;
  WorkerManager* manager = manager_.get();
  options.leased_remotely = [manager](const std::string& id) { return manager->IsLeased(id); };
  Scheduler scheduler(jobs_.get(), artifacts_.get(), &runners, &bus, options);
  ASSERT_TRUE(scheduler.Start().ok());
  EXPECT_EQ(State(job.id()), v1::RUNNING);
  now_ += kTimeoutMs / 2;
  EXPECT_TRUE(Heartbeat(worker_a_, lease.lease_id()).ok());
  EXPECT_EQ(Complete(worker_a_, lease.lease_id(), absl::OkStatus())->state(), v1::SUCCEEDED);
}

TEST_F(WorkerManagerTest, ReportUpdatesJobAndAnswersCancel) {
  v1::Job job = Queue();
  v1::LeaseResponse lease = Lease(worker_a_).value();
  v1::ReportRequest report;
  report.set_lease_id(lease.lease_id());
  report.add_events()->mutable_progress()->set_step(3);
  (*report.add_events()->mutable_metrics()->mutable_values())["loss"] = 0.5;
  report.add_events()->mutable_log()->set_text("epoch 1 done");
  EXPECT_FALSE(manager_->Report(worker_a_, report)->cancel_requested());
  v1::Job stored = jobs_->Get(job.id()).value();
  EXPECT_EQ(stored.progress().step(), 3);
  EXPECT_DOUBLE_EQ(stored.metrics().at("loss"), 0.5);
  auto logs = jobs_->Events(job.id(), 0, 0, /*logs_only=*/true).value();
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0].log().text(), "epoch 1 done");
}

TEST_F(WorkerManagerTest, OutputsBelongToTheJobOwnerAndCheckpointsMoveToTheNextWorker) {
  v1::Job job = Queue();
  v1::Artifact other = Upload("alice", "alice's input");
  v1::LeaseResponse lease = Lease(worker_a_).value();
  EXPECT_TRUE(manager_->MayRead(worker_a_, other));
  EXPECT_FALSE(manager_->MayRead(worker_b_, other));
  EXPECT_FALSE(manager_->MayRead(worker_a_, Upload("bob", "bob's")));

  v1::AddArtifactRequest add;
  add.set_lease_id(lease.lease_id());
  add.set_artifact_id(Upload("worker-a", "model bytes").id());
  add.set_name("model.pt");
  v1::Artifact output = manager_->AddArtifact(worker_a_, add).value();
  EXPECT_EQ(output.owner(), "alice");
  EXPECT_EQ(output.job_id(), job.id());
  EXPECT_EQ(jobs_->Get(job.id())->artifact_ids(0), output.id());
  // Someone else's upload cannot be passed off as the worker's.
  add.set_artifact_id(other.id());
  EXPECT_TRUE(absl::IsInvalidArgument(manager_->AddArtifact(worker_a_, add).status()));

  v1::SaveCheckpointRequest save;
  save.set_lease_id(lease.lease_id());
  save.set_name("checkpoint.pt");
  save.set_artifact_id(Upload("worker-a", "epoch 1 weights").id());
  ASSERT_TRUE(manager_->SaveCheckpoint(worker_a_, save).ok());
  std::ifstream saved(dir_ + "/jobs/" + job.id() + "/checkpoint.pt");
  std::string content((std::istreambuf_iterator<char>(saved)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "epoch 1 weights");
  save.set_name("../escape");
  EXPECT_TRUE(absl::IsInvalidArgument(manager_->SaveCheckpoint(worker_a_, save)));

  now_ += kTimeoutMs + 1;
  ASSERT_EQ(manager_->ExpireLeases().value(), 1);
  v1::LeaseResponse next = Lease(worker_b_).value();
  ASSERT_EQ(next.checkpoints_size(), 1);
  EXPECT_EQ(next.checkpoints(0).name(), "checkpoint.pt");
  v1::Artifact checkpoint = artifacts_->Get(next.checkpoints(0).artifact_id()).value();
  EXPECT_EQ(checkpoint.owner(), "alice");
  EXPECT_TRUE(manager_->MayRead(worker_b_, checkpoint));
  EXPECT_FALSE(manager_->MayRead(worker_a_, checkpoint));  // its lease is gone
}

TEST_F(WorkerManagerTest, DataParallelJobGetsOneLeasePerRankAndEndsWithRankZero) {
  v1::JobResources two;
  two.set_workers(2);
  v1::Job job = Queue(two);
  // A worker without a rendezvous address cannot host rank 0.
  EXPECT_TRUE(Lease(worker_a_, Caps(4, ""))->lease_id().empty());
  v1::LeaseResponse rank0 = Lease(worker_a_, Caps(4, "10.0.0.1:29500")).value();
  ASSERT_EQ(rank0.job().id(), job.id());
  EXPECT_EQ(rank0.rendezvous().rank(), 0);
  EXPECT_EQ(rank0.rendezvous().world_size(), 2);
  EXPECT_EQ(rank0.rendezvous().store_address(), "10.0.0.1:29500");
  // The same worker does not take a second rank.
  EXPECT_TRUE(Lease(worker_a_, Caps(4, "10.0.0.1:29500"))->lease_id().empty());
  v1::LeaseResponse rank1 = Lease(worker_b_, Caps(4, "10.0.0.2:29500")).value();
  ASSERT_EQ(rank1.job().id(), job.id());
  EXPECT_EQ(rank1.rendezvous().rank(), 1);
  EXPECT_EQ(rank1.rendezvous().store_address(), "10.0.0.1:29500");
  EXPECT_EQ(rank1.rendezvous().prefix(), rank0.rendezvous().prefix());
  EXPECT_TRUE(Lease(Caller{"worker-c", v1::WORKER}, Caps(4, "x:1"))->lease_id().empty());

  // Rank 1 done first: the job runs on until rank 0 ends it, its rank not handed out again.
  EXPECT_EQ(Complete(worker_b_, rank1.lease_id(), absl::OkStatus())->state(), v1::RUNNING);
  now_ += kTimeoutMs * 2 / 3;
  ASSERT_TRUE(Heartbeat(worker_a_, rank0.lease_id()).ok());
  now_ += kTimeoutMs * 2 / 3;
  EXPECT_EQ(manager_->ExpireLeases().value(), 0);
  EXPECT_TRUE(Lease(Caller{"worker-c", v1::WORKER}, Caps(4, "x:1"))->lease_id().empty());
  EXPECT_EQ(Complete(worker_a_, rank0.lease_id(), absl::OkStatus())->state(), v1::SUCCEEDED);
  EXPECT_FALSE(manager_->IsLeased(job.id()));
}

TEST_F(WorkerManagerTest, LostRankRequeuesTheWholeDataParallelJob) {
  v1::JobResources two;
  two.set_workers(2);
  v1::Job job = Queue(two);
  v1::LeaseResponse rank0 = Lease(worker_a_, Caps(4, "a:1")).value();
  v1::LeaseResponse rank1 = Lease(worker_b_, Caps(4, "b:1")).value();
  now_ += kTimeoutMs * 2 / 3;
  ASSERT_TRUE(Heartbeat(worker_a_, rank0.lease_id()).ok());
  now_ += kTimeoutMs * 2 / 3;  // rank 1 fell silent
  EXPECT_EQ(manager_->ExpireLeases().value(), 1);
  EXPECT_EQ(State(job.id()), v1::QUEUED);
  EXPECT_TRUE(absl::IsNotFound(Heartbeat(worker_a_, rank0.lease_id())));
  v1::LeaseResponse again = Lease(worker_b_, Caps(4, "b:1")).value();
  EXPECT_EQ(again.rendezvous().rank(), 0);
  EXPECT_NE(again.rendezvous().prefix(), rank0.rendezvous().prefix());
}

}  // namespace
}  // namespace offsite
