#include "server/auth.h"

#include <chrono>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

void WriteAccess(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(AuthenticatorTest, ListedPrincipalGetsItsRoleAndOthersAreDenied) {
  std::string path = MakeTestDir() + "/access.textproto";
  WriteAccess(path,
              "principals { name: \"owner\" role: OWNER }\n"
              "principals { name: \"alice\" role: DATA_OWNER }\n");
  Authenticator auth(path, /*insecure=*/false);
  EXPECT_EQ(auth.Lookup("owner")->role, v1::OWNER);
  EXPECT_EQ(auth.Lookup("alice")->role, v1::DATA_OWNER);
  absl::Status denied = auth.Lookup("mallory").status();
  EXPECT_TRUE(absl::IsPermissionDenied(denied));
  EXPECT_NE(denied.message().find("mallory"), std::string::npos);
}

TEST(AuthenticatorTest, ChangedAccessFileTakesEffectWithoutRestart) {
  std::string path = MakeTestDir() + "/access.textproto";
  WriteAccess(path, "principals { name: \"owner\" role: OWNER }\n");
  Authenticator auth(path, false);
  EXPECT_FALSE(auth.Lookup("bob").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // distinct mtime
  WriteAccess(path,
              "principals { name: \"owner\" role: OWNER }\n"
              "principals { name: \"bob\" role: WORKER }\n");
  EXPECT_EQ(auth.Lookup("bob")->role, v1::WORKER);
}

TEST(AuthenticatorTest, BrokenEditKeepsLastGoodConfiguration) {
  std::string path = MakeTestDir() + "/access.textproto";
  WriteAccess(path, "principals { name: \"owner\" role: OWNER }\n");
  Authenticator auth(path, false);
  ASSERT_TRUE(auth.Lookup("owner").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  WriteAccess(path, "principals { name: ");
  EXPECT_EQ(auth.Lookup("owner")->role, v1::OWNER);
}

TEST(AuthenticatorTest, MissingAccessFileIsAnError) {
  Authenticator auth(MakeTestDir() + "/none.textproto", false);
  EXPECT_FALSE(auth.Lookup("owner").ok());
}

TEST(AuthenticatorTest, InsecureModeMakesEveryoneOwner) {
  Authenticator auth("", /*insecure=*/true);
  EXPECT_EQ(auth.Lookup("anyone")->role, v1::OWNER);
}

}  // namespace
}  // namespace offsite
