#include "server/job_runner.h"

#include "server/jobs/forward_forward_job.h"

namespace offsite {

std::string KindName(v1::JobSpec::KindCase kind) {
  const google::protobuf::FieldDescriptor* field =
      v1::JobSpec::descriptor()->FindFieldByNumber(static_cast<int>(kind));
  return field ? field->name() : "";
}

RunnerRegistry DefaultRunners() {
  RunnerRegistry runners;
  runners[v1::JobSpec::kForwardForward] = std::make_unique<ForwardForwardJob>();
  return runners;
}

}  // namespace offsite
