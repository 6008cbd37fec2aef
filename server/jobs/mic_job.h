#ifndef OFFSITE_SERVER_JOBS_MIC_JOB_H_
#define OFFSITE_SERVER_JOBS_MIC_JOB_H_

// The mic job kind: unsupervised domain adaptation with MIC (models/mic.h) on
// its self-training baseline, for classification of single items or
// segmentation of scenes. Source: Fashion-MNIST as it is (or the user's
// source_dir); target: the same classes rendered differently
// (common/domain_shift.h; or the user's target folders), its labels read only
// to evaluate. Training items come from the train split (source the first
// half, target the second), target test items from the test split.
//
// Streams per evaluation: source_loss, pseudo_label_loss, mic_loss,
// pseudo_label_confidence, quality_weight, target_accuracy, and for
// segmentation target_miou and target_iou_<k> (k = 0 background, 1 + class).
// Leaves the student ("mic_student.pt", models/mic.h's SaveMicNet format) and
// the final metrics ("mic_metrics.txt", one "name value" a line). Checkpoints
// student, teacher and optimiser; every step's randomness is a function of
// (seed, step), so a resumed job continues exactly.

#include "server/job_runner.h"

namespace offsite {

class MicJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_MIC_JOB_H_
