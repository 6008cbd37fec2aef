#include "common/data_parallel.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

constexpr int64_t kGlobalBatch = 8;
constexpr int kSteps = 6;

// The same small classifier and data on every rank; the initial weights
// differ per rank (seed), so only the broadcast makes them agree. `in_parts`:
// the gradients are synced one layer at a time, as a trainer with one
// optimiser per layer does.
std::vector<torch::Tensor> Train(int seed, DataParallel* dp, bool in_parts = false) {
  torch::Generator data_generator = at::detail::createCPUGenerator(7);
  torch::Tensor x = torch::randn({kGlobalBatch * kSteps, 6}, data_generator);
  torch::Tensor y = torch::randint(0, 3, {kGlobalBatch * kSteps}, data_generator);
  torch::manual_seed(seed);
  torch::nn::Sequential model(torch::nn::Linear(6, 16), torch::nn::Tanh(),
                              torch::nn::Linear(16, 3));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));
  if (dp != nullptr) {
    dp->Attach(model->parameters(), model->buffers());
    EXPECT_TRUE(dp->BroadcastFromRankZero().ok());
  }
  for (int step = 0; step < kSteps; ++step) {
    int64_t begin = step * kGlobalBatch, end = begin + kGlobalBatch;
    if (dp != nullptr) {
      auto [from, to] = RankShare(kGlobalBatch, dp->rank(), dp->world_size());
      dp->BeginStep(to - from, kGlobalBatch);
      end = begin + to;
      begin += from;
    }
    optimizer.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        model->forward(x.slice(0, begin, end)), y.slice(0, begin, end));
    loss.backward();
    if (dp != nullptr && in_parts) {
      for (const auto& layer : model->children()) {
        EXPECT_TRUE(dp->AllReduceGradients(layer->parameters()).ok());
      }
    } else if (dp != nullptr) {
      EXPECT_TRUE(dp->AllReduceGradients().ok());
    }
    optimizer.step();
  }
  std::vector<torch::Tensor> weights;
  for (const torch::Tensor& parameter : model->parameters())
    weights.push_back(parameter.detach().clone());
  return weights;
}

TEST(RankShareTest, SplitsContiguouslyWithSizesWithinOne) {
  EXPECT_EQ(RankShare(8, 0, 2), std::make_pair(int64_t{0}, int64_t{4}));
  EXPECT_EQ(RankShare(8, 1, 2), std::make_pair(int64_t{4}, int64_t{8}));
  EXPECT_EQ(RankShare(7, 0, 3), std::make_pair(int64_t{0}, int64_t{3}));
  EXPECT_EQ(RankShare(7, 1, 3), std::make_pair(int64_t{3}, int64_t{5}));
  EXPECT_EQ(RankShare(7, 2, 3), std::make_pair(int64_t{5}, int64_t{7}));
}

TEST(DataParallelTest, ConnectRejectsBadRankAndAddress) {
  DataParallelOptions options;
  options.store_address = "127.0.0.1:1";
  options.rank = 2;
  options.world_size = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(DataParallel::Connect(options).status()));
  options.rank = 0;
  options.store_address = "no-port";
  EXPECT_TRUE(absl::IsInvalidArgument(DataParallel::Connect(options).status()));
}

// Runs as one rank when started by the test below (environment set), else skips.
TEST(DataParallelChild, TrainAsOneRank) {
  const char* rank = std::getenv("OFFSITE_DP_RANK");
  const char* address = std::getenv("OFFSITE_DP_STORE");
  const char* out = std::getenv("OFFSITE_DP_OUT");
  const char* mode = std::getenv("OFFSITE_DP_MODE");
  if (rank == nullptr || address == nullptr || out == nullptr || mode == nullptr)
    GTEST_SKIP() << "helper process only";
  const bool in_parts = std::string(mode) == "parts";
  torch::set_num_threads(1);
  DataParallelOptions options;
  ASSERT_TRUE(absl::SimpleAtoi(rank, &options.rank));
  options.world_size = 2;
  options.store_address = address;
  options.prefix = "test/1";
  options.timeout = std::chrono::seconds(30);
  // Buckets of one or two tensors, so backward sends some before it ends.
  options.first_bucket_bytes = 64;
  options.bucket_bytes = 512;
  absl::StatusOr<std::unique_ptr<DataParallel>> dp = DataParallel::Connect(options);
  ASSERT_TRUE(dp.ok()) << dp.status();
  std::vector<torch::Tensor> weights = Train(100 + options.rank, dp->get(), in_parts);
  const DataParallelStats& stats = (*dp)->stats();
  if (in_parts) {
    EXPECT_EQ(stats.allreduce_calls, 3 * kSteps);  // three layers, the Tanh without parameters
  } else {
    EXPECT_EQ(stats.allreduce_calls, kSteps);
    // The last layer's buckets leave while backward is still in the first.
    EXPECT_GE(stats.buckets_sent_during_backward, 2 * kSteps);
  }
  torch::save(weights, out);
}

class DataParallelModeTest : public ::testing::TestWithParam<const char*> {};

INSTANTIATE_TEST_SUITE_P(Sync, DataParallelModeTest, ::testing::Values("whole", "parts"));

// "whole": one sync per step, overlapped with backward; "parts": one per layer.
TEST_P(DataParallelModeTest, TwoProcessesReachTheWeightsOfOneProcessWithTheGlobalBatch) {
  testutil::TempDir tmp;
  ::setenv("OFFSITE_DP_MODE", GetParam(), 1);
  const std::string address = absl::StrCat("127.0.0.1:", testutil::FreeLoopbackPort());
  std::vector<std::unique_ptr<testutil::ChildProcess>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    // The child inherits the environment at fork.
    ::setenv("OFFSITE_DP_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("OFFSITE_DP_STORE", address.c_str(), 1);
    ::setenv("OFFSITE_DP_OUT", tmp.File(absl::StrCat("rank", rank, ".pt")).c_str(), 1);
    absl::StatusOr<std::unique_ptr<testutil::ChildProcess>> child =
        testutil::ChildProcess::Spawn({"/proc/self/exe", "--gtest_filter=DataParallelChild.*"},
                                      tmp.File("out.log"), tmp.File("out.log"));
    ASSERT_TRUE(child.ok()) << child.status();
    ranks.push_back(std::move(*child));
  }
  ::unsetenv("OFFSITE_DP_RANK");
  ::unsetenv("OFFSITE_DP_STORE");
  ::unsetenv("OFFSITE_DP_OUT");
  ::unsetenv("OFFSITE_DP_MODE");
  for (auto& rank : ranks) {
    absl::StatusOr<int> code = rank->Wait(std::chrono::seconds(60));
    ASSERT_TRUE(code.ok()) << code.status();
    std::ifstream log(tmp.File("out.log"));
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    ASSERT_EQ(*code, 0) << text;
  }
  const std::vector<torch::Tensor> reference = Train(100, nullptr);
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<torch::Tensor> weights;
    torch::load(weights, tmp.File(absl::StrCat("rank", rank, ".pt")));
    ASSERT_EQ(weights.size(), reference.size());
    for (size_t i = 0; i < weights.size(); ++i) {
      EXPECT_TRUE(torch::allclose(weights[i], reference[i], 1e-5, 1e-6))
          << "rank " << rank << " tensor " << i << " max diff "
          << (weights[i] - reference[i]).abs().max().item<float>();
    }
  }
}

}  // namespace
}  // namespace offsite
