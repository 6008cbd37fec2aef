#include "server/jobs/reward_tuning_jobs.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/file_util.h"
#include "common/idx.h"
#include "common/image_data.h"
#include "common/proto_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"
#include "models/lr_schedule.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "models/optimizer.h"
#include "models/reward_tuning.h"
#include "models/rewards.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

// The archive key of the text-format SceneData a detector was trained on.
constexpr char kScenesKey[] = "offsite.scenes";
// Version 2: detectors carry a confidence head, so a version 1 checkpoint of a
// detector no longer fits; refusing it names the cause instead of a missing tensor.
constexpr int64_t kTuneCheckpointVersion = 2;

v1::DetectionMleSpec Resolved(v1::DetectionMleSpec spec) {
  *spec.mutable_scenes() = ResolveSceneData(spec.scenes());
  if (spec.epochs() == 0) spec.set_epochs(20);
  if (spec.batch_size() == 0) spec.set_batch_size(64);
  if (spec.learning_rate() == 0) spec.set_learning_rate(1e-3);
  if (spec.weight_decay() == 0) spec.set_weight_decay(0.05);
  if (spec.warmup_epochs() == 0) spec.set_warmup_epochs(1);
  return spec;
}

v1::RewardTuneSpec Resolved(v1::RewardTuneSpec spec) {
  if (spec.duplicate_weight() == 0) spec.set_duplicate_weight(kDefaultDuplicateWeight);
  if (spec.samples_per_input() == 0) spec.set_samples_per_input(8);
  if (spec.steps() == 0) spec.set_steps(500);
  if (spec.batch_size() == 0) spec.set_batch_size(16);
  if (spec.learning_rate() == 0) spec.set_learning_rate(1e-5);
  if (spec.max_grad_norm() == 0) spec.set_max_grad_norm(1);
  if (spec.temperature() == 0) spec.set_temperature(1);
  if (spec.eval_every() == 0) spec.set_eval_every(50);
  if (!spec.has_confidence_weight())
    spec.set_confidence_weight(ReinforceOptions{}.confidence_weight);
  return spec;
}

std::string OrDefault(const std::string& value, const std::string& fashion_mnist_file) {
  return value.empty() ? FashionMnistFile(fashion_mnist_file) : value;
}

// Keeps the items of `classes` (if any), relabelled by their position in it.
void KeepClasses(const google::protobuf::RepeatedField<int32_t>& classes, LabeledImages& set) {
  if (classes.empty()) return;
  std::vector<int64_t> keep, relabelled;
  const torch::Tensor labels = set.labels.contiguous();
  for (int64_t i = 0; i < labels.size(0); ++i) {
    const int64_t label = labels.data_ptr<int64_t>()[i];
    for (int c = 0; c < classes.size(); ++c) {
      if (classes[c] == label) {
        keep.push_back(i);
        relabelled.push_back(c);
      }
    }
  }
  set.images = set.images.index_select(0, torch::tensor(keep, torch::kLong));
  set.labels = torch::tensor(relabelled, torch::kLong);
}

SceneOptions ToSceneOptions(const v1::SceneData& scenes) {
  SceneOptions options;
  options.canvas_size = scenes.canvas_size();
  options.min_objects = scenes.min_objects();
  options.max_objects = scenes.max_objects();
  options.min_scale = scenes.min_scale();
  options.max_scale = scenes.max_scale();
  options.seed = scenes.seed();
  return options;
}

void AddDetectionMetrics(const std::string& prefix, const DetectorEvaluation& eval,
                         std::map<std::string, double>& out) {
  out[prefix + "map"] = eval.metrics.map;
  out[prefix + "map50"] = eval.metrics.map50;
  out[prefix + "recall"] = eval.metrics.recall;
  out[prefix + "duplicate_rate"] = eval.metrics.duplicate_rate;
  out[prefix + "greedy_reward"] = eval.mean_reward;
  out[prefix + "output_length"] = eval.mean_length;
}

void AddClassifierMetrics(const std::string& prefix, const ClassifierEvaluation& eval,
                          std::map<std::string, double>& out) {
  out[prefix + "accuracy"] = eval.accuracy;
  out[prefix + "greedy_reward"] = eval.mean_reward;
  out[prefix + "bayes_accuracy"] = eval.bayes_accuracy;
  out[prefix + "bayes_reward"] = eval.bayes_mean_reward;
}

absl::StatusOr<RewardFn> DetectionRewardFn(double duplicate_weight) {
  RewardOptions options;
  options.detection.duplicate_weight = duplicate_weight;
  return MakeReward("detection", options);
}

// What a reward_tune run needs from its model kind: one REINFORCE step, a
// held-out evaluation into named metrics, the module and its optimiser (for
// checkpoints), and the final artifact. A data-parallel step draws the global
// batch from the generator (the same on every rank) and trains on its
// ShareOfBatch with GradientSyncOf(data_parallel).
struct TuneTarget {
  std::unique_ptr<DataParallel> data_parallel;
  int64_t batch_size = 0;  // global
  std::function<absl::StatusOr<ReinforceStepStats>(at::Generator generator)> step;
  std::function<absl::Status(std::map<std::string, double>& metrics)> evaluate;
  torch::nn::Module* module = nullptr;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::function<absl::Status(const std::string& work_dir, JobContext& ctx)> save_model;
  bool detector = false;  // Detectors also report their confidence head's loss.
};

// The step loop of reward_tune: batches and samples drawn from (seed, step)
// so a resumed job replays exactly; training figures averaged and reported
// every few steps, held-out figures every eval_every steps and at the end.
// The held-out figures of the starting model come first (as step 0, and as
// "initial_*" at the end).
absl::Status RunTuneLoop(const v1::RewardTuneSpec& spec, TuneTarget& target, JobContext& ctx) {
  std::map<std::string, double> initial;
  OFFSITE_RETURN_IF_ERROR(target.evaluate(initial));

  const std::string checkpoint_path = ctx.work_dir() + "/checkpoint.pt";
  int64_t start = 0;
  {
    torch::serialize::InputArchive archive;
    absl::Status loaded =
        LoadArchive(checkpoint_path, "reward_tune_checkpoint", kTuneCheckpointVersion, &archive);
    if (loaded.ok()) {
      c10::IValue step;
      archive.read("step", step);
      start = step.toInt();
      ReadTrainingState(archive, *target.module, *target.optimizer);
      ctx.Log(absl::StrCat("resumed from checkpoint at step ", start));
    } else if (!absl::IsNotFound(loaded)) {
      return loaded;
    }
  }
  OFFSITE_RETURN_IF_ERROR(StartDataParallel(target.data_parallel.get(), target.module->parameters(),
                                            target.module->buffers(), target.batch_size));
  if (start == 0) {
    std::map<std::string, double> first = initial;
    first["step"] = 0;
    ctx.ReportMetrics(0, first);
  }
  auto checkpoint = [&](int64_t step) {
    // Ranks hold the same state; rank 0's checkpoint is the one kept.
    DataParallel* dp = target.data_parallel.get();
    if (dp != nullptr && dp->rank() != 0) return absl::OkStatus();
    torch::serialize::OutputArchive archive;
    archive.write("step", c10::IValue(step));
    WriteTrainingState(archive, *target.module, *target.optimizer);
    return SaveArchive(archive, "reward_tune_checkpoint", kTuneCheckpointVersion, checkpoint_path);
  };

  const int64_t report_every = std::max<int64_t>(1, std::min<int64_t>(10, spec.eval_every()));
  ReinforceStepStats sum;
  int64_t count = 0;
  std::map<std::string, double> final_metrics;
  for (int64_t step = start; step < spec.steps(); ++step) {
    if (ctx.cancelled()) return absl::CancelledError("cancelled");
    at::Generator generator = at::detail::createCPUGenerator(spec.seed() * 1000003 + step);
    OFFSITE_ASSIGN_OR_RETURN(ReinforceStepStats stats, target.step(generator));
    if (!std::isfinite(stats.loss)) {
      return absl::InternalError(absl::StrCat("reward_tune: loss is ", stats.loss, " at step ",
                                              step + 1, "; lower learning_rate"));
    }
    sum.mean_reward += stats.mean_reward;
    sum.entropy += stats.entropy;
    sum.mean_length += stats.mean_length;
    sum.loss += stats.loss;
    sum.grad_norm += stats.grad_norm;
    sum.confidence_loss += stats.confidence_loss;
    ++count;
    const int64_t done = step + 1;
    ctx.ReportProgress("reward tuning", done, spec.steps());
    const bool eval_now = done % spec.eval_every() == 0 || done == spec.steps();
    if (done % report_every == 0 || eval_now) {
      std::map<std::string, double> metrics = {{"step", done},
                                               {"sampled_reward", sum.mean_reward / count},
                                               {"entropy", sum.entropy / count},
                                               {"output_length", sum.mean_length / count},
                                               {"loss", sum.loss / count},
                                               {"grad_norm", sum.grad_norm / count}};
      if (target.detector) metrics["confidence_loss"] = sum.confidence_loss / count;
      sum = ReinforceStepStats();
      count = 0;
      if (eval_now) {
        // Durable first: once a step's figures are out, a restart never redoes it.
        OFFSITE_RETURN_IF_ERROR(checkpoint(done));
        OFFSITE_RETURN_IF_ERROR(target.evaluate(metrics));
        if (done == spec.steps()) {
          for (const auto& [name, value] : initial) metrics["initial_" + name] = value;
          final_metrics = metrics;
        }
      } else if (ctx.CheckpointDue()) {
        OFFSITE_RETURN_IF_ERROR(checkpoint(done));
      }
      ctx.ReportMetrics(done, metrics);
    } else if (ctx.CheckpointDue()) {
      OFFSITE_RETURN_IF_ERROR(checkpoint(done));
    }
  }
  if (final_metrics.empty()) {  // No steps, or resumed after the last one.
    OFFSITE_RETURN_IF_ERROR(target.evaluate(final_metrics));
    for (const auto& [name, value] : initial) final_metrics["initial_" + name] = value;
    ctx.ReportMetrics(spec.steps(), final_metrics);
  }

  OFFSITE_RETURN_IF_ERROR(target.save_model(ctx.work_dir(), ctx));
  std::vector<std::string> lines;
  for (const auto& [name, value] : final_metrics) {
    lines.push_back(absl::StrCat("  \"", name, "\": ", value));
  }
  const std::string metrics_path = ctx.work_dir() + "/metrics.json";
  OFFSITE_RETURN_IF_ERROR(
      WriteFileAtomic(metrics_path, absl::StrCat("{\n", absl::StrJoin(lines, ",\n"), "\n}\n")));
  return ctx.AddArtifact(metrics_path, "metrics.json").status();
}

ReinforceOptions ToReinforceOptions(const v1::RewardTuneSpec& spec) {
  ReinforceOptions options;
  options.samples_per_input = spec.samples_per_input();
  options.temperature = spec.temperature();
  options.max_grad_norm = spec.max_grad_norm();
  options.confidence_weight = spec.confidence_weight();
  return options;
}

// reward_tune of a Pix2Seq detector with a box reward.
absl::Status TuneDetector(const v1::RewardTuneSpec& spec, Pix2Seq model,
                          const v1::SceneData& stored_scenes, JobContext& ctx) {
  const torch::Device device(ctx.device());
  const std::string reward_name = spec.reward().empty() ? "detection" : spec.reward();
  if (reward_name != "detection") {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward_tune.reward: \"", reward_name, "\" does not score boxes, and artifact ",
        spec.pretrained_artifact(), " is a detector (use \"detection\")"));
  }
  // The detector's own scenes, with the fields the spec sets replacing theirs.
  v1::SceneData merged = stored_scenes;
  if (spec.scenes().items().classes_size() > 0) merged.mutable_items()->clear_classes();
  merged.MergeFrom(spec.scenes());
  const v1::SceneData scenes = ResolveSceneData(merged);
  OFFSITE_ASSIGN_OR_RETURN(SceneSet data, LoadScenes(scenes, device));
  const Pix2SeqConfig& config = model->config();
  if (data.num_classes > config.tokenizer.num_classes ||
      scenes.canvas_size() != config.image_size || scenes.max_objects() > config.max_objects) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward_tune.scenes: ", data.num_classes, " classes on ", scenes.canvas_size(),
        " px canvases with up to ", scenes.max_objects(), " objects; the detector knows ",
        config.tokenizer.num_classes, " classes on ", config.image_size, " px canvases with up to ",
        config.max_objects, " objects"));
  }
  OFFSITE_ASSIGN_OR_RETURN(RewardFn reward, DetectionRewardFn(spec.duplicate_weight()));
  model->to(device);
  ctx.Log(absl::StrCat("reward tuning a detector on ", data.train.images.size(0),
                       " train scenes; held out: ", data.test.images.size(0), " test scenes"));

  const ReinforceOptions options = ToReinforceOptions(spec);
  const int64_t n = data.train.images.size(0);
  const int64_t batch = std::min<int64_t>(spec.batch_size(), n);
  TuneTarget target;
  OFFSITE_ASSIGN_OR_RETURN(target.data_parallel, ConnectDataParallel(ctx));
  target.batch_size = batch;
  target.module = model.get();
  target.detector = true;
  target.optimizer = MakeAdamW(*model, spec.learning_rate(), /*weight_decay=*/0, 0.999, false);
  target.step = [&](at::Generator generator) -> absl::StatusOr<ReinforceStepStats> {
    const torch::Tensor index =
        ShareOfBatch(target.data_parallel.get(),
                     torch::randperm(n, generator, torch::kLong).slice(0, 0, batch))
            .contiguous();
    std::vector<std::vector<Box>> truth;
    for (int64_t i = 0; i < index.size(0); ++i) {
      truth.push_back(data.train.objects[index.data_ptr<int64_t>()[i]]);
    }
    return DetectorReinforceStep(*model, *target.optimizer,
                                 data.train.images.index_select(0, index.to(device)), truth, reward,
                                 options, generator, GradientSyncOf(target.data_parallel.get()));
  };
  target.evaluate = [&](std::map<std::string, double>& metrics) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(DetectorEvaluation eval, EvaluateDetector(*model, data.test, reward));
    AddDetectionMetrics("test_", eval, metrics);
    metrics["greedy_reward"] = eval.mean_reward;
    return absl::OkStatus();
  };
  target.save_model = [&](const std::string& dir, JobContext& job) -> absl::Status {
    torch::serialize::OutputArchive archive;
    OFFSITE_RETURN_IF_ERROR(SavePix2Seq(*model, archive));
    archive.write(kScenesKey, c10::IValue(TextProto(scenes)));
    const std::string path = dir + "/detector.pt";
    OFFSITE_RETURN_IF_ERROR(WriteArchiveFile(archive, path));
    return job.AddArtifact(path, "detector.pt").status();
  };
  return RunTuneLoop(spec, target, ctx);
}

// reward_tune of a classifier model file with a class reward.
absl::Status TuneClassifier(const v1::RewardTuneSpec& spec, LoadedModel loaded, JobContext& ctx) {
  const torch::Device device(ctx.device());
  const std::string reward_name = spec.reward().empty() ? "cost_matrix" : spec.reward();
  if (ModelTask(loaded.arch) != "classification") {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward_tune.pretrained_artifact ", spec.pretrained_artifact(), ": a ",
        ModelTask(loaded.arch), " model; reward tuning takes a detector or a classifier"));
  }
  if (reward_name != "cost_matrix") {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward_tune.reward: \"", reward_name, "\" does not score classes, and artifact ",
        spec.pretrained_artifact(), " is a classifier (use \"cost_matrix\")"));
  }
  const int64_t classes = loaded.arch.num_classes();
  RewardOptions reward_options;
  reward_options.num_classes = classes;
  if (spec.cost_matrix().empty()) {
    for (int64_t i = 0; i < classes; ++i) {
      reward_options.cost_matrix.emplace_back(classes, 1.0);
      reward_options.cost_matrix.back()[i] = 0;
    }
  } else {
    if (spec.cost_matrix_size() != classes * classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "reward_tune.cost_matrix: ", spec.cost_matrix_size(), " entries, but the classifier has ",
          classes, " classes (needs ", classes * classes, ", row-major cost[true][predicted])"));
    }
    for (int64_t i = 0; i < classes; ++i) {
      reward_options.cost_matrix.emplace_back(spec.cost_matrix().begin() + i * classes,
                                              spec.cost_matrix().begin() + (i + 1) * classes);
    }
  }
  absl::StatusOr<RewardFn> made = MakeReward(reward_name, reward_options);
  if (!made.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("reward_tune: ", made.status().message()));
  }
  const RewardFn reward = *made;
  OFFSITE_ASSIGN_OR_RETURN(ImageDataSet data, LoadImageData(spec.data(), device));
  if (data.num_classes > classes) {
    return absl::InvalidArgumentError(absl::StrCat("reward_tune.data: ", data.num_classes,
                                                   " classes, the classifier has ", classes));
  }
  std::shared_ptr<BlockModelImpl> model = loaded.model;
  model->to(device);
  ctx.Log(absl::StrCat("reward tuning a ", classes, "-class classifier on ",
                       data.train_images.size(0), " images; held out: ", data.test_images.size(0),
                       " test images"));

  const ReinforceOptions options = ToReinforceOptions(spec);
  const int64_t n = data.train_images.size(0);
  const int64_t batch = std::min<int64_t>(spec.batch_size(), n);
  const LogitsFn logits = [&](const at::Tensor& images) { return model->forward(images); };
  TuneTarget target;
  OFFSITE_ASSIGN_OR_RETURN(target.data_parallel, ConnectDataParallel(ctx));
  target.batch_size = batch;
  target.module = model.get();
  target.optimizer = MakeAdamW(*model, spec.learning_rate(), /*weight_decay=*/0, 0.999, false);
  target.step = [&](at::Generator generator) -> absl::StatusOr<ReinforceStepStats> {
    const torch::Tensor index =
        ShareOfBatch(target.data_parallel.get(),
                     torch::randperm(n, generator, torch::kLong).slice(0, 0, batch))
            .to(device);
    model->train();
    return ClassifierReinforceStep(logits, *target.optimizer,
                                   data.train_images.index_select(0, index),
                                   data.train_labels.index_select(0, index), reward, options,
                                   generator, GradientSyncOf(target.data_parallel.get()));
  };
  target.evaluate = [&](std::map<std::string, double>& metrics) -> absl::Status {
    model->eval();
    OFFSITE_ASSIGN_OR_RETURN(
        ClassifierEvaluation eval,
        EvaluateClassifier(logits, data.test_images, data.test_labels, reward, classes));
    AddClassifierMetrics("test_", eval, metrics);
    metrics["greedy_reward"] = eval.mean_reward;
    return absl::OkStatus();
  };
  target.save_model = [&](const std::string& dir, JobContext& job) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ModelToFile(loaded.arch, *model));
    const std::string path = dir + "/model.safetensors";
    OFFSITE_RETURN_IF_ERROR(WriteSafetensors(path, file));
    return job.AddArtifact(path, "model.safetensors").status();
  };
  return RunTuneLoop(spec, target, ctx);
}

absl::Status CheckPix2SeqArch(const v1::Pix2SeqArch& arch, const std::string& field) {
  for (int i = 0; i < arch.encoder_depths_size(); ++i) {
    OFFSITE_RETURN_IF_ERROR(
        CheckRange(absl::StrCat(field, ".encoder_depths[", i, "]"), arch.encoder_depths(i), 1, 64));
  }
  for (int i = 0; i < arch.encoder_dims_size(); ++i) {
    OFFSITE_RETURN_IF_ERROR(
        CheckRange(absl::StrCat(field, ".encoder_dims[", i, "]"), arch.encoder_dims(i), 1, 4096));
  }
  if (arch.encoder_depths_size() != arch.encoder_dims_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".encoder_depths: ", arch.encoder_depths_size(), " stages but ", field,
                     ".encoder_dims has ", arch.encoder_dims_size()));
  }
  OFFSITE_RETURN_IF_ERROR(
      CheckRange(field + ".encoder_stem_stride", arch.encoder_stem_stride(), 0, 64));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".decoder_layers", arch.decoder_layers(), 0, 64));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".decoder_width", arch.decoder_width(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".decoder_heads", arch.decoder_heads(), 0, 64));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".coordinate_bins", arch.coordinate_bins(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".max_boxes", arch.max_boxes(), 0, 1000));
  return CheckRange(field + ".dropout", arch.dropout(), 0, 0.9);
}

}  // namespace

v1::SceneData ResolveSceneData(v1::SceneData scenes) {
  if (scenes.train_scenes() == 0) scenes.set_train_scenes(20000);
  if (scenes.test_scenes() == 0) scenes.set_test_scenes(500);
  if (scenes.canvas_size() == 0) scenes.set_canvas_size(64);
  if (scenes.min_objects() == 0) scenes.set_min_objects(1);
  if (scenes.max_objects() == 0) scenes.set_max_objects(4);
  if (scenes.min_scale() == 0) scenes.set_min_scale(0.5);
  if (scenes.max_scale() == 0) scenes.set_max_scale(1.0);
  return scenes;
}

absl::Status ValidateSceneData(const v1::SceneData& scenes, const std::string& field) {
  OFFSITE_RETURN_IF_ERROR(ValidateImageData(scenes.items(), field + ".items"));
  OFFSITE_RETURN_IF_ERROR(RequireIdxFiles(scenes.items(), field + ".items"));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".train_scenes", scenes.train_scenes(), 0, 1e6));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".test_scenes", scenes.test_scenes(), 0, 1e6));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".canvas_size", scenes.canvas_size(), 0, 1024));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".min_objects", scenes.min_objects(), 0, 100));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".max_objects", scenes.max_objects(), 0, 100));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".min_scale", scenes.min_scale(), 0, 10));
  OFFSITE_RETURN_IF_ERROR(CheckRange(field + ".max_scale", scenes.max_scale(), 0, 10));
  const v1::SceneData resolved = ResolveSceneData(scenes);
  if (resolved.min_objects() > resolved.max_objects()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".min_objects: ", resolved.min_objects(),
                                                   " exceeds max_objects ",
                                                   resolved.max_objects()));
  }
  if (resolved.min_scale() > resolved.max_scale()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".min_scale: ", resolved.min_scale(),
                                                   " exceeds max_scale ", resolved.max_scale()));
  }
  const absl::Status options = ValidateSceneOptions(ToSceneOptions(resolved));
  if (!options.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", options.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<SceneSet> LoadScenes(const v1::SceneData& scenes, torch::Device device) {
  const v1::ImageData& items = scenes.items();
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages train,
      LoadIdxDataset(OrDefault(items.train_images(), "train-images-idx3-ubyte.gz"),
                     OrDefault(items.train_labels(), "train-labels-idx1-ubyte.gz"),
                     items.train_subset()));
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages test,
      LoadIdxDataset(OrDefault(items.test_images(), "t10k-images-idx3-ubyte.gz"),
                     OrDefault(items.test_labels(), "t10k-labels-idx1-ubyte.gz"),
                     items.test_subset()));
  KeepClasses(items.classes(), train);
  KeepClasses(items.classes(), test);
  if (train.images.size(0) == 0 || test.images.size(0) == 0) {
    return absl::InvalidArgumentError("scenes.items: no images left in a split");
  }
  SceneSet out;
  out.num_classes =
      items.classes_size() > 0 ? items.classes_size() : train.labels.max().item<int64_t>() + 1;
  SceneOptions options = ToSceneOptions(scenes);
  options.seed = scenes.seed() * 2;
  OFFSITE_ASSIGN_OR_RETURN(
      out.train, GenerateScenes(train.images, train.labels, scenes.train_scenes(), options));
  options.seed = scenes.seed() * 2 + 1;
  OFFSITE_ASSIGN_OR_RETURN(out.test,
                           GenerateScenes(test.images, test.labels, scenes.test_scenes(), options));
  out.train.images = out.train.images.to(device);
  out.test.images = out.test.images.to(device);
  return out;
}

absl::StatusOr<Pix2SeqConfig> ResolvePix2SeqConfig(const v1::Pix2SeqArch& arch,
                                                   const v1::SceneData& scenes, int64_t num_classes,
                                                   const std::string& field) {
  OFFSITE_RETURN_IF_ERROR(CheckPix2SeqArch(arch, field));
  Pix2SeqConfig config;
  config.in_channels = 1;
  config.image_size = scenes.canvas_size();
  if (arch.encoder_depths_size() > 0) {
    config.encoder_depths.assign(arch.encoder_depths().begin(), arch.encoder_depths().end());
    config.encoder_dims.assign(arch.encoder_dims().begin(), arch.encoder_dims().end());
  }
  if (arch.encoder_stem_stride() > 0) config.encoder_stem_stride = arch.encoder_stem_stride();
  if (arch.decoder_layers() > 0) config.n_layer = arch.decoder_layers();
  if (arch.decoder_width() > 0) config.n_embd = arch.decoder_width();
  if (arch.decoder_heads() > 0) config.n_head = arch.decoder_heads();
  if (arch.coordinate_bins() > 0) config.tokenizer.num_bins = arch.coordinate_bins();
  config.dropout = arch.dropout();
  config.tokenizer.num_classes = std::max<int64_t>(1, num_classes);
  config.tokenizer.canvas_size = static_cast<float>(scenes.canvas_size());
  config.max_objects = scenes.max_objects();
  if (arch.max_boxes() > 0) {
    if (arch.max_boxes() < scenes.max_objects()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".max_boxes: ", arch.max_boxes(), " is below the ",
                       scenes.max_objects(), " objects a scene may hold (scenes.max_objects)"));
    }
    config.max_objects = arch.max_boxes();
  }
  const absl::Status valid = ValidatePix2SeqConfig(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", valid.message()));
  return config;
}

absl::Status DetectionMleJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::DetectionMleSpec& spec = job_spec.detection_mle();
  const v1::DetectionMleSpec resolved = Resolved(spec);
  OFFSITE_RETURN_IF_ERROR(ValidateSceneData(spec.scenes(), "detection_mle.scenes"));
  // The class count is only known once the items are read; any count checks the arch.
  OFFSITE_RETURN_IF_ERROR(
      ResolvePix2SeqConfig(spec.arch(), resolved.scenes(), 10, "detection_mle.arch").status());
  OFFSITE_RETURN_IF_ERROR(CheckRange("detection_mle.epochs", spec.epochs(), 0, 10000));
  OFFSITE_RETURN_IF_ERROR(CheckRange("detection_mle.batch_size", spec.batch_size(), 0, 8192));
  OFFSITE_RETURN_IF_ERROR(CheckRange("detection_mle.learning_rate", spec.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("detection_mle.weight_decay", spec.weight_decay(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("detection_mle.warmup_epochs", spec.warmup_epochs(), 0, 10000));
  if (resolved.warmup_epochs() > resolved.epochs()) {
    return absl::InvalidArgumentError(
        absl::StrCat("detection_mle.warmup_epochs: ", resolved.warmup_epochs(), " exceeds epochs ",
                     resolved.epochs()));
  }
  return absl::OkStatus();
}

absl::Status DetectionMleJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::DetectionMleSpec spec = Resolved(job_spec.detection_mle());
  const torch::Device device(ctx.device());
  OFFSITE_ASSIGN_OR_RETURN(SceneSet data, LoadScenes(spec.scenes(), device));
  OFFSITE_ASSIGN_OR_RETURN(
      Pix2SeqConfig config,
      ResolvePix2SeqConfig(spec.arch(), spec.scenes(), data.num_classes, "detection_mle.arch"));
  torch::manual_seed(spec.seed());
  OFFSITE_ASSIGN_OR_RETURN(Pix2Seq model, MakePix2Seq(config));
  model->to(device);
  std::unique_ptr<torch::optim::AdamW> optimizer =
      MakeAdamW(*model, spec.learning_rate(), spec.weight_decay(), 0.999, /*exclude_grn=*/true);
  OFFSITE_ASSIGN_OR_RETURN(RewardFn reward, DetectionRewardFn(kDefaultDuplicateWeight));

  const int64_t n = data.train.images.size(0);
  const int64_t steps_per_epoch = (n + spec.batch_size() - 1) / spec.batch_size();
  const int64_t total_steps = steps_per_epoch * spec.epochs();
  const int64_t warmup_steps = steps_per_epoch * spec.warmup_epochs();
  ctx.Log(absl::StrCat("MLE training of a Pix2Seq detector on ", n, " train scenes of ",
                       data.num_classes, " classes; ", data.test.images.size(0), " test scenes"));

  double loss_sum = 0;
  int64_t loss_count = 0;
  TrainingLoopOptions loop;
  loop.num_examples = n;
  loop.batch_size = spec.batch_size();
  loop.epochs = spec.epochs();
  loop.seed = spec.seed();
  loop.checkpoint_format = "detection_mle_checkpoint";
  loop.device = device;
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel, ConnectDataParallel(ctx));
  loop.data_parallel = data_parallel.get();
  const GradientSync sync = GradientSyncOf(data_parallel.get());
  TrainingLoopHooks hooks;
  TrainModule(*model, *optimizer, loop, hooks);
  hooks.step = [&](const torch::Tensor& batch, int64_t global_step) -> absl::Status {
    SetLearningRate(*optimizer,
                    WarmupCosine(global_step, warmup_steps, total_steps, spec.learning_rate()));
    // A new object order every epoch, the same one when an epoch is replayed.
    const uint64_t order_seed = spec.seed() * 1000003 + global_step / steps_per_epoch;
    OFFSITE_ASSIGN_OR_RETURN(double loss,
                             DetectorMleStep(*model, *optimizer, data.train, batch, order_seed,
                                             /*max_grad_norm=*/1.0, sync));
    loss_sum += loss;
    ++loss_count;
    return absl::OkStatus();
  };
  hooks.end_epoch = [&](int64_t epoch) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(DetectorEvaluation eval, EvaluateDetector(*model, data.test, reward));
    std::map<std::string, double> metrics = {{"epoch", epoch},
                                             {"loss", loss_count ? loss_sum / loss_count : 0}};
    AddDetectionMetrics("test_", eval, metrics);
    ctx.ReportMetrics(epoch * steps_per_epoch, metrics);
    loss_sum = 0;
    loss_count = 0;
    return absl::OkStatus();
  };
  OFFSITE_RETURN_IF_ERROR(RunTrainingLoop(loop, hooks, ctx));

  torch::serialize::OutputArchive archive;
  OFFSITE_RETURN_IF_ERROR(SavePix2Seq(*model, archive));
  archive.write(kScenesKey, c10::IValue(TextProto(spec.scenes())));
  const std::string path = ctx.work_dir() + "/detector.pt";
  OFFSITE_RETURN_IF_ERROR(WriteArchiveFile(archive, path));
  return ctx.AddArtifact(path, "detector.pt").status();
}

absl::Status RewardTuneJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::RewardTuneSpec& spec = job_spec.reward_tune();
  if (spec.pretrained_artifact().empty()) {
    return absl::InvalidArgumentError(
        "reward_tune.pretrained_artifact: required (a detection_mle detector.pt or a finetune "
        "model.safetensors)");
  }
  if (!spec.reward().empty()) {
    const std::vector<std::string> names = RewardNames();
    if (std::find(names.begin(), names.end(), spec.reward()) == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("reward_tune.reward: \"", spec.reward(),
                                                     "\" is not one of ",
                                                     absl::StrJoin(names, ", ")));
    }
  }
  if (spec.has_scenes())
    OFFSITE_RETURN_IF_ERROR(ValidateSceneData(spec.scenes(), "reward_tune.scenes"));
  OFFSITE_RETURN_IF_ERROR(ValidateImageData(spec.data(), "reward_tune.data"));
  const int64_t entries = spec.cost_matrix_size();
  const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(entries))));
  if (side * side != entries) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward_tune.cost_matrix: ", entries, " entries is not a square matrix"));
  }
  for (int64_t i = 0; i < entries; ++i) {
    if (!std::isfinite(spec.cost_matrix(i))) {
      return absl::InvalidArgumentError(absl::StrCat("reward_tune.cost_matrix[", i / side, "][",
                                                     i % side, "] is ", spec.cost_matrix(i)));
    }
  }
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("reward_tune.duplicate_weight", spec.duplicate_weight(), 0, 100));
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("reward_tune.confidence_weight", spec.confidence_weight(), 0, 100));
  // 1 is refused: the leave-one-out baseline needs another sample.
  if (spec.samples_per_input() == 1) {
    return absl::InvalidArgumentError(
        "reward_tune.samples_per_input: 1 leaves no other sample for the baseline (at least 2)");
  }
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("reward_tune.samples_per_input", spec.samples_per_input(), 0, 1024));
  OFFSITE_RETURN_IF_ERROR(CheckRange("reward_tune.steps", spec.steps(), 0, 1e7));
  OFFSITE_RETURN_IF_ERROR(CheckRange("reward_tune.batch_size", spec.batch_size(), 0, 8192));
  OFFSITE_RETURN_IF_ERROR(CheckRange("reward_tune.learning_rate", spec.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("reward_tune.max_grad_norm", spec.max_grad_norm(), 0, 1e6));
  OFFSITE_RETURN_IF_ERROR(CheckRange("reward_tune.temperature", spec.temperature(), 0, 100));
  return CheckRange("reward_tune.eval_every", spec.eval_every(), 0, 1e7);
}

absl::Status RewardTuneJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::RewardTuneSpec spec = Resolved(job_spec.reward_tune());
  OFFSITE_ASSIGN_OR_RETURN(std::string path, ctx.ArtifactPath(spec.pretrained_artifact()));
  // A model file (safetensors) is a classifier; anything else must be a detector archive.
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  if (file.ok()) {
    absl::StatusOr<LoadedModel> loaded = ModelFromFile(*file);
    if (!loaded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("reward_tune.pretrained_artifact ",
                                                     spec.pretrained_artifact(), ": ",
                                                     loaded.status().message()));
    }
    return TuneClassifier(spec, *std::move(loaded), ctx);
  }
  torch::serialize::InputArchive archive;
  absl::Status read = ReadArchiveFile(path, &archive);
  absl::StatusOr<Pix2Seq> model = read.ok() ? LoadPix2Seq(archive) : absl::StatusOr<Pix2Seq>(read);
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward_tune.pretrained_artifact ", spec.pretrained_artifact(),
                     ": neither a detection_mle detector.pt nor a finetune model.safetensors (",
                     model.status().message(), ")"));
  }
  v1::SceneData scenes;
  c10::IValue text;
  if (archive.try_read(kScenesKey, text) && text.isString()) {
    OFFSITE_RETURN_IF_ERROR(ParseTextProto(text.toStringRef(), "detector scenes", &scenes));
  }
  return TuneDetector(spec, *std::move(model), scenes, ctx);
}

}  // namespace offsite
