#ifndef OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
#define OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_

// The epoch loop every training job shares: a shuffled order per epoch that
// depends only on (seed, epoch), progress every step, cancellation checks,
// checkpoints at each epoch end and whenever the server's interval elapses,
// and resumption from the last checkpoint at the exact (epoch, step).
//
// Data-parallel runs (a job leased to several workers, JobContext::
// data_parallel()) go through the same loop: every rank walks the same global
// batches of batch_size examples and trains on its share of each; the step
// hook calls SyncGradients between backward and the optimiser step:
//
//   OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> dp, ConnectDataParallel(ctx));
//   loop.data_parallel = dp.get();  // nullptr: one process, nothing changes
//   loop.module = model.get();
//   hooks.step = [&](const torch::Tensor& batch, int64_t step) {
//     ... loss.backward();
//     OFFSITE_RETURN_IF_ERROR(SyncGradients(loop));
//     optimizer->step(); ...
//   };

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_parallel.h"
#include "server/job_runner.h"

namespace offsite {

struct TrainingLoopOptions {
  int64_t num_examples = 0;
  int64_t batch_size = 1;
  int64_t epochs = 1;
  uint64_t seed = 0;
  // Names the checkpoint file kind, e.g. "fcmae_checkpoint".
  std::string checkpoint_format;
  torch::Device device = torch::kCPU;
  // Set for a data-parallel run: `module`'s parameters and buffers start from
  // rank 0's (after any resume), and SyncGradients reduces its gradients. A
  // global batch smaller than the number of ranks is skipped.
  DataParallel* data_parallel = nullptr;
  torch::nn::Module* module = nullptr;
};

struct TrainingLoopHooks {
  // One optimisation step on the examples at `batch` (int64 indices).
  // `global_step` counts from 0 over the whole run (for schedules).
  std::function<absl::Status(const torch::Tensor& batch, int64_t global_step)> step;
  // After each epoch (1-based `epoch`) and its checkpoint: evaluate, report metrics.
  std::function<absl::Status(int64_t epoch)> end_epoch;
  // Model and optimiser state in and out of a checkpoint.
  std::function<void(torch::serialize::OutputArchive&)> save;
  std::function<void(torch::serialize::InputArchive&)> load;
};

// The usual checkpoint content for TrainingLoopHooks::save / load: a module's
// and its optimiser's state, under "model" and "optimizer".
void WriteTrainingState(torch::serialize::OutputArchive& archive, torch::nn::Module& module,
                        torch::optim::Optimizer& optimizer);
void ReadTrainingState(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                       torch::optim::Optimizer& optimizer);

absl::Status RunTrainingLoop(const TrainingLoopOptions& options, const TrainingLoopHooks& hooks,
                             JobContext& ctx);

// Joins the other ranks when the job runs data-parallel; nullptr for one process.
absl::StatusOr<std::unique_ptr<DataParallel>> ConnectDataParallel(JobContext& ctx);

// Between backward and the optimiser step: makes options.module's gradients
// those of the whole global batch on every rank. OK at once for one process.
absl::Status SyncGradients(const TrainingLoopOptions& options);

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
