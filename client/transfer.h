#ifndef OFFSITE_CLIENT_TRANSFER_H_
#define OFFSITE_CLIENT_TRANSFER_H_

// Artifact transfer with resume: a download continues from the bytes already
// in PATH.part, an upload from the offset the server confirms; both end with a
// SHA-256 check of the whole content.

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "offsite/v1/artifact.grpc.pb.h"

namespace offsite {

using TransferProgress = std::function<void(int64_t done, int64_t total)>;

struct TransferOptions {
  TransferProgress progress;
  // Bytes per message, at most 4 MiB (the server's limit).
  int chunk_size = 1 << 20;
  // Reconnect attempts after a broken stream before giving up.
  int max_retries = 5;
};

// Writes artifact `id` to `path` (via `path`.part, renamed once verified).
absl::StatusOr<v1::Artifact> DownloadArtifact(v1::ArtifactService::StubInterface& stub,
                                              const std::string& id, const std::string& path,
                                              const TransferOptions& options = {});

// Uploads the file at `path` as an artifact named `name`.
absl::StatusOr<v1::Artifact> UploadArtifact(v1::ArtifactService::StubInterface& stub,
                                            const std::string& path, const std::string& name,
                                            const TransferOptions& options = {});

}  // namespace offsite

#endif  // OFFSITE_CLIENT_TRANSFER_H_
