#include "server/jobs/finetune_job.h"

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/proto_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "models/lr_schedule.h"
#include "models/offsite_tuning.h"
#include "server/jobs/convnext_jobs_common.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

v1::FinetuneSpec Resolved(v1::FinetuneSpec spec) {
  if (spec.epochs() == 0) spec.set_epochs(30);
  if (spec.batch_size() == 0) spec.set_batch_size(128);
  if (spec.learning_rate() == 0) spec.set_learning_rate(2e-3);
  if (spec.weight_decay() == 0) spec.set_weight_decay(0.05);
  if (spec.warmup_epochs() == 0) spec.set_warmup_epochs(1);
  return spec;
}

// Indices of `count` labelled examples, as equal a share of every class as
// the data allows, chosen by `seed`.
torch::Tensor BalancedSubset(const torch::Tensor& labels, int64_t num_classes, int64_t count,
                             uint64_t seed) {
  torch::Generator generator = at::detail::createCPUGenerator(seed);
  torch::Tensor cpu_labels = labels.cpu();
  torch::Tensor order = torch::randperm(cpu_labels.size(0), generator, torch::kLong);
  torch::Tensor shuffled = cpu_labels.index_select(0, order);
  std::vector<int64_t> taken(num_classes, 0), chosen;
  auto label = shuffled.accessor<int64_t, 1>();
  auto index = order.accessor<int64_t, 1>();
  // Round-robin quota: class c gets count/num_classes, the first count%num_classes one more.
  for (int64_t i = 0; i < shuffled.size(0) && static_cast<int64_t>(chosen.size()) < count; ++i) {
    const int64_t c = label[i];
    const int64_t quota = count / num_classes + (c < count % num_classes ? 1 : 0);
    if (taken[c] < quota) {
      ++taken[c];
      chosen.push_back(index[i]);
    }
  }
  return torch::tensor(chosen, torch::kLong).to(labels.device());
}

double TopOneAccuracy(ConvNextV2& model, const torch::Tensor& images, const torch::Tensor& labels) {
  model->eval();
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t start = 0; start < images.size(0); start += 500) {
    const int64_t end = std::min<int64_t>(start + 500, images.size(0));
    correct += model->forward(images.slice(0, start, end))
                   .argmax(1)
                   .eq(labels.slice(0, start, end))
                   .sum()
                   .item<int64_t>();
  }
  return images.size(0) ? static_cast<double>(correct) / images.size(0) : 0;
}

}  // namespace

absl::Status FinetuneJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::FinetuneSpec& spec = job_spec.finetune();
  OFFSITE_RETURN_IF_ERROR(ValidateTrainingSpec(spec, Resolved(spec), "finetune"));
  OFFSITE_RETURN_IF_ERROR(CheckRange("finetune.label_subset", spec.label_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange("finetune.label_smoothing", spec.label_smoothing(), 0, 0.5));
  OFFSITE_RETURN_IF_ERROR(CheckRange("finetune.layer_decay", spec.layer_decay(), 0, 1));
  if (spec.linear_probe() && spec.pretrained_artifact().empty()) {
    return absl::InvalidArgumentError(
        "finetune.linear_probe: needs finetune.pretrained_artifact (a probe of random weights "
        "measures nothing)");
  }
  return absl::OkStatus();
}

absl::Status FinetuneJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::FinetuneSpec spec = Resolved(job_spec.finetune());
  const torch::Device device(ctx.device());
  OFFSITE_ASSIGN_OR_RETURN(ImageDataSet data, LoadImageData(spec.data(), device));
  OFFSITE_ASSIGN_OR_RETURN(
      ConvNextV2Config config,
      ResolveArch(spec.arch(), data.train_images.size(1), std::max<int64_t>(2, data.num_classes)));

  torch::Tensor train_index =
      spec.label_subset() > 0
          ? BalancedSubset(data.train_labels, config.num_classes, spec.label_subset(), spec.seed())
          : torch::arange(data.train_images.size(0),
                          torch::TensorOptions(torch::kLong).device(device));
  torch::Tensor train_images = data.train_images.index_select(0, train_index);
  torch::Tensor train_labels = data.train_labels.index_select(0, train_index);

  torch::manual_seed(spec.seed());
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2 model, MakeConvNextV2(config));
  if (!spec.pretrained_artifact().empty()) {
    OFFSITE_ASSIGN_OR_RETURN(std::string path, ctx.ArtifactPath(spec.pretrained_artifact()));
    torch::serialize::InputArchive archive;
    absl::Status loaded = ReadArchiveFile(path, &archive);
    if (loaded.ok()) loaded = LoadConvNextV2Backbone(config, *model, archive);
    if (!loaded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "finetune.pretrained_artifact ", spec.pretrained_artifact(), ": ", loaded.message()));
    }
    ctx.Log(absl::StrCat("loaded the pretrained encoder from ", spec.pretrained_artifact()));
  }
  if (spec.linear_probe()) {
    // Only the head (its LayerNorm and Linear) learns; the encoder is frozen.
    for (auto& item : model->named_parameters()) {
      const bool head =
          absl::StartsWith(item.key(), "head.") || absl::StartsWith(item.key(), "norm.");
      item.value().set_requires_grad(head);
    }
  }
  model->to(device);
  std::function<double(const std::string&)> layer_decay;
  if (spec.layer_decay() > 0 && spec.layer_decay() < 1) {
    layer_decay = [&config, &spec](const std::string& name) {
      return LayerDecayScale(config, name, spec.layer_decay());
    };
  }
  std::unique_ptr<torch::optim::AdamW> optimizer = MakeAdamW(
      *model, spec.learning_rate(), spec.weight_decay(), 0.999, /*exclude_grn=*/true, layer_decay);
  const std::vector<double> lr_scales = LrScales(*optimizer);

  const int64_t n = train_images.size(0);
  const int64_t steps_per_epoch = (n + spec.batch_size() - 1) / spec.batch_size();
  const int64_t total_steps = steps_per_epoch * spec.epochs();
  const int64_t warmup_steps = steps_per_epoch * spec.warmup_epochs();
  ctx.Log(absl::StrCat(spec.linear_probe() ? "linear probe" : "fine-tuning", " on ", n,
                       " labelled images, ", config.num_classes, " classes, ",
                       data.test_images.size(0), " test images"));

  double loss_sum = 0, best = 0;
  int64_t loss_count = 0;
  TrainingLoopOptions loop;
  loop.num_examples = n;
  loop.batch_size = spec.batch_size();
  loop.epochs = spec.epochs();
  loop.seed = spec.seed();
  loop.checkpoint_format = "finetune_checkpoint";
  loop.device = device;
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel, ConnectDataParallel(ctx));
  loop.data_parallel = data_parallel.get();
  const GradientSync sync = GradientSyncOf(data_parallel.get());
  TrainingLoopHooks hooks;
  TrainModule(*model, *optimizer, loop, hooks);  // save / load replaced below: they keep `best` too
  hooks.step = [&](const torch::Tensor& batch, int64_t global_step) -> absl::Status {
    model->train();
    SetLearningRate(*optimizer,
                    WarmupCosine(global_step, warmup_steps, total_steps, spec.learning_rate()),
                    lr_scales);
    torch::Tensor logits = model->forward(train_images.index_select(0, batch));
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits, train_labels.index_select(0, batch),
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(spec.label_smoothing()));
    optimizer->zero_grad();
    loss.backward();
    OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, loop.parameters));
    optimizer->step();
    loss_sum += loss.item<double>();
    ++loss_count;
    return absl::OkStatus();
  };
  hooks.end_epoch = [&](int64_t epoch) -> absl::Status {
    const double accuracy = TopOneAccuracy(model, data.test_images, data.test_labels);
    best = std::max(best, accuracy);
    ctx.ReportMetrics(epoch * steps_per_epoch, {{"epoch", epoch},
                                                {"loss", loss_count ? loss_sum / loss_count : 0},
                                                {"test_accuracy", accuracy},
                                                {"best_test_accuracy", best}});
    loss_sum = 0;
    loss_count = 0;
    return absl::OkStatus();
  };
  hooks.save = [&](torch::serialize::OutputArchive& archive) {
    WriteTrainingState(archive, *model, *optimizer);
    archive.write("best", c10::IValue(best));
  };
  hooks.load = [&](torch::serialize::InputArchive& archive) {
    ReadTrainingState(archive, *model, *optimizer);
    c10::IValue stored_best;
    archive.read("best", stored_best);
    best = stored_best.toDouble();
  };
  OFFSITE_RETURN_IF_ERROR(RunTrainingLoop(loop, hooks, ctx));

  torch::serialize::OutputArchive classifier;
  OFFSITE_RETURN_IF_ERROR(SaveConvNextV2(config, *model, classifier));
  const std::string path = ctx.work_dir() + "/classifier.pt";
  OFFSITE_RETURN_IF_ERROR(WriteArchiveFile(classifier, path));
  OFFSITE_RETURN_IF_ERROR(ctx.AddArtifact(path, "classifier.pt").status());
  // The same weights as a model file, registrable for Offsite-Tuning
  // (`offsite models add NAME --artifact ID`).
  v1::ModelArch arch;
  *arch.mutable_convnext_v2() = spec.arch();
  arch.set_in_channels(static_cast<int32_t>(config.in_channels));
  arch.set_num_classes(static_cast<int32_t>(config.num_classes));
  OFFSITE_ASSIGN_OR_RETURN(arch, ResolveModelArch(arch));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ModelToFile(arch, *model));
  const std::string model_path = ctx.work_dir() + "/model.safetensors";
  OFFSITE_RETURN_IF_ERROR(WriteSafetensors(model_path, file));
  return ctx.AddArtifact(model_path, "model.safetensors").status();
}

}  // namespace offsite
