// Training throughput of a Forward-Forward step against a backprop step of the
// same 4x500 MLP, batch 100, on random data (speed does not depend on values).
//
//   ff_bench [--steps N] [--threads N]
//
// Prints the BLAS kernel in use, torch's thread count, samples/s of each step
// (warm-up steps excluded) and their ratio.

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "common/runtime.h"
#include "models/forward_forward.h"

namespace offsite {
namespace {

constexpr int64_t kBatch = 100;
constexpr int kWarmupSteps = 10;

struct BenchOptions {
  int steps = 200;
  int threads = 2;
};

// Samples per second of `step` over `steps` calls, after warm-up.
double Throughput(const std::function<void()>& step, int steps) {
  for (int i = 0; i < kWarmupSteps; ++i) step();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return static_cast<double>(steps * kBatch) / elapsed.count();
}

int ParsePositive(const char* flag, const char* value) {
  const int parsed = value != nullptr ? std::atoi(value) : 0;
  if (parsed <= 0) {
    std::fprintf(stderr, "%s needs a positive integer\n", flag);
    std::exit(2);
  }
  return parsed;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (std::strcmp(argv[i], "--steps") == 0) {
      options.steps = ParsePositive(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--threads") == 0) {
      options.threads = ParsePositive(argv[i], value);
      ++i;
    } else {
      std::fprintf(stderr, "usage: %s [--steps N] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  torch::set_num_threads(options.threads);
  torch::manual_seed(0);

  std::printf("runtime: %s\n", RuntimeSummary().c_str());
  std::printf("net: 4x500, batch %lld, %d timed steps after %d warm-up\n",
              static_cast<long long>(kBatch), options.steps, kWarmupSteps);

  const torch::Tensor x = torch::rand({kBatch, 784});
  const torch::Tensor y = torch::randint(0, 10, {kBatch}, torch::kInt64);
  ForwardForwardOptions ff_options;

  ForwardForwardTrainer ff(ff_options, torch::kCPU);
  const double ff_rate = Throughput([&] { ff.TrainStep(x, y).IgnoreError(); }, options.steps);
  std::printf("ff_step: %.0f samples/s\n", ff_rate);

  ff_options.hard_negatives = true;
  ForwardForwardTrainer ff_hard(ff_options, torch::kCPU);
  const double ff_hard_rate =
      Throughput([&] { ff_hard.TrainStep(x, y).IgnoreError(); }, options.steps);
  std::printf("ff_step_hard_negatives: %.0f samples/s\n", ff_hard_rate);

  ff_options.hard_negatives_from_softmax = true;
  ForwardForwardTrainer ff_hard_softmax(ff_options, torch::kCPU);
  const double ff_hard_softmax_rate =
      Throughput([&] { ff_hard_softmax.TrainStep(x, y).IgnoreError(); }, options.steps);
  std::printf("ff_step_hard_negatives_from_softmax: %.0f samples/s (x%.2f the goodness-sampled)\n",
              ff_hard_softmax_rate, ff_hard_softmax_rate / ff_hard_rate);

  BackpropMlpTrainer backprop(ForwardForwardOptions{}, torch::kCPU);
  const double bp_rate = Throughput([&] { backprop.TrainStep(x, y).IgnoreError(); }, options.steps);
  std::printf("backprop_step: %.0f samples/s\n", bp_rate);

  std::printf("ff_over_backprop_time: %.2f (hard negatives: %.2f)\n", bp_rate / ff_rate,
              bp_rate / ff_hard_rate);
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
