#ifndef OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
#define OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_

// The epoch loop every training job shares: a shuffled order per epoch that
// depends only on (seed, epoch), progress every step, cancellation checks,
// checkpoints at each epoch end and whenever the server's interval elapses,
// and resumption from the last checkpoint at the exact (epoch, step).
//
// Data-parallel runs (a job leased to several workers, JobContext::
// data_parallel()) go through the same loop: every rank walks the same global
// batches of batch_size examples and trains on its share of each; the trainer
// reduces the gradients between backward and its optimiser step:
//
//   OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> dp, ConnectDataParallel(ctx));
//   loop.data_parallel = dp.get();  // nullptr: one process, nothing changes
//   loop.parameters = model->parameters();
//   loop.buffers = model->buffers();
//   const GradientSync sync = GradientSyncOf(dp.get());
//   hooks.step = [&](const torch::Tensor& batch, int64_t step) {
//     ... loss.backward();
//     OFFSITE_RETURN_IF_ERROR(SyncGradients(sync, model->parameters()));
//     optimizer->step(); ...
//   };
//
// Jobs with their own step loop use StartDataParallel and ShareOfBatch.

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

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
  // Set for a data-parallel run: `parameters` and `buffers` start from rank
  // 0's (after any resume). A global batch smaller than the number of ranks
  // (a short last batch) is skipped.
  DataParallel* data_parallel = nullptr;
  std::vector<torch::Tensor> parameters;
  std::vector<torch::Tensor> buffers;
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

// The common case of one module and one optimiser: the loop's data-parallel
// tensors are `module`'s, and hooks.save / load write and read both states
// (WriteTrainingState). Both must outlive the loop.
void TrainModule(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                 TrainingLoopOptions& options, TrainingLoopHooks& hooks);

absl::Status RunTrainingLoop(const TrainingLoopOptions& options, const TrainingLoopHooks& hooks,
                             JobContext& ctx);

// Joins the other ranks when the job runs data-parallel; nullptr for one process.
absl::StatusOr<std::unique_ptr<DataParallel>> ConnectDataParallel(JobContext& ctx);

// For a data-parallel run (OK at once when `dp` is nullptr), after any resume:
// every rank continues from rank 0's `parameters` and `buffers`, whose
// gradients the step then reduces. InvalidArgument when a global batch of
// `global_batch` examples leaves a rank without one.
absl::Status StartDataParallel(DataParallel* dp, std::vector<torch::Tensor> parameters,
                               std::vector<torch::Tensor> buffers, int64_t global_batch);

// The part of a step's global batch of example `indices` this rank trains on
// (all of them for one process), with the step's gradient weight set to its
// share. Every rank draws the same global batch and takes its own part.
torch::Tensor ShareOfBatch(DataParallel* dp, const torch::Tensor& indices);

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
