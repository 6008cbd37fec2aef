#ifndef OFFSITE_SERVER_JOB_MANAGER_H_
#define OFFSITE_SERVER_JOB_MANAGER_H_

// The job API's logic, free of gRPC: who may do what to which job, spec
// validation, and the event stream. server/job_service.cc only converts.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offsite/v1/job.pb.h"
#include "server/artifact_store.h"
#include "server/auth.h"
#include "server/event_bus.h"
#include "server/job_runner.h"
#include "server/job_store.h"
#include "server/scheduler.h"

namespace offsite {

class JobManager {
 public:
  // `data_roots`: the directories whose files non-owners' specs may name.
  JobManager(JobStore* jobs, ArtifactStore* artifacts, Scheduler* scheduler,
             const RunnerRegistry* runners, EventBus* bus, std::vector<std::string> data_roots = {})
      : jobs_(jobs),
        artifacts_(artifacts),
        scheduler_(scheduler),
        runners_(runners),
        bus_(bus),
        data_roots_(std::move(data_roots)) {}

  absl::StatusOr<v1::Job> Submit(const Caller& caller, const v1::JobSpec& spec);
  // Queues a job the server itself asks for on the caller's behalf (e.g. the
  // plug-in evaluation of a pushed adapter): validated, but kinds closed to
  // clients are allowed.
  absl::StatusOr<v1::Job> SubmitInternal(const Caller& caller, const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> Get(const Caller& caller, const std::string& id);
  absl::StatusOr<v1::ListJobsResponse> List(const Caller& caller,
                                            const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> Cancel(const Caller& caller, const std::string& id);
  absl::StatusOr<v1::GetJobLogsResponse> Logs(const Caller& caller,
                                              const v1::GetJobLogsRequest& request);

  // Sends every event with seq > after_seq, then new ones as they are
  // written, until the job's final state event has been sent. Returns early
  // (OK) when `send` returns false or `stopped` returns true.
  absl::Status Watch(const Caller& caller, const std::string& id, int64_t after_seq,
                     const std::function<bool(const v1::JobEvent&)>& send,
                     const std::function<bool()>& stopped);

  // Checks a spec as Submit would, without queueing it.
  absl::Status Validate(const v1::JobSpec& spec) const;

 private:
  // NotFound (not PermissionDenied) for another tenant's job: ids are not to
  // be probed.
  absl::StatusOr<v1::Job> GetVisible(const Caller& caller, const std::string& id);

  absl::StatusOr<v1::Job> Enqueue(const Caller& caller, const v1::JobSpec& spec);

  // Artifacts a spec refers to ((artifact_ref) fields) must be the caller's.
  absl::Status CheckArtifactRefs(const Caller& caller, const v1::JobSpec& spec);

  JobStore* jobs_;
  ArtifactStore* artifacts_;
  Scheduler* scheduler_;
  const RunnerRegistry* runners_;
  EventBus* bus_;
  std::vector<std::string> data_roots_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOB_MANAGER_H_
