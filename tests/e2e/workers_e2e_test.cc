// End-to-end: the real offsite-server with no in-process workers
// (--workers=0) and offsite-worker processes leasing its jobs over mTLS: a job
// runs on a worker and leaves a downloadable model; a worker killed with
// SIGKILL mid-job loses its lease and the job finishes on another worker from
// the checkpoint the first one saved; a job of every training kind asking for
// two workers trains on both, data-parallel, emulator distillation included.

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/transfer.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "offsite/v1/offsite_tuning.grpc.pb.h"
#include "offsite/v1/worker.grpc.pb.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testutil::ChildProcess;
using testutil::FashionMnistFfSpec;
using testutil::IsFinished;
using testutil::ServerOptions;
using testutil::ServerProcess;
using testutil::TempDir;

class WorkersE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
    ServerOptions options;
    options.data_dir = tmp_.File("data");
    options.workers = 0;  // remote workers only
    options.checkpoint_interval_s = 1;
    options.extra_flags = {"--lease_timeout_s=2"};
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    jobs_ = v1::JobService::NewStub(server_->Channel("owner"));
  }

  void TearDown() override {
    if (HasFailure()) {
      for (const std::string& name : worker_names_) {
        std::cerr << "---- " << name << " log ----\n"
                  << ReadFile(tmp_.File(name + ".log")).value_or("") << "\n";
      }
    }
  }

  // Waits until job `id` has finished an epoch and its checkpoint has reached
  // the server; fails if the job ends first.
  void WaitForFirstCheckpoint(const std::string& id) {
    const std::string checkpoint = server_->data_dir() + "/jobs/" + id + "/checkpoint.pt";
    absl::StatusOr<v1::Job> running = testutil::WaitForJob(
        *jobs_, id,
        [&](const v1::Job& job) {
          return IsFinished(job) || (job.metrics().count("epoch") > 0 && FileExists(checkpoint));
        },
        seconds(60));
    ASSERT_TRUE(running.ok()) << running.status();
    ASSERT_EQ(running->state(), v1::RUNNING) << "finished before its first checkpoint";
  }

  // Starts an offsite-worker process with its own certificate (role worker).
  std::unique_ptr<ChildProcess> StartWorker(const std::string& name,
                                            const std::string& rendezvous = "") {
    EXPECT_TRUE(server_->IssueIdentity(name, "worker").ok());
    worker_names_.push_back(name);
    const std::string certs = server_->certs_dir();
    absl::StatusOr<std::unique_ptr<ChildProcess>> worker = ChildProcess::Spawn(
        {testutil::WorkerBinary(), "--server", server_->address(), "--ca", certs + "/ca.pem",
         "--cert", absl::StrCat(certs, "/", name, ".pem"), "--key",
         absl::StrCat(certs, "/", name, ".key"), "--threads", "1", "--name", name, "--work_dir",
         tmp_.File(name), "--lease_wait_ms", "1000", "--rendezvous_address", rendezvous},
        tmp_.File(name + ".log"), tmp_.File(name + ".log"));
    EXPECT_TRUE(worker.ok()) << worker.status();
    return worker.ok() ? std::move(*worker) : nullptr;
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::vector<std::string> worker_names_;
};

// The worker whose log says it leased `job_id` ("" if none did).
std::string LeasedBy(const TempDir& tmp, const std::vector<std::string>& names,
                     const std::string& job_id) {
  for (const std::string& name : names) {
    if (absl::StrContains(ReadFile(tmp.File(name + ".log")).value_or(""), "leased job " + job_id)) {
      return name;
    }
  }
  return "";
}

// The worker named in the job's last RUNNING event ("attempt N on worker NAME (...)").
std::string RunningOn(v1::JobService::Stub& jobs, const std::string& id) {
  absl::StatusOr<std::vector<v1::JobEvent>> events = testutil::JobEvents(jobs, id, seconds(2));
  std::string worker;
  if (!events.ok()) return worker;
  for (const v1::JobEvent& event : *events) {
    const std::string& message = event.state().message();
    const size_t at = message.find(" on worker ");
    if (event.state().state() == v1::RUNNING && at != std::string::npos) {
      worker = message.substr(at + 11, message.find(' ', at + 11) - (at + 11));
    }
  }
  return worker;
}

TEST_F(WorkersE2eTest, JobRunsOnRemoteWorkerAndItsModelDownloadsIntact) {
  // Only the worker role may lease.
  {
    auto owner_as_worker = v1::WorkerService::NewStub(server_->Channel("owner"));
    grpc::ClientContext context;
    v1::LeaseRequest request;
    v1::LeaseResponse response;
    EXPECT_EQ(owner_as_worker->Lease(&context, request, &response).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  std::unique_ptr<ChildProcess> worker = StartWorker("worker-a");
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<v1::Job> submitted =
      testutil::SubmitJob(*jobs_, FashionMnistFfSpec(1000, 500, 2, {100, 100}));
  ASSERT_TRUE(submitted.ok()) << submitted.status();

  absl::StatusOr<v1::Job> job =
      testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(60));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->attempts(), 1);
  EXPECT_EQ(job->metrics().at("epoch"), 2);
  EXPECT_GT(job->metrics().at("test_accuracy_softmax"), 0.15);  // chance: 0.1
  EXPECT_EQ(RunningOn(*jobs_, job->id()), "worker-a");

  ASSERT_EQ(job->artifact_ids_size(), 1);
  auto artifacts = v1::ArtifactService::NewStub(server_->Channel("owner"));
  const std::string model_path = tmp_.File("model.pt");
  absl::StatusOr<v1::Artifact> artifact =
      DownloadArtifact(*artifacts, job->artifact_ids(0), model_path);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->owner(), "owner");
  EXPECT_EQ(artifact->job_id(), job->id());
  EXPECT_GT(artifact->size(), 0);
  EXPECT_EQ(Sha256File(model_path).value_or(""), artifact->sha256());

  // The worker is still there for the next job, and stops cleanly on SIGTERM.
  EXPECT_TRUE(worker->Running());
  worker->Signal(SIGTERM);
  absl::StatusOr<int> code = worker->Wait(seconds(15));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
}

TEST_F(WorkersE2eTest, KilledWorkersJobIsRequeuedAndFinishesOnAnotherFromItsCheckpoint) {
  std::unique_ptr<ChildProcess> a = StartWorker("worker-a");
  std::unique_ptr<ChildProcess> b = StartWorker("worker-b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // 20,000 examples an epoch: long enough that the test sees the first
  // checkpoint before the job ends, even on a fast machine.
  absl::StatusOr<v1::Job> submitted =
      testutil::SubmitJob(*jobs_, FashionMnistFfSpec(20000, 500, 10, {100, 100}));
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = submitted->id();

  // Once the first epoch's checkpoint has reached the server, kill its worker.
  ASSERT_NO_FATAL_FAILURE(WaitForFirstCheckpoint(id));
  const std::string first = LeasedBy(tmp_, worker_names_, id);
  ASSERT_TRUE(first == "worker-a" || first == "worker-b") << first;
  (first == "worker-a" ? a : b)->Kill();

  absl::StatusOr<v1::Job> job = testutil::WaitForJob(*jobs_, id, IsFinished, seconds(90));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->attempts(), 2);
  EXPECT_EQ(job->metrics().at("epoch"), 10);
  EXPECT_EQ(job->artifact_ids_size(), 1);
  EXPECT_EQ(RunningOn(*jobs_, id), first == "worker-a" ? "worker-b" : "worker-a");

  absl::StatusOr<std::vector<v1::JobEvent>> history = testutil::JobEvents(*jobs_, id);
  ASSERT_TRUE(history.ok()) << history.status();
  bool requeued = false, resumed = false;
  for (const v1::JobEvent& event : *history) {
    requeued |= event.state().state() == v1::QUEUED &&
                absl::StrContains(event.state().message(), "stopped renewing its lease");
    resumed |= event.has_log() && absl::StrContains(event.log().text(), "resumed from checkpoint");
  }
  EXPECT_TRUE(requeued) << "no requeue event in the job's history";
  EXPECT_TRUE(resumed) << "no 'resumed from checkpoint' log line";
}

// Two workers that can host a data-parallel group's rendezvous.
class DataParallelE2eTest : public WorkersE2eTest {
 protected:
  void SetUp() override {
    WorkersE2eTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    a_ = StartWorker("worker-a", absl::StrCat("127.0.0.1:", testutil::FreeLoopbackPort()));
    b_ = StartWorker("worker-b", absl::StrCat("127.0.0.1:", testutil::FreeLoopbackPort()));
    ASSERT_NE(a_, nullptr);
    ASSERT_NE(b_, nullptr);
  }

  // Runs `spec` asking for two workers; expects it to succeed at the first
  // attempt with rank 0 and rank 1 on the two workers.
  void RunOnBoth(v1::JobSpec spec, v1::Job* finished) {
    spec.mutable_resources()->set_workers(2);
    absl::StatusOr<v1::Job> submitted = testutil::SubmitJob(*jobs_, spec);
    ASSERT_TRUE(submitted.ok()) << submitted.status();
    absl::StatusOr<v1::Job> job =
        testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(180));
    ASSERT_TRUE(job.ok()) << job.status();
    ASSERT_EQ(job->state(), v1::SUCCEEDED) << job->kind() << ": " << job->error();
    EXPECT_EQ(job->attempts(), 1) << job->kind();
    EXPECT_FALSE(LeasedBy(tmp_, {"worker-a"}, job->id()).empty()) << job->kind();
    EXPECT_FALSE(LeasedBy(tmp_, {"worker-b"}, job->id()).empty()) << job->kind();
    absl::StatusOr<std::vector<v1::JobEvent>> history = testutil::JobEvents(*jobs_, job->id());
    ASSERT_TRUE(history.ok()) << history.status();
    bool rank0 = false, rank1 = false;
    for (const v1::JobEvent& event : *history) {
      rank0 |= absl::StrContains(event.state().message(), "rank 0 of 2");
      rank1 |= absl::StrContains(event.log().text(), "rank 1 of 2 on worker");
    }
    EXPECT_TRUE(rank0) << job->kind() << ": no rank 0 in the job's history";
    EXPECT_TRUE(rank1) << job->kind() << ": no rank 1 in the job's history";
    *finished = *job;
  }

  std::unique_ptr<ChildProcess> a_, b_;
};

TEST_F(DataParallelE2eTest, FinetuneJobTrainsOnBothWorkers) {
  // A tiny ConvNeXt fine-tuned from scratch on 200 labelled images.
  v1::JobSpec spec;
  v1::FinetuneSpec* finetune = spec.mutable_finetune();
  finetune->mutable_arch()->add_depths(1);
  finetune->mutable_arch()->add_depths(1);
  finetune->mutable_arch()->add_dims(16);
  finetune->mutable_arch()->add_dims(32);
  finetune->set_label_subset(200);
  finetune->mutable_data()->set_test_subset(200);
  finetune->set_epochs(2);
  finetune->set_batch_size(50);
  v1::Job job;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(spec, &job));
  EXPECT_EQ(job.artifact_ids_size(), 2);  // rank 0's outputs only
  EXPECT_EQ(job.metrics().at("epoch"), 2);
}

// A killed rank fails its peer's next all-reduce at once; the peer hands the
// job back rather than failing it, and the job finishes from its checkpoint
// once two workers are free again.
TEST_F(DataParallelE2eTest, KilledRankRequeuesTheJobWhichResumesOnTheWorkersLeft) {
  v1::JobSpec spec;
  v1::FinetuneSpec* finetune = spec.mutable_finetune();
  finetune->mutable_arch()->add_depths(1);
  finetune->mutable_arch()->add_dims(16);
  finetune->set_label_subset(400);
  finetune->mutable_data()->set_test_subset(100);
  finetune->set_epochs(40);
  finetune->set_batch_size(50);
  spec.mutable_resources()->set_workers(2);
  absl::StatusOr<v1::Job> submitted = testutil::SubmitJob(*jobs_, spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = submitted->id();

  ASSERT_NO_FATAL_FAILURE(WaitForFirstCheckpoint(id));
  b_->Kill();
  std::unique_ptr<ChildProcess> c =
      StartWorker("worker-c", absl::StrCat("127.0.0.1:", testutil::FreeLoopbackPort()));
  ASSERT_NE(c, nullptr);

  absl::StatusOr<v1::Job> job = testutil::WaitForJob(*jobs_, id, IsFinished, seconds(180));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->metrics().at("epoch"), 40);
  absl::StatusOr<std::vector<v1::JobEvent>> history = testutil::JobEvents(*jobs_, id);
  ASSERT_TRUE(history.ok()) << history.status();
  bool requeued = false, resumed = false;
  for (const v1::JobEvent& event : *history) {
    requeued |= event.state().state() == v1::QUEUED;
    resumed |= event.has_log() && absl::StrContains(event.log().text(), "resumed from checkpoint");
  }
  EXPECT_TRUE(requeued) << "no requeue in the job's history";
  EXPECT_TRUE(resumed) << "no 'resumed from checkpoint' log line";
  EXPECT_FALSE(LeasedBy(tmp_, {"worker-c"}, id).empty());
}

// Forward-Forward, MIC, MLE detection and REINFORCE tuning of its detector all
// train data-parallel through the same gradient sync.
TEST_F(DataParallelE2eTest, EveryOtherTrainingKindTrainsOnBothWorkers) {
  v1::JobSpec ff_spec = testutil::FashionMnistFfSpec(2000, 500, 2, {100, 100});
  v1::Job ff;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(ff_spec, &ff));
  // Goodness mode needs more than 40 steps; the softmax read-out of the
  // layers is at about 0.47 here in one process (chance: 0.1).
  EXPECT_GT(ff.metrics().at("test_accuracy_softmax"), 0.3);
  v1::Job mic;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(testutil::TinyMicSpec(), &mic));
  EXPECT_EQ(mic.metrics().at("step"), 8);
  v1::Job mle;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(testutil::TinyDetectionMleSpec(), &mle));
  ASSERT_EQ(mle.artifact_ids_size(), 1);
  v1::Job tuned;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(testutil::TinyRewardTuneSpec(mle.artifact_ids(0)), &tuned));
  EXPECT_EQ(tuned.metrics().at("step"), 6);
}

// The emulator job reads the model registry and records a package, yet runs
// on workers: the server resolves the model into the lease and records the
// package from the job's output when rank 0 ends it.
TEST_F(DataParallelE2eTest, EmulatorJobDistilsOnBothWorkersAndTheServerRecordsItsPackage) {
  std::string text;
  for (int i = 0; i < 300; ++i) {
    absl::StrAppend(&text, "The lamp number ", i % 13, " is lit at dusk and put out at dawn.\n%\n");
  }
  ASSERT_TRUE(WriteFileAtomic(tmp_.File("public.txt"), text).ok());
  v1::Job pretrained;
  ASSERT_NO_FATAL_FAILURE(
      RunOnBoth(testutil::TinyLmPretrainSpec(tmp_.File("public.txt"), 4, 10), &pretrained));
  ASSERT_EQ(pretrained.artifact_ids_size(), 1);

  std::unique_ptr<v1::OffsiteService::Stub> offsite =
      v1::OffsiteService::NewStub(server_->Channel("owner"));
  grpc::ClientContext add_context;
  v1::AddModelRequest add;
  add.set_name("lamp-gpt");
  add.set_artifact_id(pretrained.artifact_ids(0));
  v1::Model model;
  grpc::Status added = offsite->AddModel(&add_context, add, &model);
  ASSERT_TRUE(added.ok()) << added.error_message();

  v1::JobSpec build;
  v1::EmulatorSpec* emulator = build.mutable_emulator();
  emulator->set_model("lamp-gpt");
  emulator->set_bottom(1);
  emulator->set_top(1);
  emulator->set_emulator_blocks(1);
  emulator->mutable_distill()->set_steps(6);
  emulator->mutable_distill()->set_batch_size(8);
  emulator->mutable_distill()->mutable_data()->mutable_text()->set_path(tmp_.File("public.txt"));
  emulator->mutable_task_eval()->mutable_text()->set_path(tmp_.File("public.txt"));
  v1::Job built;
  ASSERT_NO_FATAL_FAILURE(RunOnBoth(build, &built));
  ASSERT_EQ(built.artifact_ids_size(), 1);  // rank 0's package file only
  EXPECT_GT(built.metrics().at("emulator_zero_shot_perplexity"), 1.0);

  grpc::ClientContext list_context;
  v1::ListPackagesResponse packages;
  ASSERT_TRUE(offsite->ListPackages(&list_context, {}, &packages).ok());
  ASSERT_EQ(packages.packages_size(), 1);
  const v1::Package& package = packages.packages(0);
  EXPECT_EQ(package.job_id(), built.id());
  EXPECT_EQ(package.model(), "lamp-gpt");
  EXPECT_EQ(package.artifact_id(), built.artifact_ids(0));
  EXPECT_EQ(package.manifest().model(), "lamp-gpt");
  // 1-1-1 of 4 blocks: the adapter is blocks 0 and 3.
  EXPECT_EQ(package.manifest().adapter_blocks_size(), 2);
  EXPECT_EQ(package.metrics().at("emulator_zero_shot_perplexity"),
            built.metrics().at("emulator_zero_shot_perplexity"));
  EXPECT_EQ(package.metrics().count("distill_best_valid_loss"), 1);
  // The distillation's running figures stay with the job.
  EXPECT_EQ(package.metrics().count("valid_loss"), 0);
}

}  // namespace
}  // namespace offsite
