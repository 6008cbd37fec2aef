#include "common/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"

namespace offsite {
namespace {

constexpr size_t kReadSize = 1 << 20;

// SHA-256 through EVP only fails when OpenSSL itself is broken or out of
// memory; neither is something a caller could handle, so stop loudly.
void CheckOpenSsl(int ok, const char* what) {
  if (ok != 1) {
    std::fprintf(stderr, "offsite: OpenSSL %s failed for SHA-256\n", what);
    std::abort();
  }
}

// Hashes the first `limit` bytes of `path`, or all of it when limit < 0.
absl::StatusOr<std::string> HashFile(const std::string& path, int64_t limit) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  Sha256 hasher;
  std::vector<char> buffer(kReadSize);
  int64_t total = 0;
  absl::Status status;
  while (limit < 0 || total < limit) {
    size_t want = buffer.size();
    if (limit >= 0) want = static_cast<size_t>(std::min<int64_t>(want, limit - total));
    ssize_t n = read(fd, buffer.data(), want);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
      break;
    }
    if (n == 0) break;
    hasher.Update(std::string_view(buffer.data(), static_cast<size_t>(n)));
    total += n;
  }
  close(fd);
  if (!status.ok()) return status;
  if (limit >= 0 && total < limit) {
    return absl::OutOfRangeError(
        absl::StrCat(path, " has ", total, " bytes, fewer than the requested prefix of ", limit));
  }
  return hasher.HexDigest();
}

}  // namespace

void Sha256::CtxDeleter::operator()(evp_md_ctx_st* ctx) const { EVP_MD_CTX_free(ctx); }

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr) CheckOpenSsl(0, "EVP_MD_CTX_new");
  CheckOpenSsl(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr), "EVP_DigestInit_ex");
}

Sha256::~Sha256() = default;

void Sha256::Update(std::string_view data) {
  CheckOpenSsl(EVP_DigestUpdate(ctx_.get(), data.data(), data.size()), "EVP_DigestUpdate");
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  CheckOpenSsl(EVP_DigestFinal_ex(ctx_.get(), digest, &size), "EVP_DigestFinal_ex");
  CheckOpenSsl(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr), "EVP_DigestInit_ex");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * size);
  for (unsigned int i = 0; i < size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

std::string Sha256Hex(std::string_view data) {
  Sha256 hasher;
  hasher.Update(data);
  return hasher.HexDigest();
}

absl::StatusOr<std::string> Sha256File(const std::string& path) { return HashFile(path, -1); }

absl::StatusOr<std::string> Sha256FilePrefix(const std::string& path, int64_t length) {
  if (length < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix length for ", path, " must be >= 0, got ", length));
  }
  return HashFile(path, length);
}

bool IsSha256Hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace offsite
