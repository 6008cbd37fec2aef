#include "tests/util/job_helpers.h"

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
