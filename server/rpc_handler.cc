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
    // Name a refused caller by its verified certificate when it has one.
    std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
    std::vector<grpc::string_ref> names;
    if (auth && auth->IsPeerAuthenticated()) names = auth->FindPropertyValues("x509_common_name");
    principal = names.empty() ? absl::StrCat("peer:", context->peer())
                              : std::string(names.front().data(), names.front().size());
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
