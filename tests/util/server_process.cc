#include "tests/util/server_process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/certs.h"
#include "common/file_util.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"

namespace offsite::testutil {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

int OpenOutput(const std::string& path) {
  if (path.empty()) return ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::string ServerBinary() { return OFFSITE_SERVER_BIN; }
std::string ClientBinary() { return OFFSITE_CLIENT_BIN; }
std::string WorkerBinary() { return OFFSITE_WORKER_BIN; }

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base && *base ? base : "/tmp", "/offsite-test-XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << ": " << std::strerror(errno);
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    const std::vector<std::string>& argv, const std::string& stdout_path,
    const std::string& stderr_path) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls (the test process has gRPC threads).
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out_fd = OpenOutput(stdout_path);
  int err_fd = OpenOutput(stderr_path);
  if (in_fd < 0 || out_fd < 0 || err_fd < 0) {
    std::string error = std::strerror(errno);
    for (int fd : {in_fd, out_fd, err_fd}) {
      if (fd >= 0) ::close(fd);
    }
    return absl::InternalError(absl::StrCat("cannot open the output of ", argv[0], ": ", error));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // The test process already died.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(in_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(in_fd);
  ::close(out_fd);
  ::close(err_fd);
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid));
}

ChildProcess::~ChildProcess() {
  if (!reaped_) Kill();
}

bool ChildProcess::Running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_code_ = DecodeWaitStatus(status);
    return false;
  }
  return r == 0;
}

void ChildProcess::Signal(int signal) {
  if (!reaped_) ::kill(pid_, signal);
}

absl::StatusOr<int> ChildProcess::Wait(milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (Running()) {
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still runs after ", timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  return exit_code_;
}

int ChildProcess::Kill() {
  if (reaped_) return exit_code_;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  exit_code_ = DecodeWaitStatus(status);
  return exit_code_;
}

CommandResult RunCommand(const std::vector<std::string>& argv, milliseconds timeout) {
  CommandResult result;
  TempDir tmp;
  const std::string out = tmp.File("stdout"), err = tmp.File("stderr");
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(argv, out, err);
  if (!child.ok()) {
    result.err = std::string(child.status().message());
    return result;
  }
  absl::StatusOr<int> code = (*child)->Wait(timeout);
  if (code.ok()) {
    result.exit_code = *code;
  } else {
    result.timed_out = true;
    (*child)->Kill();
  }
  result.out = ReadAll(out);
  result.err = ReadAll(err);
  return result;
}

CommandResult RunClient(const std::vector<std::string>& args, milliseconds timeout) {
  std::vector<std::string> argv = {ClientBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, timeout);
}

std::shared_ptr<grpc::Channel> MakeTlsChannel(const std::string& address, const std::string& ca_pem,
                                              const std::string& cert_pem,
                                              const std::string& key_pem,
                                              grpc::ChannelArguments args) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca_pem;
  ssl.pem_cert_chain = cert_pem;
  ssl.pem_private_key = key_pem;
  args.SetMaxReceiveMessageSize(16 << 20);
  // A restarted server is found again within about a second.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const ServerOptions& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("ServerOptions.data_dir unset");
  std::unique_ptr<ServerProcess> server(new ServerProcess(options));
  server->port_ = options.port;
  absl::Status launched = server->Launch();
  if (!launched.ok()) return launched;
  return server;
}

ServerProcess::~ServerProcess() {
  if (process_) process_->Kill();
  if (::testing::Test::HasFailure()) {
    std::cerr << "---- end of " << log_path() << " ----\n" << LogTail() << "\n---- ----\n";
  }
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

bool ServerProcess::Running() { return process_ && process_->Running(); }

pid_t ServerProcess::pid() const { return process_ ? process_->pid() : -1; }

void ServerProcess::Kill() {
  if (process_) process_->Kill();
  process_.reset();
}

absl::StatusOr<int> ServerProcess::Stop(milliseconds timeout) {
  if (!process_) return absl::FailedPreconditionError("the server is not running");
  process_->Signal(SIGTERM);
  absl::StatusOr<int> code = process_->Wait(timeout);
  if (!code.ok()) process_->Kill();
  process_.reset();
  return code;
}

absl::Status ServerProcess::Restart() {
  if (Running()) return absl::FailedPreconditionError("Restart: the server still runs");
  process_.reset();
  return Launch();
}

absl::Status ServerProcess::Launch() {
  const std::string port_file = options_.data_dir + ".port";
  const Clock::time_point deadline = Clock::now() + options_.start_timeout;
  // A restart on a fixed port may briefly find it still held; try again.
  for (int attempt = 0;; ++attempt) {
    std::remove(port_file.c_str());
    ++starts_;
    {
      std::ofstream log(log_path(), std::ios::app);
      log << "==== test harness: start " << starts_ << " ====\n";
    }
    std::vector<std::string> argv = {
        ServerBinary(),
        absl::StrCat("--listen=127.0.0.1:", port_),
        absl::StrCat("--port_file=", port_file),
        absl::StrCat("--data_dir=", options_.data_dir),
        absl::StrCat("--threads=", options_.threads),
        absl::StrCat("--workers=", options_.workers),
    };
    if (options_.checkpoint_interval_s > 0) {
      argv.push_back(absl::StrCat("--checkpoint_interval_s=", options_.checkpoint_interval_s));
    }
    argv.insert(argv.end(), options_.extra_flags.begin(), options_.extra_flags.end());
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Spawn(argv, log_path(), log_path());
    if (!child.ok()) return child.status();
    process_ = std::move(*child);
    while (process_->Running() && !FileExists(port_file) && Clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(20));
    }
    if (FileExists(port_file)) {
      int port = 0;
      std::string text = ReadAll(port_file);
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) || port <= 0) {
        return absl::InternalError(absl::StrCat("port file ", port_file, " holds \"", text, "\""));
      }
      port_ = port;
      return absl::OkStatus();
    }
    const bool exited = !process_->Running();
    if (exited && port_ != 0 && attempt < 25 && Clock::now() < deadline) {
      process_.reset();
      std::this_thread::sleep_for(milliseconds(200));
      continue;
    }
    process_->Kill();
    process_.reset();
    return absl::UnavailableError(
        absl::StrCat("offsite-server ", exited ? "exited before serving" : "did not serve in time",
                     "; end of its log:\n", LogTail(3000)));
  }
}

std::string ServerProcess::LogTail(size_t max_bytes) const {
  std::string log = ReadAll(log_path());
  return log.size() > max_bytes ? log.substr(log.size() - max_bytes) : log;
}

absl::Status ServerProcess::IssueIdentity(const std::string& name, const std::string& role) const {
  return IssueClientCertificate(certs_dir(), name, role);
}

std::shared_ptr<grpc::Channel> ServerProcess::Channel(const std::string& identity,
                                                      grpc::ChannelArguments args) const {
  absl::StatusOr<std::string> ca = ReadFile(certs_dir() + "/ca.pem");
  absl::StatusOr<std::string> cert = ReadFile(certs_dir() + "/" + identity + ".pem");
  absl::StatusOr<std::string> key = ReadFile(certs_dir() + "/" + identity + ".key");
  if (!ca.ok() || !cert.ok() || !key.ok()) {
    ADD_FAILURE() << "credentials of \"" << identity << "\" in " << certs_dir() << ": "
                  << (!ca.ok()     ? ca.status()
                      : !cert.ok() ? cert.status()
                                   : key.status());
  }
  return MakeTlsChannel(address(), ca.value_or(""), cert.value_or(""), key.value_or(""),
                        std::move(args));
}

int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace offsite::testutil
