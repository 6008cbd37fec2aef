#ifndef OFFSITE_SERVER_SCHEDULER_H_
#define OFFSITE_SERVER_SCHEDULER_H_

// The in-process worker pool. Each worker claims the oldest QUEUED job that
// fits it, runs its kind's runner and records the outcome. A job whose worker
// was stopped (server shutdown) or died with the process goes back to QUEUED
// and resumes from its work directory's checkpoint. Remote workers lease jobs
// from the same queue (server/worker_manager.h).

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "server/artifact_store.h"
#include "server/event_bus.h"
#include "server/job_runner.h"
#include "server/job_store.h"

namespace offsite {

struct SchedulerOptions {
  std::string data_dir;
  // In-process workers; 0: jobs run on remote workers only.
  int workers = 1;
  // What an in-process worker offers a job's JobResources; 0: not checked.
  // Data-parallel jobs (resources.workers > 1) always wait for remote workers.
  int threads = 0;
  int64_t memory_mb = 0;
  // True for a job a remote worker holds: not an orphan to requeue at Start.
  std::function<bool(const std::string& job_id)> leased_remotely;
  std::string device = "cpu";
  int checkpoint_interval_s = 30;
  // Minimum time between two stored progress events of one job.
  int progress_interval_ms = 500;
};

class Scheduler {
 public:
  Scheduler(JobStore* jobs, ArtifactStore* artifacts, const RunnerRegistry* runners,
            EventBus* bus, SchedulerOptions options);
  ~Scheduler();

  // Requeues jobs left RUNNING by a previous process, then starts the workers.
  absl::Status Start();
  // Stops the workers; running jobs are interrupted and requeued.
  void Stop();
  // A job was queued.
  void Notify();
  // Asks a running job to stop; it ends CANCELLED. False if it is not running here.
  bool RequestCancel(const std::string& job_id);

  std::string WorkDir(const std::string& job_id) const;

 private:
  class Context;
  void WorkerLoop();
  bool Fits(const v1::Job& job) const;
  void RunJob(v1::Job job);
  void Finish(const std::string& job_id, const absl::Status& outcome, bool stopping);

  JobStore* jobs_;
  ArtifactStore* artifacts_;
  const RunnerRegistry* runners_;
  EventBus* bus_;
  SchedulerOptions options_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  uint64_t queued_signals_ = 0;
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> running_;  // job id -> cancel flag
  std::atomic<bool> shutdown_{false};
  std::vector<std::thread> workers_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_SCHEDULER_H_
