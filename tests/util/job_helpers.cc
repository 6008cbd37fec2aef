#include "tests/util/job_helpers.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "grpcpp/client_context.h"

namespace offsite::testutil {

bool FashionMnistInstalled() {
  for (const char* name : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    if (!FileExists(absl::StrCat(kFashionMnistDir, "/", name))) return false;
  }
  return true;
}

v1::JobSpec FashionMnistFfSpec(int train_subset, int test_subset, int epochs,
                               const std::vector<int>& widths) {
  v1::JobSpec spec;
  v1::ForwardForwardSpec* ff = spec.mutable_forward_forward();
  for (int width : widths) ff->add_layer_widths(width);
  ff->set_epochs(epochs);
  ff->set_train_subset(train_subset);
  ff->set_test_subset(test_subset);
  ff->set_seed(1);
  return spec;
}

v1::JobSpec TinyDetectionMleSpec() {
  v1::JobSpec spec;
  v1::DetectionMleSpec* mle = spec.mutable_detection_mle();
  mle->mutable_scenes()->mutable_items()->set_train_subset(500);
  mle->mutable_scenes()->mutable_items()->set_test_subset(200);
  mle->mutable_scenes()->set_train_scenes(32);
  mle->mutable_scenes()->set_test_scenes(8);
  mle->mutable_scenes()->set_canvas_size(32);
  mle->mutable_scenes()->set_max_objects(2);
  mle->mutable_scenes()->set_min_scale(0.4);
  mle->mutable_scenes()->set_max_scale(0.5);
  mle->mutable_arch()->add_encoder_depths(1);
  mle->mutable_arch()->add_encoder_dims(16);
  mle->mutable_arch()->set_decoder_layers(1);
  mle->mutable_arch()->set_decoder_width(32);
  mle->mutable_arch()->set_decoder_heads(2);
  mle->mutable_arch()->set_coordinate_bins(32);
  mle->set_epochs(2);
  mle->set_batch_size(16);
  return spec;
}

v1::JobSpec TinyRewardTuneSpec(const std::string& detector_artifact_id) {
  v1::JobSpec spec;
  v1::RewardTuneSpec* tune = spec.mutable_reward_tune();
  tune->set_pretrained_artifact(detector_artifact_id);
  tune->set_samples_per_input(4);
  tune->set_batch_size(4);
  tune->set_steps(6);
  tune->set_eval_every(3);
  tune->set_learning_rate(1e-4);
  return spec;
}

v1::JobSpec TinyMicSpec() {
  v1::JobSpec spec;
  v1::MicSpec* mic = spec.mutable_mic();
  mic->set_task("segmentation");
  mic->set_method("mic");
  mic->mutable_data()->set_train_subset(200);
  mic->mutable_data()->set_test_subset(60);
  mic->set_canvas_size(32);
  mic->mutable_arch()->add_depths(1);
  mic->mutable_arch()->add_depths(1);
  mic->mutable_arch()->add_dims(8);
  mic->mutable_arch()->add_dims(16);
  mic->set_steps(8);
  mic->set_batch_size(8);
  mic->set_warmup_steps(2);
  mic->set_eval_every(4);
  return spec;
}

v1::JobSpec TinyLmPretrainSpec(const std::string& path, int n_layer, int steps) {
  v1::JobSpec spec;
  v1::LmPretrainSpec* lm = spec.mutable_lm_pretrain();
  lm->mutable_arch()->set_n_layer(n_layer);
  lm->mutable_arch()->set_n_embd(32);
  lm->mutable_arch()->set_n_head(2);
  lm->mutable_arch()->set_n_positions(32);
  lm->mutable_data()->set_path(path);
  lm->set_steps(steps);
  lm->set_batch_size(16);
  lm->set_eval_interval(std::max(1, steps / 2));
  return spec;
}

v1::JobSpec SyntheticFfSpec(const IdxDataSet& data, int epochs) {
  v1::JobSpec spec;
  v1::ForwardForwardSpec* ff = spec.mutable_forward_forward();
  ff->add_layer_widths(64);
  ff->add_layer_widths(64);
  ff->set_epochs(epochs);
  ff->set_batch_size(50);
  ff->set_learning_rate(0.01);
  ff->set_train_images(data.train_images);
  ff->set_train_labels(data.train_labels);
  ff->set_test_images(data.test_images);
  ff->set_test_labels(data.test_labels);
  return spec;
}

bool IsFinished(const v1::Job& job) {
  return job.state() == v1::SUCCEEDED || job.state() == v1::FAILED || job.state() == v1::CANCELLED;
}

absl::StatusOr<v1::Job> SubmitJob(v1::JobService::StubInterface& stub, const v1::JobSpec& spec) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::Job job;
  absl::Status status = FromGrpcStatus(stub.SubmitJob(&context, spec, &job));
  if (!status.ok()) return status;
  return job;
}

absl::StatusOr<v1::Job> GetJob(v1::JobService::StubInterface& stub, const std::string& id) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  absl::Status status = FromGrpcStatus(stub.GetJob(&context, request, &job));
  if (!status.ok()) return status;
  return job;
}

absl::StatusOr<v1::Job> WaitForJob(v1::JobService::StubInterface& stub, const std::string& id,
                                   const std::function<bool(const v1::Job&)>& done,
                                   std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    absl::StatusOr<v1::Job> job = GetJob(stub, id);
    if (!job.ok() || done(*job)) return job;
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "job ", id, " is still ", v1::JobState_Name(job->state()), " after ", timeout.count(),
          " ms; progress: ", job->progress().ShortDebugString(), " error: ", job->error()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

absl::StatusOr<std::vector<v1::JobEvent>> JobEvents(v1::JobService::StubInterface& stub,
                                                    const std::string& id,
                                                    std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::WatchJobRequest request;
  request.set_id(id);
  std::vector<v1::JobEvent> events;
  auto reader = stub.WatchJob(&context, request);
  v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  absl::Status status = FromGrpcStatus(reader->Finish());
  if (!status.ok() && !absl::IsDeadlineExceeded(status)) return status;
  return events;
}

}  // namespace offsite::testutil
