#include "tests/util/bpe_files.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace offsite::testutil {
namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

}  // namespace

std::string ByteSymbol(int b) {
  const auto printable = [](int c) {
    return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  int cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int c = 0; c < b; ++c) cp += printable(c) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

std::string ByteLevelVocabJson(const std::vector<std::string>& extra) {
  std::vector<std::string> entries;
  for (int b = 0; b < 256; ++b) entries.push_back(absl::StrCat(JsonString(ByteSymbol(b)), ": ", b));
  for (size_t i = 0; i < extra.size(); ++i) {
    entries.push_back(absl::StrCat(JsonString(extra[i]), ": ", 256 + i));
  }
  return absl::StrCat("{", absl::StrJoin(entries, ", "), "}");
}

}  // namespace offsite::testutil
