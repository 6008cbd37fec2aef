#ifndef OFFSITE_COMMON_GRPC_STATUS_H_
#define OFFSITE_COMMON_GRPC_STATUS_H_

// The one place where absl::Status and grpc::Status are converted.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace offsite {

// Same code, message bounded to 4 KiB so a runaway error cannot bloat a reply.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace offsite

#endif  // OFFSITE_COMMON_GRPC_STATUS_H_
