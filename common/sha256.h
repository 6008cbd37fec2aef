#ifndef OFFSITE_COMMON_SHA256_H_
#define OFFSITE_COMMON_SHA256_H_

// SHA-256 as lower-case hex: every artifact and package tensor carries one, and
// transfers are checked and resumed against it.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

// Keeps <openssl/evp.h> out of every includer.
struct evp_md_ctx_st;

namespace offsite {

// Streaming hasher, for data that arrives in chunks:
//
//   Sha256 hasher;
//   for (const std::string& chunk : chunks) hasher.Update(chunk);
//   std::string hex = hasher.HexDigest();
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);

  // The digest of everything passed to Update(), as 64 lower-case hex digits.
  // Finalises; the hasher then starts over as if newly constructed.
  std::string HexDigest();

 private:
  struct CtxDeleter {
    void operator()(evp_md_ctx_st* ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, CtxDeleter> ctx_;
};

// One-shot hash of `data`; Sha256Hex("abc") == "ba7816bf...f20015ad".
std::string Sha256Hex(std::string_view data);

// Hash of the file at `path`, read in 1 MiB pieces so size does not matter.
// NotFound (or another errno-derived code) naming `path` if it cannot be read.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Hash of the first `length` bytes of `path`: lets a resumed upload check that
// the part the server already holds matches the local file.
// OutOfRange if the file is shorter than `length`, InvalidArgument if length < 0.
absl::StatusOr<std::string> Sha256FilePrefix(const std::string& path, int64_t length);

// True if `s` looks like a HexDigest(): exactly 64 characters in [0-9a-f].
bool IsSha256Hex(std::string_view s);

}  // namespace offsite

#endif  // OFFSITE_COMMON_SHA256_H_
