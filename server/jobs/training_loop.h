#ifndef OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
#define OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_

// The epoch loop every training job shares: a shuffled order per epoch that
// depends only on (seed, epoch), progress every step, cancellation checks,
// checkpoints at each epoch end and whenever the server's interval elapses,
// and resumption from the last checkpoint at the exact (epoch, step).

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
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

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOBS_TRAINING_LOOP_H_
