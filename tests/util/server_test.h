#ifndef OFFSITE_TESTS_UTIL_SERVER_TEST_H_
#define OFFSITE_TESTS_UTIL_SERVER_TEST_H_

// A GoogleTest fixture for end-to-end tests of one job kind: a real
// offsite-server with default options on a temporary data directory, and the
// owner's job and artifact stubs. Skipped where dataset-fashion-mnist (the
// server's default data) is not installed.
//
//   using MyE2eTest = testutil::FashionMnistServerTest;
//   TEST_F(MyE2eTest, Works) { auto job = testutil::SubmitJob(*jobs_, spec); ... }

#include <gtest/gtest.h>

#include <memory>

#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_process.h"

namespace offsite::testutil {

class FashionMnistServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
    ServerOptions options;
    options.data_dir = tmp_.File("data");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    jobs_ = v1::JobService::NewStub(server_->Channel("owner"));
    artifacts_ = v1::ArtifactService::NewStub(server_->Channel("owner"));
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::ArtifactService::Stub> artifacts_;
};

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_SERVER_TEST_H_
