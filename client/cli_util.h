#ifndef OFFSITE_CLIENT_CLI_UTIL_H_
#define OFFSITE_CLIENT_CLI_UTIL_H_

// Output helpers every command group shares (defined in commands.cc).

#include <string>

#include "absl/status/status.h"
#include "client/transfer.h"
#include "google/protobuf/message.h"
#include "offsite/v1/job.grpc.pb.h"

namespace offsite {

// `message` as one line of JSON with the proto field names.
std::string Json(const google::protobuf::Message& message);
// Prints "offsite: MESSAGE [CODE]" to stderr; returns the exit code for it.
int Fail(const absl::Status& status);
// Follows job `id` to its end (a live bar on a terminal, plain lines
// elsewhere, events as JSON lines with `json`), prints the job as it ended and
// returns the exit code for its state.
int Watch(v1::JobService::Stub& stub, const std::string& id, bool json);
// A one-line byte counter on a terminal; null elsewhere.
TransferProgress ByteProgress(const std::string& label);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_CLI_UTIL_H_
