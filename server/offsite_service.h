#ifndef OFFSITE_SERVER_OFFSITE_SERVICE_H_
#define OFFSITE_SERVER_OFFSITE_SERVICE_H_

// gRPC adapter of OffsiteService over OffsiteManager.

#include "offsite/v1/offsite_tuning.grpc.pb.h"
#include "server/offsite_manager.h"
#include "server/rpc_handler.h"

namespace offsite {

class OffsiteServiceImpl final : public v1::OffsiteService::Service {
 public:
  OffsiteServiceImpl(OffsiteManager* manager, RpcEnvironment env) : manager_(manager), env_(env) {}

  grpc::Status AddModel(grpc::ServerContext* context, const v1::AddModelRequest* request,
                        v1::Model* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status GetPackage(grpc::ServerContext* context, const v1::GetPackageRequest* request,
                          v1::Package* response) override;
  grpc::Status ListPackages(grpc::ServerContext* context, const v1::ListPackagesRequest* request,
                            v1::ListPackagesResponse* response) override;
  grpc::Status GrantPackage(grpc::ServerContext* context, const v1::GrantRequest* request,
                            v1::Package* response) override;
  grpc::Status RevokeGrant(grpc::ServerContext* context, const v1::GrantRequest* request,
                           v1::Package* response) override;
  grpc::Status PushAdapter(grpc::ServerContext* context, const v1::PushAdapterRequest* request,
                           v1::Adapter* response) override;
  grpc::Status ListAdapters(grpc::ServerContext* context, const v1::ListAdaptersRequest* request,
                            v1::ListAdaptersResponse* response) override;

 private:
  OffsiteManager* manager_;
  RpcEnvironment env_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_OFFSITE_SERVICE_H_
