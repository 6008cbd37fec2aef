#include "server/job_manager.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "server/artifact_store.h"

namespace offsite {
namespace {

absl::Status RequireSubmitter(const Caller& caller) {
  if (caller.role == v1::OWNER || caller.role == v1::DATA_OWNER) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("principal \"", caller.principal, "\" (role ",
                                                  v1::Role_Name(caller.role),
                                                  ") may not use the job API"));
}

}  // namespace

absl::Status JobManager::Validate(const v1::JobSpec& spec) const {
  OFFSITE_RETURN_IF_ERROR(CheckNoUnknownFields(spec));
  if (spec.kind_case() == v1::JobSpec::KIND_NOT_SET) {
    std::vector<std::string> kinds;
    for (const auto& [kind, runner] : *runners_) kinds.push_back(KindName(kind));
    return absl::InvalidArgumentError(
        absl::StrCat("spec: no job kind set; one of: ", absl::StrJoin(kinds, ", ")));
  }
  auto runner = runners_->find(spec.kind_case());
  if (runner == runners_->end()) {
    return absl::InvalidArgumentError(absl::StrCat("spec: job kind \"", KindName(spec.kind_case()),
                                                   "\" is not supported by this server"));
  }
  if (spec.display_name().size() > 200) {
    return absl::InvalidArgumentError("display_name: longer than 200 characters");
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("resources.workers", spec.resources().workers(), 0, 64));
  OFFSITE_RETURN_IF_ERROR(CheckRange("resources.threads", spec.resources().threads(), 0, 1024));
  if (spec.resources().memory_mb() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("resources.memory_mb: ", spec.resources().memory_mb(), " is negative"));
  }
  if (spec.resources().workers() > 1 && !runner->second->SupportsDataParallel()) {
    std::vector<std::string> kinds;
    for (const auto& [kind, other] : *runners_) {
      if (other->SupportsDataParallel()) kinds.push_back(KindName(kind));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("resources.workers: ", spec.resources().workers(), " workers, but ",
                     KindName(spec.kind_case()),
                     " jobs train on one; data-parallel kinds: ", absl::StrJoin(kinds, ", ")));
  }
  return runner->second->Validate(spec);
}

absl::Status JobManager::CheckArtifactRefs(const Caller& caller, const v1::JobSpec& spec) {
  for (const auto& [field, id] : MarkedStrings(spec, FieldOption("offsite.v1.artifact_ref"))) {
    absl::StatusOr<v1::Artifact> artifact = artifacts_->Get(id);
    // Jobs run as their submitter, so even the owner names only its own artifacts.
    if (!artifact.ok() || artifact->owner() != caller.principal) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": artifact \"", id, "\" not found among ", caller.principal, "'s"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> JobManager::Submit(const Caller& caller, const v1::JobSpec& spec) {
  OFFSITE_RETURN_IF_ERROR(RequireSubmitter(caller));
  if (spec.has_plugin_eval()) {
    return absl::InvalidArgumentError(
        "plugin_eval: queued by pushing an adapter (`offsite offsite push`), not submitted");
  }
  // Emulators read the owner's registered models.
  if (spec.has_emulator() && !caller.is_owner()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal \"", caller.principal, "\" may not build emulators (owner role only)"));
  }
  // Checked before Validate, whose "does not exist" would let a tenant probe
  // for files outside the data roots.
  if (!caller.is_owner()) OFFSITE_RETURN_IF_ERROR(CheckServerPaths(spec, data_roots_));
  OFFSITE_RETURN_IF_ERROR(Validate(spec));
  OFFSITE_RETURN_IF_ERROR(CheckArtifactRefs(caller, spec));
  return Enqueue(caller, spec);
}

absl::StatusOr<v1::Job> JobManager::SubmitInternal(const Caller& caller, const v1::JobSpec& spec) {
  OFFSITE_RETURN_IF_ERROR(Validate(spec));
  return Enqueue(caller, spec);
}

absl::StatusOr<v1::Job> JobManager::Enqueue(const Caller& caller, const v1::JobSpec& spec) {
  v1::Job job;
  job.set_id(NewId("job"));
  job.set_owner(caller.principal);
  job.set_kind(KindName(spec.kind_case()));
  *job.mutable_spec() = spec;
  job.set_state(v1::QUEUED);
  job.set_create_time_ms(NowMs());
  v1::JobEvent event;
  event.mutable_state()->set_state(v1::QUEUED);
  event.mutable_state()->set_message(absl::StrCat("submitted by ", caller.principal));
  OFFSITE_RETURN_IF_ERROR(jobs_->Insert(job, std::move(event)).status());
  bus_->Publish();
  scheduler_->Notify();
  return job;
}

absl::StatusOr<v1::Job> JobManager::GetVisible(const Caller& caller, const std::string& id) {
  OFFSITE_RETURN_IF_ERROR(RequireSubmitter(caller));
  if (id.empty()) return absl::InvalidArgumentError("id: empty job id");
  absl::StatusOr<v1::Job> job = jobs_->Get(id);
  if (job.ok() && !caller.is_owner() && job->owner() != caller.principal) {
    return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  }
  return job;
}

absl::StatusOr<v1::Job> JobManager::Get(const Caller& caller, const std::string& id) {
  return GetVisible(caller, id);
}

absl::StatusOr<v1::ListJobsResponse> JobManager::List(const Caller& caller,
                                                      const v1::ListJobsRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireSubmitter(caller));
  OFFSITE_RETURN_IF_ERROR(CheckRange("page_size", request.page_size(), 0, 1000));
  JobQuery query;
  query.owner = caller.is_owner() ? "" : caller.principal;
  query.state = request.state();
  query.kind = request.kind();
  query.page_size = request.page_size() > 0 ? request.page_size() : 50;
  query.page_token = request.page_token();
  OFFSITE_ASSIGN_OR_RETURN(JobPage page, jobs_->List(query));
  v1::ListJobsResponse response;
  for (v1::Job& job : page.jobs) *response.add_jobs() = std::move(job);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<v1::Job> JobManager::Cancel(const Caller& caller, const std::string& id) {
  OFFSITE_RETURN_IF_ERROR(GetVisible(caller, id).status());
  bool running = false;
  absl::Status status =
      jobs_
          ->UpdateWith(id,
                       [&](v1::Job& job, v1::JobEvent& event) -> absl::Status {
                         if (IsTerminal(job.state())) {
                           return absl::FailedPreconditionError(absl::StrCat(
                               "job ", id, " already ended ", v1::JobState_Name(job.state())));
                         }
                         if (job.state() == v1::QUEUED) {
                           job.set_state(v1::CANCELLED);
                           job.set_end_time_ms(NowMs());
                           job.set_error(absl::StrCat("cancelled by ", caller.principal));
                           event.mutable_state()->set_state(v1::CANCELLED);
                           event.mutable_state()->set_message(job.error());
                         } else {
                           running = true;
                           job.set_cancel_requested(true);
                           event.mutable_log()->set_text(
                               absl::StrCat("cancel requested by ", caller.principal));
                         }
                         return absl::OkStatus();
                       })
          .status();
  OFFSITE_RETURN_IF_ERROR(status);
  if (running) scheduler_->RequestCancel(id);
  bus_->Publish();
  return jobs_->Get(id);
}

absl::StatusOr<v1::GetJobLogsResponse> JobManager::Logs(const Caller& caller,
                                                        const v1::GetJobLogsRequest& request) {
  OFFSITE_RETURN_IF_ERROR(GetVisible(caller, request.id()).status());
  OFFSITE_RETURN_IF_ERROR(CheckRange("limit", request.limit(), 0, 100000));
  OFFSITE_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> lines,
                           jobs_->Events(request.id(), request.after_seq(), request.limit(),
                                         /*logs_only=*/true));
  v1::GetJobLogsResponse response;
  for (v1::JobEvent& line : lines) *response.add_lines() = std::move(line);
  return response;
}

absl::Status JobManager::Watch(const Caller& caller, const std::string& id, int64_t after_seq,
                               const std::function<bool(const v1::JobEvent&)>& send,
                               const std::function<bool()>& stopped) {
  OFFSITE_RETURN_IF_ERROR(GetVisible(caller, id).status());
  int64_t seq = after_seq;
  while (!stopped()) {
    uint64_t version = bus_->version();
    OFFSITE_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> events,
                             jobs_->Events(id, seq, 1000, /*logs_only=*/false));
    for (const v1::JobEvent& event : events) {
      if (!send(event)) return absl::OkStatus();
      seq = event.seq();
    }
    if (!events.empty()) continue;  // Drain before deciding the job is over.
    OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->Get(id));
    if (IsTerminal(job.state())) {
      // Everything up to the final state event has been sent.
      OFFSITE_ASSIGN_OR_RETURN(std::vector<v1::JobEvent> rest, jobs_->Events(id, seq, 1, false));
      if (rest.empty()) return absl::OkStatus();
      continue;
    }
    bus_->WaitForChange(version, std::chrono::milliseconds(1000));
  }
  return absl::OkStatus();
}

}  // namespace offsite
