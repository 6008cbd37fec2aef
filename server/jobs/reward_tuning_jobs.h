#ifndef OFFSITE_SERVER_JOBS_REWARD_TUNING_JOBS_H_
#define OFFSITE_SERVER_JOBS_REWARD_TUNING_JOBS_H_

// The two job kinds of "Tuning computer vision models with task rewards":
//
//   detection_mle  Maximum-likelihood training of a Pix2Seq detector on
//                  detection scenes (targets in a new random object order every
//                  epoch). Reports, every epoch, mAP@[.5:.95], mAP@.5, recall
//                  and duplicate rate of greedy decoding on the test scenes.
//                  Leaves "detector.pt": the detector, its config and the
//                  SceneData it was trained on.
//   reward_tune    REINFORCE from a detection_mle detector ("detection" reward)
//                  or a finetune job's "model.safetensors" classifier
//                  ("cost_matrix" reward). Streams the mean sampled reward,
//                  entropy, output length and loss, and every eval_every steps
//                  the greedy reward (and mAP, or accuracy) on held-out data.
//                  Leaves the tuned model (same file kind as it read) and
//                  "metrics.json" with the figures before and after tuning.
//
// Both resume from the checkpoint in the job's work directory after a restart.
// The functions below them are public so tests and the experiment binary
// build the same scenes and detectors as the jobs.

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/detection_scenes.h"
#include "models/pix2seq.h"
#include "offsite/v1/reward_tuning.pb.h"
#include "server/job_runner.h"

namespace offsite {

class DetectionMleJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

class RewardTuneJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

// The duplicate cost of the "detection" reward in these jobs (RewardTuneSpec's
// default; the MLE job's greedy reward uses it too).
inline constexpr double kDefaultDuplicateWeight = 1.0;

// `scenes` with every zero field replaced by its default (see the proto).
v1::SceneData ResolveSceneData(v1::SceneData scenes);
// InvalidArgument naming `field`.<name> and the value.
absl::Status ValidateSceneData(const v1::SceneData& scenes, const std::string& field);

// Train scenes from the train split (seed 2 * seed) and test scenes from the
// test split (seed 2 * seed + 1) of `scenes.items`, as float (N, 1, S, S) in
// [0, 1] on `device`. Class filtering (items.classes) relabels as ImageData
// does; num_classes is the number of classes listed, else the largest train
// label + 1. `scenes` must be resolved.
struct SceneSet {
  Scenes train;
  Scenes test;
  int64_t num_classes = 0;
};
absl::StatusOr<SceneSet> LoadScenes(const v1::SceneData& scenes, torch::Device device);

// The detector an arch asks for on resolved `scenes` with `num_classes`
// classes. InvalidArgument naming `field`.<name>.
absl::StatusOr<Pix2SeqConfig> ResolvePix2SeqConfig(const v1::Pix2SeqArch& arch,
                                                   const v1::SceneData& scenes, int64_t num_classes,
                                                   const std::string& field);

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_REWARD_TUNING_JOBS_H_
