#ifndef OFFSITE_MODELS_LR_SCHEDULE_H_
#define OFFSITE_MODELS_LR_SCHEDULE_H_

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

namespace offsite {

// Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to
// `floor` at `total_steps` (the schedule of the ConvNeXt V2 / MAE recipes).
double WarmupCosine(int64_t step, int64_t warmup_steps, int64_t total_steps, double peak,
                    double floor = 0.0);

// Constant `peak` for the first half of `epochs`, then linear decay: epoch e
// (1-based) of the second half gets peak * 2 * (1 + epochs - e) / epochs, so
// the last epoch runs at 2 * peak / epochs (loeweX's Forward-Forward schedule).
double LinearCooldown(int64_t epoch, int64_t epochs, double peak);

// Sets every parameter group's learning rate.
void SetLearningRate(torch::optim::Optimizer& optimizer, double lr);

// Sets group g's learning rate to lr * scales[g] (see LrScales in
// models/optimizer.h), keeping a layer-wise decay through the schedule.
void SetLearningRate(torch::optim::Optimizer& optimizer, double lr,
                     const std::vector<double>& scales);

}  // namespace offsite

#endif  // OFFSITE_MODELS_LR_SCHEDULE_H_
