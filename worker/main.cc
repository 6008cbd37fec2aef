// offsite-worker: flags into WorkerOptions, then lease and run jobs from an
// offsite-server until SIGINT / SIGTERM (a job running then is requeued).

#include <signal.h>

#include <atomic>
#include <iostream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/connection.h"
#include "common/runtime.h"
#include "worker/remote_worker.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "offsite-server address (host:port)");
ABSL_FLAG(std::string, ca, "", "CA certificate PEM that signed the server's certificate");
ABSL_FLAG(std::string, cert, "", "This worker's client certificate PEM (role worker)");
ABSL_FLAG(std::string, key, "", "This worker's private key PEM");
ABSL_FLAG(bool, insecure, false, "Plaintext, against a server started with --insecure only");
ABSL_FLAG(std::string, name, "", "Name shown in the jobs' history [host name]");
ABSL_FLAG(int, threads, 0,
          "LibTorch intra-op threads per job (advertised to the scheduler); 0: every core");
ABSL_FLAG(int64_t, memory_mb, 0, "Memory offered to a job, MiB [physical memory]");
ABSL_FLAG(std::string, device, "cpu", "torch::Device for jobs, e.g. cpu or cuda:0");
ABSL_FLAG(std::string, work_dir, "offsite-worker",
          "Local scratch directory: work directories of running jobs, downloaded inputs");
ABSL_FLAG(std::string, rendezvous_address, "",
          "host:port, reachable by other workers, where this worker hosts a data-parallel "
          "job's TCPStore as rank 0; empty: no data-parallel jobs");
ABSL_FLAG(int, lease_wait_ms, 5000, "Longest wait of one lease request for a job");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Offsite worker: leases jobs from an offsite-server over mTLS and runs them.");
  absl::ParseCommandLine(argc, argv);
  // Block the stop signals in every thread started from here on, so sigwait
  // in the main thread sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  offsite::ConnectionOptions connection;
  connection.server = absl::GetFlag(FLAGS_server);
  connection.ca_file = absl::GetFlag(FLAGS_ca);
  connection.cert_file = absl::GetFlag(FLAGS_cert);
  connection.key_file = absl::GetFlag(FLAGS_key);
  connection.insecure = absl::GetFlag(FLAGS_insecure);
  if (!connection.insecure &&
      (connection.ca_file.empty() || connection.cert_file.empty() || connection.key_file.empty())) {
    std::cerr << "offsite-worker: --ca, --cert and --key are required (or --insecure)\n";
    return 2;
  }
  offsite::WorkerOptions options;
  options.name = absl::GetFlag(FLAGS_name);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.memory_mb = absl::GetFlag(FLAGS_memory_mb);
  options.device = absl::GetFlag(FLAGS_device);
  options.work_root = absl::GetFlag(FLAGS_work_dir);
  options.rendezvous_address = absl::GetFlag(FLAGS_rendezvous_address);
  options.lease_wait_ms = absl::GetFlag(FLAGS_lease_wait_ms);
  if (options.threads < 0 || options.lease_wait_ms < 0 || options.lease_wait_ms > 30000) {
    std::cerr << "offsite-worker: --threads must be >= 0 and --lease_wait_ms in [0, 30000]\n";
    return 2;
  }
  absl::Status device = offsite::CheckDevice(options.device);
  if (!device.ok()) {
    std::cerr << "offsite-worker: " << device.message() << "\n";
    return 2;
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = offsite::Connect(connection);
  if (!channel.ok()) {
    std::cerr << "offsite-worker: " << channel.status().message() << "\n";
    return 2;
  }
  // Advertise the threads actually set, every core for 0.
  options.threads = offsite::ConfigureThreads(options.threads);
  offsite::RunnerRegistry runners = offsite::WorkerRunners();
  offsite::RemoteWorker worker(*channel, &runners, options);
  std::cerr << "offsite-worker: " << offsite::RuntimeSummary() << "\n";
  std::cerr << "offsite-worker: serving " << connection.server << " as "
            << worker.Capabilities().ShortDebugString() << std::endl;

  // The main thread waits for the stop signal: the kernel delivers a
  // process signal to the main thread first when it accepts it, and some
  // library threads started before main() do not block it.
  std::atomic<bool> stop{false};
  absl::Status status;
  std::thread runner([&] { status = worker.Run(stop); });
  int signal = 0;
  sigwait(&stop_signals, &signal);
  std::cerr << "offsite-worker: signal " << signal << ", stopping (a running job is requeued)\n";
  stop = true;
  runner.join();
  if (!status.ok()) {
    std::cerr << "offsite-worker: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
