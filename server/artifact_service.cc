#include "server/artifact_service.h"

#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr int kDefaultChunk = 1 << 20;
constexpr int kMaxChunk = 4 << 20;
constexpr int64_t kMaxUploadBytes = int64_t{64} << 30;

absl::Status RequireTenant(const Caller& caller) {
  if (caller.role == v1::OWNER || caller.role == v1::DATA_OWNER) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("principal \"", caller.principal,
                                                  "\" may not transfer artifacts"));
}

// Workers upload their jobs' outputs and checkpoints (then hand them over
// with WorkerService.AddArtifact / SaveCheckpoint).
absl::Status RequireUploader(const Caller& caller) {
  if (caller.role == v1::WORKER) return absl::OkStatus();
  return RequireTenant(caller);
}

absl::Status CheckUploadHeader(const v1::UploadHeader& header) {
  if (!IsSha256Hex(header.sha256())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.sha256: \"", header.sha256(), "\" is not 64 lower-case hex characters"));
  }
  if (header.size() < 0 || header.size() > kMaxUploadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("header.size: ", header.size(), " is outside [0, ", kMaxUploadBytes, "]"));
  }
  if (header.name().empty() || header.name().size() > 255) {
    return absl::InvalidArgumentError("header.name: must be 1 to 255 characters");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckCanRead(const Caller& caller, const v1::Artifact& artifact) {
  OFFSITE_RETURN_IF_ERROR(RequireTenant(caller));
  if (caller.is_owner() || artifact.owner() == caller.principal) return absl::OkStatus();
  // Same answer as for an id that does not exist: ids are not to be probed.
  return absl::NotFoundError(absl::StrCat("artifact ", artifact.id(), " not found"));
}

absl::StatusOr<v1::Artifact> ArtifactServiceImpl::GetReadable(const Caller& caller,
                                                              const std::string& id) {
  if (caller.role == v1::WORKER) {
    // A worker reads only what its leases open to it (the `granted` check).
    absl::StatusOr<v1::Artifact> artifact = store_->Get(id);
    if (artifact.ok() && granted_ && granted_(caller, *artifact)) return artifact;
    return absl::NotFoundError(absl::StrCat("artifact ", id, " not found"));
  }
  OFFSITE_RETURN_IF_ERROR(RequireTenant(caller));
  OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact, store_->Get(id));
  absl::Status readable = CheckCanRead(caller, artifact);
  if (!readable.ok() && granted_ && granted_(caller, artifact)) return artifact;
  OFFSITE_RETURN_IF_ERROR(readable);
  return artifact;
}

grpc::Status ArtifactServiceImpl::StatArtifact(grpc::ServerContext* context,
                                               const v1::StatArtifactRequest* request,
                                               v1::Artifact* response) {
  return HandleRpc(env_, context, "StatArtifact", absl::StrCat("artifact/", request->id()),
                   [&](const Caller& caller) -> absl::Status {
                     OFFSITE_ASSIGN_OR_RETURN(*response, GetReadable(caller, request->id()));
                     return absl::OkStatus();
                   });
}

grpc::Status ArtifactServiceImpl::DownloadArtifact(grpc::ServerContext* context,
                                                   const v1::DownloadArtifactRequest* request,
                                                   grpc::ServerWriter<v1::ArtifactChunk>* writer) {
  return HandleRpc(
      env_, context, "DownloadArtifact", absl::StrCat("artifact/", request->id()),
      [&](const Caller& caller) -> absl::Status {
        OFFSITE_ASSIGN_OR_RETURN(v1::Artifact artifact, GetReadable(caller, request->id()));
        if (request->offset() < 0 || request->offset() > artifact.size()) {
          return absl::OutOfRangeError(absl::StrCat("offset: ", request->offset(),
                                                    " is outside [0, ", artifact.size(), "]"));
        }
        if (request->chunk_size() < 0 || request->chunk_size() > kMaxChunk) {
          return absl::InvalidArgumentError(absl::StrCat(
              "chunk_size: ", request->chunk_size(), " is outside [0, ", kMaxChunk, "]"));
        }
        const int chunk = request->chunk_size() > 0 ? request->chunk_size() : kDefaultChunk;
        std::string path = store_->BlobPath(artifact.sha256());
        std::ifstream in(path, std::ios::binary);
        if (!in) return absl::DataLossError(absl::StrCat("artifact ", artifact.id(), ": blob missing"));
        in.seekg(request->offset());
        v1::ArtifactChunk message;
        int64_t offset = request->offset();
        std::string* buffer = message.mutable_data();
        while (offset < artifact.size()) {
          if (context->IsCancelled()) return absl::CancelledError("download cancelled by client");
          const int64_t n = std::min<int64_t>(chunk, artifact.size() - offset);
          buffer->resize(n);
          if (!in.read(buffer->data(), n)) {
            return absl::DataLossError(absl::StrCat("artifact ", artifact.id(), ": blob truncated"));
          }
          message.set_offset(offset);
          if (!writer->Write(message)) return absl::CancelledError("client went away");
          offset += n;
        }
        return absl::OkStatus();
      });
}

grpc::Status ArtifactServiceImpl::StatUpload(grpc::ServerContext* context,
                                             const v1::StatUploadRequest* request,
                                             v1::UploadStatus* response) {
  return HandleRpc(env_, context, "StatUpload", absl::StrCat("upload/", request->sha256()),
                   [&](const Caller& caller) -> absl::Status {
                     OFFSITE_RETURN_IF_ERROR(RequireUploader(caller));
                     v1::UploadHeader header;
                     header.set_sha256(request->sha256());
                     header.set_size(request->size());
                     header.set_name("-");
                     OFFSITE_RETURN_IF_ERROR(CheckUploadHeader(header));
                     OFFSITE_ASSIGN_OR_RETURN(*response,
                                              store_->UploadStatus(caller.principal,
                                                                   request->sha256(),
                                                                   request->size()));
                     return absl::OkStatus();
                   });
}

grpc::Status ArtifactServiceImpl::UploadArtifact(
    grpc::ServerContext* context, grpc::ServerReader<v1::UploadArtifactRequest>* reader,
    v1::Artifact* response) {
  return HandleRpc(
      env_, context, "UploadArtifact", "upload", [&](const Caller& caller) -> absl::Status {
        OFFSITE_RETURN_IF_ERROR(RequireUploader(caller));
        v1::UploadArtifactRequest message;
        if (!reader->Read(&message) || !message.has_header()) {
          return absl::InvalidArgumentError("the first upload message must be a header");
        }
        const v1::UploadHeader header = message.header();
        OFFSITE_RETURN_IF_ERROR(CheckUploadHeader(header));
        OFFSITE_ASSIGN_OR_RETURN(
            v1::UploadStatus status,
            store_->UploadStatus(caller.principal, header.sha256(), header.size()));
        if (!status.artifact_id().empty()) {
          OFFSITE_ASSIGN_OR_RETURN(*response, store_->Get(status.artifact_id()));
          return absl::OkStatus();
        }
        if (header.offset() != status.committed_offset()) {
          return absl::FailedPreconditionError(
              absl::StrCat("header.offset: ", header.offset(), " but the server holds ",
                           status.committed_offset(), " bytes; resume from there"));
        }
        int64_t offset = header.offset();
        while (reader->Read(&message)) {
          if (message.has_header()) {
            return absl::InvalidArgumentError("a second header arrived mid-upload");
          }
          if (offset + static_cast<int64_t>(message.data().size()) > header.size()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "data: more bytes than the declared header.size ", header.size()));
          }
          OFFSITE_RETURN_IF_ERROR(
              store_->AppendUpload(caller.principal, header.sha256(), offset, message.data()));
          offset += static_cast<int64_t>(message.data().size());
        }
        OFFSITE_ASSIGN_OR_RETURN(*response, store_->FinishUpload(caller.principal, header.sha256(),
                                                                 header.size(), header.name()));
        return absl::OkStatus();
      });
}

}  // namespace offsite
