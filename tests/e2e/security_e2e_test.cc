// End-to-end: who may talk to the real offsite-server, and what each tenant
// sees. Mutual TLS with the server's own CA; roles from access.textproto.

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/transfer.h"
#include "common/certs.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/idx_writer.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using std::chrono::seconds;
using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::IsFinished;
using testutil::RunClient;
using testutil::ServerOptions;
using testutil::ServerProcess;
using testutil::TempDir;

class SecurityE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.data_dir = tmp_.File("data");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  std::string Pem(const std::string& name) const {
    return ReadFile(server_->certs_dir() + "/" + name).value_or("");
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
};

// ListJobs over `channel`, with a deadline so a refused handshake cannot hang the test.
grpc::StatusCode ListJobsCode(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::JobService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::ListJobsResponse response;
  return stub->ListJobs(&context, v1::ListJobsRequest(), &response).error_code();
}

grpc::StatusCode StatArtifactCode(v1::ArtifactService::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  v1::StatArtifactRequest request;
  request.set_id(id);
  v1::Artifact artifact;
  return stub.StatArtifact(&context, request, &artifact).error_code();
}

std::vector<std::string> JobIds(const v1::ListJobsResponse& response) {
  std::vector<std::string> ids;
  for (const v1::Job& job : response.jobs()) ids.push_back(job.id());
  return ids;
}

v1::ListJobsResponse ListJobs(v1::JobService::Stub& stub) {
  grpc::ClientContext context;
  v1::ListJobsResponse response;
  grpc::Status status = stub.ListJobs(&context, v1::ListJobsRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

TEST_F(SecurityE2eTest, ClientWithoutCertificateCannotConnect) {
  // TLS that trusts the server but presents no client certificate.
  EXPECT_THAT(ListJobsCode(testutil::MakeTlsChannel(server_->address(), Pem("ca.pem"), "", "")),
              AnyOf(Eq(grpc::StatusCode::UNAVAILABLE), Eq(grpc::StatusCode::UNAUTHENTICATED)));
  // Plaintext.
  EXPECT_THAT(
      ListJobsCode(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials())),
      AnyOf(Eq(grpc::StatusCode::UNAVAILABLE), Eq(grpc::StatusCode::UNAUTHENTICATED)));
  // The same server answers a client with the owner's certificate.
  EXPECT_EQ(ListJobsCode(server_->Channel("owner")), grpc::StatusCode::OK);
}

TEST_F(SecurityE2eTest, ClientWithCertificateFromAnotherCaIsRefused) {
  // Another CA's "owner": the right name, the wrong signer.
  TempDir other;
  CertBundleOptions bundle;
  bundle.dir = other.File("certs");
  ASSERT_TRUE(InitCertificates(bundle).ok());
  std::string cert = ReadFile(bundle.dir + "/owner.pem").value_or("");
  std::string key = ReadFile(bundle.dir + "/owner.key").value_or("");
  ASSERT_FALSE(cert.empty());
  EXPECT_THAT(ListJobsCode(testutil::MakeTlsChannel(server_->address(), Pem("ca.pem"), cert, key)),
              AnyOf(Eq(grpc::StatusCode::UNAVAILABLE), Eq(grpc::StatusCode::UNAUTHENTICATED)));

  // The CLI with those files fails too, with the "denied" or "unavailable" exit code.
  CommandResult result = RunClient(
      {"jobs", "list", "--server", server_->address(), "--ca", server_->certs_dir() + "/ca.pem",
       "--cert", bundle.dir + "/owner.pem", "--key", bundle.dir + "/owner.key"},
      std::chrono::seconds(60));
  EXPECT_THAT(result.exit_code, AnyOf(Eq(6), Eq(7))) << result.out << result.err;
}

TEST_F(SecurityE2eTest, UnknownPrincipalIsDeniedAndTheDenialIsAudited) {
  // Signed by the server's CA, but not in access.textproto.
  ASSERT_TRUE(server_->IssueIdentity("mallory", "").ok());
  std::shared_ptr<grpc::Channel> channel = server_->Channel("mallory");
  EXPECT_EQ(ListJobsCode(channel), grpc::StatusCode::PERMISSION_DENIED);
  auto artifacts = v1::ArtifactService::NewStub(channel);
  EXPECT_EQ(StatArtifactCode(*artifacts, "art-0000"), grpc::StatusCode::PERMISSION_DENIED);

  CommandResult result = RunClient({"jobs", "list", "--server", server_->address(), "--certs-dir",
                                    server_->certs_dir(), "--identity", "mallory"});
  EXPECT_EQ(result.exit_code, 6) << result.out << result.err;
  EXPECT_THAT(result.err, HasSubstr("mallory"));

  // A worker identity is known but may not use the job API.
  ASSERT_TRUE(server_->IssueIdentity("worker-1", "worker").ok());
  EXPECT_EQ(ListJobsCode(server_->Channel("worker-1")), grpc::StatusCode::PERMISSION_DENIED);

  // Every RPC leaves an audit line; the denied ones say so.
  absl::StatusOr<std::string> audit = ReadFile(server_->data_dir() + "/audit.log");
  ASSERT_TRUE(audit.ok()) << audit.status();
  int denied_lines = 0;
  for (absl::string_view line : absl::StrSplit(*audit, '\n')) {
    if (absl::StrContains(line, "mallory")) {
      EXPECT_THAT(std::string(line), HasSubstr("outcome=PERMISSION_DENIED"));
      ++denied_lines;
    }
  }
  EXPECT_EQ(denied_lines, 3) << *audit;
  EXPECT_THAT(*audit, HasSubstr("method=ListJobs resource=\"jobs\" outcome=PERMISSION_DENIED"));
  EXPECT_THAT(*audit, HasSubstr("method=StatArtifact resource=\"artifact/art-0000\" "
                                "outcome=PERMISSION_DENIED"));
  EXPECT_THAT(*audit, HasSubstr("principal=\"worker-1\" method=ListJobs"));
}

TEST_F(SecurityE2eTest, TenantsSeeOnlyTheirOwnJobsAndArtifacts) {
  ASSERT_TRUE(server_->IssueIdentity("alice", "data-owner").ok());
  ASSERT_TRUE(server_->IssueIdentity("bob", "data-owner").ok());
  std::shared_ptr<grpc::Channel> alice = server_->Channel("alice");
  std::shared_ptr<grpc::Channel> bob = server_->Channel("bob");
  auto alice_jobs = v1::JobService::NewStub(alice);
  auto bob_jobs = v1::JobService::NewStub(bob);
  auto owner_jobs = v1::JobService::NewStub(server_->Channel("owner"));
  auto alice_artifacts = v1::ArtifactService::NewStub(alice);
  auto bob_artifacts = v1::ArtifactService::NewStub(bob);
  auto owner_artifacts = v1::ArtifactService::NewStub(server_->Channel("owner"));

  // Data owners may name only files under the server's data roots.
  absl::StatusOr<testutil::IdxDataSet> data =
      testutil::WriteSyntheticIdxDataSet(server_->data_dir() + "/datasets/synthetic", 300, 100, 3);
  ASSERT_TRUE(data.ok()) << data.status();
  v1::JobSpec outside = testutil::SyntheticFfSpec(*data, 1);
  outside.mutable_forward_forward()->set_train_images("/etc/passwd");
  EXPECT_TRUE(absl::IsPermissionDenied(testutil::SubmitJob(*alice_jobs, outside).status()));
  absl::StatusOr<v1::Job> alice_job =
      testutil::SubmitJob(*alice_jobs, testutil::SyntheticFfSpec(*data, 1));
  ASSERT_TRUE(alice_job.ok()) << alice_job.status();
  EXPECT_EQ(alice_job->owner(), "alice");
  alice_job = testutil::WaitForJob(*alice_jobs, alice_job->id(), IsFinished, seconds(60));
  ASSERT_TRUE(alice_job.ok()) << alice_job.status();
  ASSERT_EQ(alice_job->state(), v1::SUCCEEDED) << alice_job->error();
  ASSERT_EQ(alice_job->artifact_ids_size(), 1);
  const std::string alice_model = alice_job->artifact_ids(0);
  const std::string id = alice_job->id();

  absl::StatusOr<v1::Job> bob_job =
      testutil::SubmitJob(*bob_jobs, testutil::SyntheticFfSpec(*data, 1));
  ASSERT_TRUE(bob_job.ok()) << bob_job.status();

  // Bob cannot reach Alice's job by any method: to him it does not exist.
  EXPECT_TRUE(absl::IsNotFound(testutil::GetJob(*bob_jobs, id).status()));
  {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_id(id);
    v1::Job job;
    EXPECT_EQ(bob_jobs->CancelJob(&context, request, &job).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::WatchJobRequest request;
    request.set_id(id);
    auto reader = bob_jobs->WatchJob(&context, request);
    v1::JobEvent event;
    EXPECT_FALSE(reader->Read(&event)) << "bob received " << event.ShortDebugString();
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    v1::GetJobLogsRequest request;
    request.set_id(id);
    v1::GetJobLogsResponse logs;
    EXPECT_EQ(bob_jobs->GetJobLogs(&context, request, &logs).error_code(),
              grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(logs.lines_size(), 0);
  }
  EXPECT_THAT(JobIds(ListJobs(*bob_jobs)), ::testing::ElementsAre(bob_job->id()));
  EXPECT_THAT(JobIds(ListJobs(*alice_jobs)), ::testing::ElementsAre(id));
  EXPECT_TRUE(absl::IsNotFound(testutil::GetJob(*alice_jobs, bob_job->id()).status()));

  // Nor Alice's artifacts: the job's model, or a file she uploaded.
  EXPECT_EQ(StatArtifactCode(*bob_artifacts, alice_model), grpc::StatusCode::NOT_FOUND);
  absl::StatusOr<v1::Artifact> stolen =
      DownloadArtifact(*bob_artifacts, alice_model, tmp_.File("stolen.pt"));
  EXPECT_TRUE(absl::IsNotFound(stolen.status())) << stolen.status();
  EXPECT_FALSE(FileExists(tmp_.File("stolen.pt")));
  {
    grpc::ClientContext context;
    v1::DownloadArtifactRequest request;
    request.set_id(alice_model);
    auto reader = bob_artifacts->DownloadArtifact(&context, request);
    v1::ArtifactChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  const std::string secret_path = tmp_.File("alice-secret.bin");
  ASSERT_TRUE(WriteFileAtomic(secret_path, std::string(300000, 'a')).ok());
  absl::StatusOr<v1::Artifact> secret = UploadArtifact(*alice_artifacts, secret_path, "secret");
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(secret->owner(), "alice");
  EXPECT_EQ(StatArtifactCode(*bob_artifacts, secret->id()), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(StatArtifactCode(*alice_artifacts, secret->id()), grpc::StatusCode::OK);
  {
    // Asking about the same content does not reveal Alice's artifact to Bob.
    grpc::ClientContext context;
    v1::StatUploadRequest request;
    request.set_sha256(secret->sha256());
    request.set_size(secret->size());
    v1::UploadStatus status;
    ASSERT_TRUE(bob_artifacts->StatUpload(&context, request, &status).ok());
    EXPECT_EQ(status.artifact_id(), "");
    EXPECT_EQ(status.committed_offset(), 0);
  }

  // Bob's attempts changed nothing; the owner sees both tenants' work.
  absl::StatusOr<v1::Job> after = testutil::GetJob(*alice_jobs, id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::SUCCEEDED);
  EXPECT_FALSE(after->cancel_requested());
  EXPECT_THAT(JobIds(ListJobs(*owner_jobs)), ::testing::UnorderedElementsAre(id, bob_job->id()));
  EXPECT_EQ(StatArtifactCode(*owner_artifacts, alice_model), grpc::StatusCode::OK);
  EXPECT_EQ(StatArtifactCode(*owner_artifacts, secret->id()), grpc::StatusCode::OK);
  EXPECT_TRUE(testutil::GetJob(*owner_jobs, id).ok());
}

// Calls grpc.health.v1.Health/Check through the generic stub (the installed
// gRPC ships no generated health client): the request is an empty
// HealthCheckRequest, the reply holds `ServingStatus status = 1`.
TEST_F(SecurityE2eTest, HealthCheckReportsServing) {
  grpc::GenericStub generic(server_->Channel("owner"));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  google::protobuf::UnknownFieldSet fields;
  ASSERT_TRUE(fields.ParseFromString(bytes));
  ASSERT_EQ(fields.field_count(), 1);
  EXPECT_EQ(fields.field(0).number(), 1);
  EXPECT_EQ(fields.field(0).varint(), 1u) << "1 is SERVING";
}

}  // namespace
}  // namespace offsite
