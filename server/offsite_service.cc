#include "server/offsite_service.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
grpc::Status OffsiteServiceImpl::AddModel(grpc::ServerContext* context,
                                          const v1::AddModelRequest* request,
                                          v1::Model* response) {
  return HandleRpc(env_, context, "AddModel", absl::StrCat("model/", request->name()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->AddModel(caller, *request), response);
                   });
}

grpc::Status OffsiteServiceImpl::ListModels(grpc::ServerContext* context,
                                            const v1::ListModelsRequest*,
                                            v1::ListModelsResponse* response) {
  return HandleRpc(env_, context, "ListModels", "models", [&](const Caller& caller) {
    return AssignResponse(manager_->ListModels(caller), response);
  });
}

grpc::Status OffsiteServiceImpl::GetPackage(grpc::ServerContext* context,
                                            const v1::GetPackageRequest* request,
                                            v1::Package* response) {
  return HandleRpc(env_, context, "GetPackage", absl::StrCat("package/", request->id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->GetPackage(caller, request->id()), response);
                   });
}

grpc::Status OffsiteServiceImpl::ListPackages(grpc::ServerContext* context,
                                              const v1::ListPackagesRequest*,
                                              v1::ListPackagesResponse* response) {
  return HandleRpc(env_, context, "ListPackages", "packages", [&](const Caller& caller) {
    return AssignResponse(manager_->ListPackages(caller), response);
  });
}

grpc::Status OffsiteServiceImpl::GrantPackage(grpc::ServerContext* context,
                                              const v1::GrantRequest* request,
                                              v1::Package* response) {
  return HandleRpc(env_, context, "GrantPackage", absl::StrCat("package/", request->package_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Grant(caller, *request), response);
                   });
}

grpc::Status OffsiteServiceImpl::RevokeGrant(grpc::ServerContext* context,
                                             const v1::GrantRequest* request,
                                             v1::Package* response) {
  return HandleRpc(env_, context, "RevokeGrant", absl::StrCat("package/", request->package_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Revoke(caller, *request), response);
                   });
}

grpc::Status OffsiteServiceImpl::PushAdapter(grpc::ServerContext* context,
                                             const v1::PushAdapterRequest* request,
                                             v1::Adapter* response) {
  return HandleRpc(env_, context, "PushAdapter", absl::StrCat("package/", request->package_id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->PushAdapter(caller, *request), response);
                   });
}

grpc::Status OffsiteServiceImpl::ListAdapters(grpc::ServerContext* context,
                                              const v1::ListAdaptersRequest* request,
                                              v1::ListAdaptersResponse* response) {
  return HandleRpc(env_, context, "ListAdapters", "adapters", [&](const Caller& caller) {
    return AssignResponse(manager_->ListAdapters(caller, *request), response);
  });
}

}  // namespace offsite
