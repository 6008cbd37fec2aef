#ifndef OFFSITE_SERVER_JOBS_OFFSITE_TUNING_JOBS_H_
#define OFFSITE_SERVER_JOBS_OFFSITE_TUNING_JOBS_H_

// The model owner's side of Offsite-Tuning as jobs:
// - lm_pretrain: a GPT decoder on text, leaving model.safetensors;
// - emulator: split, layer-drop and optional distillation of a registered
//   model into a package, with its zero-shot figures; runs in the server or
//   on remote workers (data-parallel distillation), the server resolving the
//   model before and recording the package after;
// - plugin_eval: a pushed adapter plugged into the full model, evaluated next
//   to the emulator with the same adapter (queued by PushAdapter).
// Training resumes from the job's checkpoints after a restart; what the jobs
// leave (artifacts, package and adapter records) is written once, at the end.

#include "server/artifact_store.h"
#include "server/job_runner.h"
#include "server/offsite_store.h"

namespace offsite {

class LmPretrainJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

class EmulatorJob : public JobRunner {
 public:
  EmulatorJob(OffsiteStore* store, ArtifactStore* artifacts)
      : store_(store), artifacts_(artifacts) {}
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  // Distillation trains data-parallel; the other steps run on every rank.
  bool SupportsDataParallel() const override { return true; }
  // The registered model (Run reads only what this resolves, so it can run on a worker).
  absl::StatusOr<v1::JobInputs> ResolveInputs(const v1::Job& job) const override;
  // Records the package the run left as an artifact.
  absl::Status RecordOutputs(const v1::Job& job) const override;

 private:
  OffsiteStore* store_;
  ArtifactStore* artifacts_;
};

class PluginEvalJob : public JobRunner {
 public:
  PluginEvalJob(OffsiteStore* store, ArtifactStore* artifacts)
      : store_(store), artifacts_(artifacts) {}
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;

 private:
  OffsiteStore* store_;
  ArtifactStore* artifacts_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_OFFSITE_TUNING_JOBS_H_
