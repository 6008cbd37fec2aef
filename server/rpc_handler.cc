#include "server/rpc_handler.h"

#include <exception>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace offsite {

grpc::Status HandleRpc(const RpcEnvironment& env, grpc::ServerContext* context,
                       absl::string_view method, const std::string& resource,
                       const std::function<absl::Status(const Caller&)>& body) {
  absl::StatusOr<Caller> caller = env.auth->Authenticate(*context);
  absl::Status outcome;
  std::string principal;
  if (!caller.ok()) {
    outcome = caller.status();
    principal = absl::StrCat("peer:", context->peer());
  } else {
    principal = caller->principal;
    try {
      outcome = body(*caller);
    } catch (const std::exception& e) {
      // The server stays up whatever a handler meets.
      outcome = absl::InternalError(absl::StrCat("internal error: ", e.what()));
    }
  }
  env.audit->Record(principal, std::string(method), resource, outcome);
  return ToGrpcStatus(outcome);
}

}  // namespace offsite
