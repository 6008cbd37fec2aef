#include "server/worker_manager.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxWaitMs = 30000;

absl::Status RequireWorker(const Caller& caller) {
  // In --insecure mode every caller is the owner "insecure"; it may run workers too.
  if (caller.role == v1::WORKER || caller.principal == "insecure") return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("principal \"", caller.principal, "\" (role ",
                                                  v1::Role_Name(caller.role),
                                                  ") may not lease jobs (worker role only)"));
}

int WorldSize(const v1::Job& job) { return std::max(1, job.spec().resources().workers()); }

v1::JobEvent StateEvent(v1::JobState state, std::string message) {
  v1::JobEvent event;
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_message(std::move(message));
  return event;
}

v1::JobEvent LogEvent(std::string text) {
  v1::JobEvent event;
  event.mutable_log()->set_text(std::move(text));
  return event;
}

// Copies src to dst through a temporary file and a rename, so a reader of dst
// sees the old or the new content, never a part.
absl::Status CopyFileAtomic(const std::string& src, const std::string& dst) {
  const std::string tmp = dst + ".tmp.copy";
  std::error_code error;
  fs::copy_file(src, tmp, fs::copy_options::overwrite_existing, error);
  if (!error) fs::rename(tmp, dst, error);
  if (error) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    return absl::InternalError(
        absl::StrCat("cannot copy ", src, " to ", dst, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string WhyUnfit(const v1::Job& job, const v1::WorkerCapabilities& caps) {
  if (std::find(caps.kinds().begin(), caps.kinds().end(), job.kind()) == caps.kinds().end()) {
    return absl::StrCat("kind ", job.kind(), " not offered");
  }
  const v1::JobResources& need = job.spec().resources();
  if (need.threads() > 0 && need.threads() > caps.threads()) {
    return absl::StrCat("needs ", need.threads(), " threads, worker has ", caps.threads());
  }
  if (need.memory_mb() > 0 && need.memory_mb() > caps.memory_mb()) {
    return absl::StrCat("needs ", need.memory_mb(), " MiB, worker has ", caps.memory_mb());
  }
  if (need.workers() > 1 && caps.rendezvous_address().empty()) {
    return "data-parallel, worker has no rendezvous address";
  }
  return "";
}

bool IsCheckpointFileName(const std::string& name) {
  return absl::StartsWith(name, "checkpoint") && !absl::StrContains(name, ".tmp") &&
         name.find('/') == std::string::npos && name.size() <= 200;
}

WorkerManager::WorkerManager(JobStore* jobs, LeaseStore* leases, ArtifactStore* artifacts,
                             const RunnerRegistry* runners, EventBus* bus,
                             WorkerManagerOptions options)
    : jobs_(jobs),
      leases_(leases),
      artifacts_(artifacts),
      runners_(runners),
      bus_(bus),
      options_(std::move(options)) {}

WorkerManager::~WorkerManager() { Stop(); }

void WorkerManager::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (sweeper_.joinable()) return;
  stopping_ = false;
  shutdown_ = false;
  sweeper_ = std::thread([this] { SweepLoop(); });
}

void WorkerManager::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    shutdown_ = true;
  }
  wake_.notify_all();
  bus_->Publish();  // wakes Lease waits
  if (sweeper_.joinable()) sweeper_.join();
}

void WorkerManager::SweepLoop() {
  const auto interval =
      std::chrono::milliseconds(std::clamp<int64_t>(options_.lease_timeout_ms / 4, 50, 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    absl::StatusOr<int> expired = ExpireLeases();
    if (!expired.ok()) std::cerr << "worker leases: " << expired.status() << "\n";
    lock.lock();
    wake_.wait_for(lock, interval, [&] { return stopping_; });
  }
}

std::string WorkerManager::WorkDir(const std::string& job_id) const {
  return absl::StrCat(options_.data_dir, "/jobs/", job_id);
}

absl::StatusOr<LeaseRecord> WorkerManager::LiveLease(const Caller& caller,
                                                     const std::string& lease_id) {
  OFFSITE_RETURN_IF_ERROR(RequireWorker(caller));
  if (lease_id.empty()) return absl::InvalidArgumentError("lease_id: empty");
  return leases_->GetLive(lease_id, caller.principal, options_.now_ms());
}

absl::StatusOr<v1::JobInputs> WorkerManager::ResolveInputs(const v1::Job& job) const {
  auto runner = runners_->find(job.spec().kind_case());
  if (runner == runners_->end()) {
    return absl::UnimplementedError(
        absl::StrCat("this server has no runner for job kind \"", job.kind(), "\""));
  }
  return runner->second->ResolveInputs(job);
}

absl::StatusOr<std::optional<v1::LeaseResponse>> WorkerManager::Respond(const LeaseRecord& lease,
                                                                       v1::Job job) {
  absl::StatusOr<v1::JobInputs> inputs = ResolveInputs(job);
  if (!inputs.ok()) {
    // The job cannot run anywhere (e.g. its model is gone): end it, lease on.
    v1::JobState state = v1::FAILED;
    std::string message = inputs.status().ToString();
    OFFSITE_RETURN_IF_ERROR(EndJob(lease.job_id, state, message));
    return std::nullopt;
  }
  v1::LeaseResponse response;
  *response.mutable_inputs() = *std::move(inputs);
  OFFSITE_RETURN_IF_ERROR(FillResponse(lease, std::move(job), &response));
  return response;
}

absl::Status WorkerManager::FillResponse(const LeaseRecord& lease, v1::Job job,
                                         v1::LeaseResponse* response) {
  response->set_lease_id(lease.id);
  response->set_expiry_ms(lease.expiry_ms);
  response->set_lease_timeout_ms(static_cast<int32_t>(options_.lease_timeout_ms));
  response->set_checkpoint_interval_s(options_.checkpoint_interval_s);
  if (lease.world_size > 1) {
    v1::Rendezvous* rendezvous = response->mutable_rendezvous();
    rendezvous->set_rank(lease.rank);
    rendezvous->set_world_size(lease.world_size);
    rendezvous->set_store_address(lease.store_address);
    rendezvous->set_prefix(absl::StrCat(job.id(), "/", lease.attempt));
  }
  // The work directory's checkpoints, as artifacts the lease holder may read.
  const std::string dir = WorkDir(job.id());
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || !IsCheckpointFileName(name)) continue;
    const std::string tmp = absl::StrCat(dir, "/.export-", lease.id, "-", name);
    OFFSITE_RETURN_IF_ERROR(CopyFileAtomic(entry.path().string(), tmp));
    OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact,
                             artifacts_->AddFile(tmp, name, job.owner(), job.id()));
    v1::CheckpointFile* file = response->add_checkpoints();
    file->set_name(name);
    file->set_artifact_id(artifact.id());
    file->set_size(artifact.size());
    file->set_sha256(artifact.sha256());
  }
  *response->mutable_job() = std::move(job);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<v1::LeaseResponse>> WorkerManager::TryJoin(
    const Caller& caller, const v1::WorkerCapabilities& caps) {
  OFFSITE_ASSIGN_OR_RETURN(std::vector<std::string> running, jobs_->IdsInState(v1::RUNNING));
  for (const std::string& id : running) {
    absl::StatusOr<v1::Job> candidate = jobs_->Get(id);
    if (!candidate.ok() || WorldSize(*candidate) <= 1) continue;
    if (!WhyUnfit(*candidate, caps).empty()) continue;
    std::optional<LeaseRecord> joined;
    absl::StatusOr<v1::JobEvent> written = jobs_->UpdateWith(
        id,
        [&](v1::Job&, v1::JobEvent& event) {
          event = LogEvent(absl::StrCat("rank ", joined->rank, " of ", joined->world_size,
                                        " on worker ", caller.principal, " (", caps.name(), ")"));
          return absl::OkStatus();
        },
        [&](Database& db, const v1::Job& job) -> absl::Status {
          if (job.state() != v1::RUNNING) return absl::AbortedError("job no longer running");
          OFFSITE_ASSIGN_OR_RETURN(std::vector<LeaseRecord> held,
                                   LeaseStore::ForJobLocked(db, job.id()));
          // Rank 0 leases the job when it claims it; no rank 0: not forming.
          if (held.empty() || static_cast<int>(held.size()) >= WorldSize(job)) {
            return absl::AbortedError("no open rank");
          }
          // Replicas may share one certificate; their names tell them apart.
          for (const LeaseRecord& lease : held) {
            if (lease.worker == caller.principal && lease.worker_name == caps.name()) {
              return absl::AbortedError("already a rank");
            }
          }
          LeaseRecord lease;
          lease.id = NewId("lease");
          lease.job_id = job.id();
          lease.worker = caller.principal;
          lease.worker_name = caps.name();
          lease.rank = static_cast<int>(held.size());
          lease.world_size = WorldSize(job);
          lease.store_address = held.front().store_address;
          lease.attempt = job.attempts();
          lease.expiry_ms = options_.now_ms() + options_.lease_timeout_ms;
          OFFSITE_RETURN_IF_ERROR(LeaseStore::InsertLocked(db, lease));
          joined = lease;
          return absl::OkStatus();
        });
    if (!written.ok()) {
      if (absl::IsAborted(written.status())) continue;
      return written.status();
    }
    bus_->Publish();
    OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(id));
    return Respond(*joined, std::move(job));
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<v1::LeaseResponse>> WorkerManager::TryLease(
    const Caller& caller, const v1::WorkerCapabilities& caps) {
  OFFSITE_ASSIGN_OR_RETURN(std::optional<v1::LeaseResponse> joined, TryJoin(caller, caps));
  if (joined) return joined;
  LeaseRecord lease;
  OFFSITE_ASSIGN_OR_RETURN(
      std::optional<v1::Job> claimed,
      jobs_->ClaimNextQueued(
          NowMs(), [&](const v1::Job& job) { return WhyUnfit(job, caps).empty(); },
          [&](Database& db, const v1::Job& job, std::string& message) {
            lease.id = NewId("lease");
            lease.job_id = job.id();
            lease.worker = caller.principal;
            lease.worker_name = caps.name();
            lease.rank = 0;
            lease.world_size = WorldSize(job);
            if (lease.world_size > 1) lease.store_address = caps.rendezvous_address();
            lease.attempt = job.attempts();
            lease.expiry_ms = options_.now_ms() + options_.lease_timeout_ms;
            absl::StrAppend(&message, " on worker ", caller.principal, " (", caps.name(), ")");
            if (lease.world_size > 1) {
              absl::StrAppend(&message, ", rank 0 of ", lease.world_size);
            }
            return LeaseStore::InsertLocked(db, lease);
          }));
  if (!claimed) return std::nullopt;
  bus_->Publish();
  OFFSITE_ASSIGN_OR_RETURN(std::optional<v1::LeaseResponse> response,
                           Respond(lease, std::move(*claimed)));
  if (response) return response;
  return TryLease(caller, caps);  // that job could not run and has ended: the next one
}

absl::StatusOr<v1::LeaseResponse> WorkerManager::Lease(const Caller& caller,
                                                       const v1::LeaseRequest& request,
                                                       const std::function<bool()>& stopped) {
  OFFSITE_RETURN_IF_ERROR(RequireWorker(caller));
  if (request.wait_ms() < 0 || request.wait_ms() > kMaxWaitMs) {
    return absl::InvalidArgumentError(
        absl::StrCat("wait_ms: ", request.wait_ms(), " is outside [0, ", kMaxWaitMs, "]"));
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(request.wait_ms());
  while (true) {
    const uint64_t version = bus_->version();
    OFFSITE_ASSIGN_OR_RETURN(std::optional<v1::LeaseResponse> leased,
                             TryLease(caller, request.capabilities()));
    if (leased) return std::move(*leased);
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline || shutdown_ || (stopped && stopped())) return v1::LeaseResponse();
    // Any job event may make a job leasable (a submit, a requeue); look again
    // then, or after a second at the latest.
    bus_->WaitForChange(
        version, std::min(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now),
                          std::chrono::milliseconds(1000)));
  }
}

absl::StatusOr<v1::HeartbeatResponse> WorkerManager::Heartbeat(
    const Caller& caller, const v1::HeartbeatRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireWorker(caller));
  const int64_t now = options_.now_ms();
  const int64_t expiry = now + options_.lease_timeout_ms;
  OFFSITE_ASSIGN_OR_RETURN(LeaseRecord lease, LiveLease(caller, request.lease_id()));
  OFFSITE_RETURN_IF_ERROR(leases_->Renew(lease.id, caller.principal, now, expiry));
  OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(lease.job_id));
  v1::HeartbeatResponse response;
  response.set_expiry_ms(expiry);
  response.set_cancel_requested(job.cancel_requested());
  return response;
}

absl::StatusOr<v1::ReportResponse> WorkerManager::Report(const Caller& caller,
                                                         const v1::ReportRequest& request) {
  OFFSITE_ASSIGN_OR_RETURN(LeaseRecord lease, LiveLease(caller, request.lease_id()));
  if (request.events_size() > 1000) {
    return absl::InvalidArgumentError("events: more than 1000 in one report");
  }
  bool cancel = false;
  for (const v1::WorkerEvent& reported : request.events()) {
    v1::JobEvent event;
    JobStore::Mutation mutate = [](v1::Job&) { return absl::OkStatus(); };
    switch (reported.event_case()) {
      case v1::WorkerEvent::kProgress:
        *event.mutable_progress() = reported.progress();
        mutate = [&](v1::Job& job) {
          *job.mutable_progress() = reported.progress();
          return absl::OkStatus();
        };
        break;
      case v1::WorkerEvent::kMetrics:
        *event.mutable_metrics() = reported.metrics();
        mutate = [&](v1::Job& job) {
          for (const auto& [name, value] : reported.metrics().values()) {
            (*job.mutable_metrics())[name] = value;
          }
          return absl::OkStatus();
        };
        break;
      case v1::WorkerEvent::kLog:
        if (reported.log().text().size() > 65536) {
          return absl::InvalidArgumentError("log.text: longer than 64 KiB");
        }
        *event.mutable_log() = reported.log();
        break;
      default:
        return absl::InvalidArgumentError("events: an event with nothing set");
    }
    OFFSITE_RETURN_IF_ERROR(jobs_
                                ->Update(
                                    lease.job_id,
                                    [&](v1::Job& job) {
                                      cancel = job.cancel_requested();
                                      return mutate(job);
                                    },
                                    std::move(event))
                                .status());
  }
  if (request.events().empty()) {
    OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(lease.job_id));
    cancel = job.cancel_requested();
  }
  bus_->Publish();
  v1::ReportResponse response;
  response.set_cancel_requested(cancel);
  return response;
}

absl::StatusOr<v1::Artifact> WorkerManager::AddArtifact(const Caller& caller,
                                                        const v1::AddArtifactRequest& request) {
  OFFSITE_ASSIGN_OR_RETURN(LeaseRecord lease, LiveLease(caller, request.lease_id()));
  if (request.name().empty() || request.name().size() > 255) {
    return absl::InvalidArgumentError("name: must be 1 to 255 characters");
  }
  absl::StatusOr<v1::Artifact> uploaded = artifacts_->Get(request.artifact_id());
  if (!uploaded.ok() || uploaded->owner() != caller.principal) {
    return absl::InvalidArgumentError(absl::StrCat("artifact_id: \"", request.artifact_id(),
                                                   "\" is not an upload of ", caller.principal));
  }
  OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(lease.job_id));
  OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact,
                           artifacts_->Alias(*uploaded, request.name(), job.owner(), job.id()));
  v1::JobEvent event;
  event.mutable_artifact()->set_artifact_id(artifact.id());
  event.mutable_artifact()->set_name(request.name());
  OFFSITE_RETURN_IF_ERROR(jobs_
                              ->Update(
                                  job.id(),
                                  [&](v1::Job& stored) {
                                    stored.add_artifact_ids(artifact.id());
                                    return absl::OkStatus();
                                  },
                                  std::move(event))
                              .status());
  bus_->Publish();
  return artifact;
}

absl::Status WorkerManager::SaveCheckpoint(const Caller& caller,
                                           const v1::SaveCheckpointRequest& request) {
  OFFSITE_ASSIGN_OR_RETURN(LeaseRecord lease, LiveLease(caller, request.lease_id()));
  if (!IsCheckpointFileName(request.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: \"", request.name(), "\" is not a checkpoint file name (checkpoint*, no '/')"));
  }
  absl::StatusOr<v1::Artifact> uploaded = artifacts_->Get(request.artifact_id());
  if (!uploaded.ok() || uploaded->owner() != caller.principal) {
    return absl::InvalidArgumentError(absl::StrCat("artifact_id: \"", request.artifact_id(),
                                                   "\" is not an upload of ", caller.principal));
  }
  const std::string dir = WorkDir(lease.job_id);
  OFFSITE_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  return CopyFileAtomic(artifacts_->BlobPath(uploaded->sha256()), dir + "/" + request.name());
}

absl::StatusOr<v1::CompleteResponse> WorkerManager::Complete(const Caller& caller,
                                                             const v1::CompleteRequest& request) {
  OFFSITE_ASSIGN_OR_RETURN(LeaseRecord lease, LiveLease(caller, request.lease_id()));
  const absl::StatusCode code = static_cast<absl::StatusCode>(request.code());
  v1::CompleteResponse response;
  // A rank other than 0 that finished well waits for rank 0 to end the job;
  // its lease stays (never expiring) so the rank is not handed out again.
  if (lease.rank > 0 && code == absl::StatusCode::kOk && !request.requeue()) {
    OFFSITE_RETURN_IF_ERROR(
        leases_->Renew(lease.id, caller.principal, options_.now_ms(), INT64_MAX));
    response.set_state(v1::RUNNING);
    return response;
  }
  v1::JobState state;
  std::string message;
  const std::string where =
      lease.world_size > 1 ? absl::StrCat("worker ", caller.principal, " (rank ", lease.rank, ")")
                           : absl::StrCat("worker ", caller.principal);
  if (request.requeue()) {
    state = v1::QUEUED;
    message = absl::StrCat(where, " stopped; the job resumes from its last checkpoint");
    if (!request.message().empty()) {
      absl::StrAppend(&message, " (", request.message().substr(0, 1000), ")");
    }
  } else if (code == absl::StatusCode::kOk) {
    state = v1::SUCCEEDED;
    // The job's records beyond artifacts (an emulator's package), made here
    // because the worker has no access to the server's registries.
    absl::Status recorded = RecordOutputs(lease.job_id);
    if (!recorded.ok()) {
      state = v1::FAILED;
      message = recorded.ToString();
    }
  } else if (code == absl::StatusCode::kCancelled) {
    state = v1::CANCELLED;
    message = "cancelled";
  } else {
    state = v1::FAILED;
    message = absl::Status(code, request.message().substr(0, 4000)).ToString();
    if (lease.world_size > 1) message = absl::StrCat(where, ": ", message);
  }
  OFFSITE_RETURN_IF_ERROR(EndJob(lease.job_id, state, message));
  response.set_state(state);
  return response;
}

absl::Status WorkerManager::RecordOutputs(const std::string& job_id) {
  OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(job_id));
  auto runner = runners_->find(job.spec().kind_case());
  if (runner == runners_->end()) return absl::OkStatus();
  return runner->second->RecordOutputs(job);
}

absl::Status WorkerManager::EndJob(const std::string& job_id, v1::JobState& state,
                                   std::string& message) {
  auto update = [&](v1::Job& job, v1::JobEvent& event) {
    // A requeue of a job with a pending cancel ends it instead.
    if (state == v1::QUEUED && job.cancel_requested()) {
      state = v1::CANCELLED;
      message = "cancelled";
    }
    job.set_state(state);
    if (IsTerminal(state)) job.set_end_time_ms(NowMs());
    if (state == v1::FAILED || state == v1::CANCELLED) job.set_error(message);
    event = StateEvent(state, message);
    return absl::OkStatus();
  };
  auto release = [&](Database& db, const v1::Job& job) {
    return LeaseStore::DeleteForJobLocked(db, job.id());
  };
  OFFSITE_RETURN_IF_ERROR(jobs_->UpdateWith(job_id, update, release).status());
  bus_->Publish();
  return absl::OkStatus();
}

absl::StatusOr<int> WorkerManager::ExpireLeases() {
  OFFSITE_ASSIGN_OR_RETURN(std::vector<LeaseRecord> expired, leases_->Expired(options_.now_ms()));
  int requeued = 0;
  for (const LeaseRecord& lease : expired) {
    bool was_requeued = false;
    absl::StatusOr<v1::JobEvent> written = jobs_->UpdateWith(
        lease.job_id,
        [&](v1::Job& job, v1::JobEvent& event) -> absl::Status {
          if (job.state() != v1::RUNNING) {
            event = LogEvent(absl::StrCat("lease of worker ", lease.worker, " released"));
            return absl::OkStatus();
          }
          const bool cancel = job.cancel_requested();
          job.set_state(cancel ? v1::CANCELLED : v1::QUEUED);
          std::string message = absl::StrCat("worker ", lease.worker, " (", lease.worker_name,
                                             ") stopped renewing its lease; ");
          if (cancel) {
            job.set_end_time_ms(NowMs());
            job.set_error("cancelled");
            absl::StrAppend(&message, "cancelled");
          } else {
            absl::StrAppend(&message, "requeued to resume from the last checkpoint");
            was_requeued = true;
          }
          event = StateEvent(job.state(), std::move(message));
          return absl::OkStatus();
        },
        [&](Database& db, const v1::Job& job) -> absl::Status {
          // Another sweep (or a Complete) may have got there first.
          OFFSITE_ASSIGN_OR_RETURN(std::vector<LeaseRecord> held,
                                   LeaseStore::ForJobLocked(db, job.id()));
          bool still_held = false;
          for (const LeaseRecord& h : held) still_held |= h.id == lease.id;
          if (!still_held) return absl::AbortedError("lease already gone");
          return LeaseStore::DeleteForJobLocked(db, job.id());
        });
    if (absl::IsAborted(written.status())) continue;
    if (absl::IsNotFound(written.status())) {
      // The job itself is gone; drop its leases.
      OFFSITE_RETURN_IF_ERROR(leases_->DeleteForJob(lease.job_id));
      continue;
    }
    OFFSITE_RETURN_IF_ERROR(written.status());
    requeued += was_requeued;
    bus_->Publish();
  }
  return requeued;
}

bool WorkerManager::IsLeased(const std::string& job_id) {
  absl::StatusOr<std::vector<LeaseRecord>> held = leases_->ForJob(job_id);
  return held.ok() && !held->empty();
}

bool WorkerManager::MayRead(const Caller& caller, const v1::Artifact& artifact) {
  if (!RequireWorker(caller).ok()) return false;
  absl::StatusOr<std::vector<LeaseRecord>> held =
      leases_->ForWorker(caller.principal, options_.now_ms());
  if (!held.ok()) return false;
  for (const LeaseRecord& lease : *held) {
    absl::StatusOr<v1::Job> job = jobs_->Get(lease.job_id);
    if (!job.ok()) continue;
    if (job->owner() == artifact.owner()) return true;
    absl::StatusOr<v1::JobInputs> inputs = ResolveInputs(*job);
    if (inputs.ok() && inputs->model().artifact_id() == artifact.id()) return true;
  }
  return false;
}

}  // namespace offsite
