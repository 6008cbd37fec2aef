#ifndef OFFSITE_SERVER_SERVER_H_
#define OFFSITE_SERVER_SERVER_H_

// offsite-server assembled: stores, scheduler, services, TLS. main.cc only
// parses flags into a ServerConfig and calls Start.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "offsite/v1/config.pb.h"

namespace offsite {

// Fills every unset field of `config` with its documented default.
v1::ServerConfig WithDefaults(v1::ServerConfig config);

class OffsiteServer {
 public:
  // Opens the data directory, requeues interrupted jobs, and starts serving.
  // Creates a CA and certificates in <data_dir>/certs on first start when the
  // TLS files are the defaults and none exist yet.
  static absl::StatusOr<std::unique_ptr<OffsiteServer>> Start(const v1::ServerConfig& config);
  ~OffsiteServer();

  // The port actually bound (useful with port 0).
  int port() const;
  const v1::ServerConfig& config() const;
  // Stops accepting RPCs, interrupts running jobs (they are requeued), and returns.
  void Shutdown();

  struct State;

 private:
  explicit OffsiteServer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_SERVER_H_
