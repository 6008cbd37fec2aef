#include "client/commands.h"

#include <unistd.h>

#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli_args.h"
#include "client/cli_util.h"
#include "client/connection.h"
#include "client/job_view.h"
#include "client/offsite_commands.h"
#include "client/spec_builder.h"
#include "client/transfer.h"
#include "client/watch.h"
#include "common/certs.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"

namespace offsite {
namespace {

const std::vector<std::string> kSwitches = {"json", "watch", "insecure", "help", "follow"};

}  // namespace

std::string Json(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

int Fail(const absl::Status& status) {
  std::cerr << "offsite: " << status.message();
  if (!absl::StartsWith(status.message(), "usage: ")) {
    std::cerr << " [" << absl::StatusCodeToString(status.code()) << "]";
  }
  std::cerr << "\n";
  return ExitCodeFor(status);
}

namespace {

std::vector<std::string> With(std::vector<std::string> flags) {
  const std::vector<std::string>& connection = ConnectionFlags();
  flags.insert(flags.end(), connection.begin(), connection.end());
  return flags;
}

// Treats "-o FILE" as "--output FILE".
std::vector<std::string> ExpandShortFlags(std::vector<std::string> words) {
  for (std::string& word : words) {
    if (word == "-o") word = "--output";
  }
  return words;
}

absl::StatusOr<std::unique_ptr<v1::JobService::Stub>> JobStub(const CliArgs& args) {
  OFFSITE_ASSIGN_OR_RETURN(auto channel, Connect(ConnectionOptionsFrom(args)));
  return v1::JobService::NewStub(channel);
}

absl::StatusOr<std::unique_ptr<v1::ArtifactService::Stub>> ArtifactStub(const CliArgs& args) {
  OFFSITE_ASSIGN_OR_RETURN(auto channel, Connect(ConnectionOptionsFrom(args)));
  return v1::ArtifactService::NewStub(channel);
}

absl::Status RequirePositional(const CliArgs& args, size_t count, const std::string& usage) {
  if (args.positional().size() != count) return UsageError(usage);
  return absl::OkStatus();
}

int ExitForJob(const v1::Job& job) {
  switch (job.state()) {
    case v1::SUCCEEDED:
      return kExitOk;
    case v1::CANCELLED:
      return kExitJobCancelled;
    case v1::FAILED:
      return kExitJobFailed;
    default:
      return kExitOk;
  }
}

}  // namespace

// Follows a job, drawing a live bar on a terminal and plain lines elsewhere.
int Watch(v1::JobService::Stub& stub, const std::string& id, bool json) {
  const bool tty = isatty(STDERR_FILENO);
  v1::Progress progress;
  google::protobuf::Map<std::string, double> metrics;
  bool bar_shown = false;
  auto clear_bar = [&] {
    if (bar_shown) std::cerr << "\r\033[K";
    bar_shown = false;
  };
  WatchOptions options;
  options.on_event = [&](const v1::JobEvent& event) {
    if (json) {
      std::cout << Json(event) << std::endl;
      return;
    }
    if (event.has_progress()) {
      progress = event.progress();
    } else if (event.has_metrics()) {
      for (const auto& [name, value] : event.metrics().values()) metrics[name] = value;
    }
    if (!event.has_progress()) {
      clear_bar();
      std::cerr << EventLine(event) << "\n";
    }
    if (tty && progress.total_steps() > 0 && !event.has_state()) {
      clear_bar();
      std::cerr << ProgressBar(progress, metrics, 30) << std::flush;
      bar_shown = true;
    }
  };
  options.on_reconnect = [&](const absl::Status& status) {
    clear_bar();
    std::cerr << "connection lost (" << status.message() << "); reconnecting...\n";
  };
  absl::StatusOr<v1::Job> job = WatchUntilDone(stub, id, options);
  clear_bar();
  if (!job.ok()) return Fail(job.status());
  if (json) {
    std::cout << Json(*job) << std::endl;
  } else {
    std::cout << JobDetails(*job);
  }
  return ExitForJob(*job);
}

namespace {

int JobsSubmit(const CliArgs& args) {
  absl::Status usage = RequirePositional(
      args, 1, absl::StrCat("offsite jobs submit KIND [--set FIELD=VALUE ...] [--spec FILE] "
                            "[--name TEXT] [--watch] [--json]; kinds: ",
                            absl::StrJoin(JobKinds(), ", ")));
  if (!usage.ok()) return Fail(usage);
  absl::StatusOr<v1::JobSpec> spec =
      BuildJobSpec(args.positional()[0], args.Get("spec"), args.GetAll("set"));
  if (!spec.ok()) return Fail(UsageError(std::string(spec.status().message())));
  spec->set_display_name(args.Get("name"));
  auto stub = JobStub(args);
  if (!stub.ok()) return Fail(stub.status());
  grpc::ClientContext context;
  v1::Job job;
  absl::Status status = FromGrpcStatus((*stub)->SubmitJob(&context, *spec, &job));
  if (!status.ok()) return Fail(status);
  if (args.Has("json")) {
    if (!args.Has("watch")) std::cout << Json(job) << std::endl;
  } else {
    std::cout << "submitted " << job.id() << " (" << job.kind() << ")" << std::endl;
  }
  if (args.Has("watch")) return Watch(**stub, job.id(), args.Has("json"));
  return kExitOk;
}

int JobsList(const CliArgs& args) {
  v1::ListJobsRequest request;
  if (args.Has("state")) {
    v1::JobState state;
    if (!v1::JobState_Parse(absl::AsciiStrToUpper(args.Get("state")), &state)) {
      return Fail(UsageError(absl::StrCat("--state ", args.Get("state"),
                                          ": one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED")));
    }
    request.set_state(state);
  }
  request.set_kind(args.Get("kind"));
  int limit = 50;
  if (args.Has("limit") && (!absl::SimpleAtoi(args.Get("limit"), &limit) || limit < 1)) {
    return Fail(UsageError("--limit takes a positive number"));
  }
  request.set_page_size(std::min(limit, 1000));
  request.set_page_token(args.Get("page-token"));
  auto stub = JobStub(args);
  if (!stub.ok()) return Fail(stub.status());
  grpc::ClientContext context;
  v1::ListJobsResponse response;
  absl::Status status = FromGrpcStatus((*stub)->ListJobs(&context, request, &response));
  if (!status.ok()) return Fail(status);
  if (args.Has("json")) {
    std::cout << Json(response) << std::endl;
    return kExitOk;
  }
  for (const v1::Job& job : response.jobs()) std::cout << JobSummaryLine(job) << "\n";
  if (!response.next_page_token().empty()) {
    std::cout << "more: --page-token " << response.next_page_token() << "\n";
  }
  return kExitOk;
}

int JobsOne(const std::string& verb, const CliArgs& args) {
  absl::Status usage = RequirePositional(args, 1, absl::StrCat("offsite jobs ", verb, " JOB_ID"));
  if (!usage.ok()) return Fail(usage);
  const std::string& id = args.positional()[0];
  auto stub = JobStub(args);
  if (!stub.ok()) return Fail(stub.status());
  if (verb == "watch") return Watch(**stub, id, args.Has("json"));
  grpc::ClientContext context;
  if (verb == "logs") {
    v1::GetJobLogsRequest request;
    request.set_id(id);
    v1::GetJobLogsResponse response;
    absl::Status status = FromGrpcStatus((*stub)->GetJobLogs(&context, request, &response));
    if (!status.ok()) return Fail(status);
    if (args.Has("json")) {
      std::cout << Json(response) << std::endl;
    } else {
      for (const v1::JobEvent& line : response.lines()) std::cout << line.log().text() << "\n";
    }
    return kExitOk;
  }
  v1::Job job;
  absl::Status status;
  if (verb == "get") {
    v1::GetJobRequest request;
    request.set_id(id);
    status = FromGrpcStatus((*stub)->GetJob(&context, request, &job));
  } else {
    v1::CancelJobRequest request;
    request.set_id(id);
    status = FromGrpcStatus((*stub)->CancelJob(&context, request, &job));
  }
  if (!status.ok()) return Fail(status);
  if (args.Has("json")) {
    std::cout << Json(job) << std::endl;
  } else if (verb == "cancel") {
    std::cout << job.id() << ": "
              << (job.state() == v1::CANCELLED ? "cancelled" : "cancel requested") << "\n";
  } else {
    std::cout << JobDetails(job);
  }
  return kExitOk;
}

}  // namespace

// A one-line byte counter on a terminal.
TransferProgress ByteProgress(const std::string& label) {
  if (!isatty(STDERR_FILENO)) return nullptr;
  return [label](int64_t done, int64_t total) {
    std::cerr << "\r" << label << " " << done / (1 << 20) << "/" << total / (1 << 20) << " MiB"
              << (done == total ? "\n" : "") << std::flush;
  };
}

int RunJobsCommand(const std::vector<std::string>& words) {
  if (words.empty()) return Fail(UsageError("offsite jobs submit|list|get|watch|cancel|logs ..."));
  const std::string& verb = words[0];
  absl::StatusOr<CliArgs> sub =
      CliArgs::Parse(std::vector<std::string>(words.begin() + 1, words.end()), kSwitches);
  if (!sub.ok()) return Fail(sub.status());
  absl::Status flags;
  if (verb == "submit") {
    flags = sub->CheckFlags(With({"set", "spec", "name", "watch", "json"}));
    return flags.ok() ? JobsSubmit(*sub) : Fail(flags);
  }
  if (verb == "list") {
    flags = sub->CheckFlags(With({"state", "kind", "limit", "page-token", "json"}));
    return flags.ok() ? JobsList(*sub) : Fail(flags);
  }
  if (verb == "get" || verb == "watch" || verb == "cancel" || verb == "logs") {
    flags = sub->CheckFlags(With({"json"}));
    return flags.ok() ? JobsOne(verb, *sub) : Fail(flags);
  }
  return Fail(UsageError(absl::StrCat("unknown jobs command \"", verb,
                                      "\"; one of submit, list, get, watch, cancel, logs")));
}

int RunArtifactsCommand(const std::vector<std::string>& words) {
  absl::StatusOr<CliArgs> args = CliArgs::Parse(ExpandShortFlags(words), kSwitches);
  if (!args.ok()) return Fail(args.status());
  if (args->positional().size() != 2) {
    return Fail(UsageError("offsite artifacts get ID -o FILE | stat ID | put FILE [--name NAME]"));
  }
  const std::string verb = args->positional()[0];
  const std::string target = args->positional()[1];
  absl::Status flags = args->CheckFlags(With({"output", "name", "json"}));
  if (!flags.ok()) return Fail(flags);
  auto stub = ArtifactStub(*args);
  if (!stub.ok()) return Fail(stub.status());
  absl::StatusOr<v1::Artifact> artifact;
  if (verb == "get") {
    if (!args->Has("output")) return Fail(UsageError("offsite artifacts get ID -o FILE"));
    TransferOptions options;
    options.progress = ByteProgress("downloading");
    artifact = DownloadArtifact(**stub, target, args->Get("output"), options);
  } else if (verb == "put") {
    TransferOptions options;
    options.progress = ByteProgress("uploading");
    std::string name = args->Get("name", target.substr(target.rfind('/') + 1));
    artifact = UploadArtifact(**stub, target, name, options);
  } else if (verb == "stat") {
    grpc::ClientContext context;
    v1::StatArtifactRequest request;
    request.set_id(target);
    v1::Artifact response;
    absl::Status status = FromGrpcStatus((*stub)->StatArtifact(&context, request, &response));
    artifact = status.ok() ? absl::StatusOr<v1::Artifact>(response) : status;
  } else {
    return Fail(UsageError(absl::StrCat("unknown artifacts command \"", verb,
                                        "\"; one of get, put, stat")));
  }
  if (!artifact.ok()) return Fail(artifact.status());
  if (args->Has("json")) {
    std::cout << Json(*artifact) << std::endl;
  } else {
    std::cout << artifact->id() << "  " << artifact->name() << "  " << artifact->size()
              << " bytes  sha256 " << artifact->sha256();
    if (verb == "get") std::cout << "  -> " << args->Get("output") << " (verified)";
    std::cout << "\n";
  }
  return kExitOk;
}

int RunCertsCommand(const std::vector<std::string>& words) {
  absl::StatusOr<CliArgs> args = CliArgs::Parse(words, kSwitches);
  if (!args.ok()) return Fail(args.status());
  const std::string verb = args->positional().empty() ? "" : args->positional()[0];
  if (args->positional().size() != 1 || !args->Has("dir")) {
    return Fail(UsageError(
        "offsite certs init --dir DIR [--server-name NAME ...] [--owner NAME] | "
        "offsite certs issue --dir DIR --name NAME [--role owner|data-owner|worker]"));
  }
  absl::Status status;
  if (verb == "init") {
    status = args->CheckFlags({"dir", "server-name", "owner"});
    if (!status.ok()) return Fail(status);
    CertBundleOptions options;
    options.dir = args->Get("dir");
    options.server_names = args->GetAll("server-name");
    options.owner_name = args->Get("owner", "owner");
    status = InitCertificates(options);
    if (status.ok()) {
      std::cout << "created CA, server and owner certificates in " << options.dir << "\n";
    }
  } else if (verb == "issue") {
    status = args->CheckFlags({"dir", "name", "role"});
    if (!status.ok()) return Fail(status);
    if (!args->Has("name")) return Fail(UsageError("offsite certs issue --dir DIR --name NAME"));
    status = IssueClientCertificate(args->Get("dir"), args->Get("name"), args->Get("role"));
    if (status.ok()) {
      std::cout << "issued " << args->Get("dir") << "/" << args->Get("name") << ".pem and .key";
      if (args->Has("role")) std::cout << " (role " << args->Get("role") << ")";
      std::cout << "\n";
    }
  } else {
    return Fail(UsageError(absl::StrCat("unknown certs command \"", verb, "\"; one of init, issue")));
  }
  return status.ok() ? kExitOk : Fail(status);
}

std::string Usage() {
  return absl::StrCat(
      "offsite: the Offsite client\n\n"
      "  offsite jobs submit KIND [--set FIELD=VALUE ...] [--spec FILE] [--name TEXT] [--watch]\n"
      "  offsite jobs list [--state STATE] [--kind KIND] [--limit N] [--page-token T]\n"
      "  offsite jobs get|watch|cancel|logs JOB_ID\n"
      "  offsite artifacts get ARTIFACT_ID -o FILE | stat ARTIFACT_ID | put FILE [--name NAME]\n"
      "  offsite certs init --dir DIR [--server-name NAME ...] [--owner NAME]\n"
      "  offsite certs issue --dir DIR --name NAME [--role owner|data-owner|worker]\n",
      OffsiteUsage(), "\n"
      "Job kinds: ", absl::StrJoin(JobKinds(), ", "), "\n\n",
      "Connection (flag / environment variable):\n"
      "  --server OFFSITE_SERVER (127.0.0.1:50051)   --certs-dir OFFSITE_CERTS_DIR "
      "(offsite-data/certs)\n"
      "  --identity OFFSITE_IDENTITY (owner)         --ca OFFSITE_CA  --cert OFFSITE_CERT  "
      "--key OFFSITE_KEY\n"
      "  --insecure (plaintext, only against a server started with --insecure)\n"
      "Output: human-readable, or --json. Exit codes: 0 ok, 1 error, 2 usage, 3 job failed,\n"
      "  4 job cancelled, 5 not found, 6 denied, 7 server unavailable, 8 request rejected.\n");
}

}  // namespace offsite
