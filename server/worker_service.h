#ifndef OFFSITE_SERVER_WORKER_SERVICE_H_
#define OFFSITE_SERVER_WORKER_SERVICE_H_

// gRPC adapter over WorkerManager: decode, call, encode. No logic lives here.

#include "offsite/v1/worker.grpc.pb.h"
#include "server/rpc_handler.h"
#include "server/worker_manager.h"

namespace offsite {

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(WorkerManager* manager, RpcEnvironment env) : manager_(manager), env_(env) {}

  grpc::Status Lease(grpc::ServerContext* context, const v1::LeaseRequest* request,
                     v1::LeaseResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status Report(grpc::ServerContext* context, const v1::ReportRequest* request,
                      v1::ReportResponse* response) override;
  grpc::Status AddArtifact(grpc::ServerContext* context, const v1::AddArtifactRequest* request,
                           v1::Artifact* response) override;
  grpc::Status SaveCheckpoint(grpc::ServerContext* context,
                              const v1::SaveCheckpointRequest* request,
                              v1::SaveCheckpointResponse* response) override;
  grpc::Status Complete(grpc::ServerContext* context, const v1::CompleteRequest* request,
                        v1::CompleteResponse* response) override;

 private:
  WorkerManager* manager_;
  RpcEnvironment env_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_WORKER_SERVICE_H_
