#ifndef OFFSITE_SERVER_JOBS_FINETUNE_JOB_H_
#define OFFSITE_SERVER_JOBS_FINETUNE_JOB_H_

// The finetune job kind: ConvNeXt V2 image classification from scratch or from
// an FCMAE encoder artifact, fully fine-tuned or as a linear probe, on all
// labels or a class-balanced subset. Reports top-1 accuracy on the test split.

#include "server/job_runner.h"

namespace offsite {

class FinetuneJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_FINETUNE_JOB_H_
