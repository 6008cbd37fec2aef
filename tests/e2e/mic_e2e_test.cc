// A MIC segmentation job through the real server: submitted over gRPC, its
// metrics streamed per evaluation, the student and final metrics downloadable;
// a bad spec is refused at submission naming the field.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client/transfer.h"
#include "common/file_util.h"
#include "gtest/gtest.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_test.h"

namespace offsite {
namespace {

using std::chrono::seconds;
using testutil::IsFinished;
using MicE2eTest = testutil::FashionMnistServerTest;

TEST_F(MicE2eTest, SegmentationJobStreamsMetricsAndLeavesTheStudent) {
  const v1::JobSpec spec = testutil::TinyMicSpec();
  auto submitted = testutil::SubmitJob(*jobs_, spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->kind(), "mic");
  auto done = testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(120));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  for (const char* name : {"source_loss", "pseudo_label_confidence", "quality_weight",
                           "target_accuracy", "target_miou", "target_iou_0"}) {
    EXPECT_TRUE(done->metrics().count(name)) << name;
  }
  EXPECT_GT(done->metrics().at("target_miou"), 0);
  EXPECT_LE(done->metrics().at("target_miou"), 1);

  // One metrics event per evaluation (steps 4 and 8).
  auto events = testutil::JobEvents(*jobs_, submitted->id());
  ASSERT_TRUE(events.ok()) << events.status();
  int metric_events = 0;
  for (const v1::JobEvent& event : *events) metric_events += event.has_metrics();
  EXPECT_EQ(metric_events, 2);

  ASSERT_EQ(done->artifact_ids_size(), 2);  // student, metrics
  auto metrics = DownloadArtifact(*artifacts_, done->artifact_ids(1), tmp_.File("metrics.txt"));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->name(), "mic_metrics.txt");
  EXPECT_NE(ReadFile(tmp_.File("metrics.txt")).value().find("target_miou "), std::string::npos);

  v1::JobSpec bad = spec;
  bad.mutable_mic()->set_mask_ratio(2);
  auto refused = testutil::SubmitJob(*jobs_, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("mic.mask_ratio"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace offsite
