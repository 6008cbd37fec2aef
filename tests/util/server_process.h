#ifndef OFFSITE_TESTS_UTIL_SERVER_PROCESS_H_
#define OFFSITE_TESTS_UTIL_SERVER_PROCESS_H_

// The real binaries on loopback, for end-to-end tests: temporary directories,
// child processes that are always reaped (and die with the test process), the
// `offsite-server` binary on a free port with its own data directory, and mTLS
// channels for the identities it knows.
//
// Example:
//   TempDir tmp;
//   ServerOptions options;
//   options.data_dir = tmp.File("data");
//   absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
//   ASSERT_TRUE(server.ok()) << server.status();
//   auto jobs = v1::JobService::NewStub((*server)->Channel("owner"));
//   ...
//   (*server)->Kill();                          // kill -9
//   ASSERT_TRUE((*server)->Restart().ok());     // same data dir, same port
//
// Every helper here only needs gRPC, the generated protos and common/, so the
// file links into every test binary.

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace offsite::testutil {

// Paths of the binaries under test (compile definitions set by tests/CMakeLists.txt).
std::string ServerBinary();
std::string ClientBinary();
std::string WorkerBinary();

// A fresh directory under $TMPDIR (or /tmp), removed with its contents when
// the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name, e.g. tmp.File("data").
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A TCP port on loopback that was free a moment ago (bound, then released),
// for a server or store the test starts next.
int FreeLoopbackPort();

// A child process started with fork + exec. It gets SIGKILL if the test
// process dies, and the destructor kills and reaps it if it still runs.
class ChildProcess {
 public:
  // Runs argv[0] (a path) with `argv`; stdout and stderr are appended to the
  // given files ("" for /dev/null); stdin is /dev/null.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                             const std::string& stdout_path,
                                                             const std::string& stderr_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // False once the process has exited (and been reaped).
  bool Running();
  void Signal(int signal);
  // Waits up to `timeout` for the process to exit. Returns its exit code, or
  // 128 + N if signal N ended it; DeadlineExceeded if it still runs.
  absl::StatusOr<int> Wait(std::chrono::milliseconds timeout);
  // SIGKILL, then reap. Returns what Wait would.
  int Kill();

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool reaped_ = false;
  int exit_code_ = -1;
};

struct CommandResult {
  // Exit code, 128 + N for signal N; -1 if it could not start or timed out
  // (it is killed then).
  int exit_code = -1;
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs a command to completion, capturing its output.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         std::chrono::milliseconds timeout = std::chrono::seconds(120));

// Runs the `offsite` client binary with `args`, e.g. {"jobs", "list", "--server", addr}.
CommandResult RunClient(const std::vector<std::string>& args,
                        std::chrono::milliseconds timeout = std::chrono::seconds(120));

struct ServerOptions {
  // Required: the server's data directory (created by the server).
  std::string data_dir;
  // 0 picks a free port on the first start; restarts reuse the bound port.
  int port = 0;
  int workers = 1;
  // LibTorch intra-op threads of the server's jobs.
  int threads = 1;
  // 0 keeps the server's default.
  int checkpoint_interval_s = 0;
  // Appended to the command line, e.g. {"--device", "cpu"}.
  std::vector<std::string> extra_flags;
  std::chrono::milliseconds start_timeout = std::chrono::seconds(60);
};

// One `offsite-server` process over the life of a test: it can be killed
// (kill -9), stopped (SIGTERM) and restarted on the same data directory and
// port. Its stdout and stderr go to <data_dir>.server.log; if the current test
// has failed, the destructor prints the end of that log.
class ServerProcess {
 public:
  // Starts the server with --listen 127.0.0.1:PORT --port_file ... and waits
  // until it wrote the port file, i.e. until it serves. On first start the
  // server creates a CA and certificates in certs_dir().
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const ServerOptions& options);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  // "127.0.0.1:PORT".
  std::string address() const;
  const std::string& data_dir() const { return options_.data_dir; }
  std::string certs_dir() const { return options_.data_dir + "/certs"; }
  std::string log_path() const { return options_.data_dir + ".server.log"; }
  bool Running();
  pid_t pid() const;

  // kill -9, and reap.
  void Kill();
  // SIGTERM, then wait for a clean exit; returns the exit code.
  absl::StatusOr<int> Stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Starts again on the same data directory and port, after Kill or Stop.
  absl::Status Restart();

  // The last `max_bytes` of the server's log.
  std::string LogTail(size_t max_bytes = 6000) const;

  // Issues a client certificate signed by the server's CA into certs_dir().
  // `role` is "owner", "data-owner" or "worker", which adds `name` to the
  // access configuration; "" leaves it out (a known CA, an unknown principal).
  absl::Status IssueIdentity(const std::string& name, const std::string& role) const;
  // An mTLS channel with certs_dir()/<identity>.{pem,key} and the server's CA.
  // It reconnects quickly (at most 1 s backoff), for restart tests. `args`
  // adds channel arguments.
  std::shared_ptr<grpc::Channel> Channel(const std::string& identity,
                                         grpc::ChannelArguments args = {}) const;

 private:
  explicit ServerProcess(ServerOptions options) : options_(std::move(options)) {}
  absl::Status Launch();

  ServerOptions options_;
  int port_ = 0;
  int starts_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

// An mTLS channel to `address` from PEM contents. Empty cert and key: TLS
// without a client certificate. Each channel has its own connections (no
// sharing of subchannels between channels with different identities).
std::shared_ptr<grpc::Channel> MakeTlsChannel(const std::string& address, const std::string& ca_pem,
                                              const std::string& cert_pem,
                                              const std::string& key_pem,
                                              grpc::ChannelArguments args = {});

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_SERVER_PROCESS_H_
