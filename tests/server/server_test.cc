#include "server/server.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

v1::ServerConfig LocalConfig(const std::string& data_dir) {
  v1::ServerConfig config;
  config.set_listen_address("127.0.0.1:0");
  config.set_data_dir(data_dir);
  config.set_insecure(true);
  return config;
}

TEST(OffsiteServerTest, SecondServerOnTheSameDataDirectoryIsRefused) {
  const std::string dir = MakeTestDir();
  auto first = OffsiteServer::Start(LocalConfig(dir));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = OffsiteServer::Start(LocalConfig(dir));
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status()));
  EXPECT_NE(second.status().message().find("in use"), std::string::npos);
  (*first)->Shutdown();
  first->reset();
  // Released on shutdown, as the kernel releases it when a server is killed.
  EXPECT_TRUE(OffsiteServer::Start(LocalConfig(dir)).ok());
}

TEST(OffsiteServerTest, SecondServerOnTheSamePortIsRefused) {
  auto first = OffsiteServer::Start(LocalConfig(MakeTestDir()));
  ASSERT_TRUE(first.ok()) << first.status();
  v1::ServerConfig config = LocalConfig(MakeTestDir());
  config.set_listen_address(absl::StrCat("127.0.0.1:", (*first)->port()));
  EXPECT_FALSE(OffsiteServer::Start(config).ok());
}

TEST(OffsiteServerTest, FirstStartCreatesCertificatesAndAccessFile) {
  const std::string dir = MakeTestDir();
  v1::ServerConfig config = LocalConfig(dir);
  config.set_insecure(false);
  auto server = OffsiteServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* file : {"ca.pem", "server.pem", "server.key", "owner.pem", "owner.key",
                           "access.textproto"}) {
    EXPECT_TRUE(std::ifstream(dir + "/certs/" + file).good()) << file;
  }
}

}  // namespace
}  // namespace offsite
