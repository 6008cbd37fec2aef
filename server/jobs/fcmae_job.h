#ifndef OFFSITE_SERVER_JOBS_FCMAE_JOB_H_
#define OFFSITE_SERVER_JOBS_FCMAE_JOB_H_

// The fcmae job kind: FCMAE pretraining of a ConvNeXt V2 encoder on a data
// set's images. Leaves the encoder and a reconstruction grid (PNG).

#include "server/job_runner.h"

namespace offsite {

class FcmaeJob : public JobRunner {
 public:
  absl::Status Validate(const v1::JobSpec& spec) const override;
  absl::Status Run(const v1::JobSpec& spec, JobContext& ctx) const override;
  bool SupportsDataParallel() const override { return true; }
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_FCMAE_JOB_H_
