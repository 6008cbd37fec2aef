// Training-step throughput and peak memory of ConvNeXt V2 for the fixed
// configuration (dims 40-80-160-320, depths 2-2-6-2, 32x32 single-channel
// input, batch 128): a fine-tuning (classification) step and an FCMAE step.
// Stem stride 2 by default (stages at 16, 8, 4, 2 px: a 2x2 FCMAE mask grid);
// stride 4 would leave one 1x1 cell, all of it masked.
//
//   convnext_bench [--mode finetune|fcmae|both] [--steps N] [--threads N] [--stem N]
//
// Peak memory is the process's resident high-water mark (VmHWM) growth over
// the measured mode; run one mode per process for a clean figure. The same
// configuration in PyTorch's Python front end is convnext_pytorch_bench.py;
// convnext_vs_pytorch.sh runs both and prints the ratios.

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

#include "common/runtime.h"
#include "models/convnext_v2.h"
#include "models/fcmae.h"

namespace offsite {
namespace {

constexpr int64_t kBatch = 128;
constexpr int kWarmup = 3;

int64_t CountParameters(torch::nn::Module& module) {
  int64_t n = 0;
  for (const torch::Tensor& p : module.parameters()) n += p.numel();
  return n;
}

void Measure(const char* name, const std::function<void()>& step, int steps) {
  const double rss_before = PeakResidentMiB();
  for (int i = 0; i < kWarmup; ++i) step();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  std::printf("%-10s %8.1f images/s  %7.1f ms/step  peak RSS %7.1f MiB (+%.1f)\n", name,
              steps * kBatch / elapsed.count(), 1000 * elapsed.count() / steps, PeakResidentMiB(),
              PeakResidentMiB() - rss_before);
}

int Main(int argc, char** argv) {
  std::string mode = "both";
  int steps = 10, threads = 0, stem = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--stem")) stem = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  ConfigureThreads(threads);
  std::printf("%s\n", RuntimeSummary().c_str());
  ConvNextV2Config config;
  config.in_channels = 1;
  config.num_classes = 10;
  config.depths = {2, 2, 6, 2};
  config.dims = {40, 80, 160, 320};
  config.stem_stride = stem;
  std::printf("ConvNeXt V2 dims 40-80-160-320, depths 2-2-6-2, stem %d, 32x32x1, batch %ld\n",
              stem, static_cast<long>(kBatch));
  torch::manual_seed(0);
  torch::Tensor images =
      torch::randn({kBatch, 1, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor labels = torch::randint(0, 10, {kBatch}, torch::kLong);

  if (mode == "finetune" || mode == "both") {
    ConvNextV2 model = MakeConvNextV2(config).value();
    std::printf("finetune parameters: %lld\n", static_cast<long long>(CountParameters(*model)));
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-3));
    Measure("finetune", [&] {
      torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(images), labels);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }, steps);
  }
  if (mode == "fcmae" || mode == "both") {
    FcmaeOptions options;
    Fcmae fcmae = MakeFcmae(config, options).value();
    std::printf("fcmae parameters: %lld\n", static_cast<long long>(CountParameters(*fcmae)));
    torch::optim::AdamW optimizer(fcmae->parameters(),
                                  torch::optim::AdamWOptions(1e-3).betas({0.9, 0.95}));
    Measure("fcmae", [&] {
      FcmaeOutput out = fcmae->forward(images);
      optimizer.zero_grad();
      out.loss.backward();
      optimizer.step();
    }, steps);
  }
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
