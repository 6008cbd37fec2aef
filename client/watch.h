#ifndef OFFSITE_CLIENT_WATCH_H_
#define OFFSITE_CLIENT_WATCH_H_

// Follows a job's event stream to its end. If the connection drops (a server
// restart, say), it reconnects and resumes after the last sequence number it
// saw, so no event is shown twice or lost.

#include <chrono>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "offsite/v1/job.grpc.pb.h"

namespace offsite {

struct WatchOptions {
  // Called for every event, in order, exactly once.
  std::function<void(const v1::JobEvent&)> on_event;
  // Called when the stream broke and a reconnect is about to be tried.
  std::function<void(const absl::Status&)> on_reconnect;
  // Give up when the server stays unreachable this long.
  std::chrono::seconds reconnect_timeout{600};
};

// Returns the job as it ended.
absl::StatusOr<v1::Job> WatchUntilDone(v1::JobService::StubInterface& stub,
                                       const std::string& job_id, const WatchOptions& options);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_WATCH_H_
