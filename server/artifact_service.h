#ifndef OFFSITE_SERVER_ARTIFACT_SERVICE_H_
#define OFFSITE_SERVER_ARTIFACT_SERVICE_H_

// gRPC adapter for artifact transfer: chunked, resumable from an offset, and
// checked by SHA-256 at both ends. Storage lives in ArtifactStore.

#include <functional>

#include "offsite/v1/artifact.grpc.pb.h"
#include "server/artifact_store.h"
#include "server/rpc_handler.h"

namespace offsite {

// Owners read everything; anyone else only what they own.
absl::Status CheckCanRead(const Caller& caller, const v1::Artifact& artifact);

class ArtifactServiceImpl final : public v1::ArtifactService::Service {
 public:
  // `granted`, if set, opens more artifacts to a caller: an Offsite-Tuning
  // package file to the principals granted the package, a job's inputs and
  // checkpoints to the worker that leased it. Workers read nothing else.
  using GrantCheck = std::function<bool(const Caller&, const v1::Artifact&)>;
  ArtifactServiceImpl(ArtifactStore* store, RpcEnvironment env, GrantCheck granted = nullptr)
      : store_(store), env_(env), granted_(std::move(granted)) {}

  grpc::Status StatArtifact(grpc::ServerContext* context, const v1::StatArtifactRequest* request,
                            v1::Artifact* response) override;
  grpc::Status DownloadArtifact(grpc::ServerContext* context,
                                const v1::DownloadArtifactRequest* request,
                                grpc::ServerWriter<v1::ArtifactChunk>* writer) override;
  grpc::Status StatUpload(grpc::ServerContext* context, const v1::StatUploadRequest* request,
                          v1::UploadStatus* response) override;
  grpc::Status UploadArtifact(grpc::ServerContext* context,
                              grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                              v1::Artifact* response) override;

 private:
  absl::StatusOr<v1::Artifact> GetReadable(const Caller& caller, const std::string& id);
  ArtifactStore* store_;
  RpcEnvironment env_;
  GrantCheck granted_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_ARTIFACT_SERVICE_H_
