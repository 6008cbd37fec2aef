#ifndef OFFSITE_WORKER_REMOTE_WORKER_H_
#define OFFSITE_WORKER_REMOTE_WORKER_H_

// offsite-worker's loop: lease a job from the server (WorkerService), run its
// kind's runner from the server's own registry, and keep the server informed:
// heartbeats renew the lease, progress / metrics / logs go over RPC, outputs
// and checkpoints go up through ArtifactService. A lost lease (the server took
// the job back) or a cancel stops the runner; a stop of the worker itself puts
// the job back in the queue after saving its last checkpoint.
//
// Example:
//   RunnerRegistry runners = WorkerRunners();
//   RemoteWorker worker(channel, &runners, options);
//   std::atomic<bool> stop{false};
//   absl::Status status = worker.Run(stop);  // until stop is set

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/worker.grpc.pb.h"
#include "server/job_runner.h"

namespace offsite {

struct WorkerOptions {
  // Shown in the job's history; default: the host name.
  std::string name;
  // LibTorch threads the worker runs jobs with (advertised to the scheduler).
  int threads = 1;
  // Memory offered to a job, MiB; 0: the machine's physical memory.
  int64_t memory_mb = 0;
  std::string device = "cpu";
  // Local scratch: jobs/<id> work directories and cache/ of downloaded inputs.
  std::string work_root = "offsite-worker";
  // host:port where this worker hosts a data-parallel job's TCPStore as rank
  // 0, reachable by the other workers; empty: no data-parallel jobs.
  std::string rendezvous_address;
  // Longest wait of one Lease call for a job.
  int lease_wait_ms = 10000;
  // Minimum time between two progress reports.
  int progress_interval_ms = 500;
  // How often the work directory is checked for new checkpoint files.
  int checkpoint_sync_ms = 500;
};

// The server's job kinds that run on a worker: all but plug-in evaluation,
// which reads a data owner's uploaded adapter.
RunnerRegistry WorkerRunners();

class RemoteWorker {
 public:
  RemoteWorker(std::shared_ptr<grpc::Channel> channel, const RunnerRegistry* runners,
               WorkerOptions options);

  // Leases and runs jobs until `stop` is set; a job running then goes back to
  // the queue. Returns only for `stop` (server errors are retried).
  absl::Status Run(const std::atomic<bool>& stop);

  // Leases one job (waiting up to lease_wait_ms) and runs it to its end.
  // False when no job was leased.
  absl::StatusOr<bool> RunOnce(const std::atomic<bool>& stop);

  v1::WorkerCapabilities Capabilities() const;

 private:
  class Context;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
  std::unique_ptr<v1::ArtifactService::Stub> artifacts_;
  const RunnerRegistry* runners_;
  WorkerOptions options_;
};

}  // namespace offsite

#endif  // OFFSITE_WORKER_REMOTE_WORKER_H_
