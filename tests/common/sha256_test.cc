#include "common/sha256.h"

#include <stdlib.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

constexpr char kEmptyHash[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kAbcHash[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

class Sha256Test : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "sha256_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // 1 MiB + 123 bytes: more than one read, ending part way through the second.
  static std::string LargeData() {
    std::string data((1 << 20) + 123, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + i / 7);
    return data;
  }

  std::string dir_;
};

TEST_F(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), kEmptyHash);
  EXPECT_EQ(Sha256Hex("abc"), kAbcHash);
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_F(Sha256Test, StreamingEqualsOneShotAndRestartsAfterDigest) {
  Sha256 hasher;
  hasher.Update("a");
  hasher.Update("");
  hasher.Update("bc");
  EXPECT_EQ(hasher.HexDigest(), kAbcHash);
  EXPECT_EQ(hasher.HexDigest(), kEmptyHash);
}

TEST_F(Sha256Test, LargeFileEqualsOneShotHash) {
  std::string data = LargeData();
  std::string path = dir_ + "/large.bin";
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  absl::StatusOr<std::string> hash = Sha256File(path);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, Sha256Hex(data));
}

TEST_F(Sha256Test, EmptyFileHashesLikeEmptyString) {
  std::string path = dir_ + "/empty";
  ASSERT_TRUE(WriteFileAtomic(path, "").ok());
  EXPECT_EQ(Sha256File(path).value(), kEmptyHash);
}

TEST_F(Sha256Test, MissingFileIsNotFoundNamingThePath) {
  std::string path = dir_ + "/missing";
  absl::StatusOr<std::string> hash = Sha256File(path);
  EXPECT_EQ(hash.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(hash.status().message().find(path), std::string::npos);
}

TEST_F(Sha256Test, PrefixHashCoversExactlyTheFirstBytes) {
  std::string data = LargeData();
  std::string path = dir_ + "/large.bin";
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  for (int64_t length : {int64_t{0}, int64_t{5}, int64_t{1} << 20, int64_t(data.size())}) {
    absl::StatusOr<std::string> hash = Sha256FilePrefix(path, length);
    ASSERT_TRUE(hash.ok()) << hash.status();
    EXPECT_EQ(*hash, Sha256Hex(std::string_view(data).substr(0, length))) << length;
  }
}

TEST_F(Sha256Test, PrefixLongerThanFileIsOutOfRange) {
  std::string path = dir_ + "/short";
  ASSERT_TRUE(WriteFileAtomic(path, "abc").ok());
  absl::StatusOr<std::string> hash = Sha256FilePrefix(path, 4);
  EXPECT_EQ(hash.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(hash.status().message().find(path), std::string::npos);
  EXPECT_EQ(Sha256FilePrefix(path, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Sha256Test, IsSha256HexAcceptsOnlyLowerCaseDigests) {
  EXPECT_TRUE(IsSha256Hex(kAbcHash));
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("x")));
  EXPECT_FALSE(IsSha256Hex(""));
  EXPECT_FALSE(IsSha256Hex(std::string(kAbcHash).substr(1)));
  EXPECT_FALSE(IsSha256Hex(std::string(kAbcHash) + "0"));
  std::string upper(kAbcHash);
  upper[0] = 'B';
  EXPECT_FALSE(IsSha256Hex(upper));
  std::string non_hex(kAbcHash);
  non_hex[10] = 'g';
  EXPECT_FALSE(IsSha256Hex(non_hex));
}

}  // namespace
}  // namespace offsite
