#ifndef OFFSITE_SERVER_JOBS_FORWARD_FORWARD_JOB_H_
#define OFFSITE_SERVER_JOBS_FORWARD_FORWARD_JOB_H_

// The forward_forward job kind: trains models/forward_forward on IDX data,
// streams per-epoch loss and test accuracy, and leaves the model as an artifact.

#include "server/job_runner.h"

namespace offsite {

class ForwardForwardJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_FORWARD_FORWARD_JOB_H_
