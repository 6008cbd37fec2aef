#ifndef OFFSITE_TESTS_SERVER_TEST_DIR_H_
#define OFFSITE_TESTS_SERVER_TEST_DIR_H_

#include <stdlib.h>

#include <string>

#include "gtest/gtest.h"

namespace offsite {

// A fresh directory under the test temp dir, one per call.
inline std::string MakeTestDir() {
  std::string pattern = ::testing::TempDir() + "offsite_server_test_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return pattern;
}

}  // namespace offsite

#endif  // OFFSITE_TESTS_SERVER_TEST_DIR_H_
