// Data-owner tuning with the emulator against full fine-tuning of the whole
// model, per training step on the same batch: throughput and peak memory, with
// and without LoRA, for a 12-block GPT decoder (2-4-2 split) and a ConvNeXt V2
// (2-2-6-2 blocks, 40-320 channels, 32x32 single-channel images, 2-3-2 split
// of its 12 blocks).
//
//   offsite_tuning_bench [--steps N] [--repeats N] [--threads N] [--batch N]
//       [--only gpt|convnext]
//
// Each configuration runs in its own child process, so that its memory figure
// is its own: peak memory is the growth of the child's resident high-water
// mark (VmHWM) from before the model is built to the end of the steps (weights,
// gradients, optimiser state and activations, as the paper's GPU figure).
// Figures are ratios against full fine-tuning measured in the same run.
// Throughput is that of a configuration's fastest step, over --repeats rounds
// that take every configuration in turn: on a shared machine the fastest step
// is the one least disturbed by other work, and the rounds spread a busy spell
// over all configurations instead of one.

#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/runtime.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "models/optimizer.h"

namespace offsite {
namespace {

struct Setup {
  std::string name;
  v1::ModelArch arch;
  int64_t bottom, top, emulator_blocks;
};

struct Figures {
  double steps_per_s = 0;
  double peak_mib = 0;
  int64_t trainable = 0;
};

// One configuration: "full" (every parameter of the full model trains),
// "emulator" (adapter only, emulator frozen), "emulator+lora",
// "emulator+top-only" (only the top adapter trains, so nothing below it keeps
// activations for the backward pass), "emulator+lora+top-only" (LoRA on the
// top adapter only), or "+recompute" of the first two (the
// emulator's blocks keep no activations and are recomputed in the backward
// pass).
Figures Measure(const Setup& setup, const std::string& mode, int64_t batch, int steps) {
  const double rss_before = PeakResidentMiB();
  torch::manual_seed(0);
  auto full = MakeBlockModel(setup.arch).value();
  std::shared_ptr<BlockModelImpl> model = full;
  if (mode != "full") {
    SplitPlan plan =
        PlanSplit(full->num_blocks(), setup.bottom, setup.top, setup.emulator_blocks).value();
    Emulator emulator = MakeEmulator(setup.arch, *full, plan, 0, 0).value();
    PackageOptions options;
    options.package_id = "bench";
    v1::PackageManifest manifest;
    (void)MakePackageFile(emulator, plan, options, &manifest).value();
    TuneOptions tune;
    tune.lora = absl::StrContains(mode, "+lora");
    tune.top_only = absl::StrContains(mode, "+top-only");
    tune.recompute_emulator = absl::StrContains(mode, "+recompute");
    model = emulator.model;
    full.reset();  // The data owner never holds the full model.
    PrepareForTuning(manifest, *model, tune);
  }
  Figures figures;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) figures.trainable += p.numel();
  }
  auto optimizer = MakeAdamW(*model, 1e-4, 0.01, 0.999, true);
  torch::Tensor input, target;
  if (setup.arch.has_gpt()) {
    input = torch::randint(0, 257, {batch, setup.arch.gpt().n_positions()}, torch::kLong);
    target = torch::randint(0, 257, {batch, setup.arch.gpt().n_positions()}, torch::kLong);
  } else {
    input = torch::randn({batch, 1, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
    target = torch::randint(0, setup.arch.num_classes(), {batch}, torch::kLong);
  }
  model->train();
  auto step = [&] {
    optimizer->zero_grad();
    torch::Tensor loss = TaskLoss(model->forward(input), target);
    loss.backward();
    optimizer->step();
  };
  for (int i = 0; i < 2; ++i) step();  // Warm-up (allocations, optimiser state).
  for (int i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    figures.steps_per_s = std::max(figures.steps_per_s, 1 / seconds);
  }
  figures.peak_mib = PeakResidentMiB() - rss_before;
  return figures;
}

// Runs Measure in a child process and returns its figures.
Figures MeasureInChild(const Setup& setup, const std::string& mode, int64_t batch, int steps) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Figures figures = Measure(setup, mode, batch, steps);
    if (write(fds[1], &figures, sizeof(figures)) != sizeof(figures)) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  Figures figures;
  if (read(fds[0], &figures, sizeof(figures)) != sizeof(figures)) {
    std::fprintf(stderr, "child for %s/%s failed\n", setup.name.c_str(), mode.c_str());
  }
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return figures;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) {
  using namespace offsite;
  int steps = 10, repeats = 3, threads = 0;
  int64_t batch = 16;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--steps") steps = std::atoi(argv[i + 1]);
    if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    if (flag == "--batch") batch = std::atoll(argv[i + 1]);
    if (flag == "--only") only = argv[i + 1];
  }
  ConfigureThreads(threads);
  std::printf("%s\n", RuntimeSummary().c_str());
  std::printf("batch %lld; fastest of %d measured steps per configuration, %d rounds\n\n",
              static_cast<long long>(batch), steps, repeats);

  std::vector<Setup> setups;
  Setup gpt{"gpt 12x256 ctx128 (2-4-2)", {}, 2, 2, 4};
  gpt.arch.mutable_gpt()->set_n_layer(12);
  gpt.arch.mutable_gpt()->set_n_embd(256);
  gpt.arch.mutable_gpt()->set_n_head(8);
  gpt.arch.mutable_gpt()->set_n_positions(128);
  Setup convnext{"convnext 2-2-6-2 40-320 (2-3-2)", {}, 2, 2, 3};
  for (int d : {2, 2, 6, 2}) convnext.arch.mutable_convnext_v2()->add_depths(d);
  for (int d : {40, 80, 160, 320}) convnext.arch.mutable_convnext_v2()->add_dims(d);
  convnext.arch.mutable_convnext_v2()->set_stem_stride(2);
  convnext.arch.set_num_classes(10);
  if (only.empty() || only == "gpt") setups.push_back(gpt);
  if (only.empty() || only == "convnext") setups.push_back(convnext);

  for (const Setup& setup : setups) {
    std::printf("%s\n", setup.name.c_str());
    std::fflush(stdout);
    const std::vector<std::string> modes = {"full",
                                            "emulator",
                                            "emulator+lora",
                                            "emulator+top-only",
                                            "emulator+lora+top-only",
                                            "emulator+recompute",
                                            "emulator+lora+recompute"};
    std::vector<Figures> best(modes.size());
    for (int round = 0; round < repeats; ++round) {
      for (size_t i = 0; i < modes.size(); ++i) {
        const Figures f = MeasureInChild(setup, modes[i], batch, steps);
        best[i].steps_per_s = std::max(best[i].steps_per_s, f.steps_per_s);
        best[i].peak_mib = std::max(best[i].peak_mib, f.peak_mib);
        best[i].trainable = f.trainable;
      }
    }
    for (size_t i = 0; i < modes.size(); ++i) {
      const Figures& f = best[i];
      std::printf("  %-23s %7.2f steps/s (x%.2f)  peak %7.1f MiB (x%.2f)  trainable %lld\n",
                  modes[i].c_str(), f.steps_per_s, f.steps_per_s / best[0].steps_per_s, f.peak_mib,
                  f.peak_mib / best[0].peak_mib, static_cast<long long>(f.trainable));
    }
  }
  return 0;
}
