#include "client/watch.h"

#include <algorithm>
#include <thread>

#include "common/grpc_status.h"

namespace offsite {
namespace {

bool Retriable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         absl::IsAborted(status) || absl::IsCancelled(status) || absl::IsInternal(status);
}

bool IsFinal(const v1::JobEvent& event) {
  if (!event.has_state()) return false;
  v1::JobState s = event.state().state();
  return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED;
}

}  // namespace

absl::StatusOr<v1::Job> WatchUntilDone(v1::JobService::StubInterface& stub,
                                       const std::string& job_id, const WatchOptions& options) {
  int64_t last_seq = 0;
  auto backoff = std::chrono::milliseconds(200);
  auto unreachable_since = std::chrono::steady_clock::now();
  bool done = false;
  while (!done) {
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_id(job_id);
    request.set_after_seq(last_seq);
    std::unique_ptr<grpc::ClientReaderInterface<v1::JobEvent>> reader =
        stub.WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      backoff = std::chrono::milliseconds(200);
      unreachable_since = std::chrono::steady_clock::now();
      if (event.seq() <= last_seq) continue;
      last_seq = event.seq();
      if (options.on_event) options.on_event(event);
      if (IsFinal(event)) done = true;
    }
    absl::Status status = FromGrpcStatus(reader->Finish());
    if (done) break;
    if (status.ok()) {
      // The server ends the stream only after the final event; check the job.
      grpc::ClientContext get_context;
      v1::GetJobRequest get;
      get.set_id(job_id);
      v1::Job job;
      absl::Status got = FromGrpcStatus(stub.GetJob(&get_context, get, &job));
      if (got.ok() && (job.state() == v1::SUCCEEDED || job.state() == v1::FAILED ||
                       job.state() == v1::CANCELLED)) {
        return job;
      }
      continue;
    }
    if (!Retriable(status)) return status;
    if (std::chrono::steady_clock::now() - unreachable_since > options.reconnect_timeout) {
      return status;
    }
    if (options.on_reconnect) options.on_reconnect(status);
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
  grpc::ClientContext get_context;
  v1::GetJobRequest get;
  get.set_id(job_id);
  v1::Job job;
  absl::Status got = FromGrpcStatus(stub.GetJob(&get_context, get, &job));
  if (!got.ok()) return got;
  return job;
}

}  // namespace offsite
