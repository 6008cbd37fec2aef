#include "server/jobs/offsite_tuning_jobs.h"

#include <google/protobuf/text_format.h>
#include <torch/torch.h>

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/file_util.h"
#include "common/proto_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "server/job_store.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

// Checkpoints a Train / DistillEmulator run in the job's work directory
// whenever the server's interval elapses, so that a job interrupted by a
// restart resumes at its last checkpoint rather than from the start. The
// file is named checkpoint_<run>.pt, so that a remote worker hands it to the
// server as it changes and another worker resumes from it.
TrainCheckpoint JobCheckpoint(JobContext& ctx, const std::string& run) {
  const std::string path = JoinPath(ctx.work_dir(), "checkpoint_" + run + ".pt");
  const std::string format = run + "_checkpoint";
  TrainCheckpoint checkpoint;
  checkpoint.due = [&ctx](int64_t) { return ctx.CheckpointDue(); };
  checkpoint.save = [path, format](torch::serialize::OutputArchive& archive) {
    return SaveArchive(archive, format, 1, path);
  };
  checkpoint.load = [&ctx, path, format, run](torch::serialize::InputArchive& archive) {
    absl::Status loaded = LoadArchive(path, format, 1, &archive);
    if (loaded.ok()) ctx.Log(absl::StrCat("resuming ", run, " from its checkpoint"));
    return loaded;
  };
  return checkpoint;
}

// Reports every step's metrics and progress; false (stop) once cancelled.
StepCallback ReportTo(JobContext& ctx, const std::string& phase, int64_t total_steps) {
  return [&ctx, phase, total_steps](int64_t step, const std::map<std::string, double>& metrics) {
    ctx.ReportProgress(phase, step, total_steps);
    // Every step's loss would flood the event log: validation steps and
    // every 10th step only.
    if (metrics.count("valid_loss") || step % 10 == 0) ctx.ReportMetrics(step, metrics);
    if (metrics.count("valid_loss")) {
      ctx.Log(absl::StrFormat("%s step %d/%d: valid_loss %.4f", phase, step, total_steps,
                              metrics.at("valid_loss")));
    }
    return !ctx.cancelled();
  };
}

absl::Status Cancelled(const absl::Status& status) {
  return absl::IsCancelled(status) ? absl::CancelledError("cancelled") : status;
}

absl::StatusOr<LoadedModel> LoadModelFile(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(path));
  return ModelFromFile(file);
}

absl::StatusOr<LoadedModel> LoadModelArtifact(ArtifactStore& artifacts, const v1::Model& model) {
  OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact, artifacts.Get(model.artifact_id()));
  return LoadModelFile(artifacts.BlobPath(artifact.sha256()));
}

int64_t Context(const v1::ModelArch& arch) { return arch.has_gpt() ? arch.gpt().n_positions() : 0; }

void AddEvaluation(const Evaluation& eval, const std::string& prefix,
                   std::map<std::string, double>& metrics) {
  for (const auto& [name, value] : eval.AsMetrics(prefix)) metrics[name] = value;
  metrics[prefix + "loss"] = eval.loss;
}

absl::StatusOr<std::string> WriteFile(JobContext& ctx, const std::string& name,
                                      const SafetensorsFile& file) {
  const std::string path = ctx.work_dir() + "/" + name;
  OFFSITE_RETURN_IF_ERROR(WriteSafetensors(path, file));
  return path;
}

constexpr int64_t kEvalBatch = 64;

constexpr char kPackageFileName[] = "package.safetensors";

// The emulator job's closing report, recorded with its package: the metrics
// named with these prefixes (the distillation's running figures are not).
bool IsPackageMetric(const std::string& name) {
  for (const char* prefix : {"distill_best_", "full_", "emulator_zero_shot_", "package_"}) {
    if (absl::StartsWith(name, prefix)) return true;
  }
  return false;
}

}  // namespace

// --- lm_pretrain -----------------------------------------------------------

absl::Status LmPretrainJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::LmPretrainSpec& spec = job_spec.lm_pretrain();
  v1::ModelArch arch;
  *arch.mutable_gpt() = spec.arch();
  OFFSITE_RETURN_IF_ERROR(ResolveModelArch(arch, "lm_pretrain.arch").status());
  v1::TaskData data;
  *data.mutable_text() = spec.data();
  OFFSITE_RETURN_IF_ERROR(ValidateTaskData(data, "lm_pretrain.data"));
  OFFSITE_RETURN_IF_ERROR(CheckRange("lm_pretrain.steps", spec.steps(), 0, 1e7));
  OFFSITE_RETURN_IF_ERROR(CheckRange("lm_pretrain.batch_size", spec.batch_size(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckRange("lm_pretrain.learning_rate", spec.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("lm_pretrain.weight_decay", spec.weight_decay(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("lm_pretrain.warmup_steps", spec.warmup_steps(), 0, 1e7));
  return CheckRange("lm_pretrain.eval_interval", spec.eval_interval(), 0, 1e7);
}

absl::Status LmPretrainJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::LmPretrainSpec& spec = job_spec.lm_pretrain();
  v1::ModelArch arch;
  *arch.mutable_gpt() = spec.arch();
  OFFSITE_ASSIGN_OR_RETURN(arch, ResolveModelArch(arch));
  const torch::Device device(ctx.device());
  v1::TaskData data;
  *data.mutable_text() = spec.data();
  OFFSITE_ASSIGN_OR_RETURN(TaskTensors task, LoadTaskData(data, Context(arch), device, "data"));
  torch::manual_seed(spec.seed());
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<BlockModelImpl> model, MakeBlockModel(arch));
  model->to(device);
  TrainOptions options;
  options.steps = spec.steps() ? spec.steps() : 2000;
  options.batch_size = spec.batch_size() ? spec.batch_size() : 32;
  options.learning_rate = spec.learning_rate() ? spec.learning_rate() : 1e-3;
  options.weight_decay = spec.weight_decay() ? spec.weight_decay() : 0.1;
  options.warmup_steps =
      std::min<int64_t>(spec.warmup_steps() ? spec.warmup_steps() : 100, options.steps);
  options.eval_interval = spec.eval_interval() ? spec.eval_interval() : 200;
  options.seed = spec.seed();
  options.checkpoint = JobCheckpoint(ctx, "lm_pretrain");
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel, ConnectDataParallel(ctx));
  options.data_parallel = data_parallel.get();
  ctx.Log(absl::StrCat("training tokens ", task.train_input.numel(), ", validation tokens ",
                       task.valid_input.numel()));
  absl::StatusOr<TrainResult> result =
      Train(*model, task, options, ReportTo(ctx, "pretrain", options.steps));
  OFFSITE_RETURN_IF_ERROR(Cancelled(result.status()));
  std::map<std::string, double> final_metrics;
  AddEvaluation(result->best, "best_valid_", final_metrics);
  ctx.ReportMetrics(options.steps, final_metrics);
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ModelToFile(arch, *model));
  OFFSITE_ASSIGN_OR_RETURN(std::string path, WriteFile(ctx, "model.safetensors", file));
  return ctx.AddArtifact(path, "model.safetensors").status();
}

// --- emulator --------------------------------------------------------------

absl::Status EmulatorJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::EmulatorSpec& spec = job_spec.emulator();
  if (spec.model().empty()) return absl::InvalidArgumentError("emulator.model: required");
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.bottom", spec.bottom(), 0, 1e4));
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.top", spec.top(), 0, 1e4));
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.emulator_blocks", spec.emulator_blocks(), 0, 1e4));
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.num_classes", spec.num_classes(), 0, 1e6));
  const v1::DistillSpec& distill = spec.distill();
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.distill.steps", distill.steps(), 0, 1e7));
  if (distill.steps() > 0) {
    OFFSITE_RETURN_IF_ERROR(ValidateTaskData(distill.data(), "emulator.distill.data"));
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.distill.batch_size", distill.batch_size(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("emulator.distill.learning_rate", distill.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("emulator.distill.task_weight", distill.task_weight(), 0, 1e4));
  OFFSITE_RETURN_IF_ERROR(CheckRange("emulator.distill.kd_weight", distill.kd_weight(), 0, 1e4));
  if (spec.has_task_eval()) {
    OFFSITE_RETURN_IF_ERROR(ValidateTaskData(spec.task_eval(), "emulator.task_eval"));
  }
  // The model and the split are checked against the registry when the job
  // runs; a model registered later must not make a queued job invalid.
  return absl::OkStatus();
}

absl::Status EmulatorJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::EmulatorSpec& spec = job_spec.emulator();
  const torch::Device device(ctx.device());
  // The registered model, resolved by the server (ResolveInputs): this runs
  // in the server or on a remote worker alike.
  const v1::Model& model = ctx.inputs().model();
  if (!ctx.inputs().has_model()) {
    return absl::FailedPreconditionError(
        "emulator.model: the server handed over no model record for this job (a server older "
        "than this worker does not; run the job in the server or upgrade it)");
  }
  if (model.name() != spec.model()) {
    return absl::FailedPreconditionError(
        absl::StrCat("emulator.model: the server resolved model \"", model.name(),
                     "\" for this job, not \"", spec.model(), "\""));
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string model_path, ctx.ArtifactPath(model.artifact_id()));
  OFFSITE_ASSIGN_OR_RETURN(LoadedModel full, LoadModelFile(model_path));
  full.model->to(device);
  const int64_t bottom = spec.bottom() ? spec.bottom() : 2;
  const int64_t top = spec.top() ? spec.top() : 2;
  absl::StatusOr<SplitPlan> plan =
      PlanSplit(full.model->num_blocks(), bottom, top, spec.emulator_blocks());
  if (!plan.ok())
    return absl::InvalidArgumentError(absl::StrCat("emulator: ", plan.status().message()));
  ctx.Log(absl::StrCat("split ", bottom, "-", spec.emulator_blocks(), "-", top, " of ",
                       full.model->num_blocks(), " blocks; emulator keeps middle blocks ",
                       absl::StrJoin(plan->kept_middle, ",")));
  OFFSITE_ASSIGN_OR_RETURN(Emulator emulator, MakeEmulator(full.arch, *full.model, *plan,
                                                           spec.num_classes(), spec.seed()));
  std::map<std::string, double> metrics;
  const v1::DistillSpec& distill = spec.distill();
  if (distill.steps() > 0) {
    OFFSITE_ASSIGN_OR_RETURN(
        TaskTensors data, LoadTaskData(distill.data(), Context(full.arch), device, "distill.data",
                                       full.text_encoder));
    DistillOptions options;
    options.train.steps = distill.steps();
    options.train.batch_size = distill.batch_size() ? distill.batch_size() : 32;
    options.train.learning_rate = distill.learning_rate() ? distill.learning_rate() : 1e-4;
    options.train.warmup_steps =
        distill.warmup_steps() ? distill.warmup_steps() : distill.steps() / 10;
    options.train.eval_interval =
        distill.eval_interval() ? distill.eval_interval() : std::max(1, distill.steps() / 10);
    options.train.seed = spec.seed();
    options.train.checkpoint = JobCheckpoint(ctx, "distill");
    OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel,
                             ConnectDataParallel(ctx));
    options.train.data_parallel = data_parallel.get();
    const bool language = full.arch.has_gpt();
    options.task_weight = distill.task_weight() ? distill.task_weight() : (language ? 1.0 : 0.0);
    options.kd_weight = distill.kd_weight() ? distill.kd_weight() : (language ? 30.0 : 1.0);
    // The distillation's task loss needs the model's own head: with a new
    // (random) head only the boundary loss means anything.
    if (spec.num_classes() > 0) options.task_weight = 0;
    // Distil with the model's own head: a package with a new head gets a
    // second emulator for that, and the distilled middle blocks afterwards.
    Emulator distilled = emulator;
    if (spec.num_classes() > 0) {
      OFFSITE_ASSIGN_OR_RETURN(distilled,
                               MakeEmulator(full.arch, *full.model, *plan, 0, spec.seed()));
    }
    absl::StatusOr<TrainResult> result =
        DistillEmulator(*full.model, *distilled.model, *plan, data, options,
                        ReportTo(ctx, "distill", options.train.steps));
    OFFSITE_RETURN_IF_ERROR(Cancelled(result.status()));
    metrics["distill_best_step"] = static_cast<double>(result->best_step);
    metrics["distill_best_valid_loss"] = result->best.loss;
    if (distilled.model != emulator.model) {
      std::vector<NamedTensor> middle;
      for (const NamedTensor& t : NamedTensorsOf(*distilled.model)) {
        const int64_t block = BlockIndexOfName(*distilled.model, t.name);
        if (block >= 0 && !plan->IsAdapter(block)) middle.push_back(t);
      }
      OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(middle, *emulator.model));
    }
  }
  if (spec.has_task_eval() && spec.num_classes() == 0) {
    // Zero-shot rows of the paper's table: only meaningful with the model's own head.
    OFFSITE_ASSIGN_OR_RETURN(
        TaskTensors eval_data,
        LoadTaskData(spec.task_eval(), Context(full.arch), device, "task_eval", full.text_encoder));
    AddEvaluation(Evaluate(*full.model, eval_data, kEvalBatch), "full_zero_shot_", metrics);
    AddEvaluation(Evaluate(*emulator.model, eval_data, kEvalBatch), "emulator_zero_shot_", metrics);
  }
  PackageOptions options;
  options.package_id = NewId("pkg");
  options.model_name = spec.model();
  options.new_head_classes = spec.num_classes();
  options.tokenizer_files = full.tokenizer_files;
  v1::PackageManifest manifest;
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file,
                           MakePackageFile(emulator, *plan, options, &manifest));
  int64_t adapter_params = 0, emulator_params = 0, shared_params = 0;
  for (const v1::TensorInfo& info : manifest.tensors()) {
    int64_t n = 1;
    for (int64_t d : info.shape()) n *= d;
    (info.role() == v1::TensorInfo::ADAPTER    ? adapter_params
     : info.role() == v1::TensorInfo::EMULATOR ? emulator_params
                                               : shared_params) += n;
  }
  metrics["package_adapter_parameters"] = static_cast<double>(adapter_params);
  metrics["package_emulator_parameters"] = static_cast<double>(emulator_params);
  metrics["package_shared_parameters"] = static_cast<double>(shared_params);
  metrics["full_model_parameters"] = static_cast<double>(model.parameters());
  for (const auto& [name, value] : metrics) {
    if (!IsPackageMetric(name)) return absl::InternalError("unrecorded package metric " + name);
  }
  ctx.ReportMetrics(distill.steps(), metrics);
  OFFSITE_ASSIGN_OR_RETURN(std::string path, WriteFile(ctx, kPackageFileName, file));
  OFFSITE_RETURN_IF_ERROR(ctx.AddArtifact(path, kPackageFileName).status());
  ctx.Log(absl::StrCat("package ", options.package_id, " built: ", adapter_params,
                       " adapter parameters, ", emulator_params, " emulator, ", shared_params,
                       " shared (full model ", model.parameters(), ")"));
  return absl::OkStatus();
}

absl::StatusOr<v1::JobInputs> EmulatorJob::ResolveInputs(const v1::Job& job) const {
  absl::StatusOr<v1::Model> model = store_->GetModel(job.spec().emulator().model());
  if (!model.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("emulator.model: ", model.status().message()));
  }
  v1::JobInputs inputs;
  *inputs.mutable_model() = *std::move(model);
  return inputs;
}

// Registers the package the run left, wherever it ran. Idempotent: a server
// that stopped after recording it and before the job's end records it once.
absl::Status EmulatorJob::RecordOutputs(const v1::Job& job) const {
  const v1::EmulatorSpec& spec = job.spec().emulator();
  std::optional<v1::Artifact> artifact;
  for (const std::string& id : job.artifact_ids()) {
    OFFSITE_ASSIGN_OR_RETURN(v1::Artifact candidate, artifacts_->Get(id));
    if (candidate.name() == kPackageFileName) artifact = std::move(candidate);
  }
  if (!artifact) {
    return absl::FailedPreconditionError(
        absl::StrCat("emulator job ", job.id(), " left no ", kPackageFileName));
  }
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file,
                           ReadSafetensors(artifacts_->BlobPath(artifact->sha256())));
  absl::StatusOr<OpenedPackage> opened = OpenPackage(file);
  if (!opened.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kPackageFileName, " of job ", job.id(), ": ", opened.status().message()));
  }
  const v1::PackageManifest& manifest = opened->manifest;
  if (manifest.model() != spec.model()) {
    return absl::InvalidArgumentError(absl::StrCat(kPackageFileName, " of job ", job.id(),
                                                   " is built from model \"", manifest.model(),
                                                   "\", not \"", spec.model(), "\""));
  }
  if (store_->GetPackage(manifest.package_id()).ok()) return absl::OkStatus();
  v1::Package package;
  package.set_id(manifest.package_id());
  package.set_model(spec.model());
  package.set_job_id(job.id());
  package.set_artifact_id(artifact->id());
  package.set_sha256(artifact->sha256());
  package.set_size(artifact->size());
  *package.mutable_manifest() = manifest;
  for (const auto& [name, value] : job.metrics()) {
    if (IsPackageMetric(name)) (*package.mutable_metrics())[name] = value;
  }
  if (spec.has_task_eval()) *package.mutable_task_eval() = spec.task_eval();
  package.set_create_time_ms(NowMs());
  return store_->AddPackage(package);
}

// --- plugin_eval -----------------------------------------------------------

absl::Status PluginEvalJob::Validate(const v1::JobSpec& job_spec) const {
  if (job_spec.plugin_eval().adapter_id().empty()) {
    return absl::InvalidArgumentError("plugin_eval.adapter_id: required");
  }
  return absl::OkStatus();
}

absl::Status PluginEvalJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const torch::Device device(ctx.device());
  OFFSITE_ASSIGN_OR_RETURN(v1::Adapter adapter,
                           store_->GetAdapter(job_spec.plugin_eval().adapter_id()));
  OFFSITE_ASSIGN_OR_RETURN(v1::Package package, store_->GetPackage(adapter.package_id()));
  OFFSITE_ASSIGN_OR_RETURN(v1::Model model, store_->GetModel(package.model()));
  OFFSITE_ASSIGN_OR_RETURN(v1::Artifact adapter_artifact, artifacts_->Get(adapter.artifact_id()));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile adapter_file,
                           ReadSafetensors(artifacts_->BlobPath(adapter_artifact.sha256())));
  if (!package.has_task_eval()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "package ", package.id(), " has no task_eval data to evaluate the plug-in on"));
  }
  // PlugIn checks the adapter again: the upload was checked at push time,
  // this is the server's own defence before the full model runs it.
  OFFSITE_ASSIGN_OR_RETURN(LoadedModel registered, LoadModelArtifact(*artifacts_, model));
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<BlockModelImpl> full,
                           PlugIn(*registered.model, package.manifest(), adapter_file));
  registered.model.reset();
  full->to(device);
  OFFSITE_ASSIGN_OR_RETURN(v1::Artifact package_artifact, artifacts_->Get(package.artifact_id()));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile package_file,
                           ReadSafetensors(artifacts_->BlobPath(package_artifact.sha256())));
  OFFSITE_ASSIGN_OR_RETURN(OpenedPackage opened, OpenPackage(package_file));
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(adapter_file.tensors, *opened.emulator));
  opened.emulator->to(device);
  ctx.ReportProgress("evaluate", 0, 2);
  OFFSITE_ASSIGN_OR_RETURN(TaskTensors data,
                           LoadTaskData(package.task_eval(), Context(package.manifest().arch()),
                                        device, "task_eval", opened.text_encoder));
  std::map<std::string, double> metrics;
  AddEvaluation(Evaluate(*full, data, kEvalBatch), "plugin_", metrics);
  ctx.ReportProgress("evaluate", 1, 2);
  if (ctx.cancelled()) return absl::CancelledError("cancelled");
  AddEvaluation(Evaluate(*opened.emulator, data, kEvalBatch), "ot_emulator_", metrics);
  for (const auto& [name, value] : package.metrics()) {
    if (absl::StrContains(name, "zero_shot")) metrics[name] = value;
  }
  ctx.ReportProgress("evaluate", 2, 2);
  ctx.ReportMetrics(1, metrics);
  std::string report;
  for (const auto& [name, value] : metrics) report += absl::StrFormat("%s: %.6g\n", name, value);
  const std::string path = ctx.work_dir() + "/plugin_report.txt";
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(path, report));
  ctx.Log(absl::StrCat("plug-in report for adapter ", adapter.id(), ":\n", report));
  return ctx.AddArtifact(path, "plugin_report.txt").status();
}

}  // namespace offsite
