#include "common/file_util.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace offsite {
namespace {

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "file_util_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static mode_t Mode(const std::string& path) {
    struct stat st;
    EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }

  std::string dir_;
};

TEST_F(FileUtilTest, WriteThenReadRoundTripsBinaryData) {
  std::string path = dir_ + "/data.bin";
  std::string data("a\0b\xff", 4);
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  EXPECT_EQ(ReadFile(path).value(), data);
  EXPECT_EQ(FileSize(path).value(), 4);
  EXPECT_EQ(Mode(path), 0644u);
}

TEST_F(FileUtilTest, WriteReplacesContentWithExactModeAndLeavesNoTemporaryFile) {
  std::string path = dir_ + "/secret.key";
  ASSERT_TRUE(WriteFileAtomic(path, "old content").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "new", 0600).ok());
  EXPECT_EQ(ReadFile(path).value(), "new");
  EXPECT_EQ(Mode(path), 0600u);
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    ++entries;
    EXPECT_EQ(entry.path().filename(), "secret.key");
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(FileUtilTest, WriteIntoMissingDirectoryFailsNamingThePath) {
  std::string path = dir_ + "/no/such/dir/file";
  absl::Status status = WriteFileAtomic(path, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find(path), std::string::npos) << status;
}

TEST_F(FileUtilTest, ReadMissingFileIsNotFoundWithPathAndReason) {
  std::string path = dir_ + "/missing";
  absl::StatusOr<std::string> content = ReadFile(path);
  EXPECT_EQ(content.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(content.status().message().find("cannot open " + path), std::string::npos);
  EXPECT_NE(content.status().message().find("No such file or directory"), std::string::npos);
}

TEST_F(FileUtilTest, MakeDirsCreatesParentsAndIsIdempotent) {
  std::string path = dir_ + "/a/b/c";
  ASSERT_TRUE(MakeDirs(path, 0700).ok());
  EXPECT_TRUE(std::filesystem::is_directory(path));
  EXPECT_EQ(Mode(path), 0700u);
  EXPECT_TRUE(MakeDirs(path).ok());
  EXPECT_TRUE(MakeDirs(path + "/").ok());
}

TEST_F(FileUtilTest, MakeDirsOverAFileFails) {
  std::string file = dir_ + "/file";
  ASSERT_TRUE(WriteFileAtomic(file, "x").ok());
  absl::Status status = MakeDirs(file);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find(file), std::string::npos);
  EXPECT_FALSE(MakeDirs(file + "/sub").ok());
}

TEST_F(FileUtilTest, FileExistsAndFileSize) {
  std::string path = dir_ + "/f";
  EXPECT_FALSE(FileExists(path));
  EXPECT_EQ(FileSize(path).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(path, "12345").ok());
  EXPECT_TRUE(FileExists(path));
  EXPECT_EQ(FileSize(path).value(), 5);
  EXPECT_TRUE(FileExists(dir_));
  EXPECT_EQ(FileSize(dir_).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace offsite
