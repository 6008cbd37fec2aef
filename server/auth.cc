#include "server/auth.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "common/access_config.h"
#include "common/status_macros.h"

namespace offsite {

absl::Status Authenticator::ReloadIfChanged() {
  struct stat st;
  if (::stat(access_file_.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("access configuration ", access_file_, " cannot be read"));
  }
  if (loaded_ && st.st_mtim.tv_sec == loaded_mtime_.tv_sec &&
      st.st_mtim.tv_nsec == loaded_mtime_.tv_nsec) {
    return absl::OkStatus();
  }
  OFFSITE_ASSIGN_OR_RETURN(v1::AccessConfig config, LoadAccessConfig(access_file_));
  config_ = std::move(config);
  loaded_mtime_ = st.st_mtim;
  loaded_ = true;
  return absl::OkStatus();
}

absl::StatusOr<Caller> Authenticator::Lookup(const std::string& principal) {
  if (insecure_) return Caller{principal, v1::OWNER};
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status reload = ReloadIfChanged();
  // A broken edit keeps the last good configuration rather than locking everyone out.
  if (!reload.ok() && !loaded_) return reload;
  for (const v1::Principal& entry : config_.principals()) {
    if (entry.name() == principal) return Caller{principal, entry.role()};
  }
  return absl::PermissionDeniedError(
      absl::StrCat("principal \"", principal, "\" is not in the server's access configuration"));
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::ServerContext& context) {
  if (insecure_) return Caller{"insecure", v1::OWNER};
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("a verified client certificate is required");
  }
  std::vector<grpc::string_ref> names = auth->FindPropertyValues("x509_common_name");
  if (names.empty()) {
    return absl::UnauthenticatedError("the client certificate has no subject common name");
  }
  return Lookup(std::string(names.front().data(), names.front().size()));
}

}  // namespace offsite
