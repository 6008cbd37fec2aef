// Data-parallel training throughput: 1 process vs 2 processes (c10d Gloo over
// loopback, common/data_parallel.h) on the same global batch, each process
// with one LibTorch thread, plus the time of the gradient all-reduce per step.
// Run it; it prints its figures and their ratios.
//
//   data_parallel_bench [--steps 40] [--batch 256] [--width 1024]
//
// The model is an MLP 784-W-W-10 on synthetic data (the arithmetic, not the
// data, is what is measured). Each rank re-executes this binary with --rank.

#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "common/data_parallel.h"
#include "common/runtime.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kWarmupSteps = 5;

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  return args;
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

// One rank: timed steps after a warm-up; writes "seconds allreduce_seconds
// buckets_sent_during_backward" to `out`.
int RunRank(int rank, int world, bool overlap, const std::string& store, int steps, int64_t batch,
            int64_t width, const std::string& out) {
  torch::set_num_threads(1);
  std::unique_ptr<offsite::DataParallel> dp;
  if (world > 1) {
    offsite::DataParallelOptions options;
    options.rank = rank;
    options.world_size = world;
    options.store_address = store;
    options.prefix = "bench";
    options.overlap_with_backward = overlap;
    absl::StatusOr<std::unique_ptr<offsite::DataParallel>> connected =
        offsite::DataParallel::Connect(options);
    if (!connected.ok()) {
      std::cerr << connected.status() << "\n";
      return 1;
    }
    dp = std::move(*connected);
  }
  torch::manual_seed(1);
  torch::nn::Sequential model(torch::nn::Linear(784, width), torch::nn::ReLU(),
                              torch::nn::Linear(width, width), torch::nn::ReLU(),
                              torch::nn::Linear(width, 10));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const auto [begin, end] = offsite::RankShare(batch, rank, world);
  torch::Tensor x = torch::randn({end - begin, 784});
  torch::Tensor y = torch::randint(0, 10, {end - begin});
  if (dp) {
    dp->Attach(model->parameters(), model->buffers());
    if (!dp->BroadcastFromRankZero().ok()) return 1;
  }
  Clock::time_point start;
  double allreduce_before = 0;
  for (int step = 0; step < kWarmupSteps + steps; ++step) {
    if (step == kWarmupSteps) {
      start = Clock::now();
      allreduce_before = dp ? dp->stats().allreduce_seconds : 0;
    }
    if (dp) dp->BeginStep(end - begin, batch);
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    if (dp && !dp->AllReduceGradients().ok()) return 1;
    optimizer.step();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::ofstream(out) << seconds << " "
                     << (dp ? dp->stats().allreduce_seconds - allreduce_before : 0) << " "
                     << (dp ? dp->stats().buckets_sent_during_backward : 0) << "\n";
  return 0;
}

struct RunResult {
  double seconds = 0;                   // slowest rank
  double allreduce_seconds = 0;         // rank 0: time waiting in AllReduceGradients
  int64_t buckets_during_backward = 0;  // rank 0
};

RunResult RunWorld(int world, bool overlap, int steps, int64_t batch, int64_t width) {
  const std::string store = "127.0.0.1:" + std::to_string(FreePort());
  std::vector<pid_t> pids;
  std::vector<std::string> outs;
  for (int rank = 0; rank < world; ++rank) {
    outs.push_back("/tmp/offsite-dp-bench-" + std::to_string(::getpid()) + "-" +
                   std::to_string(rank));
    std::vector<std::string> args = {"/proc/self/exe",
                                     "--rank",
                                     std::to_string(rank),
                                     "--world",
                                     std::to_string(world),
                                     "--overlap",
                                     overlap ? "1" : "0",
                                     "--store",
                                     store,
                                     "--steps",
                                     std::to_string(steps),
                                     "--batch",
                                     std::to_string(batch),
                                     "--width",
                                     std::to_string(width),
                                     "--out",
                                     outs.back()};
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) {
      std::perror("posix_spawn");
      std::exit(1);
    }
    pids.push_back(pid);
  }
  RunResult result;
  for (int rank = 0; rank < world; ++rank) {
    int status = 0;
    ::waitpid(pids[rank], &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::cerr << "rank " << rank << " failed\n";
      std::exit(1);
    }
    double seconds = 0, allreduce = 0;
    int64_t during = 0;
    std::ifstream(outs[rank]) >> seconds >> allreduce >> during;
    std::remove(outs[rank].c_str());
    result.seconds = std::max(result.seconds, seconds);
    if (rank == 0) {
      result.allreduce_seconds = allreduce;
      result.buckets_during_backward = during;
    }
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = ParseArgs(argc, argv);
  auto get = [&](const std::string& name, int64_t fallback) {
    return args.count(name) ? std::stoll(args[name]) : fallback;
  };
  const int steps = static_cast<int>(get("--steps", 40));
  const int64_t batch = get("--batch", 256);
  const int64_t width = get("--width", 1024);
  if (args.count("--rank")) {
    return RunRank(static_cast<int>(get("--rank", 0)), static_cast<int>(get("--world", 1)),
                   get("--overlap", 1) != 0, args["--store"], steps, batch, width, args["--out"]);
  }
  const double params = 784.0 * width + width + width * width + width + width * 10 + 10;
  std::printf(
      "data_parallel_bench: MLP 784-%lld-%lld-10 (%.2f M parameters, %.1f MB of "
      "gradients), global batch %lld, %d timed steps, 1 LibTorch thread per process, "
      "%ld CPU cores online\n",
      static_cast<long long>(width), static_cast<long long>(width), params / 1e6, params * 4 / 1e6,
      static_cast<long long>(batch), steps, ::sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("runtime: OpenBLAS kernel %s, malloc %s\n", offsite::OpenBlasCoreName().c_str(),
              offsite::MallocName().c_str());
  const RunResult one = RunWorld(1, true, steps, batch, width);
  const RunResult after = RunWorld(2, false, steps, batch, width);
  const RunResult overlapped = RunWorld(2, true, steps, batch, width);
  const double one_rate = steps * batch / one.seconds;
  std::printf("1 process: %.1f examples/s (%.1f ms/step)\n", one_rate, 1000 * one.seconds / steps);
  const std::pair<const char*, RunResult> runs[] = {
      {"2 processes, all-reduce after backward", after},
      {"2 processes, overlapped with backward", overlapped}};
  for (const auto& [name, run] : runs) {
    const double rate = steps * batch / run.seconds;
    std::printf(
        "%s: %.1f examples/s (%.1f ms/step, %.2fx 1 process), waiting for the all-reduce "
        "%.1f ms/step (%.0f%% of the step), buckets sent during backward: %lld\n",
        name, rate, 1000 * run.seconds / steps, rate / one_rate,
        1000 * run.allreduce_seconds / steps, 100 * run.allreduce_seconds / run.seconds,
        static_cast<long long>(run.buckets_during_backward));
  }
  std::printf("overlapped vs after backward: %.2fx throughput\n",
              after.seconds / overlapped.seconds);
  return 0;
}
