#ifndef OFFSITE_COMMON_CERTS_H_
#define OFFSITE_COMMON_CERTS_H_

// A small certificate authority for mutual TLS (what `offsite certs` runs):
// one CA, one server certificate and client certificates whose common name is
// the caller's identity on the server. Keys are EC P-256, signatures SHA-256,
// serial numbers 128 random bits, everything PEM.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

inline constexpr int kDefaultCaValidityDays = 3650;
inline constexpr int kDefaultLeafValidityDays = 825;

struct CertBundleOptions {
  // Output directory; created with mode 0700 if missing.
  std::string dir;
  // DNS names or IP addresses (e.g. "train.example.com", "10.0.0.7") added to
  // the server certificate's subjectAltName, on top of localhost, 127.0.0.1 and ::1.
  std::vector<std::string> server_names;
  // Common name of the owner's client certificate; [A-Za-z0-9._-]+.
  std::string owner_name = "owner";
  int ca_validity_days = kDefaultCaValidityDays;
  // For the server and owner certificates.
  int leaf_validity_days = kDefaultLeafValidityDays;
};

// Creates in options.dir: ca.pem, ca.key, server.pem, server.key,
// <owner_name>.pem, <owner_name>.key and access.textproto granting
// <owner_name> the OWNER role (added to the file if it already exists).
// Keys are written 0600, everything else 0644. AlreadyExists if dir/ca.key
// exists, so an existing CA is never replaced. ca.key is written last: a run
// that failed part way can simply be repeated.
absl::Status InitCertificates(const CertBundleOptions& options);

// Issues a client certificate (CN=<name>, O=Offsite, clientAuth) signed by
// dir/ca.pem + dir/ca.key, written to dir/<name>.pem and dir/<name>.key.
//  - InvalidArgument unless name matches [A-Za-z0-9._-]+ and is not "ca" or
//    "server" (whose files it would overwrite), or if role is not one of
//    "owner", "data-owner", "worker".
//  - AlreadyExists if dir/<name>.pem exists.
//  - If role is non-empty and dir/access.textproto exists, adds
//    `principals { name: "<name>" role: ... }` to it; OK if that exact entry is
//    already there, FailedPrecondition (before anything is written) if <name>
//    is listed with another role. Comments in that file are not preserved.
// Example: IssueClientCertificate("certs", "alice", "data-owner").
absl::Status IssueClientCertificate(const std::string& dir, const std::string& name,
                                    const std::string& role,
                                    int validity_days = kDefaultLeafValidityDays);

// The subject common name of the PEM certificate at `pem_path`, e.g. "alice".
// InvalidArgument if the file holds no PEM certificate, NotFound if it has no CN.
absl::StatusOr<std::string> CertificateCommonName(const std::string& pem_path);

}  // namespace offsite

#endif  // OFFSITE_COMMON_CERTS_H_
