#include "server/artifact_store.h"

#include <fstream>

#include "common/file_util.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

class ArtifactStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = Database::Open(dir_ + "/offsite.db").value();
    store_ = ArtifactStore::Create(db_.get(), dir_).value();
  }
  std::string WriteTemp(const std::string& content) {
    std::string path = dir_ + "/tmp" + std::to_string(counter_++);
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::string dir_ = MakeTestDir();
  int counter_ = 0;
  std::unique_ptr<Database> db_;
  std::unique_ptr<ArtifactStore> store_;
};

TEST_F(ArtifactStoreTest, AddedFileIsStoredUnderItsHash) {
  std::string path = WriteTemp("model bytes");
  v1::Artifact artifact = store_->AddFile(path, "model.pt", "alice", "job-1").value();
  EXPECT_EQ(artifact.sha256(), Sha256Hex("model bytes"));
  EXPECT_EQ(artifact.size(), 11);
  EXPECT_FALSE(FileExists(path));  // moved, not copied
  EXPECT_EQ(ReadFile(store_->BlobPath(artifact.sha256())).value(), "model bytes");
  v1::Artifact again = store_->Get(artifact.id()).value();
  EXPECT_EQ(again.owner(), "alice");
  EXPECT_EQ(again.job_id(), "job-1");
  EXPECT_TRUE(absl::IsNotFound(store_->Get("art-nope").status()));
}

TEST_F(ArtifactStoreTest, SameContentTwiceSharesOneBlob) {
  v1::Artifact a = store_->AddFile(WriteTemp("same"), "a", "alice", "").value();
  v1::Artifact b = store_->AddFile(WriteTemp("same"), "b", "bob", "").value();
  EXPECT_NE(a.id(), b.id());
  EXPECT_EQ(a.sha256(), b.sha256());
  EXPECT_EQ(ReadFile(store_->BlobPath(a.sha256())).value(), "same");
}

TEST_F(ArtifactStoreTest, UploadResumesFromCommittedOffset) {
  const std::string content(3000, 'x');
  const std::string sha = Sha256Hex(content);
  EXPECT_EQ(store_->UploadStatus("alice", sha, 3000)->committed_offset(), 0);
  ASSERT_TRUE(store_->AppendUpload("alice", sha, 0, content.substr(0, 1000)).ok());
  // The connection broke; the server reports where to continue.
  EXPECT_EQ(store_->UploadStatus("alice", sha, 3000)->committed_offset(), 1000);
  // Another principal's upload of the same content is separate.
  EXPECT_EQ(store_->UploadStatus("bob", sha, 3000)->committed_offset(), 0);
  // A wrong offset is refused, saying where to resume.
  absl::Status wrong = store_->AppendUpload("alice", sha, 500, content.substr(500, 10));
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong));
  EXPECT_NE(wrong.message().find("1000"), std::string::npos);
  ASSERT_TRUE(store_->AppendUpload("alice", sha, 1000, content.substr(1000)).ok());
  v1::Artifact artifact = store_->FinishUpload("alice", sha, 3000, "data.bin").value();
  EXPECT_EQ(artifact.sha256(), sha);
  EXPECT_EQ(artifact.owner(), "alice");
  // Done once: the same content is now simply there.
  EXPECT_EQ(store_->UploadStatus("alice", sha, 3000)->artifact_id(), artifact.id());
}

TEST_F(ArtifactStoreTest, UploadWithWrongContentIsDiscarded) {
  const std::string declared = Sha256Hex("expected");
  ASSERT_TRUE(store_->AppendUpload("alice", declared, 0, "tampered").ok());
  absl::Status status = store_->FinishUpload("alice", declared, 8, "x").status();
  EXPECT_TRUE(absl::IsDataLoss(status));
  EXPECT_EQ(store_->UploadStatus("alice", declared, 8)->committed_offset(), 0);
}

TEST_F(ArtifactStoreTest, IncompleteUploadCannotFinish) {
  const std::string sha = Sha256Hex("0123456789");
  ASSERT_TRUE(store_->AppendUpload("alice", sha, 0, "01234").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->FinishUpload("alice", sha, 10, "x").status()));
}

}  // namespace
}  // namespace offsite
