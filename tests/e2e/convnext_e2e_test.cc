// FCMAE pretraining and fine-tuning from its encoder, through the real server.

#include <chrono>
#include <memory>
#include <string>

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
using ConvNextE2eTest = testutil::FashionMnistServerTest;

TEST_F(ConvNextE2eTest, FcmaeEncoderFineTunesThroughTheJobApi) {
  // A small encoder so the test stays quick: 2 stages, 16-32 channels.
  v1::JobSpec pretrain;
  v1::FcmaeSpec* fcmae = pretrain.mutable_fcmae();
  fcmae->mutable_arch()->add_depths(1);
  fcmae->mutable_arch()->add_depths(1);
  fcmae->mutable_arch()->add_dims(16);
  fcmae->mutable_arch()->add_dims(32);
  fcmae->mutable_data()->set_train_subset(256);
  fcmae->mutable_data()->set_test_subset(64);
  fcmae->set_epochs(2);
  fcmae->set_batch_size(64);
  fcmae->set_learning_rate(2e-3);
  fcmae->set_decoder_dim(32);
  auto submitted = testutil::SubmitJob(*jobs_, pretrain);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  auto done = testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(300));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  EXPECT_GT(done->metrics().at("loss"), 0);
  EXPECT_GT(done->metrics().at("test_loss"), 0);
  ASSERT_EQ(done->artifact_ids_size(), 2);  // encoder, reconstruction grid

  // The reconstruction grid is a real PNG a person can open.
  const std::string png = tmp_.File("reconstructions.png");
  auto grid = DownloadArtifact(*artifacts_, done->artifact_ids(1), png);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->name(), "reconstructions.png");
  EXPECT_EQ(ReadFile(png).value().substr(1, 3), "PNG");

  // Fine-tune from the encoder with 200 labels: the same arch loads, another does not.
  v1::JobSpec finetune;
  v1::FinetuneSpec* ft = finetune.mutable_finetune();
  *ft->mutable_arch() = fcmae->arch();
  ft->set_pretrained_artifact(done->artifact_ids(0));
  ft->set_label_subset(200);
  ft->mutable_data()->set_test_subset(500);
  ft->set_epochs(3);
  ft->set_batch_size(50);
  auto tuned_job = testutil::SubmitJob(*jobs_, finetune);
  ASSERT_TRUE(tuned_job.ok()) << tuned_job.status();
  auto tuned = testutil::WaitForJob(*jobs_, tuned_job->id(), IsFinished, seconds(300));
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  ASSERT_EQ(tuned->state(), v1::SUCCEEDED) << tuned->error();
  EXPECT_GT(tuned->metrics().at("test_accuracy"), 0.2);  // chance is 0.1
  EXPECT_EQ(tuned->artifact_ids_size(), 2);              // classifier checkpoint, model.safetensors

  ft->mutable_arch()->set_dims(1, 64);
  auto mismatched = testutil::SubmitJob(*jobs_, finetune);
  ASSERT_TRUE(mismatched.ok()) << mismatched.status();
  auto failed = testutil::WaitForJob(*jobs_, mismatched->id(), IsFinished, seconds(120));
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), v1::FAILED);
  EXPECT_NE(failed->error().find("dims"), std::string::npos) << failed->error();

  // An artifact id the submitter does not own is refused at submission.
  ft->set_pretrained_artifact("art-0000000000000000");
  EXPECT_FALSE(testutil::SubmitJob(*jobs_, finetune).ok());
}

}  // namespace
}  // namespace offsite
