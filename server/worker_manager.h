#ifndef OFFSITE_SERVER_WORKER_MANAGER_H_
#define OFFSITE_SERVER_WORKER_MANAGER_H_

// The remote-worker protocol's logic, free of gRPC (server/worker_service.cc
// only converts): leases with an expiry that heartbeats renew, progress and
// outputs reported under a lease, checkpoints kept in the job's work
// directory on the server, and the requeue of a job whose lease expired.
//
// A lease is valid for one job attempt. Every call names its lease and fails
// with NotFound once the lease is gone (expired, or the job ended): the worker
// must then stop the job, whose next attempt resumes from the last checkpoint
// the worker saved.
//
// Data-parallel jobs (JobResources.workers = N > 1) hold N leases, one per
// rank. The first worker to lease the job becomes rank 0 and hosts the
// rendezvous store at its advertised address; the next N-1 fitting workers to
// ask join as ranks 1..N-1. Rank 0's Complete ends the job; a lost or failed
// rank ends the attempt of all ranks.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "offsite/v1/worker.pb.h"
#include "server/artifact_store.h"
#include "server/auth.h"
#include "server/event_bus.h"
#include "server/job_runner.h"
#include "server/job_store.h"
#include "server/lease_store.h"

namespace offsite {

// Why `capabilities` cannot run `job` ("" when they can): its kind, threads,
// memory or number of workers.
std::string WhyUnfit(const v1::Job& job, const v1::WorkerCapabilities& capabilities);

// Work-directory files that travel with a job between workers: names starting
// with "checkpoint", not temporary files of an atomic write.
bool IsCheckpointFileName(const std::string& name);

struct WorkerManagerOptions {
  // The server's data directory; a job's work directory is <data_dir>/jobs/<id>.
  std::string data_dir;
  int64_t lease_timeout_ms = 30000;
  int checkpoint_interval_s = 30;
  // Clock for lease expiry (wall-clock ms); tests substitute their own.
  std::function<int64_t()> now_ms = NowMs;
};

class WorkerManager {
 public:
  // `runners` resolve a job's inputs before it is leased and record its
  // outputs after it succeeded (JobRunner::ResolveInputs / RecordOutputs).
  WorkerManager(JobStore* jobs, LeaseStore* leases, ArtifactStore* artifacts,
                const RunnerRegistry* runners, EventBus* bus, WorkerManagerOptions options);
  ~WorkerManager();

  // Starts the thread that takes back expired leases (every quarter timeout, at most 1 s).
  void Start();
  // Stops that thread and ends pending Lease waits.
  void Stop();

  // Waits up to request.wait_ms for a job that fits the capabilities. An
  // empty lease id: nothing to do. `stopped` ends the wait early (client gone).
  absl::StatusOr<v1::LeaseResponse> Lease(const Caller& caller, const v1::LeaseRequest& request,
                                          const std::function<bool()>& stopped);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const Caller& caller,
                                                  const v1::HeartbeatRequest& request);
  absl::StatusOr<v1::ReportResponse> Report(const Caller& caller, const v1::ReportRequest& request);
  absl::StatusOr<v1::Artifact> AddArtifact(const Caller& caller,
                                           const v1::AddArtifactRequest& request);
  absl::Status SaveCheckpoint(const Caller& caller, const v1::SaveCheckpointRequest& request);
  absl::StatusOr<v1::CompleteResponse> Complete(const Caller& caller,
                                                const v1::CompleteRequest& request);

  // Takes back every lease expired by now: its job goes back to QUEUED (or
  // ends CANCELLED if a cancel was pending). Returns how many jobs it requeued.
  absl::StatusOr<int> ExpireLeases();

  // Whether job `job_id` is held by a remote worker (so a restarting server
  // does not requeue it as an orphan).
  bool IsLeased(const std::string& job_id);

  // Whether a worker may read `artifact` through ArtifactService: it holds a
  // live lease on a job of the artifact's owner (the job's inputs and checkpoints)
  // or on a job whose resolved inputs name it (an emulator job's model).
  bool MayRead(const Caller& caller, const v1::Artifact& artifact);

 private:
  absl::StatusOr<LeaseRecord> LiveLease(const Caller& caller, const std::string& lease_id);
  // One attempt to lease a job: join a forming data-parallel job, else claim a queued one.
  absl::StatusOr<std::optional<v1::LeaseResponse>> TryLease(const Caller& caller,
                                                            const v1::WorkerCapabilities& caps);
  absl::StatusOr<std::optional<v1::LeaseResponse>> TryJoin(const Caller& caller,
                                                           const v1::WorkerCapabilities& caps);
  // The lease response for a claimed or joined job; none if the job's inputs
  // cannot be resolved, which ends the job FAILED.
  absl::StatusOr<std::optional<v1::LeaseResponse>> Respond(const LeaseRecord& lease, v1::Job job);
  absl::Status FillResponse(const LeaseRecord& lease, v1::Job job, v1::LeaseResponse* response);
  absl::StatusOr<v1::JobInputs> ResolveInputs(const v1::Job& job) const;
  absl::Status RecordOutputs(const std::string& job_id);
  // Sets the job's final (or requeued) state and drops its leases; `state`
  // and `message` become CANCELLED if a requeued job had a cancel pending.
  absl::Status EndJob(const std::string& job_id, v1::JobState& state, std::string& message);
  std::string WorkDir(const std::string& job_id) const;
  void SweepLoop();

  JobStore* jobs_;
  LeaseStore* leases_;
  ArtifactStore* artifacts_;
  const RunnerRegistry* runners_;
  EventBus* bus_;
  WorkerManagerOptions options_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::atomic<bool> shutdown_{false};
  std::thread sweeper_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_WORKER_MANAGER_H_
