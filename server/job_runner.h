#ifndef OFFSITE_SERVER_JOB_RUNNER_H_
#define OFFSITE_SERVER_JOB_RUNNER_H_

// The contract between the scheduler and a job kind. A runner validates its
// typed spec before the job is queued, then runs it with a JobContext through
// which it reports progress, checkpoints and leaves artifacts.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "offsite/v1/artifact.pb.h"
#include "offsite/v1/job.pb.h"
#include "offsite/v1/worker.pb.h"

namespace offsite {

// Where a job's process sits in a data-parallel group (JobResources.workers >
// 1): ranks 0..world_size-1 meet at rank 0's c10d TCPStore.
struct DataParallelRendezvous {
  int rank = 0;
  int world_size = 1;
  // host:port of the store that rank 0 hosts.
  std::string store_address;
  // Key prefix of this attempt in the store.
  std::string prefix;
};

class JobContext {
 public:
  virtual ~JobContext() = default;

  virtual const v1::Job& job() const = 0;
  // True once the job was cancelled or the server is stopping; the runner
  // should then return absl::CancelledError() promptly (check every step).
  virtual bool cancelled() const = 0;

  // Progress is rate-limited by the context; call it every step.
  virtual void ReportProgress(absl::string_view phase, int64_t step, int64_t total_steps) = 0;
  virtual void ReportMetrics(int64_t step, const std::map<std::string, double>& values) = 0;
  virtual void Log(absl::string_view line) = 0;

  // A directory private to this job that survives restarts: checkpoints go
  // here (write atomically), and a resumed job finds them again. On a remote
  // worker, files named checkpoint* travel to the server as they change, so
  // the job resumes from them on any worker.
  virtual const std::string& work_dir() const = 0;
  // True when the runner should write a checkpoint now (the server's interval
  // elapsed since the last call that returned true).
  virtual bool CheckpointDue() = 0;

  // Moves the file into the artifact store as an output of this job.
  virtual absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path,
                                                   const std::string& name) = 0;

  // Local path of an artifact's bytes for reading, once checked to belong to
  // the job's owner (NotFound otherwise).
  virtual absl::StatusOr<std::string> ArtifactPath(const std::string& artifact_id) = 0;

  // torch::Device string for this job, e.g. "cpu".
  virtual const std::string& device() const = 0;

  // Set when the job runs data-parallel on several workers; nullptr for one
  // process. Only rank 0's reports, artifacts and checkpoints are kept.
  virtual const DataParallelRendezvous* data_parallel() const { return nullptr; }

  // What the server resolved for this run with JobRunner::ResolveInputs.
  // ArtifactPath opens the artifacts it names.
  virtual const v1::JobInputs& inputs() const { return v1::JobInputs::default_instance(); }
};

class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // Rejects a bad spec with InvalidArgument naming the field and value.
  virtual absl::Status Validate(const v1::JobSpec& spec) const = 0;
  // Runs the job to completion, resuming from work_dir() if a checkpoint is
  // there. Returns CancelledError when ctx.cancelled().
  virtual absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const = 0;
  // True if the kind trains data-parallel when a job asks for several
  // workers (JobSpec.resources.workers > 1); others are refused such a job.
  virtual bool SupportsDataParallel() const { return false; }

  // The two server-side halves of a job that reads or writes the server's
  // records, so that Run itself can go to a remote worker:
  // - before each run (in process or leased), the records Run reads
  //   (JobContext::inputs); an error fails the job;
  // - after Run succeeded and its artifacts are in, the records the job
  //   leaves beyond artifacts; an error fails the job.
  virtual absl::StatusOr<v1::JobInputs> ResolveInputs(const v1::Job& job) const {
    return v1::JobInputs();
  }
  virtual absl::Status RecordOutputs(const v1::Job& job) const { return absl::OkStatus(); }
};

// One runner per job kind (the JobSpec oneof case).
using RunnerRegistry = std::map<v1::JobSpec::KindCase, std::unique_ptr<JobRunner>>;

class ArtifactStore;
class OffsiteStore;

// The registry of every job kind this server runs. The Offsite-Tuning jobs
// read registered models and record packages through the two stores.
RunnerRegistry DefaultRunners(OffsiteStore* offsite_store, ArtifactStore* artifacts);

// The kind's name: the oneof field name, e.g. "forward_forward"; "" if unset.
std::string KindName(v1::JobSpec::KindCase kind);

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOB_RUNNER_H_
