#include "server/artifact_store.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/string_view.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/job_store.h"

namespace offsite {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS artifacts (
  id TEXT PRIMARY KEY,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  owner TEXT NOT NULL,
  job_id TEXT NOT NULL,
  artifact BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_owner_hash ON artifacts(owner, sha256);
)sql";

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Moves src to dst; copies when they are on different file systems.
absl::Status MoveFile(const std::string& src, const std::string& dst) {
  if (std::rename(src.c_str(), dst.c_str()) == 0) return absl::OkStatus();
  if (errno != EXDEV) return ErrnoError("cannot move to", dst);
  OFFSITE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(src));
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(dst, bytes));
  std::remove(src.c_str());
  return absl::OkStatus();
}

}  // namespace

std::string NewId(const std::string& prefix) {
  unsigned char bytes[8];
  RAND_bytes(bytes, sizeof(bytes));
  return absl::StrCat(prefix, "-",
                      absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), 8)));
}

absl::StatusOr<std::unique_ptr<ArtifactStore>> ArtifactStore::Create(Database* db,
                                                                     const std::string& root) {
  OFFSITE_RETURN_IF_ERROR(MakeDirs(root + "/blobs", 0700));
  OFFSITE_RETURN_IF_ERROR(MakeDirs(root + "/uploads", 0700));
  OFFSITE_RETURN_IF_ERROR(db->Transaction([](Database& d) { return d.Exec(kSchema); }));
  return std::unique_ptr<ArtifactStore>(new ArtifactStore(db, root));
}

std::string ArtifactStore::BlobPath(const std::string& sha256) const {
  return absl::StrCat(root_, "/blobs/", sha256.substr(0, 2), "/", sha256);
}

std::string ArtifactStore::UploadPath(const std::string& owner, const std::string& sha256) const {
  // The owner is hashed so any principal name is a safe file name.
  return absl::StrCat(root_, "/uploads/", Sha256Hex(owner).substr(0, 16), "-", sha256, ".part");
}

absl::StatusOr<v1::Artifact> ArtifactStore::Record(const std::string& sha256, int64_t size,
                                                   const std::string& name,
                                                   const std::string& owner,
                                                   const std::string& job_id) {
  v1::Artifact artifact;
  artifact.set_id(NewId("art"));
  artifact.set_name(name);
  artifact.set_size(size);
  artifact.set_sha256(sha256);
  artifact.set_owner(owner);
  artifact.set_job_id(job_id);
  artifact.set_create_time_ms(NowMs());
  OFFSITE_RETURN_IF_ERROR(db_->Transaction([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement stmt,
                             db.Prepare("INSERT INTO artifacts (id, sha256, size, owner, job_id, "
                                        "artifact) VALUES (?, ?, ?, ?, ?, ?)"));
    stmt.Bind(1, artifact.id()).Bind(2, sha256).Bind(3, size).Bind(4, owner).Bind(5, job_id);
    stmt.BindBlob(6, artifact.SerializeAsString());
    return stmt.Run();
  }));
  return artifact;
}

absl::StatusOr<v1::Artifact> ArtifactStore::AddFile(const std::string& path,
                                                    const std::string& name,
                                                    const std::string& owner,
                                                    const std::string& job_id) {
  OFFSITE_ASSIGN_OR_RETURN(std::string sha256, Sha256File(path));
  OFFSITE_ASSIGN_OR_RETURN(int64_t size, FileSize(path));
  return AddVerified(path, sha256, size, name, owner, job_id);
}

absl::StatusOr<v1::Artifact> ArtifactStore::AddVerified(const std::string& path,
                                                        const std::string& sha256, int64_t size,
                                                        const std::string& name,
                                                        const std::string& owner,
                                                        const std::string& job_id) {
  std::string blob = BlobPath(sha256);
  OFFSITE_RETURN_IF_ERROR(MakeDirs(blob.substr(0, blob.rfind('/')), 0700));
  if (FileExists(blob)) {
    std::remove(path.c_str());  // Same content already stored.
  } else {
    OFFSITE_RETURN_IF_ERROR(MoveFile(path, blob));
  }
  return Record(sha256, size, name, owner, job_id);
}

absl::StatusOr<v1::Artifact> ArtifactStore::Alias(const v1::Artifact& stored,
                                                  const std::string& name,
                                                  const std::string& owner,
                                                  const std::string& job_id) {
  if (!FileExists(BlobPath(stored.sha256()))) {
    return absl::DataLossError(absl::StrCat("artifact ", stored.id(), ": blob missing"));
  }
  return Record(stored.sha256(), stored.size(), name, owner, job_id);
}

absl::StatusOr<v1::Artifact> ArtifactStore::Get(const std::string& id) {
  v1::Artifact artifact;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement stmt,
                             db.Prepare("SELECT artifact FROM artifacts WHERE id = ?"));
    stmt.Bind(1, id);
    OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return absl::NotFoundError(absl::StrCat("artifact ", id, " not found"));
    if (!artifact.ParseFromString(stmt.Text(0))) {
      return absl::DataLossError(absl::StrCat("artifact ", id, ": stored record does not parse"));
    }
    return absl::OkStatus();
  }));
  return artifact;
}

absl::StatusOr<v1::UploadStatus> ArtifactStore::UploadStatus(const std::string& owner,
                                                             const std::string& sha256,
                                                             int64_t size) {
  v1::UploadStatus status;
  // Content the caller already owns needs no second upload.
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement stmt,
        db.Prepare("SELECT id FROM artifacts WHERE owner = ? AND sha256 = ? AND size = ? LIMIT 1"));
    stmt.Bind(1, owner).Bind(2, sha256).Bind(3, size);
    OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (row) status.set_artifact_id(stmt.Text(0));
    return absl::OkStatus();
  }));
  if (!status.artifact_id().empty()) {
    status.set_committed_offset(size);
    return status;
  }
  absl::StatusOr<int64_t> held = FileSize(UploadPath(owner, sha256));
  status.set_committed_offset(held.ok() ? *held : 0);
  return status;
}

absl::Status ArtifactStore::AppendUpload(const std::string& owner, const std::string& sha256,
                                         int64_t offset, absl::string_view data) {
  std::string path = UploadPath(owner, sha256);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot open upload", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return ErrnoError("cannot stat upload", path);
  }
  if (st.st_size != offset) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("upload offset ", offset, " does not match the ", st.st_size,
                     " bytes the server holds; resume from ", st.st_size));
  }
  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return ErrnoError("cannot write upload", path);
    }
    written += static_cast<size_t>(n);
  }
  ::close(fd);
  return absl::OkStatus();
}

absl::StatusOr<v1::Artifact> ArtifactStore::FinishUpload(const std::string& owner,
                                                         const std::string& sha256, int64_t size,
                                                         const std::string& name) {
  std::string path = UploadPath(owner, sha256);
  OFFSITE_ASSIGN_OR_RETURN(int64_t held, FileSize(path));
  if (held != size) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload incomplete: ", held, " of ", size, " bytes received"));
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string actual, Sha256File(path));
  if (actual != sha256) {
    std::remove(path.c_str());  // Corrupt: start over rather than resume into it.
    return absl::DataLossError(absl::StrCat("upload SHA-256 mismatch: declared ", sha256,
                                            ", received ", actual, "; upload discarded"));
  }
  return AddVerified(path, sha256, size, name, owner, "");
}

}  // namespace offsite
