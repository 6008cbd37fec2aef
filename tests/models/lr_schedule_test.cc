#include "models/lr_schedule.h"

#include "gtest/gtest.h"

namespace offsite {
namespace {

TEST(LrScheduleTest, WarmupRisesLinearlyThenCosineDecaysToFloor) {
  EXPECT_DOUBLE_EQ(WarmupCosine(0, 10, 100, 1.0), 0.1);
  EXPECT_DOUBLE_EQ(WarmupCosine(9, 10, 100, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(WarmupCosine(10, 10, 100, 1.0), 1.0);
  EXPECT_NEAR(WarmupCosine(55, 10, 100, 1.0), 0.5, 1e-12);
  EXPECT_NEAR(WarmupCosine(100, 10, 100, 1.0, 0.1), 0.1, 1e-12);
}

TEST(LrScheduleTest, CooldownKeepsFirstHalfAndEndsAtTwoOverEpochs) {
  // The recipe of docs/results/forward_forward.md: 30 epochs at 1e-3.
  EXPECT_DOUBLE_EQ(LinearCooldown(1, 30, 1e-3), 1e-3);
  EXPECT_DOUBLE_EQ(LinearCooldown(15, 30, 1e-3), 1e-3);
  EXPECT_DOUBLE_EQ(LinearCooldown(16, 30, 1e-3), 1e-3);
  EXPECT_NEAR(LinearCooldown(20, 30, 1e-3), 7.333e-4, 1e-7);
  EXPECT_NEAR(LinearCooldown(30, 30, 1e-3), 6.667e-5, 1e-8);
}

}  // namespace
}  // namespace offsite
