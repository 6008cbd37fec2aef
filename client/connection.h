#ifndef OFFSITE_CLIENT_CONNECTION_H_
#define OFFSITE_CLIENT_CONNECTION_H_

// How the client reaches the server. Each setting comes from a flag, else an
// environment variable, else a default:
//   --server   OFFSITE_SERVER    127.0.0.1:50051
//   --ca       OFFSITE_CA        <certs dir>/ca.pem
//   --cert     OFFSITE_CERT      <certs dir>/<identity>.pem
//   --key      OFFSITE_KEY       <certs dir>/<identity>.key
//   --certs-dir OFFSITE_CERTS_DIR  ./offsite-data/certs (where a local server puts them)
//   --identity OFFSITE_IDENTITY  owner
//   --insecure (plaintext; only against a server started with --insecure)

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/cli_args.h"
#include "grpcpp/channel.h"

namespace offsite {

struct ConnectionOptions {
  std::string server = "127.0.0.1:50051";
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  bool insecure = false;
};

// The flags this reads, for CheckFlags.
const std::vector<std::string>& ConnectionFlags();
ConnectionOptions ConnectionOptionsFrom(const CliArgs& args);
// Reads the PEM files (errors name the file and the flag / variable to fix)
// and creates the channel; it connects lazily.
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const ConnectionOptions& options);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_CONNECTION_H_
