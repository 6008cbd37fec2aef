#include "client/connection.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace offsite {
namespace {

std::string FlagOrEnv(const CliArgs& args, const std::string& flag, const char* env,
                      const std::string& fallback) {
  if (args.Has(flag)) return args.Get(flag);
  const char* value = std::getenv(env);
  return value && *value ? value : fallback;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& what) {
  absl::StatusOr<std::string> pem = ReadFile(path);
  if (!pem.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read the ", what, " ", path, " (", pem.status().message(), "); set it with ",
        what == "CA certificate" ? "--ca / OFFSITE_CA"
        : what == "client key"   ? "--key / OFFSITE_KEY"
                                 : "--cert / OFFSITE_CERT",
        ", or --certs-dir / OFFSITE_CERTS_DIR"));
  }
  return pem;
}

}  // namespace

const std::vector<std::string>& ConnectionFlags() {
  static const std::vector<std::string> flags = {"server", "ca",       "cert",    "key",
                                                 "certs-dir", "identity", "insecure"};
  return flags;
}

ConnectionOptions ConnectionOptionsFrom(const CliArgs& args) {
  ConnectionOptions options;
  options.server = FlagOrEnv(args, "server", "OFFSITE_SERVER", options.server);
  const std::string dir = FlagOrEnv(args, "certs-dir", "OFFSITE_CERTS_DIR", "offsite-data/certs");
  const std::string identity = FlagOrEnv(args, "identity", "OFFSITE_IDENTITY", "owner");
  options.ca_file = FlagOrEnv(args, "ca", "OFFSITE_CA", dir + "/ca.pem");
  options.cert_file = FlagOrEnv(args, "cert", "OFFSITE_CERT", dir + "/" + identity + ".pem");
  options.key_file = FlagOrEnv(args, "key", "OFFSITE_KEY", dir + "/" + identity + ".key");
  options.insecure = args.Has("insecure");
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const ConnectionOptions& options) {
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(16 << 20);
  // Reconnect quickly after a server restart (gRPC's default backoff grows to
  // minutes), so a watch resumes within seconds of the server's return. The
  // minimum backoff is left alone: gRPC also uses it as the connect timeout.
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  if (options.insecure) {
    return grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(),
                                     channel_args);
  }
  grpc::SslCredentialsOptions ssl;
  OFFSITE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.ca_file, "CA certificate"));
  OFFSITE_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(options.cert_file, "client certificate"));
  OFFSITE_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(options.key_file, "client key"));
  return grpc::CreateCustomChannel(options.server, grpc::SslCredentials(ssl), channel_args);
}

}  // namespace offsite
