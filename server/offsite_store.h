#ifndef OFFSITE_SERVER_OFFSITE_STORE_H_
#define OFFSITE_SERVER_OFFSITE_STORE_H_

// Offsite-Tuning's records in the server's database: registered models,
// packages, grants and pushed adapters. Plain storage; who may see what is
// server/offsite_manager.cc's business.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offsite/v1/offsite_tuning.pb.h"
#include "server/database.h"

namespace offsite {

class OffsiteStore {
 public:
  static absl::StatusOr<std::unique_ptr<OffsiteStore>> Create(Database* db);

  // AlreadyExists for a name in use.
  absl::Status AddModel(const v1::Model& model);
  absl::StatusOr<v1::Model> GetModel(const std::string& name);
  absl::StatusOr<std::vector<v1::Model>> ListModels();

  // Packages carry their grants in granted_to (not stored in the blob).
  absl::Status AddPackage(const v1::Package& package);
  absl::StatusOr<v1::Package> GetPackage(const std::string& id);
  absl::StatusOr<std::vector<v1::Package>> ListPackages();
  // The package whose file is `artifact_id`; NotFound if none.
  absl::StatusOr<v1::Package> PackageByArtifact(const std::string& artifact_id);
  absl::Status Grant(const std::string& package_id, const std::string& principal);
  absl::Status Revoke(const std::string& package_id, const std::string& principal);

  absl::Status AddAdapter(const v1::Adapter& adapter);
  // Replaces the record of adapter.id() (e.g. to add its job id).
  absl::Status UpdateAdapter(const v1::Adapter& adapter);
  absl::StatusOr<v1::Adapter> GetAdapter(const std::string& id);
  // Filters are optional ("" matches all).
  absl::StatusOr<std::vector<v1::Adapter>> ListAdapters(const std::string& owner,
                                                        const std::string& package_id);

 private:
  explicit OffsiteStore(Database* db) : db_(db) {}
  absl::Status FillGrants(Database& d, v1::Package& package);
  Database* db_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_OFFSITE_STORE_H_
