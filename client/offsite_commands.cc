#include "client/offsite_commands.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/cli_args.h"
#include "client/cli_util.h"
#include "client/connection.h"
#include "client/import_command.h"
#include "client/job_view.h"
#include "client/local_tuning.h"
#include "client/transfer.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/proto_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"
#include "models/offsite_tuning.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "offsite/v1/offsite_tuning.grpc.pb.h"

namespace offsite {
namespace {

const std::vector<std::string> kSwitches = {"json", "watch",    "insecure",
                                            "lora", "top-only", "recompute-emulator"};

std::vector<std::string> With(std::vector<std::string> flags) {
  const std::vector<std::string>& connection = ConnectionFlags();
  flags.insert(flags.end(), connection.begin(), connection.end());
  return flags;
}

// Parses the words after the verb, "-o DIR" read as "--output DIR".
absl::StatusOr<CliArgs> ParseArgs(const std::vector<std::string>& words) {
  std::vector<std::string> rest(words.begin() + 1, words.end());
  for (std::string& word : rest) {
    if (word == "-o") word = "--output";
  }
  return CliArgs::Parse(rest, kSwitches);
}

std::string FormatTimeMs(int64_t ms) {
  if (ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms), absl::LocalTimeZone());
}

std::string MetricsText(const google::protobuf::Map<std::string, double>& metrics) {
  std::map<std::string, double> sorted(metrics.begin(), metrics.end());
  std::vector<std::string> parts;
  for (const auto& [name, value] : sorted) {
    parts.push_back(absl::StrCat(name, "=", absl::StrFormat("%.4g", value)));
  }
  return absl::StrJoin(parts, " ");
}

// "1.2M", "35.4k", "812".
std::string Count(int64_t n) {
  if (n >= 1000000) return absl::StrFormat("%.1fM", n / 1e6);
  if (n >= 1000) return absl::StrFormat("%.1fk", n / 1e3);
  return absl::StrCat(n);
}

std::string ArchText(const v1::ModelArch& arch) {
  if (arch.has_gpt()) {
    const v1::GptArch& g = arch.gpt();
    return absl::StrCat("gpt (layers ", g.n_layer(), ", width ", g.n_embd(), ", heads ", g.n_head(),
                        ", context ", g.n_positions(), ")");
  }
  if (arch.has_convnext_v2()) {
    const v1::ConvNextV2Arch& c = arch.convnext_v2();
    std::string shape = !c.size().empty() ? c.size()
                                          : absl::StrCat("depths ", absl::StrJoin(c.depths(), "-"),
                                                         ", dims ", absl::StrJoin(c.dims(), "-"));
    return absl::StrCat("convnext_v2 (", shape, ", ", arch.num_classes(), " classes)");
  }
  return "unknown";
}

std::string SplitText(const v1::PackageManifest& manifest) {
  return absl::StrCat(manifest.bottom(), "-", manifest.emulator_blocks_size(), "-", manifest.top());
}

// What a package holds: the split, and its tensors by role.
std::string ManifestSummary(const v1::PackageManifest& manifest) {
  struct RoleCount {
    int tensors = 0;
    int64_t parameters = 0;
  };
  std::map<int, RoleCount> by_role;
  for (const v1::TensorInfo& info : manifest.tensors()) {
    int64_t n = 1;
    for (int64_t d : info.shape()) n *= d;
    RoleCount& count = by_role[info.role()];
    ++count.tensors;
    count.parameters += n;
  }
  std::string text =
      absl::StrCat("model:     ", manifest.model(), "  ", ArchText(manifest.arch()), "\n",
                   "task:      ", manifest.task(), "\n", "split:     ", SplitText(manifest),
                   " (bottom-emulator-top) of ", manifest.num_blocks(), " blocks; adapter blocks ",
                   absl::StrJoin(manifest.adapter_blocks(), ","), ", emulator keeps ",
                   absl::StrJoin(manifest.emulator_blocks(), ","), "\n");
  for (const auto& [role, count] : by_role) {
    absl::StrAppend(
        &text, absl::StrFormat(
                   "%-10s %4d tensors  %s parameters%s\n",
                   v1::TensorInfo::Role_Name(static_cast<v1::TensorInfo::Role>(role)) + ":",
                   count.tensors, Count(count.parameters),
                   role == v1::TensorInfo::ADAPTER ? "  (trained and pushed back)" : "  (frozen)"));
  }
  return text;
}

std::string PackageLine(const v1::Package& package) {
  return absl::StrFormat(
      "%-24s %-16s %-6s %-18s granted: %s  %s", package.id(), package.model(),
      SplitText(package.manifest()), package.manifest().task(),
      package.granted_to().empty() ? "-" : absl::StrJoin(package.granted_to(), ","),
      MetricsText(package.metrics()));
}

std::string PackageDetails(const v1::Package& package) {
  std::string text =
      absl::StrCat("id:        ", package.id(), "\njob:       ", package.job_id(),
                   "\nartifact:  ", package.artifact_id(), "  ", package.size(), " bytes  sha256 ",
                   package.sha256(), "\ncreated:   ", FormatTimeMs(package.create_time_ms()), "\n");
  absl::StrAppend(&text, ManifestSummary(package.manifest()));
  absl::StrAppend(&text, "granted:   ",
                  package.granted_to().empty() ? "-" : absl::StrJoin(package.granted_to(), ", "),
                  "\n");
  if (!package.metrics().empty()) {
    absl::StrAppend(&text, "metrics:   ", MetricsText(package.metrics()), "\n");
  }
  return text;
}

std::string AdapterLine(const v1::Adapter& adapter) {
  return absl::StrFormat("%-24s package %-24s %-12s job %-22s %s", adapter.id(),
                         adapter.package_id(), adapter.owner(), adapter.job_id(),
                         FormatTimeMs(adapter.create_time_ms()));
}

struct Stubs {
  std::unique_ptr<v1::OffsiteService::Stub> offsite;
  std::unique_ptr<v1::ArtifactService::Stub> artifacts;
  std::unique_ptr<v1::JobService::Stub> jobs;
};

absl::StatusOr<Stubs> ConnectStubs(const CliArgs& args) {
  OFFSITE_ASSIGN_OR_RETURN(auto channel, Connect(ConnectionOptionsFrom(args)));
  Stubs stubs;
  stubs.offsite = v1::OffsiteService::NewStub(channel);
  stubs.artifacts = v1::ArtifactService::NewStub(channel);
  stubs.jobs = v1::JobService::NewStub(channel);
  return stubs;
}

// Prints `message` as JSON or as `text`.
int Print(const CliArgs& args, const google::protobuf::Message& message, const std::string& text) {
  if (args.Has("json")) {
    std::cout << Json(message) << std::endl;
  } else {
    std::cout << text << std::flush;
  }
  return kExitOk;
}

// --- offsite models ---------------------------------------------------------

int ModelsAdd(const CliArgs& args) {
  const std::string usage =
      "offsite models add NAME (--artifact ID | --file PATH) [--description TEXT]";
  if (args.positional().size() != 1 || args.Has("artifact") == args.Has("file")) {
    return Fail(UsageError(usage));
  }
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  v1::AddModelRequest request;
  request.set_name(args.positional()[0]);
  request.set_description(args.Get("description"));
  request.set_artifact_id(args.Get("artifact"));
  if (args.Has("file")) {
    const std::string path = args.Get("file");
    TransferOptions options;
    options.progress = ByteProgress("uploading");
    absl::StatusOr<v1::Artifact> artifact =
        UploadArtifact(*stubs->artifacts, path, path.substr(path.rfind('/') + 1), options);
    if (!artifact.ok()) return Fail(artifact.status());
    if (!args.Has("json")) std::cerr << "uploaded " << path << " as " << artifact->id() << "\n";
    request.set_artifact_id(artifact->id());
  }
  grpc::ClientContext context;
  v1::Model model;
  absl::Status status = FromGrpcStatus(stubs->offsite->AddModel(&context, request, &model));
  if (!status.ok()) return Fail(status);
  return Print(args, model,
               absl::StrCat("model ", model.name(), " registered: ", ArchText(model.arch()), ", ",
                            model.num_blocks(), " blocks, ", Count(model.parameters()),
                            " parameters (artifact ", model.artifact_id(), ")\n"));
}

int ModelsList(const CliArgs& args) {
  if (!args.positional().empty()) return Fail(UsageError("offsite models list"));
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  grpc::ClientContext context;
  v1::ListModelsResponse response;
  absl::Status status =
      FromGrpcStatus(stubs->offsite->ListModels(&context, v1::ListModelsRequest(), &response));
  if (!status.ok()) return Fail(status);
  std::string text;
  for (const v1::Model& model : response.models()) {
    absl::StrAppend(
        &text,
        absl::StrFormat("%-20s %-50s %3d blocks %8s params  %s  %s\n", model.name(),
                        ArchText(model.arch()), model.num_blocks(), Count(model.parameters()),
                        FormatTimeMs(model.create_time_ms()), model.description()));
  }
  return Print(args, response, text);
}

// --- offsite packages -------------------------------------------------------

int PackagesCommand(const std::string& verb, const CliArgs& args) {
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  grpc::ClientContext context;
  if (verb == "list") {
    v1::ListPackagesResponse response;
    absl::Status status = FromGrpcStatus(
        stubs->offsite->ListPackages(&context, v1::ListPackagesRequest(), &response));
    if (!status.ok()) return Fail(status);
    std::string text;
    for (const v1::Package& package : response.packages()) {
      absl::StrAppend(&text, PackageLine(package), "\n");
    }
    return Print(args, response, text);
  }
  v1::Package package;
  absl::Status status;
  if (verb == "get") {
    v1::GetPackageRequest request;
    request.set_id(args.positional()[0]);
    status = FromGrpcStatus(stubs->offsite->GetPackage(&context, request, &package));
  } else {
    v1::GrantRequest request;
    request.set_package_id(args.positional()[0]);
    request.set_principal(args.positional()[1]);
    status =
        FromGrpcStatus(verb == "grant" ? stubs->offsite->GrantPackage(&context, request, &package)
                                       : stubs->offsite->RevokeGrant(&context, request, &package));
  }
  if (!status.ok()) return Fail(status);
  if (verb == "get") return Print(args, package, PackageDetails(package));
  return Print(
      args, package,
      absl::StrCat(
          package.id(), ": granted to ",
          package.granted_to().empty() ? "nobody" : absl::StrJoin(package.granted_to(), ", "),
          "\n"));
}

// --- offsite offsite pull ---------------------------------------------------

absl::StatusOr<v1::PackageManifest> Pull(const CliArgs& args, Stubs& stubs, v1::Package* package) {
  const std::string dir = args.Get("output");
  {
    grpc::ClientContext context;
    v1::GetPackageRequest request;
    request.set_id(args.positional()[0]);
    OFFSITE_RETURN_IF_ERROR(FromGrpcStatus(stubs.offsite->GetPackage(&context, request, package)));
  }
  if (package->artifact_id().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("package ", package->id(), " has no package file yet"));
  }
  OFFSITE_RETURN_IF_ERROR(MakeDirs(dir));
  const std::string path = JoinPath(dir, kPackageFileName);
  TransferOptions options;
  options.progress = ByteProgress("downloading");
  OFFSITE_ASSIGN_OR_RETURN(
      v1::Artifact artifact,
      DownloadArtifact(*stubs.artifacts, package->artifact_id(), path, options));
  if (!package->sha256().empty() && package->sha256() != artifact.sha256()) {
    return absl::DataLossError(absl::StrCat("package ", package->id(), " records sha256 ",
                                            package->sha256(), " but its file ", artifact.id(),
                                            " has ", artifact.sha256()));
  }
  // Every tensor against the manifest stored in the file.
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(path));
  absl::StatusOr<OpenedPackage> opened = OpenPackage(file);
  if (!opened.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", opened.status().message()));
  }
  // The file must be the package the server lists: same id, and the same
  // tensors (by SHA-256) wherever the listing carries them.
  if (opened->manifest.package_id() != package->id()) {
    return absl::DataLossError(absl::StrCat(
        path, ": the file is package '", opened->manifest.package_id(), "', not ", package->id()));
  }
  std::map<std::string, std::string> file_sums;
  for (const v1::TensorInfo& info : opened->manifest.tensors()) {
    file_sums[info.name()] = info.sha256();
  }
  for (const v1::TensorInfo& info : package->manifest().tensors()) {
    auto it = file_sums.find(info.name());
    if (it == file_sums.end() || it->second != info.sha256()) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", info.name(),
                                              "' differs from the server's manifest of package ",
                                              package->id()));
    }
  }
  const std::string text = TextProto(opened->manifest);
  OFFSITE_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(dir, kManifestFileName),
                      absl::StrCat("# Package ", package->id(), " of model ", package->model(),
                                   " (written by `offsite offsite pull`; verified against ",
                                   kPackageFileName, ").\n", text)));
  return opened->manifest;
}

int OffsitePull(const CliArgs& args) {
  if (args.positional().size() != 1 || !args.Has("output")) {
    return Fail(UsageError("offsite offsite pull PACKAGE -o DIR"));
  }
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  v1::Package package;
  absl::StatusOr<v1::PackageManifest> manifest = Pull(args, *stubs, &package);
  const std::string dir = args.Get("output");
  if (absl::IsDataLoss(manifest.status())) {
    // A file that failed verification must not be tuned by mistake.
    std::remove(JoinPath(dir, kPackageFileName).c_str());
  }
  if (!manifest.ok()) return Fail(manifest.status());
  std::string text =
      absl::StrCat("pulled package ", package.id(), " into ", dir, " (", package.size(),
                   " bytes, every tensor's SHA-256 verified)\n", ManifestSummary(*manifest));
  if (!package.metrics().empty()) {
    absl::StrAppend(&text, "recorded:  ", MetricsText(package.metrics()), "\n");
  }
  absl::StrAppend(&text, "next:      offsite offsite tune ", dir, " --data PATH\n");
  return Print(args, package, text);
}

// --- offsite offsite tune ---------------------------------------------------

template <typename T>
absl::Status IntFlag(const CliArgs& args, const std::string& flag, T* out) {
  if (!args.Has(flag)) return absl::OkStatus();
  if (!absl::SimpleAtoi(args.Get(flag), out)) {
    return UsageError(absl::StrCat("--", flag, " takes an integer, not \"", args.Get(flag), "\""));
  }
  return absl::OkStatus();
}

absl::Status DoubleFlag(const CliArgs& args, const std::string& flag, double* out) {
  if (!args.Has(flag)) return absl::OkStatus();
  if (!absl::SimpleAtod(args.Get(flag), out) || !std::isfinite(*out)) {
    return UsageError(absl::StrCat("--", flag, " takes a number, not \"", args.Get(flag), "\""));
  }
  return absl::OkStatus();
}

// DIR/NAME or DIR/NAME.gz, whichever exists.
absl::StatusOr<std::string> IdxFile(const std::string& dir, const std::string& name,
                                    const std::string& flag) {
  for (const std::string& candidate : {JoinPath(dir, name), JoinPath(dir, name + ".gz")}) {
    if (FileExists(candidate)) return candidate;
  }
  return absl::NotFoundError(
      absl::StrCat("no ", name, "[.gz] in ", dir, " (or give --", flag, " FILE)"));
}

// Whether `dir` holds image data as PNG class folders rather than IDX files:
// no IDX training images, and at least one sub-directory.
bool IsPngFolderData(const std::string& dir) {
  if (IdxFile(dir, "train-images-idx3-ubyte", "train-images").ok()) return false;
  std::error_code error;
  for (std::filesystem::directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    if (it->is_directory(error)) return true;
  }
  return false;
}

// The package's task: from DIR/manifest.textproto, else from the package file.
absl::StatusOr<std::string> PackageTask(const std::string& dir) {
  v1::PackageManifest manifest;
  const std::string manifest_path = JoinPath(dir, kManifestFileName);
  if (FileExists(manifest_path)) {
    OFFSITE_RETURN_IF_ERROR(ReadTextProtoFile(manifest_path, &manifest));
    return manifest.task();
  }
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(JoinPath(dir, kPackageFileName)));
  auto it = file.metadata.find(kMetaManifest);
  if (it == file.metadata.end() ||
      !google::protobuf::TextFormat::ParseFromString(it->second, &manifest)) {
    return absl::InvalidArgumentError(
        absl::StrCat(JoinPath(dir, kPackageFileName), ": not an Offsite package file"));
  }
  return manifest.task();
}

absl::StatusOr<v1::TaskData> TaskDataFromFlags(const CliArgs& args, const std::string& task,
                                               uint64_t seed) {
  v1::TaskData data;
  const std::string path = args.Get("data");
  const std::vector<std::string> image_flags = {"classes",      "test-data",   "train-images",
                                                "train-labels", "test-images", "test-labels",
                                                "train-subset", "test-subset", "image-side"};
  if (task == "language_modeling") {
    for (const std::string& flag : image_flags) {
      if (args.Has(flag)) {
        return UsageError(absl::StrCat("--", flag, " is for image packages; this package is ",
                                       "a language model (validation holds out documents of "
                                       "--data: --validation-fraction)"));
      }
    }
    if (path.empty()) return UsageError("--data FILE_OR_DIR (text) is required");
    v1::TextData* text = data.mutable_text();
    text->set_path(path);
    text->set_seed(seed);
    double fraction = 0;
    OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "validation-fraction", &fraction));
    text->set_validation_fraction(fraction);
    return data;
  }
  if (args.Has("validation-fraction")) {
    return UsageError("--validation-fraction is for text; images validate on the test files");
  }
  v1::ImageData* images = data.mutable_images();
  const std::string test_dir = args.Get("test-data", path);
  struct File {
    const char* flag;
    const char* name;
    bool test;
    std::string* (v1::ImageData::*field)();
  };
  const std::vector<File> files = {
      {"train-images", "train-images-idx3-ubyte", false, &v1::ImageData::mutable_train_images},
      {"train-labels", "train-labels-idx1-ubyte", false, &v1::ImageData::mutable_train_labels},
      {"test-images", "t10k-images-idx3-ubyte", true, &v1::ImageData::mutable_test_images},
      {"test-labels", "t10k-labels-idx1-ubyte", true, &v1::ImageData::mutable_test_labels}};
  for (const std::string& dir : {path, test_dir}) {
    if (!dir.empty() && !std::filesystem::is_directory(dir)) {
      return UsageError(absl::StrCat(
          "\"", dir,
          "\" is not a directory; this package classifies images: give --data DIR "
          "holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
          "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (or the files with "
          "--train-images, --train-labels, --test-images, --test-labels), or PNG class "
          "folders DIR/train/CLASS/*.png and DIR/test/CLASS/*.png"));
    }
  }
  int32_t side = 0;
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "image-side", &side));
  images->set_image_side(side);
  const bool idx_flags = std::any_of(files.begin(), files.end(),
                                     [&](const File& file) { return args.Has(file.flag); });
  if (!idx_flags && !path.empty() && IsPngFolderData(path)) {
    // PNG class folders: DIR/train and DIR/test, or --data TRAIN --test-data TEST.
    const std::string train = JoinPath(path, "train"), test = JoinPath(path, "test");
    if (args.Has("test-data")) {
      images->set_train_folder(path);
      images->set_test_folder(test_dir);
    } else if (std::filesystem::is_directory(train) && std::filesystem::is_directory(test)) {
      images->set_train_folder(train);
      images->set_test_folder(test);
    } else {
      return UsageError(absl::StrCat(
          "\"", path,
          "\" holds sub-folders but no IDX files: PNG class folders need a test split, "
          "DIR/train/CLASS/*.png and DIR/test/CLASS/*.png, or --data TRAIN_DIR --test-data "
          "TEST_DIR"));
    }
  } else {
    for (const File& file : files) {
      if (args.Has(file.flag)) {
        *(images->*file.field)() = args.Get(file.flag);
        continue;
      }
      const std::string dir = file.test ? test_dir : path;
      if (dir.empty()) {
        return UsageError(
            absl::StrCat("--data DIR (IDX files) or --", file.flag, " FILE is required"));
      }
      OFFSITE_ASSIGN_OR_RETURN(*(images->*file.field)(), IdxFile(dir, file.name, file.flag));
    }
  }
  if (args.Has("classes")) {
    for (absl::string_view word : absl::StrSplit(args.Get("classes"), ',', absl::SkipEmpty())) {
      int value = 0;
      if (!absl::SimpleAtoi(word, &value)) {
        return UsageError(
            absl::StrCat("--classes takes a comma list of class numbers, e.g. "
                         "5,6,7,8,9, not \"",
                         args.Get("classes"), "\""));
      }
      images->add_classes(value);
    }
  }
  int32_t subset = 0;
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "train-subset", &subset));
  images->set_train_subset(subset);
  subset = 0;
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "test-subset", &subset));
  images->set_test_subset(subset);
  return data;
}

absl::StatusOr<LocalTuneOptions> TuneOptionsFromFlags(const CliArgs& args) {
  LocalTuneOptions options;
  options.package_dir = args.positional()[0];
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "steps", &options.steps));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "epochs", &options.epochs));
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "batch-size", &options.batch_size));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "lr", &options.learning_rate));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "weight-decay", &options.weight_decay));
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "warmup", &options.warmup_steps));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "clip", &options.clip_norm));
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "eval-interval", &options.eval_interval));
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "seed", &options.seed));
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "threads", &options.threads));
  options.device = args.Get("device", "cpu");
  options.tune.lora = args.Has("lora");
  options.tune.top_only = args.Has("top-only");
  options.tune.recompute_emulator = args.Has("recompute-emulator");
  OFFSITE_RETURN_IF_ERROR(IntFlag(args, "lora-rank", &options.tune.lora_rank));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "lora-alpha", &options.tune.lora_alpha));
  OFFSITE_RETURN_IF_ERROR(DoubleFlag(args, "lora-dropout", &options.tune.lora_dropout));
  if (!options.tune.lora &&
      (args.Has("lora-rank") || args.Has("lora-alpha") || args.Has("lora-dropout"))) {
    return UsageError("--lora-rank, --lora-alpha and --lora-dropout need --lora");
  }
  if (options.steps < 0 || options.batch_size < 1 || options.tune.lora_rank < 1 ||
      options.epochs <= 0) {
    return UsageError("--steps, --epochs, --batch-size and --lora-rank must be positive");
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string task, PackageTask(options.package_dir));
  OFFSITE_ASSIGN_OR_RETURN(options.data, TaskDataFromFlags(args, task, options.seed));
  return options;
}

std::string Figure(const Evaluation& eval, bool language) {
  return language ? absl::StrFormat("perplexity %.4g", eval.perplexity)
                  : absl::StrFormat("accuracy %.2f%%", 100 * eval.accuracy);
}

int OffsiteTune(const CliArgs& args) {
  if (args.positional().size() != 1) {
    return Fail(
        UsageError("offsite offsite tune DIR --data PATH [--classes 5,6,7,8,9] [--test-data DIR] "
                   "[--steps N | --epochs E] [--batch-size B] [--lr X] [--lora [--lora-rank R]] "
                   "[--top-only] [--recompute-emulator] [--seed S] [--threads T] [--device cpu]"));
  }
  absl::StatusOr<LocalTuneOptions> options = TuneOptionsFromFlags(args);
  if (!options.ok()) return Fail(options.status());
  const bool json = args.Has("json");
  const bool tty = isatty(STDERR_FILENO);
  bool language = false;
  int64_t total_steps = 0;
  google::protobuf::Map<std::string, double> shown;
  bool bar_shown = false;
  auto clear_bar = [&] {
    if (bar_shown) std::cerr << "\r\033[K";
    bar_shown = false;
  };
  options->on_start = [&](const LocalTuneReport& plan) {
    language = plan.task == "language_modeling";
    total_steps = plan.steps;
    if (json) return;
    std::cerr << "package " << plan.package_id << " (" << plan.model << ", split " << plan.split
              << ", " << plan.task << "), verified\n"
              << "data: " << plan.train_size << (language ? " train tokens, " : " train images, ")
              << plan.validation_size << (language ? " validation tokens" : " test images")
              << (language ? " (tokenizer: " + plan.tokenizer + ")\n" : "\n") << "tuning "
              << Count(plan.trainable_parameters) << " parameters"
              << (plan.tune.lora ? " (LoRA)" : "")
              << (plan.tune.top_only ? " (top adapter only)" : "")
              << (plan.tune.recompute_emulator ? " (emulator recomputed)" : "") << ": "
              << plan.steps << " steps, batch " << plan.batch_size << ", lr " << plan.learning_rate
              << "\n"
              << "emulator zero-shot: " << Figure(plan.emulator_zero_shot, language) << " (loss "
              << absl::StrFormat("%.4f", plan.emulator_zero_shot.loss) << ")\n";
  };
  StepCallback on_step = [&](int64_t step, const std::map<std::string, double>& metrics) {
    if (json) return true;
    for (const auto& [name, value] : metrics) {
      if (name != "lr") shown[name] = value;
    }
    const bool evaluated = metrics.count("valid_loss") > 0;
    if (tty) {
      v1::Progress progress;
      progress.set_phase(absl::StrCat("step ", step, "/", total_steps));
      progress.set_step(step);
      progress.set_total_steps(total_steps);
      clear_bar();
      std::cerr << ProgressBar(progress, shown, 30) << std::flush;
      bar_shown = true;
    } else if (evaluated) {
      std::cerr << "step " << step << "/" << total_steps << ": " << MetricsText(shown) << "\n";
    }
    return true;
  };
  absl::StatusOr<LocalTuneReport> report = TuneLocally(*options, on_step);
  clear_bar();
  if (!report.ok()) return Fail(report.status());
  if (json) {
    std::cout << LocalTuneReportJson(*report) << std::endl;
    return kExitOk;
  }
  std::cout << "emulator zero-shot: " << Figure(report->emulator_zero_shot, language)
            << "  ->  offsite-tuned emulator: " << Figure(report->ot_emulator, language)
            << " (best step " << report->best_step << " of " << report->steps << ", "
            << absl::StrFormat("%.1f", report->seconds) << " s)\n"
            << "adapter: " << report->adapter_path << "\nreport:  " << report->report_path
            << "\nnext:    offsite offsite push " << options->package_dir << " --watch\n";
  return kExitOk;
}

// --- offsite offsite push / adapters ----------------------------------------

int OffsitePush(const CliArgs& args) {
  if (args.positional().size() != 1) return Fail(UsageError("offsite offsite push DIR [--watch]"));
  const std::string dir = args.positional()[0];
  // Checked here first, so a wrong adapter fails before any upload.
  v1::PackageManifest manifest;
  absl::Status status = ReadTextProtoFile(JoinPath(dir, kManifestFileName), &manifest);
  if (!status.ok()) {
    return Fail(absl::Status(status.code(), absl::StrCat(status.message(),
                                                         " (pull the package first: offsite "
                                                         "offsite pull PACKAGE -o DIR)")));
  }
  const std::string adapter_path = JoinPath(dir, kAdapterFileName);
  absl::StatusOr<SafetensorsFile> adapter = ReadSafetensors(adapter_path);
  if (!adapter.ok()) {
    return Fail(absl::Status(adapter.status().code(),
                             absl::StrCat(adapter.status().message(),
                                          " (tune first: offsite offsite tune DIR --data PATH)")));
  }
  status = CheckAdapter(manifest, *adapter);
  if (!status.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(adapter_path, ": ", status.message())));
  }
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  TransferOptions options;
  options.progress = ByteProgress("uploading");
  absl::StatusOr<v1::Artifact> artifact =
      UploadArtifact(*stubs->artifacts, adapter_path, kAdapterFileName, options);
  if (!artifact.ok()) return Fail(artifact.status());
  grpc::ClientContext context;
  v1::PushAdapterRequest request;
  request.set_package_id(manifest.package_id());
  request.set_artifact_id(artifact->id());
  v1::Adapter pushed;
  status = FromGrpcStatus(stubs->offsite->PushAdapter(&context, request, &pushed));
  if (!status.ok()) return Fail(status);
  const bool json = args.Has("json");
  if (json) {
    if (!args.Has("watch")) std::cout << Json(pushed) << std::endl;
  } else {
    std::cout << "pushed adapter " << pushed.id() << " for package " << pushed.package_id()
              << " (artifact " << pushed.artifact_id() << "); plug-in evaluation job "
              << pushed.job_id() << std::endl;
  }
  if (args.Has("watch")) return Watch(*stubs->jobs, pushed.job_id(), json);
  return kExitOk;
}

int OffsiteAdapters(const CliArgs& args) {
  if (!args.positional().empty())
    return Fail(UsageError("offsite offsite adapters [--package ID]"));
  auto stubs = ConnectStubs(args);
  if (!stubs.ok()) return Fail(stubs.status());
  grpc::ClientContext context;
  v1::ListAdaptersRequest request;
  request.set_package_id(args.Get("package"));
  v1::ListAdaptersResponse response;
  absl::Status status = FromGrpcStatus(stubs->offsite->ListAdapters(&context, request, &response));
  if (!status.ok()) return Fail(status);
  std::string text;
  for (const v1::Adapter& adapter : response.adapters())
    absl::StrAppend(&text, AdapterLine(adapter), "\n");
  return Print(args, response, text);
}

}  // namespace

int RunModelsCommand(const std::vector<std::string>& words) {
  const std::string verb = words.empty() ? "" : words[0];
  if (verb == "import") return RunModelsImport(words);
  if (verb != "add" && verb != "list") {
    return Fail(UsageError(
        "offsite models add NAME (--artifact ID | --file PATH) [--description TEXT] | list | "
        "import --family F DIR"));
  }
  absl::StatusOr<CliArgs> args = ParseArgs(words);
  if (!args.ok()) return Fail(args.status());
  absl::Status flags = args->CheckFlags(
      verb == "add" ? With({"artifact", "file", "description", "json"}) : With({"json"}));
  if (!flags.ok()) return Fail(flags);
  return verb == "add" ? ModelsAdd(*args) : ModelsList(*args);
}

int RunPackagesCommand(const std::vector<std::string>& words) {
  const std::string verb = words.empty() ? "" : words[0];
  const std::map<std::string, std::pair<size_t, std::string>> verbs = {
      {"list", {0, "offsite packages list"}},
      {"get", {1, "offsite packages get ID"}},
      {"grant", {2, "offsite packages grant ID PRINCIPAL"}},
      {"revoke", {2, "offsite packages revoke ID PRINCIPAL"}}};
  auto it = verbs.find(verb);
  if (it == verbs.end()) {
    return Fail(
        UsageError("offsite packages list | get ID | grant ID PRINCIPAL | revoke ID PRINCIPAL"));
  }
  absl::StatusOr<CliArgs> args = ParseArgs(words);
  if (!args.ok()) return Fail(args.status());
  if (args->positional().size() != it->second.first) return Fail(UsageError(it->second.second));
  absl::Status flags = args->CheckFlags(With({"json"}));
  if (!flags.ok()) return Fail(flags);
  return PackagesCommand(verb, *args);
}

int RunOffsiteCommand(const std::vector<std::string>& words) {
  const std::string verb = words.empty() ? "" : words[0];
  absl::StatusOr<CliArgs> args = ParseArgs(words.empty() ? std::vector<std::string>{""} : words);
  if (!args.ok()) return Fail(args.status());
  absl::Status flags;
  if (verb == "pull") {
    flags = args->CheckFlags(With({"output", "json"}));
    return flags.ok() ? OffsitePull(*args) : Fail(flags);
  }
  if (verb == "tune") {
    // Local only: no connection flags.
    flags = args->CheckFlags(
        {"data",        "classes",      "test-data",          "train-images", "train-labels",
         "test-images", "test-labels",  "train-subset",       "test-subset",  "validation-fraction",
         "steps",       "epochs",       "batch-size",         "lr",           "weight-decay",
         "warmup",      "clip",         "eval-interval",      "lora",         "lora-rank",
         "lora-alpha",  "lora-dropout", "top-only",           "seed",         "threads",
         "device",      "json",         "recompute-emulator", "image-side"});
    return flags.ok() ? OffsiteTune(*args) : Fail(flags);
  }
  if (verb == "push") {
    flags = args->CheckFlags(With({"watch", "json"}));
    return flags.ok() ? OffsitePush(*args) : Fail(flags);
  }
  if (verb == "adapters") {
    flags = args->CheckFlags(With({"package", "json"}));
    return flags.ok() ? OffsiteAdapters(*args) : Fail(flags);
  }
  return Fail(UsageError(
      absl::StrCat("unknown offsite command \"", verb, "\"; one of pull, tune, push, adapters")));
}

std::string OffsiteUsage() {
  return "  offsite models add NAME (--artifact ID | --file PATH) [--description TEXT]\n"
         "  offsite models list\n" +
         ModelsImportUsage() +
         "  offsite packages list | get ID | grant ID PRINCIPAL | revoke ID PRINCIPAL\n"
         "  offsite offsite pull PACKAGE -o DIR\n"
         "  offsite offsite tune DIR --data PATH [--classes 5,6,7,8,9] [--test-data DIR]\n"
         "      [--train-images F --train-labels F --test-images F --test-labels F]\n"
         "      [--image-side S (28; PNG folders: --data DIR with train/CLASS/*.png and\n"
         "      test/CLASS/*.png)]\n"
         "      [--validation-fraction F] [--steps N | --epochs E (5)] [--batch-size B (32)]\n"
         "      [--lr X (1e-4 text, 1e-3 images)] [--weight-decay W] [--warmup N] [--clip C]\n"
         "      [--eval-interval N] [--lora [--lora-rank R] [--lora-alpha A] [--lora-dropout D]]\n"
         "      [--top-only] [--recompute-emulator] [--seed S] [--threads T] [--device cpu]\n"
         "      (offline: no server; --recompute-emulator trades an extra emulator pass for\n"
         "      memory)\n"
         "  offsite offsite push DIR [--watch]\n"
         "  offsite offsite adapters [--package ID]\n";
}

}  // namespace offsite
