#include "common/access_config.h"

#include <stdlib.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

class AccessConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "access_config_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/access.textproto";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::StatusOr<v1::AccessConfig> Load(const std::string& text) {
    absl::Status written = WriteFileAtomic(path_, text);
    if (!written.ok()) return written;
    return LoadAccessConfig(path_);
  }

  std::string dir_;
  std::string path_;
};

TEST_F(AccessConfigTest, LoadsPrincipalsWithComments) {
  absl::StatusOr<v1::AccessConfig> config = Load(R"pb(
    # The model owner.
    principals { name: "owner" role: OWNER }
    principals { name: "alice" role: DATA_OWNER }
    principals { name: "gpu-1" role: WORKER }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->principals_size(), 3);
  EXPECT_EQ(config->principals(1).name(), "alice");
  EXPECT_EQ(config->principals(1).role(), v1::DATA_OWNER);
}

TEST_F(AccessConfigTest, EmptyFileIsAnEmptyConfig) {
  absl::StatusOr<v1::AccessConfig> config = Load("");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->principals_size(), 0);
}

TEST_F(AccessConfigTest, SyntaxErrorNamesFileAndLine) {
  absl::StatusOr<v1::AccessConfig> config = Load(
      "principals { name: \"owner\" role: OWNER }\n"
      "principals { name: \"bob\" role: ADMIN }\n");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr(path_ + ":2:"));
  EXPECT_THAT(config.status().message(), HasSubstr("ADMIN"));
}

TEST_F(AccessConfigTest, UnknownFieldIsAnError) {
  absl::StatusOr<v1::AccessConfig> config = Load("principal { name: \"owner\" }\n");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr(path_ + ":1:"));
}

TEST_F(AccessConfigTest, RejectsEmptyName) {
  absl::StatusOr<v1::AccessConfig> config =
      Load("principals { name: \"owner\" role: OWNER }\nprincipals { role: WORKER }\n");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("entry 2 has an empty name"));
}

TEST_F(AccessConfigTest, RejectsMissingRole) {
  absl::StatusOr<v1::AccessConfig> config = Load("principals { name: \"carol\" }\n");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("\"carol\" (entry 1) has no role"));
}

TEST_F(AccessConfigTest, RejectsDuplicateNames) {
  absl::StatusOr<v1::AccessConfig> config = Load(
      "principals { name: \"alice\" role: DATA_OWNER }\n"
      "principals { name: \"owner\" role: OWNER }\n"
      "principals { name: \"alice\" role: OWNER }\n");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("\"alice\" is listed twice (entries 1 and 3)"));
}

TEST_F(AccessConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadAccessConfig(dir_ + "/none").status().code(), absl::StatusCode::kNotFound);
}

TEST(RoleTest, ParseRoleAndRoleNameRoundTrip) {
  for (v1::Role role : {v1::OWNER, v1::DATA_OWNER, v1::WORKER}) {
    absl::StatusOr<v1::Role> parsed = ParseRole(RoleName(role));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, role);
  }
  EXPECT_EQ(RoleName(v1::DATA_OWNER), "data-owner");
  EXPECT_EQ(RoleName(v1::ROLE_UNSPECIFIED), "unspecified");
}

TEST(RoleTest, UnknownRoleListsValidOnes) {
  absl::StatusOr<v1::Role> role = ParseRole("admin");
  EXPECT_EQ(role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(role.status().message(), HasSubstr("\"admin\""));
  EXPECT_THAT(role.status().message(), HasSubstr("owner, data-owner, worker"));
  EXPECT_FALSE(ParseRole("OWNER").ok());
  EXPECT_FALSE(ParseRole("").ok());
}

}  // namespace
}  // namespace offsite
