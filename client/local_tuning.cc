#include "client/local_tuning.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/runtime.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/task_data.h"
#include "models/model_arch.h"

namespace offsite {
namespace {

constexpr double kLanguageModelLearningRate = 1e-4;
constexpr double kVisionLearningRate = 1e-3;

// The data must be of the package's kind; checked before any data is read.
absl::Status CheckDataFitsTask(const v1::PackageManifest& manifest, const v1::ModelArch& arch,
                               const v1::TaskData& data) {
  const std::string& task = manifest.task();
  if (task == "language_modeling") {
    if (!data.has_text()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "package '", manifest.package_id(),
          "' is for language_modeling: the data must be text (a file or directory), not ",
          data.has_images() ? "images" : "nothing"));
    }
    return absl::OkStatus();
  }
  if (task == "classification") {
    if (!data.has_images()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "package '", manifest.package_id(),
          "' is for classification: the data must be labelled images (IDX files), not ",
          data.has_text() ? "text" : "nothing"));
    }
    const int classes = data.images().classes_size();
    if (classes > 0 && classes != arch.num_classes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "package '", manifest.package_id(), "' classifies ", arch.num_classes(), " classes, but ",
          classes, " classes were chosen (", absl::StrJoin(data.images().classes(), ","), ")"));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("package '", manifest.package_id(), "' has unknown task '", task, "'"));
}

// Labels and channels that the package's head and stem can take.
absl::Status CheckImagesFitModel(const v1::PackageManifest& manifest, const v1::ModelArch& arch,
                                 const TaskTensors& data) {
  if (data.num_classes != arch.num_classes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("package '", manifest.package_id(), "' classifies ", arch.num_classes(),
                     " classes, but the data has ", data.num_classes,
                     " (choose the task's classes with --classes, e.g. 5,6,7,8,9)"));
  }
  if (data.train_input.size(1) != arch.in_channels()) {
    return absl::InvalidArgumentError(
        absl::StrCat("package '", manifest.package_id(), "' takes ", arch.in_channels(),
                     "-channel images, the data has ", data.train_input.size(1)));
  }
  if (data.train_input.size(0) == 0 || data.valid_input.size(0) == 0) {
    return absl::InvalidArgumentError("the data has no training or no test images");
  }
  return absl::OkStatus();
}

int64_t TrainableParameters(torch::nn::Module& model) {
  int64_t count = 0;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) count += p.numel();
  }
  return count;
}

std::map<std::string, double> EvaluationMetrics(const Evaluation& eval, const std::string& prefix) {
  std::map<std::string, double> metrics = eval.AsMetrics(prefix);
  metrics[prefix + "loss"] = eval.loss;
  return metrics;
}

absl::StatusOr<LocalTuneReport> TuneLocallyOrThrow(const LocalTuneOptions& options,
                                                   const StepCallback& on_step) {
  const auto start = std::chrono::steady_clock::now();
  if (options.package_dir.empty()) return absl::InvalidArgumentError("package_dir: required");
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size: ", options.batch_size, " < 1"));
  }
  if (options.steps < 0 || (options.steps == 0 && !(options.epochs > 0))) {
    return absl::InvalidArgumentError("steps or epochs must be positive");
  }
  if (options.learning_rate < 0 || options.weight_decay < 0 || options.clip_norm < 0) {
    return absl::InvalidArgumentError("learning_rate, weight_decay and clip_norm must be >= 0");
  }
  OFFSITE_RETURN_IF_ERROR(CheckDevice(options.device));
  const torch::Device device(options.device);
  if (options.threads > 0) ConfigureThreads(options.threads);

  // The package, verified tensor by tensor.
  const std::string package_path = JoinPath(options.package_dir, kPackageFileName);
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(package_path));
  absl::StatusOr<OpenedPackage> opened = OpenPackage(file);
  if (!opened.ok()) {
    return absl::Status(opened.status().code(),
                        absl::StrCat(package_path, ": ", opened.status().message()));
  }
  file = SafetensorsFile();  // The emulator holds its own copy.
  const v1::PackageManifest& manifest = opened->manifest;
  BlockModelImpl& model = *opened->emulator;
  OFFSITE_ASSIGN_OR_RETURN(v1::ModelArch arch, ResolveModelArch(manifest.arch(), "manifest.arch"));

  // The data, checked against the package's task.
  OFFSITE_RETURN_IF_ERROR(CheckDataFitsTask(manifest, arch, options.data));
  const int64_t context = arch.has_gpt() ? arch.gpt().n_positions() : 0;
  OFFSITE_ASSIGN_OR_RETURN(
      TaskTensors data, LoadTaskData(options.data, context, device, "data", opened->text_encoder));
  if (!data.language) OFFSITE_RETURN_IF_ERROR(CheckImagesFitModel(manifest, arch, data));
  model.to(device);

  LocalTuneReport report;
  report.package_id = manifest.package_id();
  report.model = manifest.model();
  report.task = manifest.task();
  if (data.language) report.tokenizer = opened->text_encoder.name;
  report.split =
      absl::StrCat(manifest.bottom(), "-", manifest.emulator_blocks_size(), "-", manifest.top());
  report.train_size = data.language ? data.train_input.numel() : data.train_input.size(0);
  report.validation_size = data.language ? data.valid_input.numel() : data.valid_input.size(0);
  const int64_t examples_per_epoch =
      data.language ? report.train_size / context : report.train_size;
  report.steps =
      options.steps > 0
          ? options.steps
          : std::max<int64_t>(
                1, static_cast<int64_t>(std::ceil(options.epochs * examples_per_epoch /
                                                  static_cast<double>(options.batch_size))));
  report.batch_size = options.batch_size;
  report.learning_rate = options.learning_rate > 0
                             ? options.learning_rate
                             : (data.language ? kLanguageModelLearningRate : kVisionLearningRate);
  report.weight_decay = options.weight_decay;
  report.warmup_steps = options.warmup_steps >= 0 ? options.warmup_steps : report.steps / 10;
  report.clip_norm = options.clip_norm;
  report.eval_interval =
      options.eval_interval > 0 ? options.eval_interval : std::max<int64_t>(1, report.steps / 10);
  report.seed = options.seed;
  report.tune = options.tune;
  report.device = options.device;

  // The emulator with the adapter as issued: Offsite-Tuning's "emulator zero-shot".
  report.emulator_zero_shot = Evaluate(model, data, report.batch_size);

  torch::manual_seed(options.seed);  // LoRA's initialisation and dropout.
  PrepareForTuning(manifest, model, options.tune);
  model.to(device);  // LoRA's new tensors.
  report.trainable_parameters = TrainableParameters(model);
  if (report.trainable_parameters == 0) {
    return absl::InvalidArgumentError("nothing to tune: the package has no adapter tensors");
  }
  if (options.on_start) options.on_start(report);

  TrainOptions train;
  train.steps = report.steps;
  train.batch_size = report.batch_size;
  train.learning_rate = report.learning_rate;
  train.warmup_steps = report.warmup_steps;
  train.weight_decay = report.weight_decay;
  train.clip_norm = report.clip_norm;
  train.eval_interval = report.eval_interval;
  train.seed = report.seed;
  OFFSITE_ASSIGN_OR_RETURN(TrainResult result, Train(model, data, train, on_step));
  report.best_step = result.best_step;

  // The adapter as it will be pushed (LoRA merged), and its figures.
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile adapter, ExtractAdapter(manifest, model));
  OFFSITE_RETURN_IF_ERROR(CheckAdapter(manifest, adapter));
  report.ot_emulator = Evaluate(model, data, report.batch_size);
  report.metrics = EvaluationMetrics(report.emulator_zero_shot, "emulator_zero_shot_");
  for (const auto& [name, value] : EvaluationMetrics(report.ot_emulator, "ot_emulator_")) {
    report.metrics[name] = value;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  report.adapter_path = JoinPath(options.package_dir, kAdapterFileName);
  report.report_path = JoinPath(options.package_dir, kTuneReportFileName);
  OFFSITE_RETURN_IF_ERROR(WriteSafetensors(report.adapter_path, adapter));
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(report.report_path, LocalTuneReportJson(report) + "\n"));
  report.tuned_emulator = opened->emulator;
  return report;
}

// A JSON object that keeps its keys in insertion order, so the report reads
// top-down: what was tuned, the figures, then the options.
class JsonObject {
 public:
  JsonObject& Number(const std::string& key, double value) {
    std::string text = "null";  // JSON has no NaN or infinity.
    if (std::isfinite(value)) {
      text = value == std::floor(value) && std::fabs(value) < 1e15
                 ? absl::StrCat(static_cast<int64_t>(value))
                 : absl::StrFormat("%.10g", value);
    }
    fields_.push_back({key, text, nullptr});
    return *this;
  }
  JsonObject& String(const std::string& key, const std::string& value) {
    fields_.push_back({key, Quote(value), nullptr});
    return *this;
  }
  JsonObject& Bool(const std::string& key, bool value) {
    fields_.push_back({key, value ? "true" : "false", nullptr});
    return *this;
  }
  JsonObject& Object(const std::string& key, JsonObject value) {
    fields_.push_back({key, "", std::make_shared<JsonObject>(std::move(value))});
    return *this;
  }

  std::string Text(int indent = 0) const {
    if (fields_.empty()) return "{}";
    const std::string pad(indent + 2, ' ');
    std::string text = "{\n";
    for (size_t i = 0; i < fields_.size(); ++i) {
      const Field& field = fields_[i];
      absl::StrAppend(&text, pad, Quote(field.key), ": ",
                      field.child ? field.child->Text(indent + 2) : field.scalar,
                      i + 1 < fields_.size() ? ",\n" : "\n");
    }
    absl::StrAppend(&text, std::string(indent, ' '), "}");
    return text;
  }

 private:
  struct Field {
    std::string key;
    std::string scalar;
    std::shared_ptr<JsonObject> child;
  };

  static std::string Quote(const std::string& value) {
    std::string text = "\"";
    for (const unsigned char c : value) {
      if (c == '"' || c == '\\') {
        text += '\\';
        text += static_cast<char>(c);
      } else if (c < 0x20) {
        absl::StrAppend(&text, absl::StrFormat("\\u%04x", c));
      } else {
        text += static_cast<char>(c);
      }
    }
    return text + "\"";
  }

  std::vector<Field> fields_;
};

JsonObject EvaluationJson(const Evaluation& eval, bool language) {
  JsonObject json;
  if (language) {
    json.Number("perplexity", eval.perplexity);
  } else {
    json.Number("accuracy", eval.accuracy);
  }
  json.Number("loss", eval.loss);
  json.Number(language ? "tokens" : "examples", static_cast<double>(eval.count));
  return json;
}

}  // namespace

absl::StatusOr<LocalTuneReport> TuneLocally(const LocalTuneOptions& options,
                                            const StepCallback& on_step) {
  try {
    return TuneLocallyOrThrow(options, on_step);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("local tuning of ", options.package_dir, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("local tuning of ", options.package_dir, ": ", e.what()));
  }
}

std::string LocalTuneReportJson(const LocalTuneReport& report) {
  const bool language = report.task == "language_modeling";
  JsonObject metrics;
  for (const auto& [name, value] : report.metrics) metrics.Number(name, value);
  JsonObject options;
  options.Number("steps", static_cast<double>(report.steps))
      .Number("batch_size", static_cast<double>(report.batch_size))
      .Number("learning_rate", report.learning_rate)
      .Number("weight_decay", report.weight_decay)
      .Number("warmup_steps", static_cast<double>(report.warmup_steps))
      .Number("clip_norm", report.clip_norm)
      .Number("eval_interval", static_cast<double>(report.eval_interval))
      .Number("seed", static_cast<double>(report.seed))
      .Bool("top_only", report.tune.top_only)
      .Bool("lora", report.tune.lora)
      .Bool("recompute_emulator", report.tune.recompute_emulator);
  if (report.tune.lora) {
    options.Number("lora_rank", static_cast<double>(report.tune.lora_rank))
        .Number("lora_alpha", report.tune.lora_alpha)
        .Number("lora_dropout", report.tune.lora_dropout);
  }
  options.String("device", report.device);
  JsonObject root;
  root.String("package_id", report.package_id)
      .String("model", report.model)
      .String("task", report.task)
      .String("split", report.split)
      .String("tokenizer", report.tokenizer)
      .Object("emulator_zero_shot", EvaluationJson(report.emulator_zero_shot, language))
      .Object("ot_emulator", EvaluationJson(report.ot_emulator, language))
      .Number("best_step", static_cast<double>(report.best_step))
      .Object("metrics", std::move(metrics))
      .Number("trainable_parameters", static_cast<double>(report.trainable_parameters))
      .Number(language ? "train_tokens" : "train_examples", static_cast<double>(report.train_size))
      .Number(language ? "validation_tokens" : "validation_examples",
              static_cast<double>(report.validation_size))
      .Number("seconds", report.seconds)
      .Object("options", std::move(options))
      .String("adapter", report.adapter_path);
  return root.Text();
}

}  // namespace offsite
