#include "common/runtime.h"

#include <torch/torch.h>

#include "gtest/gtest.h"

namespace offsite {
namespace {

// Every binary linking offsite_common must run on tcmalloc: with glibc's malloc
// each tensor-sized free returns pages to the kernel and a training step runs
// about 2x slower. A dropped link flag would only show as slowness.
TEST(RuntimeTest, TcmallocServesMalloc) {
  EXPECT_EQ(MallocName(), "tcmalloc");
  EXPECT_NE(RuntimeSummary().find("malloc tcmalloc"), std::string::npos) << RuntimeSummary();
}

TEST(RuntimeTest, ConfigureThreadsSetsLibTorchsIntraOpThreads) {
  const int before = torch::get_num_threads();
  EXPECT_EQ(ConfigureThreads(1), 1);
  EXPECT_EQ(torch::get_num_threads(), 1);
  EXPECT_GE(ConfigureThreads(0), 1);  // 0: every core.
  torch::set_num_threads(before);
}

}  // namespace
}  // namespace offsite
