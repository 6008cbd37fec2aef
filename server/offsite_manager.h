#ifndef OFFSITE_SERVER_OFFSITE_MANAGER_H_
#define OFFSITE_SERVER_OFFSITE_MANAGER_H_

// Offsite-Tuning's protocol logic, free of gRPC: who may register models,
// see and pull packages, grant them, and push adapters.
// server/offsite_service.cc only converts.
//
// Visibility: models and grants are the owner's alone. A package is visible to
// the owner and to the principals granted it (others get PERMISSION_DENIED).
// An adapter is visible to the owner and to whoever pushed it.

#include <string>

#include "absl/status/statusor.h"
#include "offsite/v1/artifact.pb.h"
#include "offsite/v1/offsite_tuning.pb.h"
#include "server/artifact_store.h"
#include "server/auth.h"
#include "server/job_manager.h"
#include "server/offsite_store.h"

namespace offsite {

class OffsiteManager {
 public:
  OffsiteManager(OffsiteStore* store, ArtifactStore* artifacts, JobManager* jobs)
      : store_(store), artifacts_(artifacts), jobs_(jobs) {}

  absl::StatusOr<v1::Model> AddModel(const Caller& caller, const v1::AddModelRequest& request);
  absl::StatusOr<v1::ListModelsResponse> ListModels(const Caller& caller);
  absl::StatusOr<v1::Package> GetPackage(const Caller& caller, const std::string& id);
  absl::StatusOr<v1::ListPackagesResponse> ListPackages(const Caller& caller);
  absl::StatusOr<v1::Package> Grant(const Caller& caller, const v1::GrantRequest& request);
  absl::StatusOr<v1::Package> Revoke(const Caller& caller, const v1::GrantRequest& request);
  // Checks the uploaded adapter against the package, records it and queues
  // its plug-in evaluation as the caller's job. A refused adapter leaves no
  // record and no job.
  absl::StatusOr<v1::Adapter> PushAdapter(const Caller& caller,
                                          const v1::PushAdapterRequest& request);
  absl::StatusOr<v1::ListAdaptersResponse> ListAdapters(const Caller& caller,
                                                        const v1::ListAdaptersRequest& request);

  // True when `caller` may download `artifact` because it is the file of a
  // package granted to the caller.
  bool GrantedArtifact(const Caller& caller, const v1::Artifact& artifact);

 private:
  absl::StatusOr<v1::Package> VisiblePackage(const Caller& caller, const std::string& id);

  OffsiteStore* store_;
  ArtifactStore* artifacts_;
  JobManager* jobs_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_OFFSITE_MANAGER_H_
