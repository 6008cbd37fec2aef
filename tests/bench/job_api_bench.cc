// Job API latency over the real gRPC + mTLS stack, against an in-process
// OffsiteServer on loopback:
//   - submit-to-running: SubmitJob, then WatchJob until the RUNNING event
//     arrives (a tiny forward_forward job; each runs to the end before the next);
//   - ListJobs (page_size 50) with --jobs finished jobs in the store: first page,
//     middle and last page (via page tokens), as the owner and as a data owner
//     whose view is filtered to their own jobs; the same queries straight on
//     JobStore (no RPC) to separate the database from the RPC;
//   - SubmitJob alone and GetJob, the latter as the floor of any RPC.
//
//   job_api_bench [--jobs N] [--submit-runs N] [--calls N] [--keep]
//
// The store is filled through JobStore on the server's own database file
// before the server starts, which takes seconds instead of 10,000 job runs.

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/connection.h"
#include "common/certs.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/runtime.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "offsite/v1/job.grpc.pb.h"
#include "server/database.h"
#include "server/job_store.h"
#include "server/server.h"

namespace offsite {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  int jobs = 10000;      // finished jobs put in the store before the server starts
  int submit_runs = 20;  // timed submit-to-running jobs (after one warm-up)
  int calls = 200;       // calls per latency row
  bool keep = false;     // keep the data directory
};

constexpr int kPageSize = 50;
constexpr char kDataOwner[] = "alice";

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Summary {
  int n = 0;
  double median = 0, p90 = 0, min = 0, max = 0;
};

Summary Summarise(std::vector<double> samples) {
  Summary s;
  s.n = static_cast<int>(samples.size());
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  s.median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  s.p90 = samples[static_cast<size_t>(std::ceil(0.9 * n)) - 1];
  s.min = samples.front();
  s.max = samples.back();
  return s;
}

void PrintHeader() {
  std::printf("%-50s %5s %10s %10s %10s %10s\n", "measurement", "n", "median_ms", "p90_ms",
              "min_ms", "max_ms");
}

void PrintRow(const std::string& name, const Summary& s) {
  std::printf("%-50s %5d %10.3f %10.3f %10.3f %10.3f\n", name.c_str(), s.n, s.median, s.p90, s.min,
              s.max);
  std::fflush(stdout);
}

// Milliseconds of each of `calls` runs of `call`, after 5 untimed ones; stops at the first error.
absl::StatusOr<Summary> Time(int calls, const std::function<absl::Status()>& call) {
  for (int i = 0; i < 5; ++i) OFFSITE_RETURN_IF_ERROR(call());
  std::vector<double> ms;
  for (int i = 0; i < calls; ++i) {
    Clock::time_point start = Clock::now();
    OFFSITE_RETURN_IF_ERROR(call());
    ms.push_back(MsSince(start));
  }
  return Summarise(ms);
}

// A forward_forward spec as people submit them: Fashion-MNIST, a few widths and epochs.
v1::JobSpec RealisticSpec(std::mt19937& rng, int i) {
  v1::JobSpec spec;
  spec.set_display_name(absl::StrCat("ff-sweep-", i / 20, "-run-", i % 20));
  v1::ForwardForwardSpec* ff = spec.mutable_forward_forward();
  const int width = std::vector<int>{200, 500, 1000}[rng() % 3];
  for (int l = 0; l < 4; ++l) ff->add_layer_widths(width);
  ff->set_learning_rate(std::vector<double>{1e-3, 3e-4, 3e-3}[rng() % 3]);
  ff->set_epochs(10 + static_cast<int>(rng() % 50));
  ff->set_batch_size(100);
  ff->set_seed(i);
  ff->set_hard_negatives(rng() % 2);
  ff->set_backprop_baseline(rng() % 4 == 0);
  return spec;
}

v1::JobEvent StateEvent(v1::JobState state, const std::string& message, int64_t time_ms) {
  v1::JobEvent event;
  event.set_time_ms(time_ms);
  event.mutable_state()->set_state(state);
  event.mutable_state()->set_message(message);
  return event;
}

// Applies `mutate` to job `id` and appends `event`, as the scheduler does.
absl::Status Record(JobStore& store, const std::string& id, const JobStore::Mutation& mutate,
                    v1::JobEvent event) {
  return store.Update(id, mutate, std::move(event)).status();
}

// `count` SUCCEEDED jobs, created 90 s apart ending now, each with the event
// history a real run leaves: queued, running, a log line, two per-epoch
// metrics, an artifact, succeeded. 70% belong to "owner", 20% to kDataOwner,
// 10% to "bob".
absl::Status FillStore(JobStore& store, int count) {
  std::mt19937 rng(42);
  const int64_t now = NowMs();
  for (int i = 0; i < count; ++i) {
    const int r = static_cast<int>(rng() % 10);
    const std::string owner = r < 7 ? "owner" : r < 9 ? kDataOwner : "bob";
    v1::Job job;
    job.set_id(
        absl::StrCat("job-", absl::Hex(rng(), absl::kZeroPad8), absl::Hex(i, absl::kZeroPad8)));
    job.set_owner(owner);
    job.set_kind("forward_forward");
    *job.mutable_spec() = RealisticSpec(rng, i);
    job.set_state(v1::QUEUED);
    const int64_t created = now - int64_t{90000} * (count - i) + static_cast<int64_t>(rng() % 1000);
    job.set_create_time_ms(created);
    OFFSITE_RETURN_IF_ERROR(
        store.Insert(job, StateEvent(v1::QUEUED, absl::StrCat("submitted by ", owner), created))
            .status());

    const int64_t started = created + 1500;
    auto start = [&](v1::Job& j) {
      j.set_state(v1::RUNNING);
      j.set_attempts(1);
      j.set_start_time_ms(started);
      return absl::OkStatus();
    };
    OFFSITE_RETURN_IF_ERROR(
        Record(store, job.id(), start, StateEvent(v1::RUNNING, "attempt 1", started)));

    v1::JobEvent log;
    log.mutable_log()->set_text("loaded 60000 training and 10000 test images");
    auto unchanged = [](v1::Job&) { return absl::OkStatus(); };
    OFFSITE_RETURN_IF_ERROR(Record(store, job.id(), unchanged, log));

    const int epochs = job.spec().forward_forward().epochs();
    for (int e = 1; e <= 2; ++e) {
      v1::JobEvent metrics;
      auto& values = *metrics.mutable_metrics()->mutable_values();
      metrics.mutable_metrics()->set_step(e * 600);
      values["ff_loss"] = 0.5 / e;
      values["test_accuracy"] = 0.80 + 0.03 * e;
      auto report = [&](v1::Job& j) {
        for (const auto& [name, value] : values) (*j.mutable_metrics())[name] = value;
        j.mutable_progress()->set_phase(absl::StrCat("epoch ", e, "/", epochs));
        j.mutable_progress()->set_step(e * 600);
        j.mutable_progress()->set_total_steps(epochs * 600);
        return absl::OkStatus();
      };
      OFFSITE_RETURN_IF_ERROR(Record(store, job.id(), report, metrics));
    }

    const std::string artifact =
        absl::StrCat("art-", absl::Hex(rng(), absl::kZeroPad8), "00000000");
    v1::JobEvent added;
    added.mutable_artifact()->set_artifact_id(artifact);
    added.mutable_artifact()->set_name("model.pt");
    auto add = [&](v1::Job& j) {
      j.add_artifact_ids(artifact);
      return absl::OkStatus();
    };
    OFFSITE_RETURN_IF_ERROR(Record(store, job.id(), add, added));

    const int64_t ended = started + 60000 + static_cast<int64_t>(rng() % 600000);
    auto succeed = [&](v1::Job& j) {
      j.set_state(v1::SUCCEEDED);
      j.set_end_time_ms(ended);
      j.mutable_progress()->set_step(epochs * 600);
      return absl::OkStatus();
    };
    OFFSITE_RETURN_IF_ERROR(Record(store, job.id(), succeed, StateEvent(v1::SUCCEEDED, "", ended)));
  }
  return absl::OkStatus();
}

// The page tokens of a full walk: tokens[k] fetches page k+1 (tokens[0] is "").
absl::StatusOr<std::vector<std::string>> PageTokens(JobStore& store, const std::string& owner) {
  std::vector<std::string> tokens = {""};
  JobQuery query;
  query.owner = owner;
  query.page_size = kPageSize;
  while (true) {
    query.page_token = tokens.back();
    OFFSITE_ASSIGN_OR_RETURN(JobPage page, store.List(query));
    if (page.next_page_token.empty()) return tokens;
    tokens.push_back(page.next_page_token);
  }
}

struct ListCase {
  std::string name;
  std::string owner;  // store-level filter; the RPC caller is this principal
  std::string token;
};

absl::Status Check(const grpc::Status& status) { return FromGrpcStatus(status); }

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
}

// One tiny forward_forward job (100 train / 100 test images, 10-10, 1 epoch).
v1::JobSpec TinyJob() {
  v1::JobSpec spec;
  spec.set_display_name("bench-tiny");
  v1::ForwardForwardSpec* ff = spec.mutable_forward_forward();
  ff->add_layer_widths(10);
  ff->add_layer_widths(10);
  ff->set_epochs(1);
  ff->set_train_subset(100);
  ff->set_test_subset(100);
  return spec;
}

struct SubmitTiming {
  double submit_ms = 0;          // SubmitJob RPC
  double to_running_ms = 0;      // submit start -> RUNNING event read from WatchJob
  double server_running_ms = 0;  // RUNNING event time - create time (server clock, 1 ms steps)
  double to_finished_ms = 0;     // submit start -> final event read
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
};

// Submits `spec`, watches the job to its end.
absl::StatusOr<SubmitTiming> SubmitAndWatch(v1::JobService::Stub& jobs, const v1::JobSpec& spec) {
  SubmitTiming timing;
  const Clock::time_point start = Clock::now();
  v1::Job job;
  {
    grpc::ClientContext context;
    SetDeadline(context);
    OFFSITE_RETURN_IF_ERROR(Check(jobs.SubmitJob(&context, spec, &job)));
  }
  timing.submit_ms = MsSince(start);
  grpc::ClientContext context;
  SetDeadline(context);
  v1::WatchJobRequest request;
  request.set_id(job.id());
  auto reader = jobs.WatchJob(&context, request);
  v1::JobEvent event;
  while (reader->Read(&event)) {
    if (!event.has_state()) continue;
    if (event.state().state() == v1::RUNNING && timing.to_running_ms == 0) {
      timing.to_running_ms = MsSince(start);
      timing.server_running_ms = static_cast<double>(event.time_ms() - job.create_time_ms());
    }
    if (IsTerminal(event.state().state())) {
      timing.final_state = event.state().state();
      timing.to_finished_ms = MsSince(start);
    }
  }
  OFFSITE_RETURN_IF_ERROR(Check(reader->Finish()));
  if (!IsTerminal(timing.final_state)) {
    return absl::InternalError(absl::StrCat("job ", job.id(), ": watch ended before the job did"));
  }
  return timing;
}

absl::StatusOr<std::unique_ptr<v1::JobService::Stub>> StubFor(const std::string& certs,
                                                              const std::string& identity,
                                                              int port) {
  ConnectionOptions options;
  options.server = absl::StrCat("127.0.0.1:", port);
  options.ca_file = certs + "/ca.pem";
  options.cert_file = absl::StrCat(certs, "/", identity, ".pem");
  options.key_file = absl::StrCat(certs, "/", identity, ".key");
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Connect(options));
  return v1::JobService::NewStub(channel);
}

absl::Status Run(const BenchOptions& options, const std::string& dir) {
  const std::string db_path = dir + "/offsite.db";
  std::vector<ListCase> cases;
  std::string some_job_id;

  // 1. Fill the store through JobStore, and time the List queries without RPC.
  {
    OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(db_path));
    OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, JobStore::Create(db.get()));
    Clock::time_point start = Clock::now();
    OFFSITE_RETURN_IF_ERROR(FillStore(*store, options.jobs));
    std::printf("filled the store with %d SUCCEEDED jobs (7 events each) in %.1f s\n", options.jobs,
                MsSince(start) / 1000);
    if (options.jobs > 0) {
      OFFSITE_ASSIGN_OR_RETURN(std::vector<std::string> all, PageTokens(*store, ""));
      OFFSITE_ASSIGN_OR_RETURN(std::vector<std::string> mine, PageTokens(*store, kDataOwner));
      std::printf("owner sees %zu pages of %d, %s sees %zu pages\n", all.size(), kPageSize,
                  kDataOwner, mine.size());
      cases.push_back({"owner, page 1", "", all.front()});
      cases.push_back({absl::StrCat("owner, page ", all.size() / 2 + 1), "", all[all.size() / 2]});
      cases.push_back({absl::StrCat("owner, page ", all.size(), " (last)"), "", all.back()});
      cases.push_back(
          {absl::StrCat(kDataOwner, " (data owner), page 1"), kDataOwner, mine.front()});
      cases.push_back({absl::StrCat(kDataOwner, " (data owner), page ", mine.size(), " (last)"),
                       kDataOwner, mine.back()});
      JobQuery first;
      first.page_size = 1;
      OFFSITE_ASSIGN_OR_RETURN(JobPage newest, store->List(first));
      some_job_id = newest.jobs.front().id();

      std::printf("\nJobStore::List directly (no RPC, no TLS), page_size %d, %d calls each\n",
                  kPageSize, options.calls);
      PrintHeader();
      for (const ListCase& c : cases) {
        JobQuery query;
        query.owner = c.owner;
        query.page_size = kPageSize;
        query.page_token = c.token;
        OFFSITE_ASSIGN_OR_RETURN(Summary s, Time(options.calls, [&]() -> absl::Status {
                                   OFFSITE_ASSIGN_OR_RETURN(JobPage page, store->List(query));
                                   if (page.jobs.empty()) return absl::InternalError("empty page");
                                   return absl::OkStatus();
                                 }));
        PrintRow(absl::StrCat("store List: ", c.name), s);
      }
      OFFSITE_ASSIGN_OR_RETURN(
          Summary get, Time(options.calls, [&]() { return store->Get(some_job_id).status(); }));
      PrintRow("store Get", get);
    }
  }

  // 2. Start the server on that data directory (real mTLS, certificates
  //    created on first start) and issue the data owner's certificate.
  ConfigureThreads(0);
  v1::ServerConfig config;
  config.set_data_dir(dir);
  config.set_listen_address("127.0.0.1:0");
  Clock::time_point start = Clock::now();
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<OffsiteServer> server, OffsiteServer::Start(config));
  std::printf("\nserver started in %.0f ms (CA and certificates created), port %d\n",
              MsSince(start), server->port());
  const std::string certs = dir + "/certs";
  OFFSITE_RETURN_IF_ERROR(IssueClientCertificate(certs, kDataOwner, "data-owner"));
  OFFSITE_ASSIGN_OR_RETURN(auto owner, StubFor(certs, "owner", server->port()));
  OFFSITE_ASSIGN_OR_RETURN(auto alice, StubFor(certs, kDataOwner, server->port()));

  // 3. Submit-to-running, one job at a time; the first run warms up (TLS
  //    handshake, data loading, LibTorch) and is not counted.
  std::printf(
      "\nsubmit-to-running: %d tiny forward_forward jobs (100/100 images, 10-10, 1 epoch)\n",
      options.submit_runs);
  std::vector<double> submit, to_running, server_running, to_finished;
  for (int i = 0; i <= options.submit_runs; ++i) {
    OFFSITE_ASSIGN_OR_RETURN(SubmitTiming t, SubmitAndWatch(*owner, TinyJob()));
    if (t.final_state != v1::SUCCEEDED) {
      return absl::InternalError(absl::StrCat("tiny job ended ", v1::JobState_Name(t.final_state)));
    }
    if (i == 0) {
      std::printf("warm-up job: submit-to-running %.1f ms, finished after %.0f ms\n",
                  t.to_running_ms, t.to_finished_ms);
      continue;
    }
    submit.push_back(t.submit_ms);
    to_running.push_back(t.to_running_ms);
    server_running.push_back(t.server_running_ms);
    to_finished.push_back(t.to_finished_ms);
  }

  // 4. SubmitJob alone: a job that fails as soon as it runs (its "images" are
  //    not IDX), each waited for untimed so the worker is idle at every submit.
  // Under <data_dir>/datasets, one of the server's default data roots.
  OFFSITE_RETURN_IF_ERROR(MakeDirs(dir + "/datasets", 0700));
  const std::string junk = dir + "/datasets/not-idx";
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(junk, "not an IDX file"));
  v1::JobSpec failing = TinyJob();
  failing.mutable_forward_forward()->set_train_images(junk);
  std::vector<double> submit_alone;
  for (int i = 0; i < options.calls + 5; ++i) {
    OFFSITE_ASSIGN_OR_RETURN(SubmitTiming t, SubmitAndWatch(*owner, failing));
    if (t.final_state != v1::FAILED) return absl::InternalError("junk job did not fail");
    if (i >= 5) submit_alone.push_back(t.submit_ms);
  }

  std::printf("\nover gRPC + mTLS on loopback, %d calls per row (ListJobs page_size %d)\n",
              options.calls, kPageSize);
  PrintHeader();
  PrintRow("submit-to-running (client: submit -> RUNNING event)", Summarise(to_running));
  PrintRow("  server clock: create -> RUNNING event", Summarise(server_running));
  PrintRow("  SubmitJob RPC within it", Summarise(submit));
  PrintRow("  submit -> SUCCEEDED event (tiny job's run)", Summarise(to_finished));
  PrintRow("SubmitJob RPC alone (idle worker)", Summarise(submit_alone));
  if (!some_job_id.empty()) {
    OFFSITE_ASSIGN_OR_RETURN(Summary get, Time(options.calls, [&]() {
                               grpc::ClientContext context;
                               v1::GetJobRequest request;
                               request.set_id(some_job_id);
                               v1::Job job;
                               return Check(owner->GetJob(&context, request, &job));
                             }));
    PrintRow("GetJob (RPC floor)", get);
  }
  for (const ListCase& c : cases) {
    v1::JobService::Stub& stub = c.owner.empty() ? *owner : *alice;
    size_t bytes = 0;
    OFFSITE_ASSIGN_OR_RETURN(
        Summary s, Time(options.calls, [&]() -> absl::Status {
          grpc::ClientContext context;
          v1::ListJobsRequest request;
          request.set_page_size(kPageSize);
          request.set_page_token(c.token);
          v1::ListJobsResponse response;
          OFFSITE_RETURN_IF_ERROR(Check(stub.ListJobs(&context, request, &response)));
          if (response.jobs().empty()) return absl::InternalError("empty page");
          bytes = response.ByteSizeLong();
          return absl::OkStatus();
        }));
    PrintRow(absl::StrCat("ListJobs: ", c.name, " (", bytes / 1024, " KiB)"), s);
  }
  server->Shutdown();
  return absl::OkStatus();
}

int ParseCount(const char* flag, const char* value) {
  char* end = nullptr;
  const long parsed = value != nullptr ? std::strtol(value, &end, 10) : -1;
  if (value == nullptr || *end != '\0' || parsed < 0 || parsed > 10000000) {
    std::fprintf(stderr, "%s needs a non-negative integer\n", flag);
    std::exit(2);
  }
  return static_cast<int>(parsed);
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (std::strcmp(argv[i], "--jobs") == 0) {
      options.jobs = ParseCount(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--submit-runs") == 0) {
      options.submit_runs = std::max(1, ParseCount(argv[i], value));
      ++i;
    } else if (std::strcmp(argv[i], "--calls") == 0) {
      options.calls = std::max(1, ParseCount(argv[i], value));
      ++i;
    } else if (std::strcmp(argv[i], "--keep") == 0) {
      options.keep = true;
    } else {
      std::fprintf(stderr, "usage: %s [--jobs N] [--submit-runs N] [--calls N] [--keep]\n",
                   argv[0]);
      return 2;
    }
  }
  ConfigureThreads(0);
  std::printf("runtime: %s\n", RuntimeSummary().c_str());

  std::string pattern = (std::filesystem::temp_directory_path() / "job_api_bench_XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  std::printf("data dir: %s\n", pattern.c_str());
  absl::Status status = Run(options, pattern);
  if (options.keep) {
    std::printf("kept %s\n", pattern.c_str());
  } else {
    std::error_code ignored;
    std::filesystem::remove_all(pattern, ignored);
  }
  if (!status.ok()) {
    std::fprintf(stderr, "job_api_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
