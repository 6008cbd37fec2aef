#include "server/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/certs.h"
#include "common/file_util.h"
#include "common/runtime.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/artifact_service.h"
#include "server/artifact_store.h"
#include "server/audit_log.h"
#include "server/auth.h"
#include "server/database.h"
#include "server/event_bus.h"
#include "server/job_manager.h"
#include "server/job_service.h"
#include "server/job_store.h"
#include "server/lease_store.h"
#include "server/offsite_manager.h"
#include "server/offsite_service.h"
#include "server/offsite_store.h"
#include "server/scheduler.h"
#include "server/worker_manager.h"
#include "server/worker_service.h"

namespace offsite {

struct OffsiteServer::State {
  ~State() {
    if (lock_fd >= 0) ::close(lock_fd);
  }
  v1::ServerConfig config;
  int lock_fd = -1;  // flock on <data_dir>/LOCK, released by the kernel even on kill -9
  std::unique_ptr<Database> db;
  std::unique_ptr<JobStore> jobs;
  std::unique_ptr<ArtifactStore> artifacts;
  std::unique_ptr<AuditLog> audit;
  std::unique_ptr<Authenticator> auth;
  RunnerRegistry runners;
  EventBus bus;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<LeaseStore> leases;
  std::unique_ptr<WorkerManager> worker_manager;
  std::unique_ptr<WorkerServiceImpl> worker_service;
  std::unique_ptr<JobManager> manager;
  std::unique_ptr<JobServiceImpl> job_service;
  std::unique_ptr<ArtifactServiceImpl> artifact_service;
  std::unique_ptr<OffsiteStore> offsite_store;
  std::unique_ptr<OffsiteManager> offsite_manager;
  std::unique_ptr<OffsiteServiceImpl> offsite_service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool stopped = false;
};

v1::ServerConfig WithDefaults(v1::ServerConfig config) {
  if (config.listen_address().empty()) config.set_listen_address("127.0.0.1:50051");
  if (config.data_dir().empty()) config.set_data_dir("offsite-data");
  const std::string certs = config.data_dir() + "/certs";
  if (config.tls_cert().empty()) config.set_tls_cert(certs + "/server.pem");
  if (config.tls_key().empty()) config.set_tls_key(certs + "/server.key");
  if (config.tls_ca().empty()) config.set_tls_ca(certs + "/ca.pem");
  if (config.access_file().empty()) config.set_access_file(certs + "/access.textproto");
  if (!config.has_workers() || config.workers() < 0) config.set_workers(1);
  if (config.lease_timeout_s() <= 0) config.set_lease_timeout_s(30);
  if (config.device().empty()) config.set_device("cpu");
  if (config.checkpoint_interval_s() <= 0) config.set_checkpoint_interval_s(30);
  if (config.data_roots().empty()) {
    config.add_data_roots("/usr/share/datasets");
    config.add_data_roots(config.data_dir() + "/datasets");
  }
  return config;
}

namespace {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const v1::ServerConfig& config) {
  if (config.insecure()) {
    std::cerr << "WARNING: --insecure: plaintext RPCs and no client authentication; every "
                 "caller acts as the owner. Use only for local development.\n";
    return grpc::InsecureServerCredentials();
  }
  const std::string default_dir = config.data_dir() + "/certs";
  if (config.tls_ca() == default_dir + "/ca.pem" && !FileExists(default_dir + "/ca.key") &&
      !FileExists(config.tls_ca())) {
    CertBundleOptions options;
    options.dir = default_dir;
    OFFSITE_RETURN_IF_ERROR(InitCertificates(options));
    std::cerr << "created a certificate authority and certificates in " << default_dir
              << " (client: owner.pem / owner.key, CA: ca.pem)\n";
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string cert, ReadFile(config.tls_cert()));
  OFFSITE_ASSIGN_OR_RETURN(std::string key, ReadFile(config.tls_key()));
  OFFSITE_ASSIGN_OR_RETURN(std::string ca, ReadFile(config.tls_ca()));
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({key, cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace

OffsiteServer::OffsiteServer(std::unique_ptr<State> state) : state_(std::move(state)) {}

OffsiteServer::~OffsiteServer() { Shutdown(); }

int OffsiteServer::port() const { return state_->port; }
const v1::ServerConfig& OffsiteServer::config() const { return state_->config; }

absl::StatusOr<std::unique_ptr<OffsiteServer>> OffsiteServer::Start(
    const v1::ServerConfig& raw_config) {
  auto state = std::make_unique<State>();
  state->config = WithDefaults(raw_config);
  const v1::ServerConfig& config = state->config;
  OFFSITE_RETURN_IF_ERROR(CheckDevice(config.device()));
  OFFSITE_RETURN_IF_ERROR(MakeDirs(config.data_dir(), 0700));
  // One server per data directory: two would both requeue and run the same jobs.
  const std::string lock_path = config.data_dir() + "/LOCK";
  state->lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (state->lock_fd < 0 || ::flock(state->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data directory ", config.data_dir(), " is in use by another offsite-server"));
  }
  OFFSITE_ASSIGN_OR_RETURN(auto credentials, MakeCredentials(config));

  OFFSITE_ASSIGN_OR_RETURN(state->db, Database::Open(config.data_dir() + "/offsite.db"));
  OFFSITE_ASSIGN_OR_RETURN(state->jobs, JobStore::Create(state->db.get()));
  OFFSITE_ASSIGN_OR_RETURN(state->artifacts,
                           ArtifactStore::Create(state->db.get(), config.data_dir()));
  OFFSITE_ASSIGN_OR_RETURN(state->audit, AuditLog::Open(config.data_dir() + "/audit.log"));
  state->auth = std::make_unique<Authenticator>(config.access_file(), config.insecure());
  OFFSITE_ASSIGN_OR_RETURN(state->offsite_store, OffsiteStore::Create(state->db.get()));
  state->runners = DefaultRunners(state->offsite_store.get(), state->artifacts.get());

  OFFSITE_ASSIGN_OR_RETURN(state->leases, LeaseStore::Create(state->db.get()));
  WorkerManagerOptions worker_options;
  worker_options.data_dir = config.data_dir();
  worker_options.lease_timeout_ms = int64_t{config.lease_timeout_s()} * 1000;
  worker_options.checkpoint_interval_s = config.checkpoint_interval_s();
  state->worker_manager = std::make_unique<WorkerManager>(
      state->jobs.get(), state->leases.get(), state->artifacts.get(), &state->runners, &state->bus,
      worker_options);
  WorkerManager* worker_manager = state->worker_manager.get();

  SchedulerOptions scheduler_options;
  scheduler_options.data_dir = config.data_dir();
  scheduler_options.workers = config.workers();
  scheduler_options.threads = config.threads();
  scheduler_options.leased_remotely = [worker_manager](const std::string& id) {
    return worker_manager->IsLeased(id);
  };
  scheduler_options.device = config.device();
  scheduler_options.checkpoint_interval_s = config.checkpoint_interval_s();
  state->scheduler = std::make_unique<Scheduler>(state->jobs.get(), state->artifacts.get(),
                                                 &state->runners, &state->bus, scheduler_options);
  state->manager = std::make_unique<JobManager>(
      state->jobs.get(), state->artifacts.get(), state->scheduler.get(), &state->runners,
      &state->bus,
      std::vector<std::string>(config.data_roots().begin(), config.data_roots().end()));
  RpcEnvironment env{state->auth.get(), state->audit.get()};
  state->job_service = std::make_unique<JobServiceImpl>(state->manager.get(), env);
  state->offsite_manager = std::make_unique<OffsiteManager>(
      state->offsite_store.get(), state->artifacts.get(), state->manager.get());
  state->offsite_service = std::make_unique<OffsiteServiceImpl>(state->offsite_manager.get(), env);
  OffsiteManager* offsite_manager = state->offsite_manager.get();
  state->artifact_service = std::make_unique<ArtifactServiceImpl>(
      state->artifacts.get(), env,
      [offsite_manager, worker_manager](const Caller& caller, const v1::Artifact& a) {
        return offsite_manager->GrantedArtifact(caller, a) || worker_manager->MayRead(caller, a);
      });
  state->worker_service = std::make_unique<WorkerServiceImpl>(worker_manager, env);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC shares ports between processes by default; a second server on the
  // same address must fail instead of silently taking half the calls.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Room for 4 MiB artifact chunks plus their framing.
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.AddListeningPort(config.listen_address(), credentials, &state->port);
  builder.RegisterService(state->job_service.get());
  builder.RegisterService(state->artifact_service.get());
  builder.RegisterService(state->offsite_service.get());
  builder.RegisterService(state->worker_service.get());
  state->server = builder.BuildAndStart();
  if (!state->server || state->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", config.listen_address(), " (address in use?)"));
  }
  OFFSITE_RETURN_IF_ERROR(state->scheduler->Start());
  state->worker_manager->Start();
  return std::unique_ptr<OffsiteServer>(new OffsiteServer(std::move(state)));
}

void OffsiteServer::Shutdown() {
  if (!state_ || state_->stopped) return;
  state_->stopped = true;
  // Stop the jobs first so open WatchJob streams see their final events.
  state_->scheduler->Stop();
  state_->worker_manager->Stop();
  state_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace offsite
