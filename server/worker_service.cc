#include "server/worker_service.h"

#include "absl/strings/str_cat.h"

namespace offsite {
namespace {

std::string LeaseResource(const std::string& id) { return absl::StrCat("lease/", id); }

}  // namespace

grpc::Status WorkerServiceImpl::Lease(grpc::ServerContext* context, const v1::LeaseRequest* request,
                                      v1::LeaseResponse* response) {
  return HandleRpc(env_, context, "Lease", "lease/new", [&](const Caller& caller) {
    return AssignResponse(manager_->Lease(caller, *request, [&] { return context->IsCancelled(); }),
                          response);
  });
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* context,
                                          const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  return HandleRpc(env_, context, "Heartbeat", LeaseResource(request->lease_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Heartbeat(caller, *request), response);
                   });
}

grpc::Status WorkerServiceImpl::Report(grpc::ServerContext* context,
                                       const v1::ReportRequest* request,
                                       v1::ReportResponse* response) {
  return HandleRpc(env_, context, "Report", LeaseResource(request->lease_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Report(caller, *request), response);
                   });
}

grpc::Status WorkerServiceImpl::AddArtifact(grpc::ServerContext* context,
                                            const v1::AddArtifactRequest* request,
                                            v1::Artifact* response) {
  return HandleRpc(env_, context, "AddArtifact", LeaseResource(request->lease_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->AddArtifact(caller, *request), response);
                   });
}

grpc::Status WorkerServiceImpl::SaveCheckpoint(grpc::ServerContext* context,
                                               const v1::SaveCheckpointRequest* request,
                                               v1::SaveCheckpointResponse*) {
  return HandleRpc(
      env_, context, "SaveCheckpoint", LeaseResource(request->lease_id()),
      [&](const Caller& caller) { return manager_->SaveCheckpoint(caller, *request); });
}

grpc::Status WorkerServiceImpl::Complete(grpc::ServerContext* context,
                                         const v1::CompleteRequest* request,
                                         v1::CompleteResponse* response) {
  return HandleRpc(env_, context, "Complete", LeaseResource(request->lease_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Complete(caller, *request), response);
                   });
}

}  // namespace offsite
