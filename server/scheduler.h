#ifndef OFFSITE_SERVER_SCHEDULER_H_
#define OFFSITE_SERVER_SCHEDULER_H_

// The in-process worker pool. Each worker claims the oldest QUEUED job, runs
// its kind's runner and records the outcome. A job whose worker was stopped
// (server shutdown) or died with the process goes back to QUEUED and resumes
// from its work directory's checkpoint.

#include <atomic>
#include <condition_variable>
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
  int workers = 1;
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
