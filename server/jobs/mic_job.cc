#include "server/jobs/mic_job.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/domain_shift.h"
#include "common/file_util.h"
#include "common/idx.h"
#include "common/image_data.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "models/lr_schedule.h"
#include "models/mic.h"
#include "models/model_arch.h"
#include "models/optimizer.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

constexpr char kCheckpointFormat[] = "mic_checkpoint";
constexpr int64_t kCheckpointVersion = 1;
// Single items are placed on a canvas of this side (Fashion-MNIST's 28 fits).
constexpr int64_t kItemCanvas = 32;

bool IsSegmentation(const v1::MicSpec& spec) { return spec.task() == "segmentation"; }

v1::MicSpec Resolved(v1::MicSpec spec) {
  if (spec.task().empty()) spec.set_task("classification");
  if (spec.method().empty()) spec.set_method("mic");
  const bool segmentation = IsSegmentation(spec);
  v1::TargetDomain* target = spec.mutable_target();
  if (target->clutter() == 0) target->set_clutter(0.5);
  if (target->noise() == 0) target->set_noise(0.1);
  if (target->blur() == 0) target->set_blur(0.8);
  if (target->seed() == 0) target->set_seed(spec.seed() + 1);
  if (spec.canvas_size() == 0) spec.set_canvas_size(64);
  if (spec.min_objects() == 0) spec.set_min_objects(2);
  if (spec.max_objects() == 0) spec.set_max_objects(std::max(4, spec.min_objects()));
  if (spec.steps() == 0) spec.set_steps(2000);
  if (spec.batch_size() == 0) spec.set_batch_size(32);
  if (spec.learning_rate() == 0) spec.set_learning_rate(1e-3);
  if (spec.weight_decay() == 0) spec.set_weight_decay(0.01);
  if (spec.warmup_steps() == 0) spec.set_warmup_steps(std::min(100, spec.steps()));
  if (spec.ema_alpha() == 0) spec.set_ema_alpha(segmentation ? 0.999 : 0.9);
  if (spec.pseudo_label_threshold() == 0) spec.set_pseudo_label_threshold(0.968);
  const int64_t side = segmentation ? spec.canvas_size() : kItemCanvas;
  if (spec.mask_block_size() == 0) {
    spec.set_mask_block_size(static_cast<int32_t>(std::max<int64_t>(2, side / 16)));
  }
  if (spec.mask_ratio() == 0) spec.set_mask_ratio(0.7);
  if (spec.mic_weight() == 0) spec.set_mic_weight(1.0);
  if (spec.eval_every() == 0) spec.set_eval_every(200);
  return spec;
}

MicOptions ToOptions(const v1::MicSpec& spec) {
  MicOptions options;
  options.task = IsSegmentation(spec) ? MicTask::kSegmentation : MicTask::kClassification;
  options.method = ParseMicMethod(spec.method()).value();
  options.ema_alpha = spec.ema_alpha();
  options.tau = spec.pseudo_label_threshold();
  options.mask_block_size = spec.mask_block_size();
  options.mask_ratio = spec.mask_ratio();
  options.mic_weight = spec.mic_weight();
  options.no_masking = spec.no_masking();
  options.no_ema = spec.no_ema();
  options.no_quality_weight = spec.no_quality_weight();
  options.no_augmentation = spec.no_augmentation();
  return options;
}

// Both domains, normalised to [-1, 1] (2x - 1), channels-last.
struct Domains {
  torch::Tensor source_images, source_labels;
  torch::Tensor target_train_images;
  torch::Tensor target_test_images, target_test_labels;
  int64_t num_classes = 0;
};

torch::Tensor Normalise(const torch::Tensor& images, torch::Device device) {
  return (images * 2 - 1).contiguous(torch::MemoryFormat::ChannelsLast).to(device);
}

std::string OrDefault(const std::string& value, const std::string& fashion_mnist_file) {
  return value.empty() ? FashionMnistFile(fashion_mnist_file) : value;
}

absl::StatusOr<Domains> RenderedDomains(const v1::MicSpec& spec) {
  const v1::ImageData& data = spec.data();
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages train,
      LoadIdxDataset(OrDefault(data.train_images(), "train-images-idx3-ubyte.gz"),
                     OrDefault(data.train_labels(), "train-labels-idx1-ubyte.gz"),
                     data.train_subset()));
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages test, LoadIdxDataset(OrDefault(data.test_images(), "t10k-images-idx3-ubyte.gz"),
                                         OrDefault(data.test_labels(), "t10k-labels-idx1-ubyte.gz"),
                                         data.test_subset()));
  const int64_t half = train.images.size(0) / 2;
  if (half == 0 || test.images.size(0) == 0) {
    return absl::InvalidArgumentError("mic.data: needs at least 2 training and 1 test image");
  }
  torch::Tensor source_items = train.images.slice(0, 0, half);
  torch::Tensor source_item_labels = train.labels.slice(0, 0, half);
  torch::Tensor target_items = train.images.slice(0, half, 2 * half);
  torch::Tensor target_item_labels = train.labels.slice(0, half, 2 * half);

  DomainShiftOptions shift;
  shift.invert = !spec.target().keep_contrast();
  shift.clutter = spec.target().clutter();
  shift.noise = spec.target().noise();
  shift.blur = spec.target().blur();
  shift.seed = spec.target().seed();
  DomainShiftOptions test_shift = shift;
  test_shift.seed = StreamSeed(shift.seed, 1);

  Domains domains;
  const uint64_t seed = spec.seed();
  if (!IsSegmentation(spec)) {
    domains.num_classes =
        std::max(train.labels.max().item<int64_t>(), test.labels.max().item<int64_t>()) + 1;
    // Source: items at their size; target: rescaled 0.6..1, then re-rendered.
    domains.source_images = PlaceItems(source_items, kItemCanvas, 1.0, 1.0, StreamSeed(seed, 10));
    domains.source_labels = source_item_labels;
    domains.target_train_images = RenderTargetDomain(
        PlaceItems(target_items, kItemCanvas, 0.6, 1.0, StreamSeed(seed, 11)), shift);
    domains.target_test_images = RenderTargetDomain(
        PlaceItems(test.images, kItemCanvas, 0.6, 1.0, StreamSeed(seed, 12)), test_shift);
    domains.target_test_labels = test.labels;
    return domains;
  }
  domains.num_classes =
      std::max(train.labels.max().item<int64_t>(), test.labels.max().item<int64_t>()) + 2;
  SegmentationSceneOptions scenes;
  scenes.canvas_size = spec.canvas_size();
  scenes.min_objects = spec.min_objects();
  scenes.max_objects = spec.max_objects();
  // Items scale with the canvas (14..24 px at 64); the target's range is wider.
  const double unit = spec.canvas_size() / 56.0;
  scenes.min_scale = 0.6 * unit;
  scenes.max_scale = 1.0 * unit;
  const double objects = (spec.min_objects() + spec.max_objects()) / 2.0;
  auto scene_count = [&](int64_t items) {
    return std::max<int64_t>(1, std::llround(items / objects));
  };
  scenes.seed = StreamSeed(seed, 20);
  OFFSITE_ASSIGN_OR_RETURN(
      SegmentationScenes source,
      GenerateSegmentationScenes(source_items, source_item_labels, scene_count(half), scenes));
  scenes.min_scale = 0.5 * unit;
  scenes.max_scale = 1.1 * unit;
  scenes.seed = StreamSeed(seed, 21);
  OFFSITE_ASSIGN_OR_RETURN(
      SegmentationScenes target_train,
      GenerateSegmentationScenes(target_items, target_item_labels, scene_count(half), scenes));
  scenes.seed = StreamSeed(seed, 22);
  OFFSITE_ASSIGN_OR_RETURN(SegmentationScenes target_test,
                           GenerateSegmentationScenes(test.images, test.labels,
                                                      scene_count(test.images.size(0)), scenes));
  domains.source_images = source.images;
  domains.source_labels = source.classes;
  domains.target_train_images = RenderTargetDomain(target_train.images, shift);
  domains.target_test_images = RenderTargetDomain(target_test.images, test_shift);
  domains.target_test_labels = target_test.classes;
  return domains;
}

absl::StatusOr<Domains> FolderDomains(const v1::MicSpec& spec) {
  Domains domains;
  if (!IsSegmentation(spec)) {
    OFFSITE_ASSIGN_OR_RETURN(FolderImages source,
                             LoadClassificationFolder(spec.source_dir(), kItemCanvas, {}));
    OFFSITE_ASSIGN_OR_RETURN(
        FolderImages target_train,
        LoadClassificationFolder(spec.target_train_dir(), kItemCanvas, source.class_names));
    OFFSITE_ASSIGN_OR_RETURN(
        FolderImages target_test,
        LoadClassificationFolder(spec.target_test_dir(), kItemCanvas, source.class_names));
    domains.num_classes = static_cast<int64_t>(std::max<size_t>(2, source.class_names.size()));
    domains.source_images = source.images;
    domains.source_labels = source.labels;
    domains.target_train_images = target_train.images;
    domains.target_test_images = target_test.images;
    domains.target_test_labels = target_test.labels;
    return domains;
  }
  const int64_t side = spec.canvas_size();
  OFFSITE_ASSIGN_OR_RETURN(FolderImages source, LoadSegmentationFolder(spec.source_dir(), side, 0));
  domains.num_classes = std::max<int64_t>(2, source.labels.max().item<int64_t>() + 1);
  OFFSITE_ASSIGN_OR_RETURN(
      FolderImages target_train,
      LoadSegmentationFolder(spec.target_train_dir(), side, domains.num_classes));
  OFFSITE_ASSIGN_OR_RETURN(
      FolderImages target_test,
      LoadSegmentationFolder(spec.target_test_dir(), side, domains.num_classes));
  domains.source_images = source.images;
  domains.source_labels = source.labels;
  domains.target_train_images = target_train.images;
  domains.target_test_images = target_test.images;
  domains.target_test_labels = target_test.labels;
  return domains;
}

// Running means of the step statistics between two evaluations.
struct Running {
  double source_loss = 0, pseudo_label_loss = 0, mic_loss = 0, confidence = 0, quality = 0;
  int64_t count = 0;

  void Add(const MicStepStats& stats) {
    source_loss += stats.source_loss;
    pseudo_label_loss += stats.pseudo_label_loss;
    mic_loss += stats.mic_loss;
    confidence += stats.confidence;
    quality += stats.quality;
    ++count;
  }
  std::map<std::string, double> Means() const {
    const double n = std::max<int64_t>(count, 1);
    return {{"source_loss", source_loss / n},
            {"pseudo_label_loss", pseudo_label_loss / n},
            {"mic_loss", mic_loss / n},
            {"pseudo_label_confidence", confidence / n},
            {"quality_weight", quality / n}};
  }
  void Save(torch::serialize::OutputArchive& archive) const {
    archive.write("running", torch::tensor({source_loss, pseudo_label_loss, mic_loss, confidence,
                                            quality, static_cast<double>(count)},
                                           torch::kDouble));
  }
  void Load(torch::serialize::InputArchive& archive) {
    torch::Tensor values;
    archive.read("running", values);
    auto v = values.accessor<double, 1>();
    source_loss = v[0];
    pseudo_label_loss = v[1];
    mic_loss = v[2];
    confidence = v[3];
    quality = v[4];
    count = static_cast<int64_t>(v[5]);
  }
};

}  // namespace

absl::Status MicJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::MicSpec& spec = job_spec.mic();
  const v1::MicSpec resolved = Resolved(spec);
  if (absl::Status task = ParseMicTask(resolved.task()).status(); !task.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("mic.", task.message()));
  }
  if (absl::Status method = ParseMicMethod(resolved.method()).status(); !method.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("mic.", method.message()));
  }
  OFFSITE_RETURN_IF_ERROR(ValidateArch(spec.arch(), "mic.arch"));
  OFFSITE_RETURN_IF_ERROR(ValidateImageData(spec.data(), "mic.data"));
  OFFSITE_RETURN_IF_ERROR(RequireIdxFiles(spec.data(), "mic.data"));
  if (spec.data().classes_size() > 0 || spec.data().pad_to() != 0) {
    return absl::InvalidArgumentError(
        "mic.data: classes and pad_to are not supported by mic jobs (items are placed on their "
        "own canvas)");
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.target.clutter", spec.target().clutter(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.target.noise", spec.target().noise(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.target.blur", spec.target().blur(), 0, 8));
  const int folders = !spec.source_dir().empty() + !spec.target_train_dir().empty() +
                      !spec.target_test_dir().empty();
  if (folders != 0 && folders != 3) {
    return absl::InvalidArgumentError(
        "mic.source_dir: source_dir, target_train_dir and target_test_dir go together (set all "
        "three or none)");
  }
  for (const auto& [field, dir] :
       {std::pair<std::string, std::string>{"mic.source_dir", spec.source_dir()},
        {"mic.target_train_dir", spec.target_train_dir()},
        {"mic.target_test_dir", spec.target_test_dir()}}) {
    if (!dir.empty() && !FileExists(dir)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"", dir, "\" does not exist on the server"));
    }
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.canvas_size", spec.canvas_size(), 0, 512));
  if (spec.canvas_size() != 0 && spec.canvas_size() < 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("mic.canvas_size: ", spec.canvas_size(), " is below 16"));
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.min_objects", spec.min_objects(), 0, 16));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.max_objects", spec.max_objects(), 0, 16));
  if (resolved.max_objects() < resolved.min_objects()) {
    return absl::InvalidArgumentError(absl::StrCat("mic.max_objects: ", resolved.max_objects(),
                                                   " is below min_objects ",
                                                   resolved.min_objects()));
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.steps", spec.steps(), 0, 1e7));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.batch_size", spec.batch_size(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.learning_rate", spec.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.weight_decay", spec.weight_decay(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.warmup_steps", spec.warmup_steps(), 0, resolved.steps()));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.ema_alpha", spec.ema_alpha(), 0, 0.999999));
  OFFSITE_RETURN_IF_ERROR(
      CheckRange("mic.pseudo_label_threshold", spec.pseudo_label_threshold(), 0, 1));
  const int64_t side = IsSegmentation(resolved) ? resolved.canvas_size() : kItemCanvas;
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.mask_block_size", spec.mask_block_size(), 0, side));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.mask_ratio", spec.mask_ratio(), 0, 0.99));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.mic_weight", spec.mic_weight(), 0, 100));
  OFFSITE_RETURN_IF_ERROR(CheckRange("mic.eval_every", spec.eval_every(), 0, 1e7));
  return absl::OkStatus();
}

absl::Status MicJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::MicSpec spec = Resolved(job_spec.mic());
  const torch::Device device(ctx.device());
  const MicOptions options = ToOptions(spec);
  const bool segmentation = options.task == MicTask::kSegmentation;

  OFFSITE_ASSIGN_OR_RETURN(Domains domains,
                           spec.source_dir().empty() ? RenderedDomains(spec) : FolderDomains(spec));
  const torch::Tensor source_images = Normalise(domains.source_images, device);
  const torch::Tensor source_labels = domains.source_labels.to(device);
  const torch::Tensor target_images = Normalise(domains.target_train_images, device);
  const torch::Tensor test_images = Normalise(domains.target_test_images, device);
  const torch::Tensor test_labels = domains.target_test_labels.to(device);
  ctx.Log(absl::StrCat("mic ", spec.task(), " / ", spec.method(), ": ", source_images.size(0),
                       " source, ", target_images.size(0), " target train, ", test_images.size(0),
                       " target test images of ", source_images.size(2), " px, ",
                       domains.num_classes, " classes"));

  MicNetConfig config;
  config.task = options.task;
  OFFSITE_ASSIGN_OR_RETURN(config.backbone, ResolveArch(spec.arch(), 1, domains.num_classes));
  config.decoder_dim = std::max<int64_t>(16, config.backbone.dims.front());
  torch::manual_seed(spec.seed());
  OFFSITE_ASSIGN_OR_RETURN(MicNet student, MakeMicNet(config));
  OFFSITE_ASSIGN_OR_RETURN(MicNet teacher, MakeMicNet(config));
  student->to(device);
  teacher->to(device);
  InitTeacher(*teacher, *student);
  std::unique_ptr<torch::optim::AdamW> optimizer =
      MakeAdamW(*student, spec.learning_rate(), spec.weight_decay(), 0.999, /*exclude_grn=*/true);

  Running running;
  int64_t start = 0;
  const std::string checkpoint_path = ctx.work_dir() + "/checkpoint.pt";
  {
    torch::serialize::InputArchive archive;
    absl::Status loaded =
        LoadArchive(checkpoint_path, kCheckpointFormat, kCheckpointVersion, &archive);
    if (loaded.ok()) {
      c10::IValue step;
      archive.read("step", step);
      start = step.toInt();
      torch::serialize::InputArchive student_archive, teacher_archive, optimizer_archive;
      archive.read("student", student_archive);
      archive.read("teacher", teacher_archive);
      archive.read("optimizer", optimizer_archive);
      student->load(student_archive);
      teacher->load(teacher_archive);
      optimizer->load(optimizer_archive);
      running.Load(archive);
      ctx.Log(absl::StrCat("resumed from checkpoint at step ", start));
    } else if (!absl::IsNotFound(loaded)) {
      return loaded;
    }
  }
  // Data-parallel: the teacher is kept identical on every rank with the student.
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> dp, ConnectDataParallel(ctx));
  std::vector<torch::Tensor> kept_equal = student->buffers();
  for (const torch::Tensor& t : teacher->parameters()) kept_equal.push_back(t);
  for (const torch::Tensor& t : teacher->buffers()) kept_equal.push_back(t);
  OFFSITE_RETURN_IF_ERROR(
      StartDataParallel(dp.get(), student->parameters(), kept_equal, spec.batch_size()));
  const GradientSync sync = GradientSyncOf(dp.get());
  auto checkpoint = [&](int64_t next_step) {
    // Ranks hold the same state; rank 0's checkpoint is the one kept.
    if (dp != nullptr && dp->rank() != 0) return absl::OkStatus();
    torch::serialize::OutputArchive archive, student_archive, teacher_archive, optimizer_archive;
    archive.write("step", c10::IValue(next_step));
    student->save(student_archive);
    teacher->save(teacher_archive);
    optimizer->save(optimizer_archive);
    archive.write("student", student_archive);
    archive.write("teacher", teacher_archive);
    archive.write("optimizer", optimizer_archive);
    running.Save(archive);
    return SaveArchive(archive, kCheckpointFormat, kCheckpointVersion, checkpoint_path);
  };

  std::map<std::string, double> metrics;
  auto evaluate = [&](int64_t step) {
    MicEvaluation eval = EvaluateMic(student, test_images, test_labels);
    metrics = running.Means();
    metrics["step"] = static_cast<double>(step);
    metrics["target_accuracy"] = eval.accuracy;
    metrics["target_confidence"] = eval.confidence;
    if (segmentation) {
      metrics["target_miou"] = eval.miou;
      for (size_t k = 0; k < eval.class_iou.size(); ++k) {
        if (!std::isnan(eval.class_iou[k]))
          metrics[absl::StrCat("target_iou_", k)] = eval.class_iou[k];
      }
    }
    ctx.ReportMetrics(step, metrics);
    running = Running();
  };

  const int64_t steps = spec.steps(), batch = spec.batch_size();
  const int64_t n_source = source_images.size(0), n_target = target_images.size(0);
  for (int64_t step = start; step < steps; ++step) {
    if (ctx.cancelled()) return absl::CancelledError("cancelled");
    // Every random draw of a step depends only on (seed, step).
    const uint64_t step_seed = StreamSeed(spec.seed(), static_cast<uint64_t>(step));
    torch::manual_seed(step_seed);
    torch::Generator generator = at::detail::createCPUGenerator(step_seed);
    // Every rank draws the same global batch and trains on its share.
    torch::Tensor source_index = ShareOfBatch(
        dp.get(), torch::randint(n_source, {batch}, generator, torch::kLong).to(device));
    torch::Tensor target_index = ShareOfBatch(
        dp.get(), torch::randint(n_target, {batch}, generator, torch::kLong).to(device));
    MicBatch mic_batch;
    mic_batch.source_images = source_images.index_select(0, source_index);
    mic_batch.source_labels = source_labels.index_select(0, source_index);
    mic_batch.target_images = target_images.index_select(0, target_index);
    SetLearningRate(*optimizer,
                    WarmupCosine(step, spec.warmup_steps(), steps, spec.learning_rate()));
    OFFSITE_ASSIGN_OR_RETURN(
        MicStepStats stats,
        MicTrainingStep(student, teacher, *optimizer, mic_batch, step, options, generator, sync));
    running.Add(stats);
    ctx.ReportProgress("training", step + 1, steps);
    const bool eval_now = (step + 1) % spec.eval_every() == 0 || step + 1 == steps;
    if (eval_now || ctx.CheckpointDue()) OFFSITE_RETURN_IF_ERROR(checkpoint(step + 1));
    if (eval_now) evaluate(step + 1);
  }
  if (metrics.empty()) evaluate(steps);  // resumed after the last step

  torch::serialize::OutputArchive model_archive;
  OFFSITE_RETURN_IF_ERROR(SaveMicNet(student, model_archive));
  const std::string model_path = ctx.work_dir() + "/mic_student.pt";
  OFFSITE_RETURN_IF_ERROR(WriteArchiveFile(model_archive, model_path));
  OFFSITE_RETURN_IF_ERROR(ctx.AddArtifact(model_path, "mic_student.pt").status());
  std::string text;
  for (const auto& [name, value] : metrics) absl::StrAppend(&text, name, " ", value, "\n");
  const std::string metrics_path = ctx.work_dir() + "/mic_metrics.txt";
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(metrics_path, text));
  return ctx.AddArtifact(metrics_path, "mic_metrics.txt").status();
}

}  // namespace offsite
