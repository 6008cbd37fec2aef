// End-to-end: artifact transfer against the real offsite-server over mTLS.
// Interrupted downloads and uploads resume where they stopped, and both ends
// check the SHA-256 so corrupt pieces are caught and thrown away.

#include <chrono>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "client/transfer.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;
using testutil::ServerOptions;
using testutil::ServerProcess;
using testutil::TempDir;

constexpr int kChunk = 256 << 10;

std::string RandomBytes(size_t size, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; i += 8) {
    uint64_t word = random();
    for (size_t j = 0; j < 8 && i + j < size; ++j)
      bytes[i + j] = static_cast<char>(word >> (8 * j));
  }
  return bytes;
}

class ArtifactsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.data_dir = tmp_.File("data");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    artifacts_ = v1::ArtifactService::NewStub(server_->Channel("owner"));
  }

  // Writes `content` to a file in the test's directory and returns its path.
  std::string WriteLocal(const std::string& name, const std::string& content) {
    const std::string path = tmp_.File(name);
    EXPECT_TRUE(WriteFileAtomic(path, content).ok());
    return path;
  }

  // Uploads through the client library and checks the server's record.
  v1::Artifact Upload(const std::string& path, const std::string& content) {
    TransferOptions options;
    options.chunk_size = kChunk;
    absl::StatusOr<v1::Artifact> artifact = UploadArtifact(*artifacts_, path, "blob.bin", options);
    EXPECT_TRUE(artifact.ok()) << artifact.status();
    if (!artifact.ok()) return v1::Artifact();
    EXPECT_EQ(artifact->size(), static_cast<int64_t>(content.size()));
    EXPECT_EQ(artifact->sha256(), Sha256Hex(content));
    return *artifact;
  }

  // The in-progress upload files the server holds.
  std::vector<std::string> ServerUploadParts() const {
    std::vector<std::string> parts;
    std::error_code error;
    for (const auto& entry :
         std::filesystem::directory_iterator(server_->data_dir() + "/uploads", error)) {
      if (absl::EndsWith(entry.path().string(), ".part")) parts.push_back(entry.path().string());
    }
    return parts;
  }

  v1::UploadStatus StatUpload(const std::string& content) {
    grpc::ClientContext context;
    v1::StatUploadRequest request;
    request.set_sha256(Sha256Hex(content));
    request.set_size(static_cast<int64_t>(content.size()));
    v1::UploadStatus status;
    grpc::Status rpc = artifacts_->StatUpload(&context, request, &status);
    EXPECT_TRUE(rpc.ok()) << rpc.error_message();
    return status;
  }

  // A raw UploadArtifact stream, as an interrupted client leaves it: the
  // header for all of `content` at `offset`, then only `data`, then the end of
  // the stream. Returns the server's answer.
  absl::Status UploadPiece(const std::string& content, int64_t offset, const std::string& data) {
    grpc::ClientContext context;
    v1::Artifact artifact;
    auto writer = artifacts_->UploadArtifact(&context, &artifact);
    v1::UploadArtifactRequest message;
    message.mutable_header()->set_name("blob.bin");
    message.mutable_header()->set_size(static_cast<int64_t>(content.size()));
    message.mutable_header()->set_sha256(Sha256Hex(content));
    message.mutable_header()->set_offset(offset);
    bool open = writer->Write(message);
    for (size_t at = 0; open && at < data.size(); at += kChunk) {
      message.set_data(data.substr(at, kChunk));
      open = writer->Write(message);
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::ArtifactService::Stub> artifacts_;
};

TEST_F(ArtifactsE2eTest, InterruptedDownloadResumesFromThePartialFile) {
  const std::string content = RandomBytes((4 << 20) + 12345, 1);
  v1::Artifact artifact = Upload(WriteLocal("original.bin", content), content);
  ASSERT_FALSE(artifact.id().empty());

  // What an interrupted download leaves behind: a prefix in PATH.part.
  const std::string path = tmp_.File("download.bin");
  const size_t held = (3 << 19) + 7;
  ASSERT_TRUE(WriteFileAtomic(path + ".part", content.substr(0, held)).ok());

  std::vector<int64_t> progress;
  TransferOptions options;
  options.chunk_size = kChunk;
  options.progress = [&](int64_t done, int64_t total) {
    progress.push_back(done);
    EXPECT_EQ(total, static_cast<int64_t>(content.size()));
  };
  absl::StatusOr<v1::Artifact> downloaded =
      DownloadArtifact(*artifacts_, artifact.id(), path, options);
  ASSERT_TRUE(downloaded.ok()) << downloaded.status();
  ASSERT_FALSE(progress.empty());
  // It went on from the held bytes: the first chunk ends one chunk past them.
  EXPECT_EQ(progress.front(), static_cast<int64_t>(held) + kChunk);
  EXPECT_EQ(progress.back(), static_cast<int64_t>(content.size()));
  EXPECT_EQ(Sha256File(path).value_or(""), artifact.sha256());
  EXPECT_EQ(ReadFile(path).value_or(""), content);
  EXPECT_FALSE(FileExists(path + ".part"));
}

TEST_F(ArtifactsE2eTest, DownloadCutByServerKillResumesAfterRestart) {
  const std::string content = RandomBytes(8 << 20, 2);
  v1::Artifact artifact = Upload(WriteLocal("original.bin", content), content);
  ASSERT_FALSE(artifact.id().empty());
  const std::string path = tmp_.File("download.bin");

  // kill -9 the server as soon as the first chunk arrives. Without BDP
  // probing the HTTP/2 window stays small, so the server can only have sent
  // a little ahead of what was read: the cut is sure to fall mid-file.
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto artifacts = v1::ArtifactService::NewStub(server_->Channel("owner", small_window));
  TransferOptions options;
  options.chunk_size = 64 << 10;
  options.max_retries = 0;
  options.progress = [&](int64_t, int64_t) {
    if (server_->Running()) server_->Kill();
  };
  absl::StatusOr<v1::Artifact> cut = DownloadArtifact(*artifacts, artifact.id(), path, options);
  ASSERT_FALSE(cut.ok()) << "the whole artifact arrived before the kill took effect";
  RecordProperty("cut_status", cut.status().ToString());
  // A code the client library treats as "try again".
  EXPECT_TRUE(absl::IsUnavailable(cut.status()) || absl::IsInternal(cut.status()) ||
              absl::IsCancelled(cut.status()) || absl::IsAborted(cut.status()))
      << cut.status();
  absl::StatusOr<int64_t> held = FileSize(path + ".part");
  ASSERT_TRUE(held.ok()) << held.status();
  RecordProperty("bytes_before_the_cut", std::to_string(*held));
  ASSERT_GT(*held, 0);
  ASSERT_LT(*held, static_cast<int64_t>(content.size()));

  ASSERT_TRUE(server_->Restart().ok());
  std::vector<int64_t> progress;
  options.max_retries = 5;
  options.progress = [&](int64_t done, int64_t) { progress.push_back(done); };
  absl::StatusOr<v1::Artifact> resumed = DownloadArtifact(*artifacts, artifact.id(), path, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.front(), *held + options.chunk_size);
  EXPECT_EQ(Sha256File(path).value_or(""), artifact.sha256());
  EXPECT_FALSE(FileExists(path + ".part"));
}

TEST_F(ArtifactsE2eTest, CorruptPartialDownloadFailsWithDataLossAndIsDiscarded) {
  const std::string content = RandomBytes(2 << 20, 3);
  v1::Artifact artifact = Upload(WriteLocal("original.bin", content), content);
  ASSERT_FALSE(artifact.id().empty());
  const std::string path = tmp_.File("download.bin");
  ASSERT_TRUE(WriteFileAtomic(path + ".part", std::string(1 << 20, 'x')).ok());

  absl::StatusOr<v1::Artifact> corrupt = DownloadArtifact(*artifacts_, artifact.id(), path);
  EXPECT_TRUE(absl::IsDataLoss(corrupt.status())) << corrupt.status();
  EXPECT_THAT(std::string(corrupt.status().message()), HasSubstr("SHA-256"));
  EXPECT_FALSE(FileExists(path + ".part"));
  EXPECT_FALSE(FileExists(path));

  absl::StatusOr<v1::Artifact> again = DownloadArtifact(*artifacts_, artifact.id(), path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Sha256File(path).value_or(""), artifact.sha256());
}

TEST_F(ArtifactsE2eTest, InterruptedUploadResumesFromTheCommittedOffset) {
  const std::string content = RandomBytes((3 << 20) + 99, 4);
  const std::string path = WriteLocal("upload.bin", content);
  EXPECT_EQ(StatUpload(content).committed_offset(), 0);

  // A client that stopped after the first part of the file.
  const int64_t sent = (1 << 20) + 100;
  absl::Status stopped = UploadPiece(content, 0, content.substr(0, sent));
  EXPECT_TRUE(absl::IsFailedPrecondition(stopped)) << stopped;
  EXPECT_THAT(std::string(stopped.message()), HasSubstr("incomplete"));
  v1::UploadStatus status = StatUpload(content);
  EXPECT_EQ(status.committed_offset(), sent);
  EXPECT_EQ(status.artifact_id(), "");

  // Resuming from any other offset is refused, naming the one to use.
  absl::Status wrong = UploadPiece(content, 0, content.substr(0, kChunk));
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong)) << wrong;
  EXPECT_THAT(std::string(wrong.message()), HasSubstr(std::to_string(sent)));

  // The client library picks up from the committed offset.
  std::vector<int64_t> progress;
  TransferOptions options;
  options.chunk_size = kChunk;
  options.progress = [&](int64_t done, int64_t) { progress.push_back(done); };
  absl::StatusOr<v1::Artifact> artifact = UploadArtifact(*artifacts_, path, "blob.bin", options);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.front(), sent + kChunk);
  EXPECT_EQ(artifact->sha256(), Sha256Hex(content));
  EXPECT_EQ(artifact->size(), static_cast<int64_t>(content.size()));
  EXPECT_TRUE(ServerUploadParts().empty());

  // What the server stored is the file, byte for byte.
  const std::string back = tmp_.File("back.bin");
  ASSERT_TRUE(DownloadArtifact(*artifacts_, artifact->id(), back).ok());
  EXPECT_EQ(ReadFile(back).value_or(""), content);
  // And the same content again is recognised as already held.
  EXPECT_EQ(StatUpload(content).artifact_id(), artifact->id());
}

TEST_F(ArtifactsE2eTest, CorruptedUploadIsRejectedWithDataLossAndDiscarded) {
  const std::string content = RandomBytes(2 << 20, 5);
  const std::string path = WriteLocal("upload.bin", content);

  // The server holds a first megabyte that is not the file's.
  std::string wrong = content.substr(0, 1 << 20);
  for (char& c : wrong) c = static_cast<char>(~c);
  EXPECT_TRUE(absl::IsFailedPrecondition(UploadPiece(content, 0, wrong)));
  ASSERT_EQ(StatUpload(content).committed_offset(), 1 << 20);
  ASSERT_EQ(ServerUploadParts().size(), 1u);

  // Finishing it with the right remainder fails the SHA-256 check: DATA_LOSS,
  // and the partial upload is thrown away.
  TransferOptions options;
  options.chunk_size = kChunk;
  absl::StatusOr<v1::Artifact> corrupt = UploadArtifact(*artifacts_, path, "blob.bin", options);
  EXPECT_TRUE(absl::IsDataLoss(corrupt.status())) << corrupt.status();
  EXPECT_THAT(std::string(corrupt.status().message()), HasSubstr("SHA-256"));
  EXPECT_EQ(StatUpload(content).committed_offset(), 0);
  EXPECT_TRUE(ServerUploadParts().empty());

  // A fresh upload then succeeds.
  absl::StatusOr<v1::Artifact> artifact = UploadArtifact(*artifacts_, path, "blob.bin", options);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->sha256(), Sha256Hex(content));
}

}  // namespace
}  // namespace offsite
