#include "server/job_runner.h"

#include "server/jobs/fcmae_job.h"
#include "server/jobs/finetune_job.h"
#include "server/jobs/forward_forward_job.h"
#include "server/jobs/mic_job.h"
#include "server/jobs/offsite_tuning_jobs.h"
#include "server/jobs/reward_tuning_jobs.h"

namespace offsite {

std::string KindName(v1::JobSpec::KindCase kind) {
  const google::protobuf::FieldDescriptor* field =
      v1::JobSpec::descriptor()->FindFieldByNumber(static_cast<int>(kind));
  return field ? field->name() : "";
}

RunnerRegistry DefaultRunners(OffsiteStore* offsite_store, ArtifactStore* artifacts) {
  RunnerRegistry runners;
  runners[v1::JobSpec::kLmPretrain] = std::make_unique<LmPretrainJob>();
  runners[v1::JobSpec::kEmulator] = std::make_unique<EmulatorJob>(offsite_store, artifacts);
  runners[v1::JobSpec::kPluginEval] = std::make_unique<PluginEvalJob>(offsite_store, artifacts);
  runners[v1::JobSpec::kForwardForward] = std::make_unique<ForwardForwardJob>();
  runners[v1::JobSpec::kFcmae] = std::make_unique<FcmaeJob>();
  runners[v1::JobSpec::kFinetune] = std::make_unique<FinetuneJob>();
  runners[v1::JobSpec::kMic] = std::make_unique<MicJob>();
  runners[v1::JobSpec::kDetectionMle] = std::make_unique<DetectionMleJob>();
  runners[v1::JobSpec::kRewardTune] = std::make_unique<RewardTuneJob>();
  return runners;
}

}  // namespace offsite
