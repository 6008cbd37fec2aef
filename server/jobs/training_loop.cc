#include "server/jobs/training_loop.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/status_macros.h"

namespace offsite {
namespace {
constexpr int64_t kCheckpointVersion = 1;
}  // namespace

void WriteTrainingState(torch::serialize::OutputArchive& archive, torch::nn::Module& module,
                        torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive module_archive, optimizer_archive;
  module.save(module_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", module_archive);
  archive.write("optimizer", optimizer_archive);
}

void ReadTrainingState(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                       torch::optim::Optimizer& optimizer) {
  torch::serialize::InputArchive module_archive, optimizer_archive;
  archive.read("model", module_archive);
  archive.read("optimizer", optimizer_archive);
  module.load(module_archive);
  optimizer.load(optimizer_archive);
}

void TrainModule(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                 TrainingLoopOptions& options, TrainingLoopHooks& hooks) {
  options.parameters = module.parameters();
  options.buffers = module.buffers();
  hooks.save = [&module, &optimizer](torch::serialize::OutputArchive& archive) {
    WriteTrainingState(archive, module, optimizer);
  };
  hooks.load = [&module, &optimizer](torch::serialize::InputArchive& archive) {
    ReadTrainingState(archive, module, optimizer);
  };
}

absl::StatusOr<std::unique_ptr<DataParallel>> ConnectDataParallel(JobContext& ctx) {
  const DataParallelRendezvous* rendezvous = ctx.data_parallel();
  if (rendezvous == nullptr || rendezvous->world_size <= 1) return nullptr;
  DataParallelOptions options;
  options.rank = rendezvous->rank;
  options.world_size = rendezvous->world_size;
  options.store_address = rendezvous->store_address;
  options.prefix = rendezvous->prefix;
  ctx.Log(absl::StrCat("data-parallel: rank ", options.rank, " of ", options.world_size,
                       ", rendezvous at ", options.store_address));
  return DataParallel::Connect(options);
}

absl::Status StartDataParallel(DataParallel* dp, std::vector<torch::Tensor> parameters,
                               std::vector<torch::Tensor> buffers, int64_t global_batch) {
  if (dp == nullptr) return absl::OkStatus();
  if (global_batch < dp->world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size ", global_batch,
                                                   " is smaller than the ", dp->world_size(),
                                                   " data-parallel workers"));
  }
  dp->Attach(std::move(parameters), std::move(buffers));
  return dp->BroadcastFromRankZero();
}

torch::Tensor ShareOfBatch(DataParallel* dp, const torch::Tensor& indices) {
  if (dp == nullptr) return indices;
  const int64_t size = indices.size(0);
  const auto [begin, end] = RankShare(size, dp->rank(), dp->world_size());
  dp->BeginStep(end - begin, size);
  return indices.slice(0, begin, end);
}

absl::Status RunTrainingLoop(const TrainingLoopOptions& options, const TrainingLoopHooks& hooks,
                             JobContext& ctx) {
  DataParallel* dp = options.data_parallel;
  if (dp != nullptr && options.parameters.empty()) {
    return absl::InternalError("TrainingLoopOptions.parameters unset for a data-parallel run");
  }
  const int64_t n = options.num_examples;
  const int64_t batch = options.batch_size;
  if (n <= 0) return absl::InvalidArgumentError("the training set is empty");
  const int64_t steps_per_epoch = (n + batch - 1) / batch;
  const int64_t total_steps = steps_per_epoch * options.epochs;
  const std::string path = ctx.work_dir() + "/checkpoint.pt";

  int64_t start_epoch = 0, start_step = 0;
  {
    torch::serialize::InputArchive archive;
    absl::Status loaded =
        LoadArchive(path, options.checkpoint_format, kCheckpointVersion, &archive);
    if (loaded.ok()) {
      c10::IValue epoch, step;
      archive.read("loop_epoch", epoch);
      archive.read("loop_step", step);
      start_epoch = epoch.toInt();
      start_step = step.toInt();
      hooks.load(archive);
      ctx.Log(
          absl::StrCat("resumed from checkpoint: epoch ", start_epoch + 1, ", step ", start_step));
    } else if (!absl::IsNotFound(loaded)) {
      return loaded;
    }
  }
  OFFSITE_RETURN_IF_ERROR(
      StartDataParallel(dp, options.parameters, options.buffers, options.batch_size));
  auto checkpoint = [&](int64_t epoch, int64_t step) {
    // Ranks hold the same state; rank 0's checkpoint is the one kept.
    if (dp != nullptr && dp->rank() != 0) return absl::OkStatus();
    torch::serialize::OutputArchive archive;
    archive.write("loop_epoch", c10::IValue(epoch));
    archive.write("loop_step", c10::IValue(step));
    hooks.save(archive);
    return SaveArchive(archive, options.checkpoint_format, kCheckpointVersion, path);
  };

  for (int64_t epoch = start_epoch; epoch < options.epochs; ++epoch) {
    // The order depends only on (seed, epoch), so a resumed job replays it;
    // other randomness (masks, dropout) is reseeded at every start point.
    const int64_t first_step = epoch == start_epoch ? start_step : 0;
    torch::manual_seed(options.seed * 1000003 + epoch * 10007 + first_step);
    torch::Generator order_generator =
        at::detail::createCPUGenerator(options.seed * 1000003 + epoch);
    torch::Tensor order = torch::randperm(n, order_generator, torch::kLong).to(options.device);
    for (int64_t step = first_step; step < steps_per_epoch; ++step) {
      if (ctx.cancelled()) return absl::CancelledError("cancelled");
      const int64_t global = epoch * steps_per_epoch + step;
      torch::Tensor indices = order.slice(0, step * batch, std::min(n, (step + 1) * batch));
      // Every rank skips a last batch too short to give each an example.
      if (dp == nullptr || indices.size(0) >= dp->world_size()) {
        OFFSITE_RETURN_IF_ERROR(hooks.step(ShareOfBatch(dp, indices), global));
      }
      ctx.ReportProgress(absl::StrCat("epoch ", epoch + 1, "/", options.epochs), global + 1,
                         total_steps);
      if (step + 1 < steps_per_epoch && ctx.CheckpointDue()) {
        OFFSITE_RETURN_IF_ERROR(checkpoint(epoch, step + 1));
      }
    }
    // Durable first: once an epoch's metrics are out, a restart never redoes it.
    OFFSITE_RETURN_IF_ERROR(checkpoint(epoch + 1, 0));
    OFFSITE_RETURN_IF_ERROR(hooks.end_epoch(epoch + 1));
  }
  return absl::OkStatus();
}

}  // namespace offsite
