#include "worker/remote_worker.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/transfer.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/worker_manager.h"

namespace offsite {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// LibTorch errors carry a C++ backtrace after the first lines; users need the message.
std::string ExceptionMessage(const std::exception& e) {
  std::string what = e.what();
  size_t cut = what.find("\nException raised from");
  if (cut != std::string::npos) what.resize(cut);
  if (what.size() > 2000) what.resize(2000);
  return what;
}

void SetDeadline(grpc::ClientContext& context, milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

int64_t PhysicalMemoryMb() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size / (1 << 20) : 0;
}

std::string HostName() {
  char name[256] = {};
  return ::gethostname(name, sizeof(name) - 1) == 0 ? std::string(name) : "worker";
}

}  // namespace

RunnerRegistry WorkerRunners() {
  // No registries here: the server resolves what a job reads into the lease
  // (JobInputs) and records what it leaves. plugin_eval reads an uploaded
  // adapter, which stays on the server.
  RunnerRegistry runners = DefaultRunners(nullptr, nullptr);
  runners.erase(v1::JobSpec::kPluginEval);
  return runners;
}

// One leased job: the JobContext its runner sees, plus the heartbeat and
// checkpoint-sync threads that run beside it.
class RemoteWorker::Context : public JobContext {
 public:
  Context(RemoteWorker* worker, v1::LeaseResponse lease, std::string work_dir,
          const std::atomic<bool>& stop)
      : worker_(worker),
        lease_(std::move(lease)),
        work_dir_(std::move(work_dir)),
        cache_dir_(worker->options_.work_root + "/cache"),
        snapshot_dir_(worker->options_.work_root + "/snapshots"),
        stop_(stop),
        last_checkpoint_(Clock::now()),
        last_renewal_(Clock::now()) {
    if (lease_.has_rendezvous()) {
      rendezvous_.rank = lease_.rendezvous().rank();
      rendezvous_.world_size = lease_.rendezvous().world_size();
      rendezvous_.store_address = lease_.rendezvous().store_address();
      rendezvous_.prefix = lease_.rendezvous().prefix();
    }
  }
  ~Context() override { StopBackground(); }

  // --- JobContext ---
  const v1::Job& job() const override { return lease_.job(); }
  bool cancelled() const override { return cancel_ || lost_ || stop_; }

  void ReportProgress(absl::string_view phase, int64_t step, int64_t total_steps) override {
    const Clock::time_point now = Clock::now();
    if (step < total_steps &&
        now - last_progress_ < milliseconds(worker_->options_.progress_interval_ms)) {
      return;
    }
    last_progress_ = now;
    v1::WorkerEvent event;
    event.mutable_progress()->set_phase(std::string(phase));
    event.mutable_progress()->set_step(step);
    event.mutable_progress()->set_total_steps(total_steps);
    Send(std::move(event));
  }

  void ReportMetrics(int64_t step, const std::map<std::string, double>& values) override {
    v1::WorkerEvent event;
    event.mutable_metrics()->set_step(step);
    for (const auto& [name, value] : values)
      (*event.mutable_metrics()->mutable_values())[name] = value;
    Send(std::move(event));
  }

  void Log(absl::string_view line) override {
    v1::WorkerEvent event;
    event.mutable_log()->set_text(std::string(line));
    Send(std::move(event));
  }

  const std::string& work_dir() const override { return work_dir_; }

  bool CheckpointDue() override {
    const Clock::time_point now = Clock::now();
    if (now - last_checkpoint_ < std::chrono::seconds(lease_.checkpoint_interval_s())) return false;
    last_checkpoint_ = now;
    return true;
  }

  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path,
                                           const std::string& name) override {
    if (!primary()) {
      // Rank 0 leaves the job's outputs; the others' copies are dropped.
      std::remove(path.c_str());
      v1::Artifact dropped;
      dropped.set_name(name);
      return dropped;
    }
    OFFSITE_ASSIGN_OR_RETURN(v1::Artifact uploaded,
                             UploadArtifact(*worker_->artifacts_, path, name));
    v1::AddArtifactRequest request;
    request.set_lease_id(lease_.lease_id());
    request.set_artifact_id(uploaded.id());
    request.set_name(name);
    v1::Artifact artifact;
    grpc::ClientContext context;
    SetDeadline(context, milliseconds(30000));
    grpc::Status status = worker_->workers_->AddArtifact(&context, request, &artifact);
    if (!status.ok()) {
      NoteError(status);
      return FromGrpcStatus(status);
    }
    std::remove(path.c_str());
    return artifact;
  }

  absl::StatusOr<std::string> ArtifactPath(const std::string& artifact_id) override {
    if (artifact_id.empty() || artifact_id.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("artifact id \"", artifact_id, "\""));
    }
    const std::string path = cache_dir_ + "/" + artifact_id;
    if (FileExists(path)) return path;
    OFFSITE_RETURN_IF_ERROR(MakeDirs(cache_dir_, 0700));
    OFFSITE_RETURN_IF_ERROR(DownloadArtifact(*worker_->artifacts_, artifact_id, path).status());
    return path;
  }

  const std::string& device() const override { return worker_->options_.device; }

  const DataParallelRendezvous* data_parallel() const override {
    return lease_.has_rendezvous() ? &rendezvous_ : nullptr;
  }

  const v1::JobInputs& inputs() const override { return lease_.inputs(); }

  // --- the worker's side ---
  bool lost() const { return lost_; }
  bool cancel_requested() const { return cancel_; }

  // Downloads the checkpoints of earlier attempts into the work directory.
  absl::Status RestoreCheckpoints() {
    for (const v1::CheckpointFile& file : lease_.checkpoints()) {
      if (!IsCheckpointFileName(file.name())) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint name \"", file.name(), "\""));
      }
      const std::string path = work_dir_ + "/" + file.name();
      OFFSITE_RETURN_IF_ERROR(
          DownloadArtifact(*worker_->artifacts_, file.artifact_id(), path).status());
      Remember(path, file.name());  // the server has it already
    }
    return absl::OkStatus();
  }

  void StartBackground() {
    heartbeat_ = std::thread([this] { HeartbeatLoop(); });
    if (primary()) sync_ = std::thread([this] { SyncLoop(); });
  }

  void StopBackground() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    wake_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
    if (sync_.joinable()) sync_.join();
  }

  // Uploads every checkpoint file that changed since the last upload and
  // hands it to the server for the job's next attempt.
  absl::Status SyncCheckpoints() {
    if (!primary()) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(sync_mu_);
    std::error_code error;
    for (const fs::directory_entry& entry : fs::directory_iterator(work_dir_, error)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || !IsCheckpointFileName(name)) continue;
      const std::string path = entry.path().string();
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) continue;
      const auto version =
          std::make_pair(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                         static_cast<int64_t>(st.st_size));
      if (uploaded_[name] == version) continue;
      // Runners replace checkpoints by rename; a hard link keeps the version
      // being uploaded intact while the runner writes the next.
      OFFSITE_RETURN_IF_ERROR(MakeDirs(snapshot_dir_, 0700));
      const std::string snapshot = absl::StrCat(snapshot_dir_, "/", job().id(), "-", name);
      std::remove(snapshot.c_str());
      if (::link(path.c_str(), snapshot.c_str()) != 0) {
        fs::copy_file(path, snapshot, fs::copy_options::overwrite_existing, error);
        if (error) continue;  // replaced meanwhile; the next round picks it up
      }
      absl::StatusOr<v1::Artifact> uploaded = UploadArtifact(*worker_->artifacts_, snapshot, name);
      std::remove(snapshot.c_str());
      OFFSITE_RETURN_IF_ERROR(uploaded.status());
      v1::SaveCheckpointRequest request;
      request.set_lease_id(lease_.lease_id());
      request.set_name(name);
      request.set_artifact_id(uploaded->id());
      v1::SaveCheckpointResponse response;
      grpc::ClientContext context;
      SetDeadline(context, milliseconds(30000));
      grpc::Status status = worker_->workers_->SaveCheckpoint(&context, request, &response);
      if (!status.ok()) {
        NoteError(status);
        return FromGrpcStatus(status);
      }
      uploaded_[name] = version;
    }
    return absl::OkStatus();
  }

 private:
  bool primary() const { return !lease_.has_rendezvous() || lease_.rendezvous().rank() == 0; }

  void Remember(const std::string& path, const std::string& name) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return;
    uploaded_[name] =
        std::make_pair(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                       static_cast<int64_t>(st.st_size));
  }

  // NotFound: the server took the lease back; the job must stop.
  void NoteError(const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::NOT_FOUND && !lost_) {
      lost_ = true;
      std::cerr << "offsite-worker: job " << job().id() << ": " << status.error_message() << "\n";
    }
  }

  // Reports never fail a job: an error is logged and the event dropped.
  void Send(v1::WorkerEvent event) {
    if (!primary() || lost_) return;
    v1::ReportRequest request;
    request.set_lease_id(lease_.lease_id());
    *request.add_events() = std::move(event);
    v1::ReportResponse response;
    grpc::ClientContext context;
    SetDeadline(context, milliseconds(10000));
    grpc::Status status = worker_->workers_->Report(&context, request, &response);
    if (!status.ok()) {
      NoteError(status);
      if (!lost_) std::cerr << "offsite-worker: report dropped: " << status.error_message() << "\n";
      return;
    }
    if (response.cancel_requested()) cancel_ = true;
  }

  void HeartbeatLoop() {
    const milliseconds timeout(std::max(300, lease_.lease_timeout_ms()));
    const milliseconds interval = timeout / 3;
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_ && !lost_) {
      wake_.wait_for(lock, interval, [&] { return done_; });
      if (done_) return;
      lock.unlock();
      v1::HeartbeatRequest request;
      request.set_lease_id(lease_.lease_id());
      v1::HeartbeatResponse response;
      grpc::ClientContext context;
      SetDeadline(context, interval);
      grpc::Status status = worker_->workers_->Heartbeat(&context, request, &response);
      if (status.ok()) {
        last_renewal_ = Clock::now();
        if (response.cancel_requested()) cancel_ = true;
      } else {
        NoteError(status);
        // Unreachable for a whole lease period: the server has requeued the
        // job by now, so another worker may run it. Stop this copy.
        if (!lost_ && Clock::now() - last_renewal_.load() > timeout) {
          lost_ = true;
          std::cerr << "offsite-worker: job " << job().id()
                    << ": no heartbeat got through for a lease period; stopping it\n";
        }
      }
      lock.lock();
    }
  }

  void SyncLoop() {
    const milliseconds interval(std::max(50, worker_->options_.checkpoint_sync_ms));
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      wake_.wait_for(lock, interval, [&] { return done_; });
      if (done_) return;
      lock.unlock();
      absl::Status synced = SyncCheckpoints();
      if (!synced.ok() && !lost_) {
        std::cerr << "offsite-worker: job " << job().id() << ": checkpoint upload: " << synced
                  << "\n";
      }
      lock.lock();
    }
  }

  RemoteWorker* worker_;
  const v1::LeaseResponse lease_;
  const std::string work_dir_;
  const std::string cache_dir_;
  const std::string snapshot_dir_;
  const std::atomic<bool>& stop_;
  DataParallelRendezvous rendezvous_;

  std::atomic<bool> cancel_{false};
  std::atomic<bool> lost_{false};
  Clock::time_point last_progress_;
  Clock::time_point last_checkpoint_;
  std::atomic<Clock::time_point> last_renewal_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread heartbeat_;
  std::thread sync_;

  std::mutex sync_mu_;
  // Checkpoint file name -> (mtime ns, size) of the version the server holds.
  std::map<std::string, std::pair<int64_t, int64_t>> uploaded_;
};

RemoteWorker::RemoteWorker(std::shared_ptr<grpc::Channel> channel, const RunnerRegistry* runners,
                           WorkerOptions options)
    : workers_(v1::WorkerService::NewStub(channel)),
      artifacts_(v1::ArtifactService::NewStub(channel)),
      runners_(runners),
      options_(std::move(options)) {
  if (options_.name.empty()) options_.name = HostName();
  if (options_.memory_mb <= 0) options_.memory_mb = PhysicalMemoryMb();
}

v1::WorkerCapabilities RemoteWorker::Capabilities() const {
  v1::WorkerCapabilities capabilities;
  capabilities.set_name(options_.name);
  capabilities.set_threads(options_.threads);
  capabilities.set_memory_mb(options_.memory_mb);
  capabilities.set_device(options_.device);
  for (const auto& [kind, runner] : *runners_) capabilities.add_kinds(KindName(kind));
  capabilities.set_rendezvous_address(options_.rendezvous_address);
  return capabilities;
}

absl::Status RemoteWorker::Run(const std::atomic<bool>& stop) {
  int failures = 0;
  while (!stop) {
    absl::StatusOr<bool> ran = RunOnce(stop);
    if (ran.ok()) {
      failures = 0;
      continue;
    }
    std::cerr << "offsite-worker: " << ran.status() << "\n";
    // Back off up to 10 s while the server is away, waking for a stop.
    const Clock::time_point until =
        Clock::now() + milliseconds(std::min(10000, 500 << std::min(failures, 5)));
    ++failures;
    while (!stop && Clock::now() < until) std::this_thread::sleep_for(milliseconds(50));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> RemoteWorker::RunOnce(const std::atomic<bool>& stop) {
  v1::LeaseRequest request;
  *request.mutable_capabilities() = Capabilities();
  request.set_wait_ms(options_.lease_wait_ms);
  v1::LeaseResponse lease;
  {
    grpc::ClientContext context;
    SetDeadline(context, milliseconds(options_.lease_wait_ms + 15000));
    grpc::Status status = workers_->Lease(&context, request, &lease);
    if (!status.ok()) return FromGrpcStatus(status);
  }
  if (lease.lease_id().empty()) return false;
  const v1::Job& job = lease.job();
  std::cerr << "offsite-worker: leased job " << job.id() << " (" << job.kind() << ", attempt "
            << job.attempts()
            << (lease.has_rendezvous() ? absl::StrCat(", rank ", lease.rendezvous().rank(), " of ",
                                                      lease.rendezvous().world_size())
                                       : std::string())
            << ")\n";

  const std::string work_dir = absl::StrCat(options_.work_root, "/jobs/", job.id());
  std::error_code ignored;
  fs::remove_all(work_dir, ignored);  // the server's checkpoints are the truth
  Context context(this, lease, work_dir, stop);
  absl::Status prepared = MakeDirs(work_dir, 0700);
  if (prepared.ok()) prepared = context.RestoreCheckpoints();
  context.StartBackground();

  absl::Status outcome;
  if (!prepared.ok()) {
    outcome = prepared;
  } else if (auto runner = runners_->find(job.spec().kind_case()); runner == runners_->end()) {
    outcome = absl::UnimplementedError(
        absl::StrCat("this worker has no runner for job kind \"", job.kind(), "\""));
  } else {
    try {
      outcome = runner->second->Run(job.spec(), context);
    } catch (const std::exception& e) {
      outcome = absl::InternalError(absl::StrCat("job raised an exception: ", ExceptionMessage(e)));
    } catch (...) {
      outcome = absl::InternalError("job raised an unknown exception");
    }
  }
  context.StopBackground();

  if (context.lost()) {
    std::cerr << "offsite-worker: job " << job.id() << " stopped: its lease was lost\n";
    fs::remove_all(work_dir, ignored);
    return true;
  }
  // Stopping (or unable to set the job up here): back to the queue, with the
  // newest checkpoint saved first. So too a data-parallel attempt that lost a
  // peer (its collectives answer Unavailable): the job resumes once all its
  // ranks are leased again, rather than failing for a killed worker.
  const bool data_parallel = lease.has_rendezvous() && lease.rendezvous().world_size() > 1;
  const bool requeue = !prepared.ok() ||
                       (stop && absl::IsCancelled(outcome) && !context.cancel_requested()) ||
                       (data_parallel && absl::IsUnavailable(outcome));
  if (requeue) {
    absl::Status synced = context.SyncCheckpoints();
    if (!synced.ok()) std::cerr << "offsite-worker: last checkpoint not saved: " << synced << "\n";
  }
  v1::CompleteRequest complete;
  complete.set_lease_id(lease.lease_id());
  complete.set_code(static_cast<int>(outcome.code()));
  complete.set_message(std::string(outcome.message()));
  complete.set_requeue(requeue);
  v1::CompleteResponse response;
  grpc::Status status;
  // A brief server outage must not lose the outcome: retry within the lease period.
  const Clock::time_point give_up =
      Clock::now() + milliseconds(std::max(1000, lease.lease_timeout_ms()));
  do {
    grpc::ClientContext rpc;
    SetDeadline(rpc, milliseconds(10000));
    status = workers_->Complete(&rpc, complete, &response);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(milliseconds(200));
  } while (Clock::now() < give_up);
  fs::remove_all(work_dir, ignored);
  if (!status.ok()) {
    return absl::Status(
        FromGrpcStatus(status).code(),
        absl::StrCat("job ", job.id(), ": cannot report its end: ", status.error_message()));
  }
  std::cerr << "offsite-worker: job " << job.id() << " -> " << v1::JobState_Name(response.state())
            << (outcome.ok() ? "" : absl::StrCat(" (", outcome.ToString(), ")")) << "\n";
  return true;
}

}  // namespace offsite
