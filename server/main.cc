// offsite-server: flags (or a text-proto config file) into a ServerConfig, then serve
// until SIGINT / SIGTERM.

#include <signal.h>

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/proto_util.h"
#include "common/runtime.h"
#include "server/server.h"

ABSL_FLAG(std::string, config, "", "Text-proto offsite.v1.ServerConfig file; flags override it");
ABSL_FLAG(std::string, listen, "",
          "Address to listen on [127.0.0.1:50051]; port 0 picks a free port");
ABSL_FLAG(std::string, data_dir, "", "Directory for the database, artifacts, jobs [offsite-data]");
ABSL_FLAG(std::string, tls_cert, "", "Server certificate PEM [<data_dir>/certs/server.pem]");
ABSL_FLAG(std::string, tls_key, "", "Server key PEM [<data_dir>/certs/server.key]");
ABSL_FLAG(std::string, tls_ca, "", "CA that signs client certificates [<data_dir>/certs/ca.pem]");
ABSL_FLAG(std::string, access_file, "",
          "Access configuration (principal -> role) [<data_dir>/certs/access.textproto]");
ABSL_FLAG(bool, insecure, false, "Plaintext, no authentication: local development only");
ABSL_FLAG(int, workers, -1,
          "Jobs run at the same time by in-process workers; 0: only remote offsite-worker "
          "processes run jobs [1]");
ABSL_FLAG(int, threads, 0, "LibTorch intra-op threads (0: all cores)");
ABSL_FLAG(std::string, device, "", "torch::Device for jobs, e.g. cpu or cuda:0 [cpu]");
ABSL_FLAG(int, checkpoint_interval_s, 0, "Seconds between checkpoints of a running job [30]");
ABSL_FLAG(int, lease_timeout_s, 0,
          "Seconds a remote worker's lease lasts without a heartbeat; then its job is "
          "requeued [30]");
ABSL_FLAG(std::vector<std::string>, data_roots, {},
          "Comma-separated directories whose files data owners' jobs may read "
          "[/usr/share/datasets,<data_dir>/datasets]");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here once serving (for scripts)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Offsite server: job service, artifacts, Offsite-Tuning.");
  absl::ParseCommandLine(argc, argv);

  offsite::v1::ServerConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::Status read = offsite::ReadTextProtoFile(absl::GetFlag(FLAGS_config), &config);
    if (!read.ok()) {
      std::cerr << "offsite-server: " << read.message() << "\n";
      return 2;
    }
  }
  // A flag overrides the config file when given (non-empty / non-zero);
  // WithDefaults fills whatever is still unset.
  auto set_string = [](const std::string& flag, auto setter) {
    if (!flag.empty()) setter(flag);
  };
  set_string(absl::GetFlag(FLAGS_listen), [&](auto v) { config.set_listen_address(v); });
  set_string(absl::GetFlag(FLAGS_data_dir), [&](auto v) { config.set_data_dir(v); });
  set_string(absl::GetFlag(FLAGS_tls_cert), [&](auto v) { config.set_tls_cert(v); });
  set_string(absl::GetFlag(FLAGS_tls_key), [&](auto v) { config.set_tls_key(v); });
  set_string(absl::GetFlag(FLAGS_tls_ca), [&](auto v) { config.set_tls_ca(v); });
  set_string(absl::GetFlag(FLAGS_access_file), [&](auto v) { config.set_access_file(v); });
  set_string(absl::GetFlag(FLAGS_device), [&](auto v) { config.set_device(v); });
  if (absl::GetFlag(FLAGS_insecure)) config.set_insecure(true);
  for (const std::string& root : absl::GetFlag(FLAGS_data_roots)) config.add_data_roots(root);
  if (absl::GetFlag(FLAGS_workers) >= 0) config.set_workers(absl::GetFlag(FLAGS_workers));
  if (absl::GetFlag(FLAGS_lease_timeout_s) > 0) {
    config.set_lease_timeout_s(absl::GetFlag(FLAGS_lease_timeout_s));
  }
  if (absl::GetFlag(FLAGS_threads) > 0) config.set_threads(absl::GetFlag(FLAGS_threads));
  if (absl::GetFlag(FLAGS_checkpoint_interval_s) > 0) {
    config.set_checkpoint_interval_s(absl::GetFlag(FLAGS_checkpoint_interval_s));
  }

  // Block the stop signals before any thread starts, so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  offsite::ConfigureThreads(config.threads());
  auto server = offsite::OffsiteServer::Start(config);
  if (!server.ok()) {
    std::cerr << "offsite-server: " << server.status().message() << "\n";
    return 1;
  }
  const offsite::v1::ServerConfig& effective = (*server)->config();
  std::cerr << "offsite-server: " << offsite::RuntimeSummary() << "\n";
  std::cerr << "offsite-server: data in " << effective.data_dir() << ", " << effective.workers()
            << " in-process worker(s)" << (effective.workers() == 0 ? " (remote workers only)" : "")
            << ", device " << effective.device() << "\n";
  std::cout << "offsite-server listening on port " << (*server)->port()
            << (effective.insecure() ? " (INSECURE)" : " (mTLS)") << std::endl;
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    std::string tmp = absl::GetFlag(FLAGS_port_file) + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    std::rename(tmp.c_str(), absl::GetFlag(FLAGS_port_file).c_str());
  }

  int signal = 0;
  sigwait(&stop_signals, &signal);
  std::cerr << "offsite-server: signal " << signal << ", stopping (running jobs are requeued)\n";
  (*server)->Shutdown();
  return 0;
}
