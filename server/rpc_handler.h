#ifndef OFFSITE_SERVER_RPC_HANDLER_H_
#define OFFSITE_SERVER_RPC_HANDLER_H_

// What every RPC handler does around its body: authenticate the caller, run
// the body, write the audit line, convert the status.

#include <functional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "server/audit_log.h"
#include "server/auth.h"

namespace offsite {

struct RpcEnvironment {
  Authenticator* auth;
  AuditLog* audit;
};

// Stores a StatusOr's value into a response, or passes its error on.
template <typename T>
absl::Status AssignResponse(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return result.status();
  *response = std::move(result).value();
  return absl::OkStatus();
}

grpc::Status HandleRpc(const RpcEnvironment& env, grpc::ServerContext* context,
                       absl::string_view method, const std::string& resource,
                       const std::function<absl::Status(const Caller&)>& body);

}  // namespace offsite

#endif  // OFFSITE_SERVER_RPC_HANDLER_H_
