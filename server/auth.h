#ifndef OFFSITE_SERVER_AUTH_H_
#define OFFSITE_SERVER_AUTH_H_

// Who is calling: the client certificate's subject common name, mapped to a
// role by the access configuration file. The file is re-read when it changes,
// so `offsite certs issue --role ...` takes effect without a restart.

#include <ctime>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "offsite/v1/config.pb.h"

namespace offsite {

struct Caller {
  std::string principal;
  v1::Role role = v1::ROLE_UNSPECIFIED;
  bool is_owner() const { return role == v1::OWNER; }
};

class Authenticator {
 public:
  // insecure: no certificates; every caller is the principal "insecure" with
  // the owner role (local development only).
  Authenticator(std::string access_file, bool insecure)
      : access_file_(std::move(access_file)), insecure_(insecure) {}

  // Unauthenticated without a verified certificate; PermissionDenied for a
  // principal the access configuration does not list.
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContext& context);
  // Same lookup for a known principal name (tests, tools).
  absl::StatusOr<Caller> Lookup(const std::string& principal);

 private:
  absl::Status ReloadIfChanged();
  std::string access_file_;
  bool insecure_;
  std::mutex mu_;
  v1::AccessConfig config_;
  struct timespec loaded_mtime_ = {0, 0};
  bool loaded_ = false;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_AUTH_H_
