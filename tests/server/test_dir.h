#ifndef OFFSITE_TESTS_SERVER_TEST_DIR_H_
#define OFFSITE_TESTS_SERVER_TEST_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "gtest/gtest.h"

namespace offsite {

// A fresh directory under the test temp dir, one per call. Every directory
// made is removed, with its contents, when the test program exits, so runs of
// the suite do not pile data directories up in /tmp.
inline std::string MakeTestDir() {
  struct Registry {
    std::vector<std::string> dirs;
    ~Registry() {
      for (const std::string& dir : dirs) {
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
      }
    }
  };
  static Registry registry;
  std::string pattern = ::testing::TempDir() + "offsite_server_test_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  if (dir != nullptr) registry.dirs.push_back(pattern);
  return pattern;
}

}  // namespace offsite

#endif  // OFFSITE_TESTS_SERVER_TEST_DIR_H_
