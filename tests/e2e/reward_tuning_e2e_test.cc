// Maximum-likelihood detection training, then REINFORCE from its detector,
// through the real server: both jobs succeed and stream their figures.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_test.h"

namespace offsite {
namespace {

using std::chrono::seconds;
using testutil::IsFinished;
using RewardTuningE2eTest = testutil::FashionMnistServerTest;

TEST_F(RewardTuningE2eTest, DetectionMleThenRewardTuningFromItsDetector) {
  // A few 32 px scenes and a tiny detector, so the pair takes seconds.
  const v1::JobSpec mle_spec = testutil::TinyDetectionMleSpec();
  auto submitted = testutil::SubmitJob(*jobs_, mle_spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->kind(), "detection_mle");
  auto trained = testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(120));
  ASSERT_TRUE(trained.ok()) << trained.status();
  ASSERT_EQ(trained->state(), v1::SUCCEEDED) << trained->error();
  for (const char* name :
       {"loss", "test_map", "test_map50", "test_recall", "test_duplicate_rate"}) {
    EXPECT_TRUE(trained->metrics().count(name)) << name;
  }
  EXPECT_EQ(trained->metrics().at("epoch"), 2);
  ASSERT_EQ(trained->artifact_ids_size(), 1);  // detector.pt

  v1::JobSpec tune_spec = testutil::TinyRewardTuneSpec(trained->artifact_ids(0));
  submitted = testutil::SubmitJob(*jobs_, tune_spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->kind(), "reward_tune");
  auto tuned = testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(120));
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  ASSERT_EQ(tuned->state(), v1::SUCCEEDED) << tuned->error();
  for (const char* name : {"sampled_reward", "greedy_reward", "entropy", "output_length",
                           "test_map", "initial_test_map"}) {
    EXPECT_TRUE(tuned->metrics().count(name)) << name;
  }
  EXPECT_EQ(tuned->metrics().at("step"), 6);
  EXPECT_EQ(tuned->artifact_ids_size(), 2);  // detector.pt, metrics.json

  // The stream carried the figures as they came: the starting model's, and
  // training figures before the end.
  auto events = testutil::JobEvents(*jobs_, submitted->id());
  ASSERT_TRUE(events.ok()) << events.status();
  int with_sampled_reward = 0;
  for (const v1::JobEvent& event : *events) {
    with_sampled_reward += event.has_metrics() && event.metrics().values().count("sampled_reward");
  }
  EXPECT_GE(with_sampled_reward, 2);

  // A bad spec is refused at submission, naming the field.
  tune_spec.mutable_reward_tune()->set_samples_per_input(1);
  auto refused = testutil::SubmitJob(*jobs_, tune_spec);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("samples_per_input"), std::string::npos);
}

}  // namespace
}  // namespace offsite
