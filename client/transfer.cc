#include "client/transfer.h"

#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

bool Retriable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         absl::IsAborted(status) || absl::IsInternal(status) || absl::IsCancelled(status);
}

void Pause(int attempt) {
  std::this_thread::sleep_for(std::chrono::milliseconds(200 << std::min(attempt, 5)));
}

}  // namespace

absl::StatusOr<v1::Artifact> DownloadArtifact(v1::ArtifactService::StubInterface& stub,
                                              const std::string& id, const std::string& path,
                                              const TransferOptions& options) {
  v1::Artifact artifact;
  {
    grpc::ClientContext context;
    v1::StatArtifactRequest request;
    request.set_id(id);
    OFFSITE_RETURN_IF_ERROR(FromGrpcStatus(stub.StatArtifact(&context, request, &artifact)));
  }
  const std::string part = path + ".part";
  int64_t offset = FileSize(part).value_or(0);
  if (offset > artifact.size()) {
    std::remove(part.c_str());  // Not a prefix of this artifact.
    offset = 0;
  }
  // Hash as the bytes arrive (after the prefix a previous attempt left), so
  // the check at the end costs no second pass over the file.
  Sha256 hasher;
  if (offset > 0) {
    std::ifstream prefix(part, std::ios::binary);
    std::string buffer(1 << 20, '\0');
    for (int64_t left = offset; left > 0;) {
      const int64_t n = std::min<int64_t>(left, buffer.size());
      if (!prefix.read(buffer.data(), n)) return absl::DataLossError(absl::StrCat("cannot read ", part));
      hasher.Update(std::string_view(buffer.data(), n));
      left -= n;
    }
  }
  for (int attempt = 0;; ++attempt) {
    std::ofstream out(part, std::ios::binary | std::ios::app);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", part));
    grpc::ClientContext context;
    v1::DownloadArtifactRequest request;
    request.set_id(id);
    request.set_offset(offset);
    request.set_chunk_size(options.chunk_size);
    auto reader = stub.DownloadArtifact(&context, request);
    v1::ArtifactChunk chunk;
    while (offset < artifact.size() && reader->Read(&chunk)) {
      if (chunk.offset() != offset) {
        context.TryCancel();
        return absl::DataLossError(absl::StrCat("download of ", id, ": chunk at offset ",
                                                chunk.offset(), ", expected ", offset));
      }
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      hasher.Update(chunk.data());
      if (!out) return absl::ResourceExhaustedError(absl::StrCat("cannot write ", part));
      offset += static_cast<int64_t>(chunk.data().size());
      if (options.progress) options.progress(offset, artifact.size());
    }
    out.close();
    if (offset >= artifact.size()) {
      context.TryCancel();
      reader->Finish();
      break;
    }
    absl::Status status = FromGrpcStatus(reader->Finish());
    if (status.ok()) {
      status = absl::DataLossError(absl::StrCat("download of ", id, " ended at byte ", offset,
                                                " of ", artifact.size()));
    }
    if (!Retriable(status) || attempt >= options.max_retries) return status;
    Pause(attempt);
  }
  const std::string sha256 = hasher.HexDigest();
  if (sha256 != artifact.sha256()) {
    std::remove(part.c_str());
    return absl::DataLossError(absl::StrCat("download of ", id, ": SHA-256 ", sha256,
                                            " does not match the server's ", artifact.sha256(),
                                            "; the partial file was removed, run it again"));
  }
  if (std::rename(part.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot rename ", part, " to ", path));
  }
  return artifact;
}

absl::StatusOr<v1::Artifact> UploadArtifact(v1::ArtifactService::StubInterface& stub,
                                            const std::string& path, const std::string& name,
                                            const TransferOptions& options) {
  if (options.chunk_size <= 0 || options.chunk_size > (4 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_size: ", options.chunk_size, " is outside [1, 4 MiB]"));
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string sha256, Sha256File(path));
  OFFSITE_ASSIGN_OR_RETURN(int64_t size, FileSize(path));
  for (int attempt = 0;; ++attempt) {
    v1::UploadStatus status;
    {
      grpc::ClientContext context;
      v1::StatUploadRequest request;
      request.set_sha256(sha256);
      request.set_size(size);
      absl::Status stat = FromGrpcStatus(stub.StatUpload(&context, request, &status));
      if (!stat.ok()) {
        if (!Retriable(stat) || attempt >= options.max_retries) return stat;
        Pause(attempt);
        continue;
      }
    }
    grpc::ClientContext context;
    v1::Artifact artifact;
    auto writer = stub.UploadArtifact(&context, &artifact);
    v1::UploadArtifactRequest message;
    v1::UploadHeader* header = message.mutable_header();
    header->set_name(name);
    header->set_size(size);
    header->set_sha256(sha256);
    header->set_offset(status.committed_offset());
    bool open = writer->Write(message);
    std::ifstream in(path, std::ios::binary);
    in.seekg(status.committed_offset());
    int64_t offset = status.committed_offset();
    std::string buffer(options.chunk_size, '\0');
    while (open && status.artifact_id().empty() && offset < size) {
      const int64_t n = std::min<int64_t>(options.chunk_size, size - offset);
      if (!in.read(buffer.data(), n)) {
        writer->WritesDone();
        writer->Finish();
        return absl::DataLossError(absl::StrCat(path, " changed while it was uploaded"));
      }
      message.set_data(buffer.data(), n);
      open = writer->Write(message);
      offset += n;
      if (open && options.progress) options.progress(offset, size);
    }
    writer->WritesDone();
    absl::Status finished = FromGrpcStatus(writer->Finish());
    if (finished.ok()) return artifact;
    if (!Retriable(finished) || attempt >= options.max_retries) return finished;
    Pause(attempt);
  }
}

}  // namespace offsite
