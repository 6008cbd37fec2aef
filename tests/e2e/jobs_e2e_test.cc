// End-to-end: the real offsite-server and offsite binaries on loopback with
// mTLS, driving Forward-Forward jobs through their whole life: success with a
// downloadable model, kill -9 and restart mid-job, cancel, bad data, bad specs.

#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/connection.h"
#include "client/transfer.h"
#include "client/watch.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "google/protobuf/unknown_field_set.h"
#include "gtest/gtest.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/idx_writer.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testutil::ChildProcess;
using testutil::CommandResult;
using testutil::FashionMnistFfSpec;
using testutil::IsFinished;
using testutil::RunClient;
using testutil::ServerOptions;
using testutil::ServerProcess;
using testutil::TempDir;

class JobsE2eTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = {}) {
    options.data_dir = tmp_.File("data");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    jobs_ = v1::JobService::NewStub(server_->Channel("owner"));
  }

  // The flags that point the offsite binary at this test's server as the owner.
  std::vector<std::string> ClientFlags() const {
    return {"--server", server_->address(), "--certs-dir", server_->certs_dir()};
  }

  // A channel made the way the offsite client makes it (client/connection.h).
  std::shared_ptr<grpc::Channel> ClientChannel(const std::string& identity) const {
    ConnectionOptions options;
    options.server = server_->address();
    options.ca_file = server_->certs_dir() + "/ca.pem";
    options.cert_file = server_->certs_dir() + "/" + identity + ".pem";
    options.key_file = server_->certs_dir() + "/" + identity + ".key";
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = Connect(options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return channel.value_or(nullptr);
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

// Sequence numbers of a watcher's events must run 1, 2, 3, ... : none lost, none twice.
void ExpectContiguousSeqs(const std::vector<v1::JobEvent>& events) {
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i) + 1) << events[i].ShortDebugString();
  }
}

TEST_F(JobsE2eTest, FfJobOnSubsetSucceedsAboveChanceAndItsModelDownloadsIntact) {
  if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::shared_ptr<grpc::Channel> channel = ClientChannel("owner");
  auto jobs = v1::JobService::NewStub(channel);
  auto artifacts = v1::ArtifactService::NewStub(channel);

  // 6000 training examples for 3 epochs: about 6 s on one core.
  absl::StatusOr<v1::Job> submitted = testutil::SubmitJob(*jobs, FashionMnistFfSpec(6000, 1000, 3));
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->state(), v1::QUEUED);
  EXPECT_EQ(submitted->owner(), "owner");
  EXPECT_EQ(submitted->kind(), "forward_forward");

  std::vector<v1::JobEvent> events;
  WatchOptions watch;
  watch.on_event = [&](const v1::JobEvent& event) { events.push_back(event); };
  watch.reconnect_timeout = seconds(30);
  absl::StatusOr<v1::Job> job = WatchUntilDone(*jobs, submitted->id(), watch);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->attempts(), 1);

  // Chance is 0.1. Softmax mode learns fast (about 0.72 here); goodness mode
  // needs many more epochs for its best but is at 0.44 to 0.50 over seeds 1-3.
  ASSERT_TRUE(job->metrics().count("test_accuracy_softmax"));
  ASSERT_TRUE(job->metrics().count("test_accuracy"));
  EXPECT_GT(job->metrics().at("test_accuracy_softmax"), 0.6);
  EXPECT_GT(job->metrics().at("test_accuracy"), 0.3);
  EXPECT_EQ(job->metrics().at("epoch"), 3);

  // The stream carried every event once, one metrics event per epoch, and ended on the final state.
  ExpectContiguousSeqs(events);
  int metrics_events = 0;
  for (const v1::JobEvent& event : events) metrics_events += event.has_metrics();
  EXPECT_EQ(metrics_events, 3);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().state(), v1::SUCCEEDED);

  ASSERT_EQ(job->artifact_ids_size(), 1);
  const std::string model_path = tmp_.File("model.pt");
  absl::StatusOr<v1::Artifact> artifact =
      DownloadArtifact(*artifacts, job->artifact_ids(0), model_path);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->job_id(), job->id());
  EXPECT_EQ(artifact->owner(), "owner");
  EXPECT_GT(artifact->size(), 0);
  EXPECT_EQ(FileSize(model_path).value_or(-1), artifact->size());
  absl::StatusOr<std::string> sha256 = Sha256File(model_path);
  ASSERT_TRUE(sha256.ok()) << sha256.status();
  EXPECT_EQ(*sha256, artifact->sha256());
  EXPECT_FALSE(FileExists(model_path + ".part"));
}

TEST_F(JobsE2eTest, ClientBinarySubmitWithWatchExitsZeroAndFetchesTheModel) {
  if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::vector<std::string> args = {"jobs",
                                   "submit",
                                   "forward_forward",
                                   "--set",
                                   "train_subset=1000",
                                   "--set",
                                   "test_subset=500",
                                   "--set",
                                   "layer_widths=100,100",
                                   "--set",
                                   "epochs=1",
                                   "--watch"};
  for (const std::string& flag : ClientFlags()) args.push_back(flag);
  CommandResult submit = RunClient(args);
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err;
  EXPECT_THAT(submit.out, AllOf(HasSubstr("submitted job-"), HasSubstr("SUCCEEDED"),
                                HasSubstr("test_accuracy")));

  // `offsite jobs list` shows it, and `offsite artifacts get` fetches its model.
  std::vector<std::string> list = {"jobs", "list", "--json"};
  for (const std::string& flag : ClientFlags()) list.push_back(flag);
  CommandResult listed = RunClient(list);
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr("\"SUCCEEDED\""));

  const size_t at = submit.out.find("artifact:");
  ASSERT_NE(at, std::string::npos) << submit.out;
  std::string artifact_id = submit.out.substr(at + 9);
  artifact_id = artifact_id.substr(artifact_id.find_first_not_of(' '));
  artifact_id = artifact_id.substr(0, artifact_id.find('\n'));
  std::vector<std::string> get = {"artifacts", "get", artifact_id, "-o", tmp_.File("model.pt")};
  for (const std::string& flag : ClientFlags()) get.push_back(flag);
  CommandResult fetched = RunClient(get);
  ASSERT_EQ(fetched.exit_code, 0) << fetched.out << fetched.err;
  EXPECT_THAT(fetched.out, HasSubstr("(verified)"));
  absl::StatusOr<std::string> sha256 = Sha256File(tmp_.File("model.pt"));
  ASSERT_TRUE(sha256.ok()) << sha256.status();
  EXPECT_THAT(fetched.out, HasSubstr(*sha256));
}

// What a watcher thread saw; shared so a stuck watcher can be left behind safely.
struct WatcherResult {
  std::mutex mu;
  bool done = false;
  absl::StatusOr<v1::Job> job = absl::UnknownError("not finished");
  std::vector<v1::JobEvent> events;
  int reconnects = 0;
};

TEST_F(JobsE2eTest, KilledServerResumesRunningJobAfterRestart) {
  if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options;
  options.checkpoint_interval_s = 1;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  absl::StatusOr<v1::Job> submitted =
      testutil::SubmitJob(*jobs_, FashionMnistFfSpec(2000, 500, 5, {100, 100}));
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = submitted->id();

  // Two watchers connected before the kill: the client library in a thread,
  // and the `offsite jobs watch` binary.
  auto result = std::make_shared<WatcherResult>();
  std::shared_ptr<grpc::Channel> watch_channel = ClientChannel("owner");
  std::thread watcher([result, watch_channel, id] {
    auto stub = v1::JobService::NewStub(watch_channel);
    WatchOptions watch;
    watch.reconnect_timeout = seconds(90);
    watch.on_event = [&](const v1::JobEvent& event) {
      std::lock_guard<std::mutex> lock(result->mu);
      result->events.push_back(event);
    };
    watch.on_reconnect = [&](const absl::Status&) {
      std::lock_guard<std::mutex> lock(result->mu);
      ++result->reconnects;
    };
    absl::StatusOr<v1::Job> job = WatchUntilDone(*stub, id, watch);
    std::lock_guard<std::mutex> lock(result->mu);
    result->job = std::move(job);
    result->done = true;
  });
  // If an assertion ends the test early, the thread is left to finish on its own.
  struct DetachIfRunning {
    std::thread& thread;
    ~DetachIfRunning() {
      if (thread.joinable()) thread.detach();
    }
  } detach_if_running{watcher};
  std::vector<std::string> watch_args = {testutil::ClientBinary(), "jobs", "watch", id};
  for (const std::string& flag : ClientFlags()) watch_args.push_back(flag);
  absl::StatusOr<std::unique_ptr<ChildProcess>> cli_watcher =
      ChildProcess::Spawn(watch_args, tmp_.File("watch.out"), tmp_.File("watch.err"));
  ASSERT_TRUE(cli_watcher.ok()) << cli_watcher.status();
  // Both have the stream open once they have shown its first event.
  const auto connect_deadline = std::chrono::steady_clock::now() + seconds(30);
  auto watchers_connected = [&] {
    std::lock_guard<std::mutex> lock(result->mu);
    return !result->events.empty() &&
           absl::StrContains(ReadFile(tmp_.File("watch.err")).value_or(""), "state QUEUED");
  };
  while (!watchers_connected() && std::chrono::steady_clock::now() < connect_deadline) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_TRUE(watchers_connected()) << ReadFile(tmp_.File("watch.err")).value_or("");

  // The first epoch ends with a checkpoint; kill -9 once it is there.
  absl::StatusOr<v1::Job> running = testutil::WaitForJob(
      *jobs_, id, [](const v1::Job& job) { return job.metrics().count("epoch") > 0; },
      seconds(120));
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->state(), v1::RUNNING);
  EXPECT_TRUE(FileExists(server_->data_dir() + "/jobs/" + id + "/checkpoint.pt"));
  const int first_port = server_->port();
  server_->Kill();
  std::this_thread::sleep_for(milliseconds(500));
  ASSERT_TRUE(server_->Restart().ok());
  ASSERT_EQ(server_->port(), first_port);

  absl::StatusOr<v1::Job> job = testutil::WaitForJob(*jobs_, id, IsFinished, seconds(120));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->attempts(), 2);
  EXPECT_EQ(job->metrics().at("epoch"), 5);
  EXPECT_EQ(job->artifact_ids_size(), 1);

  // Its history records the requeue and the resume from the checkpoint.
  absl::StatusOr<std::vector<v1::JobEvent>> history = testutil::JobEvents(*jobs_, id);
  ASSERT_TRUE(history.ok()) << history.status();
  bool requeued = false, resumed = false;
  for (const v1::JobEvent& event : *history) {
    if (event.has_state() && event.state().state() == v1::QUEUED &&
        absl::StrContains(event.state().message(), "server restarted")) {
      requeued = true;
    }
    if (event.has_log() && absl::StrContains(event.log().text(), "resumed from checkpoint")) {
      resumed = true;
    }
  }
  EXPECT_TRUE(requeued) << "no requeue event in the job's history";
  EXPECT_TRUE(resumed) << "no 'resumed from checkpoint' log line";

  // The library watcher reconnected and saw everything exactly once, up to the end.
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::lock_guard<std::mutex> lock(result->mu);
    if (result->done) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  {
    std::lock_guard<std::mutex> lock(result->mu);
    ASSERT_TRUE(result->done) << "the watcher did not finish after the restart";
  }
  watcher.join();
  ASSERT_TRUE(result->job.ok()) << result->job.status();
  EXPECT_EQ(result->job->state(), v1::SUCCEEDED);
  EXPECT_EQ(result->job->attempts(), 2);
  EXPECT_GE(result->reconnects, 1);
  ExpectContiguousSeqs(result->events);
  ASSERT_EQ(result->events.size(), history->size());
  EXPECT_EQ(result->events.back().state().state(), v1::SUCCEEDED);

  // So did the CLI watcher.
  absl::StatusOr<int> code = (*cli_watcher)->Wait(seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  std::string out = ReadFile(tmp_.File("watch.out")).value_or("");
  std::string err = ReadFile(tmp_.File("watch.err")).value_or("");
  EXPECT_EQ(*code, 0) << out << err;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  EXPECT_THAT(err, HasSubstr("reconnecting"));
}

TEST_F(JobsE2eTest, StoppedServerRequeuesRunningJobAndResumesItAtNextStart) {
  if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ASSERT_NO_FATAL_FAILURE(StartServer());
  absl::StatusOr<v1::Job> submitted =
      testutil::SubmitJob(*jobs_, FashionMnistFfSpec(2000, 500, 3, {100, 100}));
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  absl::StatusOr<v1::Job> running = testutil::WaitForJob(
      *jobs_, submitted->id(), [](const v1::Job& job) { return job.progress().step() > 0; },
      seconds(60));
  ASSERT_TRUE(running.ok()) << running.status();

  // SIGTERM: a clean exit that puts the running job back in the queue.
  absl::StatusOr<int> code = server_->Stop();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  ASSERT_TRUE(server_->Restart().ok());
  absl::StatusOr<v1::Job> job =
      testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(120));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SUCCEEDED) << job->error();
  EXPECT_EQ(job->attempts(), 2);

  absl::StatusOr<std::vector<v1::JobEvent>> history = testutil::JobEvents(*jobs_, submitted->id());
  ASSERT_TRUE(history.ok()) << history.status();
  std::vector<v1::JobState> states;
  for (const v1::JobEvent& event : *history) {
    if (event.has_state()) states.push_back(event.state().state());
  }
  EXPECT_THAT(states, ::testing::ElementsAre(v1::QUEUED, v1::RUNNING, v1::QUEUED, v1::RUNNING,
                                             v1::SUCCEEDED));
}

TEST_F(JobsE2eTest, CancelStopsRunningJobPromptlyAndQueuedJobAtOnce) {
  if (!testutil::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options;
  options.workers = 1;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  const v1::JobSpec long_job = FashionMnistFfSpec(2000, 500, 1000, {100, 100});
  absl::StatusOr<v1::Job> running = testutil::SubmitJob(*jobs_, long_job);
  ASSERT_TRUE(running.ok()) << running.status();
  absl::StatusOr<v1::Job> started = testutil::WaitForJob(
      *jobs_, running->id(), [](const v1::Job& job) { return job.progress().step() > 0; },
      seconds(60));
  ASSERT_TRUE(started.ok()) << started.status();

  // With one worker busy, a second job waits in the queue; cancelling it ends it at once.
  absl::StatusOr<v1::Job> queued = testutil::SubmitJob(*jobs_, long_job);
  ASSERT_TRUE(queued.ok()) << queued.status();
  {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_id(queued->id());
    v1::Job cancelled;
    ASSERT_TRUE(jobs_->CancelJob(&context, request, &cancelled).ok());
    EXPECT_EQ(cancelled.state(), v1::CANCELLED);
    EXPECT_EQ(cancelled.attempts(), 0);
    EXPECT_THAT(cancelled.error(), HasSubstr("cancelled by owner"));
  }

  // The running one stops within a few seconds (cancelled through the CLI).
  const auto asked = std::chrono::steady_clock::now();
  std::vector<std::string> args = {"jobs", "cancel", running->id()};
  for (const std::string& flag : ClientFlags()) args.push_back(flag);
  CommandResult cancel = RunClient(args);
  ASSERT_EQ(cancel.exit_code, 0) << cancel.out << cancel.err;
  EXPECT_THAT(cancel.out, HasSubstr("cancel requested"));
  absl::StatusOr<v1::Job> stopped =
      testutil::WaitForJob(*jobs_, running->id(), IsFinished, seconds(15));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  const auto took = std::chrono::steady_clock::now() - asked;
  EXPECT_EQ(stopped->state(), v1::CANCELLED);
  EXPECT_LT(took, seconds(8));
  EXPECT_LT(stopped->progress().step(), stopped->progress().total_steps());

  // The cancelled queued job never runs, and a finished job cannot be cancelled again.
  std::this_thread::sleep_for(milliseconds(300));
  absl::StatusOr<v1::Job> still = testutil::GetJob(*jobs_, queued->id());
  ASSERT_TRUE(still.ok()) << still.status();
  EXPECT_EQ(still->state(), v1::CANCELLED);
  EXPECT_EQ(still->start_time_ms(), 0);
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_id(running->id());
  v1::Job again;
  EXPECT_EQ(jobs_->CancelJob(&context, request, &again).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(JobsE2eTest, BadDataFileFailsTheJobNamingTheFileAndServerStaysUp) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  absl::StatusOr<testutil::IdxDataSet> data =
      testutil::WriteSyntheticIdxDataSet(tmp_.File("synthetic"), 300, 100, 7);
  ASSERT_TRUE(data.ok()) << data.status();
  const std::string garbage = tmp_.File("garbage-images-idx3-ubyte");
  std::string bytes(20000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919 + 13) % 251);
  ASSERT_TRUE(WriteFileAtomic(garbage, bytes).ok());

  v1::JobSpec bad = testutil::SyntheticFfSpec(*data, 1);
  bad.mutable_forward_forward()->set_train_images(garbage);
  absl::StatusOr<v1::Job> failed = testutil::SubmitJob(*jobs_, bad);
  ASSERT_TRUE(failed.ok()) << failed.status();
  failed = testutil::WaitForJob(*jobs_, failed->id(), IsFinished, seconds(60));
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), v1::FAILED);
  EXPECT_THAT(failed->error(), HasSubstr(garbage));
  EXPECT_EQ(failed->artifact_ids_size(), 0);

  // The server is still up and runs the next job.
  EXPECT_TRUE(server_->Running());
  absl::StatusOr<v1::Job> good = testutil::SubmitJob(*jobs_, testutil::SyntheticFfSpec(*data, 2));
  ASSERT_TRUE(good.ok()) << good.status();
  good = testutil::WaitForJob(*jobs_, good->id(), IsFinished, seconds(60));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->state(), v1::SUCCEEDED) << good->error();
  EXPECT_GT(good->metrics().at("test_accuracy_softmax"), 0.5);
}

// Submits `spec` and returns the status, e.g. InvalidArgument("...learning_rate...").
absl::Status SubmitStatus(v1::JobService::Stub& stub, const v1::JobSpec& spec) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(20));
  v1::Job job;
  return FromGrpcStatus(stub.SubmitJob(&context, spec, &job));
}

TEST_F(JobsE2eTest, MalformedSpecsAreRejectedNamingTheField) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto expect_rejected = [&](const v1::JobSpec& spec, const std::string& field) {
    absl::Status status = SubmitStatus(*jobs_, spec);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << field << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(field));
  };
  const v1::JobSpec valid = FashionMnistFfSpec(100, 100, 1);

  expect_rejected(v1::JobSpec(), "kind");
  v1::JobSpec spec = valid;
  spec.mutable_forward_forward()->set_learning_rate(-1);
  expect_rejected(spec, "learning_rate");
  spec = valid;
  spec.mutable_forward_forward()->clear_layer_widths();
  spec.mutable_forward_forward()->add_layer_widths(200);
  expect_rejected(spec, "layer_widths");
  spec = valid;
  spec.mutable_forward_forward()->set_train_images(tmp_.File("no-such-images-idx3-ubyte"));
  expect_rejected(spec, "train_images");
  expect_rejected(spec, tmp_.File("no-such-images-idx3-ubyte"));
  spec = valid;
  spec.mutable_forward_forward()->set_epochs(-3);
  expect_rejected(spec, "epochs");
  spec = valid;
  spec.mutable_forward_forward()->set_hard_negative_temperature(-0.5);
  expect_rejected(spec, "hard_negative_temperature");
  spec = valid;
  spec.mutable_resources()->set_workers(65);
  expect_rejected(spec, "resources.workers");

  // Fields this server does not know (a newer client, a typo'd field number).
  spec = valid;
  spec.GetReflection()->MutableUnknownFields(&spec)->AddVarint(999, 1);
  expect_rejected(spec, "999");
  spec = valid;
  v1::ForwardForwardSpec* ff = spec.mutable_forward_forward();
  ff->GetReflection()->MutableUnknownFields(ff)->AddVarint(998, 1);
  expect_rejected(spec, "forward_forward");
  expect_rejected(spec, "998");

  // Nothing was queued.
  grpc::ClientContext context;
  v1::ListJobsResponse listed;
  ASSERT_TRUE(jobs_->ListJobs(&context, v1::ListJobsRequest(), &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 0);

  // The CLI catches an unknown --set field itself: usage error (2) naming it
  // and listing the valid ones.
  std::vector<std::string> args = {"jobs", "submit", "forward_forward", "--set", "nope=1"};
  for (const std::string& flag : ClientFlags()) args.push_back(flag);
  CommandResult result = RunClient(args);
  EXPECT_EQ(result.exit_code, 2) << result.out << result.err;
  EXPECT_THAT(result.err,
              AllOf(HasSubstr("nope"), HasSubstr("layer_widths"), HasSubstr("learning_rate")));
}

}  // namespace
}  // namespace offsite
