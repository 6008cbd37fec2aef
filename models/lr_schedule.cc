#include "models/lr_schedule.h"

#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>

namespace offsite {

double WarmupCosine(int64_t step, int64_t warmup_steps, int64_t total_steps, double peak,
                    double floor) {
  if (step < warmup_steps) return peak * static_cast<double>(step + 1) / warmup_steps;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double LinearCooldown(int64_t epoch, int64_t epochs, double peak) {
  if (epoch <= epochs / 2) return peak;
  return peak * 2.0 * static_cast<double>(1 + epochs - epoch) / static_cast<double>(epochs);
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    group.options().set_lr(lr);
  }
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr,
                     const std::vector<double>& scales) {
  TORCH_CHECK(scales.size() == optimizer.param_groups().size(), "SetLearningRate: ", scales.size(),
              " scales for ", optimizer.param_groups().size(), " groups");
  for (size_t g = 0; g < scales.size(); ++g) {
    optimizer.param_groups()[g].options().set_lr(lr * scales[g]);
  }
}

}  // namespace offsite
