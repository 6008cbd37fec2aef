#include "server/jobs/fcmae_job.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/png_image.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "models/fcmae.h"
#include "models/lr_schedule.h"
#include "server/jobs/convnext_jobs_common.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

// The spec with every default filled in.
v1::FcmaeSpec Resolved(v1::FcmaeSpec spec) {
  if (spec.epochs() == 0) spec.set_epochs(10);
  if (spec.batch_size() == 0) spec.set_batch_size(128);
  if (spec.learning_rate() == 0) spec.set_learning_rate(1.5e-4 * spec.batch_size() / 256);
  if (spec.weight_decay() == 0) spec.set_weight_decay(0.05);
  if (spec.warmup_epochs() == 0) spec.set_warmup_epochs(1);
  if (spec.mask_ratio() == 0) spec.set_mask_ratio(0.6);
  if (spec.decoder_dim() == 0) spec.set_decoder_dim(512);
  if (spec.decoder_depth() == 0) spec.set_decoder_depth(1);
  if (spec.sample_images() == 0) spec.set_sample_images(8);
  return spec;
}

FcmaeOptions ToOptions(const v1::FcmaeSpec& spec) {
  FcmaeOptions options;
  options.mask_ratio = spec.mask_ratio();
  options.patch_size = spec.patch_size();
  options.decoder_dim = spec.decoder_dim();
  options.decoder_depth = spec.decoder_depth();
  options.norm_pix_loss = !spec.no_norm_pix_loss();
  options.masked_conv = !spec.no_masked_conv();
  return options;
}

}  // namespace

absl::Status FcmaeJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::FcmaeSpec& spec = job_spec.fcmae();
  const v1::FcmaeSpec resolved = Resolved(spec);
  OFFSITE_RETURN_IF_ERROR(ValidateTrainingSpec(spec, resolved, "fcmae"));
  OFFSITE_RETURN_IF_ERROR(CheckRange("fcmae.mask_ratio", spec.mask_ratio(), 0, 0.99));
  OFFSITE_RETURN_IF_ERROR(CheckRange("fcmae.decoder_dim", spec.decoder_dim(), 0, 4096));
  OFFSITE_RETURN_IF_ERROR(CheckRange("fcmae.decoder_depth", spec.decoder_depth(), 0, 16));
  OFFSITE_RETURN_IF_ERROR(CheckRange("fcmae.sample_images", spec.sample_images(), 0, 64));
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config encoder, ResolveArch(spec.arch(), 1, 0));
  absl::Status options = ValidateFcmaeOptions(encoder, ToOptions(resolved));
  if (!options.ok()) return absl::InvalidArgumentError(absl::StrCat("fcmae: ", options.message()));
  return absl::OkStatus();
}

absl::Status FcmaeJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::FcmaeSpec spec = Resolved(job_spec.fcmae());
  const torch::Device device(ctx.device());
  OFFSITE_ASSIGN_OR_RETURN(ImageDataSet data, LoadImageData(spec.data(), device));
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config encoder_config,
                           ResolveArch(spec.arch(), data.train_images.size(1), 0));
  torch::manual_seed(spec.seed());
  OFFSITE_ASSIGN_OR_RETURN(Fcmae fcmae, MakeFcmae(encoder_config, ToOptions(spec)));
  OFFSITE_RETURN_IF_ERROR(
      fcmae->ValidateImageSize(data.train_images.size(2), data.train_images.size(3)));
  fcmae->to(device);
  // The recipe's AdamW: betas (0.9, 0.95), no decay on 1-D parameters.
  std::unique_ptr<torch::optim::AdamW> optimizer =
      MakeAdamW(*fcmae, spec.learning_rate(), spec.weight_decay(), 0.95, /*exclude_grn=*/false);

  const int64_t n = data.train_images.size(0);
  const int64_t steps_per_epoch = (n + spec.batch_size() - 1) / spec.batch_size();
  const int64_t total_steps = steps_per_epoch * spec.epochs();
  const int64_t warmup_steps = steps_per_epoch * spec.warmup_epochs();
  ctx.Log(absl::StrCat("FCMAE on ", n, " images ", data.train_images.size(2), "x",
                       data.train_images.size(3), ", ", fcmae->parameters().size(),
                       " parameter tensors, mask patch ", fcmae->patch_size(), " px, ",
                       steps_per_epoch, " steps per epoch"));

  // A fixed evaluation batch with a fixed mask, so test_loss is comparable across epochs.
  const int64_t eval_n = std::min<int64_t>(256, data.test_images.size(0));
  torch::Tensor eval_images = data.test_images.slice(0, 0, eval_n);
  torch::manual_seed(spec.seed() + 1);
  torch::Tensor eval_mask = fcmae->RandomMask(eval_images);

  double loss_sum = 0;
  int64_t loss_count = 0;
  TrainingLoopOptions loop;
  loop.num_examples = n;
  loop.batch_size = spec.batch_size();
  loop.epochs = spec.epochs();
  loop.seed = spec.seed();
  loop.checkpoint_format = "fcmae_checkpoint";
  loop.device = device;
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel, ConnectDataParallel(ctx));
  loop.data_parallel = data_parallel.get();
  const GradientSync sync = GradientSyncOf(data_parallel.get());
  TrainingLoopHooks hooks;
  TrainModule(*fcmae, *optimizer, loop, hooks);
  hooks.step = [&](const torch::Tensor& batch, int64_t global_step) -> absl::Status {
    fcmae->train();
    SetLearningRate(*optimizer,
                    WarmupCosine(global_step, warmup_steps, total_steps, spec.learning_rate()));
    FcmaeOutput out = fcmae->forward(data.train_images.index_select(0, batch));
    optimizer->zero_grad();
    out.loss.backward();
    OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, loop.parameters));
    optimizer->step();
    const double loss = out.loss.item<double>();
    if (!std::isfinite(loss)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "loss became ", loss, " at step ", global_step, "; lower fcmae.learning_rate"));
    }
    loss_sum += loss;
    ++loss_count;
    return absl::OkStatus();
  };
  hooks.end_epoch = [&](int64_t epoch) -> absl::Status {
    fcmae->eval();
    torch::NoGradGuard no_grad;
    const double test_loss = fcmae->forward(eval_images, eval_mask).loss.item<double>();
    ctx.ReportMetrics(epoch * steps_per_epoch,
                      {{"epoch", epoch},
                       {"loss", loss_count ? loss_sum / loss_count : 0},
                       {"test_loss", test_loss},
                       {"learning_rate", optimizer->param_groups()[0].options().get_lr()}});
    loss_sum = 0;
    loss_count = 0;
    return absl::OkStatus();
  };
  OFFSITE_RETURN_IF_ERROR(RunTrainingLoop(loop, hooks, ctx));

  // The encoder, loadable by a finetune job of the same arch.
  torch::serialize::OutputArchive encoder_archive;
  OFFSITE_RETURN_IF_ERROR(SaveConvNextV2(encoder_config, *fcmae->encoder(), encoder_archive));
  const std::string encoder_path = ctx.work_dir() + "/fcmae_encoder.pt";
  OFFSITE_RETURN_IF_ERROR(WriteArchiveFile(encoder_archive, encoder_path));
  OFFSITE_RETURN_IF_ERROR(ctx.AddArtifact(encoder_path, "fcmae_encoder.pt").status());

  // Input / masked / reconstruction rows for a person to look at.
  fcmae->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor samples = eval_images.slice(0, 0, spec.sample_images());
  torch::Tensor sample_mask = eval_mask.slice(0, 0, spec.sample_images());
  FcmaeOutput out = fcmae->forward(samples, sample_mask);
  ReconstructionGridOptions grid_options;
  grid_options.mean = data.mean;
  grid_options.std = data.std;
  grid_options.max_images = spec.sample_images();
  torch::Tensor grid =
      ReconstructionGrid(samples, out.mask, fcmae->Reconstruct(samples, out), grid_options)
          .contiguous();
  const std::string png_path = ctx.work_dir() + "/reconstructions.png";
  OFFSITE_RETURN_IF_ERROR(
      WritePng(png_path, grid.data_ptr<uint8_t>(), grid.size(1), grid.size(0), grid.size(2)));
  return ctx.AddArtifact(png_path, "reconstructions.png").status();
}

}  // namespace offsite
