#ifndef OFFSITE_SERVER_ARTIFACT_STORE_H_
#define OFFSITE_SERVER_ARTIFACT_STORE_H_

// Artifacts: metadata in SQLite, bytes in a content-addressed file store
// (<root>/blobs/ab/abcd...), written via temp file + rename so a crash never
// leaves a half-written blob under its hash. Uploads in progress live in
// <root>/uploads as append-only partial files, which is what makes them resumable.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/status/statusor.h"
#include "offsite/v1/artifact.pb.h"
#include "server/database.h"

namespace offsite {

class ArtifactStore {
 public:
  // `root` is the server's data directory. `db` must outlive the store.
  static absl::StatusOr<std::unique_ptr<ArtifactStore>> Create(Database* db,
                                                               const std::string& root);

  // Moves the file at `path` into the blob store and records it.
  absl::StatusOr<v1::Artifact> AddFile(const std::string& path, const std::string& name,
                                       const std::string& owner, const std::string& job_id);
  absl::StatusOr<v1::Artifact> Get(const std::string& id);
  // Records the bytes of a stored artifact once more, under another name,
  // owner and job; nothing is copied (blobs are content-addressed). A remote
  // worker's upload becomes its job's output this way.
  absl::StatusOr<v1::Artifact> Alias(const v1::Artifact& stored, const std::string& name,
                                     const std::string& owner, const std::string& job_id);
  // Path of the artifact's bytes, for reading.
  std::string BlobPath(const std::string& sha256) const;

  // Resumable uploads, keyed by (owner, sha256).
  absl::StatusOr<v1::UploadStatus> UploadStatus(const std::string& owner, const std::string& sha256,
                                                int64_t size);
  // Appends `data` at `offset`, which must equal the bytes already held.
  absl::Status AppendUpload(const std::string& owner, const std::string& sha256, int64_t offset,
                            absl::string_view data);
  // Verifies size and SHA-256 of a complete upload and records it as an artifact.
  absl::StatusOr<v1::Artifact> FinishUpload(const std::string& owner, const std::string& sha256,
                                            int64_t size, const std::string& name);

 private:
  ArtifactStore(Database* db, std::string root) : db_(db), root_(std::move(root)) {}
  std::string UploadPath(const std::string& owner, const std::string& sha256) const;
  // AddFile for content whose hash and size are already known.
  absl::StatusOr<v1::Artifact> AddVerified(const std::string& path, const std::string& sha256,
                                           int64_t size, const std::string& name,
                                           const std::string& owner, const std::string& job_id);
  absl::StatusOr<v1::Artifact> Record(const std::string& sha256, int64_t size,
                                      const std::string& name, const std::string& owner,
                                      const std::string& job_id);
  Database* db_;
  std::string root_;
};

// A random id with a readable prefix, e.g. "job-3f9a0c2d7e1b4a56".
std::string NewId(const std::string& prefix);

}  // namespace offsite

#endif  // OFFSITE_SERVER_ARTIFACT_STORE_H_
