#include "server/scheduler.h"

#include <chrono>
#include <exception>
#include <iostream>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/worker_manager.h"

namespace offsite {
namespace {

using Clock = std::chrono::steady_clock;

v1::JobEvent StateEvent(v1::JobState state, std::string message) {
  v1::JobEvent event;
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_message(std::move(message));
  return event;
}

// LibTorch errors carry a C++ backtrace after the first lines; users need the message.
std::string ExceptionMessage(const std::exception& e) {
  std::string what = e.what();
  size_t cut = what.find("\nException raised from");
  if (cut != std::string::npos) what.resize(cut);
  if (what.size() > 2000) what.resize(2000);
  return what;
}

}  // namespace

class Scheduler::Context : public JobContext {
 public:
  Context(Scheduler* scheduler, v1::Job job, v1::JobInputs inputs,
          std::shared_ptr<std::atomic<bool>> cancel)
      : scheduler_(scheduler),
        job_(std::move(job)),
        inputs_(std::move(inputs)),
        cancel_(std::move(cancel)),
        work_dir_(scheduler->WorkDir(job_.id())),
        last_checkpoint_(Clock::now()) {}

  const v1::Job& job() const override { return job_; }
  bool cancelled() const override { return *cancel_ || scheduler_->shutdown_; }

  void ReportProgress(absl::string_view phase, int64_t step, int64_t total_steps) override {
    Clock::time_point now = Clock::now();
    bool last = step >= total_steps;
    if (!last && now - last_progress_ <
                     std::chrono::milliseconds(scheduler_->options_.progress_interval_ms)) {
      return;
    }
    last_progress_ = now;
    v1::JobEvent event;
    v1::Progress* progress = event.mutable_progress();
    progress->set_phase(std::string(phase));
    progress->set_step(step);
    progress->set_total_steps(total_steps);
    Write(
        [&](v1::Job& job) {
          *job.mutable_progress() = *progress;
          return absl::OkStatus();
        },
        std::move(event));
  }

  void ReportMetrics(int64_t step, const std::map<std::string, double>& values) override {
    v1::JobEvent event;
    event.mutable_metrics()->set_step(step);
    for (const auto& [name, value] : values) (*event.mutable_metrics()->mutable_values())[name] = value;
    Write(
        [&](v1::Job& job) {
          for (const auto& [name, value] : values) (*job.mutable_metrics())[name] = value;
          return absl::OkStatus();
        },
        std::move(event));
  }

  void Log(absl::string_view line) override {
    v1::JobEvent event;
    event.mutable_log()->set_text(std::string(line));
    Write([](v1::Job&) { return absl::OkStatus(); }, std::move(event));
  }

  const std::string& work_dir() const override { return work_dir_; }

  bool CheckpointDue() override {
    Clock::time_point now = Clock::now();
    if (now - last_checkpoint_ < std::chrono::seconds(scheduler_->options_.checkpoint_interval_s)) {
      return false;
    }
    last_checkpoint_ = now;
    return true;
  }

  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path,
                                           const std::string& name) override {
    OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact,
                             scheduler_->artifacts_->AddFile(path, name, job_.owner(), job_.id()));
    v1::JobEvent event;
    event.mutable_artifact()->set_artifact_id(artifact.id());
    event.mutable_artifact()->set_name(name);
    Write(
        [&](v1::Job& job) {
          job.add_artifact_ids(artifact.id());
          return absl::OkStatus();
        },
        std::move(event));
    job_.add_artifact_ids(artifact.id());
    return artifact;
  }

  absl::StatusOr<std::string> ArtifactPath(const std::string& artifact_id) override {
    OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact, scheduler_->artifacts_->Get(artifact_id));
    if (artifact.owner() != job_.owner() && artifact_id != inputs_.model().artifact_id()) {
      return absl::NotFoundError(absl::StrCat("artifact ", artifact_id, " not found"));
    }
    return scheduler_->artifacts_->BlobPath(artifact.sha256());
  }

  const std::string& device() const override { return scheduler_->options_.device; }
  const v1::JobInputs& inputs() const override { return inputs_; }

 private:
  // Progress reporting must never fail a job: a store error is logged and dropped.
  void Write(const JobStore::Mutation& mutate, v1::JobEvent event) {
    absl::StatusOr<v1::JobEvent> written =
        scheduler_->jobs_->Update(job_.id(), mutate, std::move(event));
    if (!written.ok()) {
      std::cerr << "job " << job_.id() << ": cannot record event: " << written.status() << "\n";
      return;
    }
    scheduler_->bus_->Publish();
  }

  Scheduler* scheduler_;
  v1::Job job_;
  v1::JobInputs inputs_;
  std::shared_ptr<std::atomic<bool>> cancel_;
  std::string work_dir_;
  Clock::time_point last_progress_;
  Clock::time_point last_checkpoint_;
};

Scheduler::Scheduler(JobStore* jobs, ArtifactStore* artifacts, const RunnerRegistry* runners,
                     EventBus* bus, SchedulerOptions options)
    : jobs_(jobs), artifacts_(artifacts), runners_(runners), bus_(bus), options_(std::move(options)) {}

Scheduler::~Scheduler() { Stop(); }

std::string Scheduler::WorkDir(const std::string& job_id) const {
  return absl::StrCat(options_.data_dir, "/jobs/", job_id);
}

absl::Status Scheduler::Start() {
  OFFSITE_ASSIGN_OR_RETURN(std::vector<std::string> orphans, jobs_->IdsInState(v1::RUNNING));
  for (const std::string& id : orphans) {
    if (options_.leased_remotely && options_.leased_remotely(id)) continue;
    OFFSITE_ASSIGN_OR_RETURN(v1::Job orphan, jobs_->Get(id));
    const bool cancel = orphan.cancel_requested();
    const v1::JobState next = cancel ? v1::CANCELLED : v1::QUEUED;
    OFFSITE_RETURN_IF_ERROR(
        jobs_
            ->Update(
                id,
                [&](v1::Job& job) {
                  job.set_state(next);
                  if (cancel) job.set_end_time_ms(NowMs());
                  return absl::OkStatus();
                },
                StateEvent(next, cancel ? "cancelled before the server restarted"
                                        : "server restarted; resuming from the last checkpoint"))
            .status());
  }
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = false;
  shutdown_ = false;
  for (int i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
  return absl::OkStatus();
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (workers_.empty()) return;
    stopping_ = true;
    shutdown_ = true;
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
}

void Scheduler::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++queued_signals_;
  }
  wake_.notify_one();
}

bool Scheduler::RequestCancel(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = running_.find(job_id);
  if (it == running_.end()) return false;
  *it->second = true;
  return true;
}

void Scheduler::WorkerLoop() {
  while (true) {
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      seen = queued_signals_;
    }
    absl::StatusOr<std::optional<v1::Job>> claimed =
        jobs_->ClaimNextQueued(NowMs(), [this](const v1::Job& job) { return Fits(job); });
    if (!claimed.ok()) {
      std::cerr << "scheduler: cannot claim a job: " << claimed.status() << "\n";
    } else if (claimed->has_value()) {
      bus_->Publish();
      RunJob(std::move(**claimed));
      continue;
    }
    // Sleep until a job is queued; the timeout is a safety net only.
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, std::chrono::seconds(5),
                   [&] { return stopping_ || queued_signals_ != seen; });
  }
}

bool Scheduler::Fits(const v1::Job& job) const {
  v1::WorkerCapabilities offered;
  for (const auto& [kind, runner] : *runners_) offered.add_kinds(KindName(kind));
  offered.set_threads(options_.threads > 0 ? options_.threads : INT32_MAX);
  offered.set_memory_mb(options_.memory_mb > 0 ? options_.memory_mb : INT64_MAX);
  return WhyUnfit(job, offered).empty();
}

void Scheduler::RunJob(v1::Job job) {
  const std::string id = job.id();
  auto cancel = std::make_shared<std::atomic<bool>>(job.cancel_requested());
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_[id] = cancel;
  }
  // A cancel may have landed between the claim and the registration above.
  absl::StatusOr<v1::Job> fresh = jobs_->Get(id);
  if (fresh.ok() && fresh->cancel_requested()) *cancel = true;

  absl::Status outcome;
  auto runner = runners_->find(job.spec().kind_case());
  if (runner == runners_->end()) {
    outcome = absl::UnimplementedError(
        absl::StrCat("this server has no runner for job kind \"", job.kind(), "\""));
  } else {
    try {
      absl::StatusOr<v1::JobInputs> inputs = runner->second->ResolveInputs(job);
      if (inputs.ok()) {
        Context context(this, job, *std::move(inputs), cancel);
        outcome = MakeDirs(context.work_dir(), 0700);
        if (outcome.ok()) outcome = runner->second->Run(job.spec(), context);
        if (outcome.ok()) {
          absl::StatusOr<v1::Job> done = jobs_->Get(id);  // with the artifacts Run added
          outcome = done.ok() ? runner->second->RecordOutputs(*done) : done.status();
        }
      } else {
        outcome = inputs.status();
      }
    } catch (const std::exception& e) {
      outcome = absl::InternalError(absl::StrCat("job raised an exception: ", ExceptionMessage(e)));
    } catch (...) {
      outcome = absl::InternalError("job raised an unknown exception");
    }
  }
  bool stopping = shutdown_ && !*cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_.erase(id);
  }
  Finish(id, outcome, stopping);
}

void Scheduler::Finish(const std::string& job_id, const absl::Status& outcome, bool stopping) {
  v1::JobState state;
  std::string message;
  if (outcome.ok()) {
    state = v1::SUCCEEDED;
  } else if (absl::IsCancelled(outcome) && stopping) {
    state = v1::QUEUED;
    message = "server stopping; the job resumes from its last checkpoint at the next start";
  } else if (absl::IsCancelled(outcome)) {
    state = v1::CANCELLED;
    message = "cancelled";
  } else {
    state = v1::FAILED;
    message = outcome.ToString();
  }
  absl::StatusOr<v1::JobEvent> written = jobs_->Update(
      job_id,
      [&](v1::Job& job) {
        job.set_state(state);
        if (IsTerminal(state)) job.set_end_time_ms(NowMs());
        if (state == v1::FAILED || state == v1::CANCELLED) job.set_error(message);
        return absl::OkStatus();
      },
      StateEvent(state, message));
  if (!written.ok()) {
    std::cerr << "job " << job_id << ": cannot record final state: " << written.status() << "\n";
  }
  bus_->Publish();
}

}  // namespace offsite
