#include "server/offsite_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "models/offsite_tuning.h"
#include "server/job_store.h"

namespace offsite {
namespace {

absl::Status RequireOwner(const Caller& caller, const std::string& what) {
  if (caller.is_owner()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("principal \"", caller.principal, "\" (role ",
                                                  v1::Role_Name(caller.role), ") may not ", what));
}

absl::Status RequireTenant(const Caller& caller) {
  if (caller.role == v1::OWNER || caller.role == v1::DATA_OWNER) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "principal \"", caller.principal, "\" (role ", v1::Role_Name(caller.role),
      ") may not use the Offsite-Tuning API"));
}

bool Granted(const v1::Package& package, const std::string& principal) {
  return std::find(package.granted_to().begin(), package.granted_to().end(), principal) !=
         package.granted_to().end();
}

}  // namespace

absl::StatusOr<v1::Model> OffsiteManager::AddModel(const Caller& caller,
                                                   const v1::AddModelRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireOwner(caller, "register models"));
  if (request.name().empty() || request.name().size() > 100) {
    return absl::InvalidArgumentError("name: a model needs a name of 1 to 100 characters");
  }
  absl::StatusOr<v1::Artifact> artifact = artifacts_->Get(request.artifact_id());
  if (!artifact.ok() || artifact->owner() != caller.principal) {
    return absl::InvalidArgumentError(
        absl::StrCat("artifact_id: artifact \"", request.artifact_id(), "\" not found among ",
                     caller.principal, "'s"));
  }
  absl::StatusOr<SafetensorsFile> file =
      ReadSafetensors(artifacts_->BlobPath(artifact->sha256()));
  absl::StatusOr<LoadedModel> loaded =
      file.ok() ? ModelFromFile(*file) : absl::StatusOr<LoadedModel>(file.status());
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("artifact \"", request.artifact_id(), "\" (",
                                                   artifact->name(), ") is not a model file: ",
                                                   loaded.status().message()));
  }
  v1::Model model;
  model.set_name(request.name());
  *model.mutable_arch() = loaded->arch;
  model.set_artifact_id(artifact->id());
  model.set_num_blocks(static_cast<int32_t>(loaded->model->num_blocks()));
  int64_t parameters = 0;
  for (const auto& p : loaded->model->parameters()) parameters += p.numel();
  model.set_parameters(parameters);
  model.set_create_time_ms(NowMs());
  model.set_description(request.description());
  OFFSITE_RETURN_IF_ERROR(store_->AddModel(model));
  return model;
}

absl::StatusOr<v1::ListModelsResponse> OffsiteManager::ListModels(const Caller& caller) {
  OFFSITE_RETURN_IF_ERROR(RequireOwner(caller, "list models"));
  OFFSITE_ASSIGN_OR_RETURN(std::vector<v1::Model> models, store_->ListModels());
  v1::ListModelsResponse response;
  for (auto& model : models) *response.add_models() = std::move(model);
  return response;
}

absl::StatusOr<v1::Package> OffsiteManager::VisiblePackage(const Caller& caller,
                                                           const std::string& id) {
  OFFSITE_RETURN_IF_ERROR(RequireTenant(caller));
  OFFSITE_ASSIGN_OR_RETURN(v1::Package package, store_->GetPackage(id));
  if (!caller.is_owner() && !Granted(package, caller.principal)) {
    return absl::PermissionDeniedError(
        absl::StrCat("package \"", id, "\" is not granted to ", caller.principal));
  }
  return package;
}

absl::StatusOr<v1::Package> OffsiteManager::GetPackage(const Caller& caller,
                                                       const std::string& id) {
  return VisiblePackage(caller, id);
}

absl::StatusOr<v1::ListPackagesResponse> OffsiteManager::ListPackages(const Caller& caller) {
  OFFSITE_RETURN_IF_ERROR(RequireTenant(caller));
  OFFSITE_ASSIGN_OR_RETURN(std::vector<v1::Package> packages, store_->ListPackages());
  v1::ListPackagesResponse response;
  for (auto& package : packages) {
    if (!caller.is_owner() && !Granted(package, caller.principal)) continue;
    // Grants are the owner's business.
    if (!caller.is_owner()) package.clear_granted_to();
    *response.add_packages() = std::move(package);
  }
  return response;
}

absl::StatusOr<v1::Package> OffsiteManager::Grant(const Caller& caller,
                                                  const v1::GrantRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireOwner(caller, "grant packages"));
  OFFSITE_RETURN_IF_ERROR(store_->GetPackage(request.package_id()).status());
  if (request.principal().empty()) return absl::InvalidArgumentError("principal: empty");
  OFFSITE_RETURN_IF_ERROR(store_->Grant(request.package_id(), request.principal()));
  return store_->GetPackage(request.package_id());
}

absl::StatusOr<v1::Package> OffsiteManager::Revoke(const Caller& caller,
                                                   const v1::GrantRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireOwner(caller, "revoke grants"));
  OFFSITE_RETURN_IF_ERROR(store_->GetPackage(request.package_id()).status());
  OFFSITE_RETURN_IF_ERROR(store_->Revoke(request.package_id(), request.principal()));
  return store_->GetPackage(request.package_id());
}

absl::StatusOr<v1::Adapter> OffsiteManager::PushAdapter(const Caller& caller,
                                                        const v1::PushAdapterRequest& request) {
  OFFSITE_ASSIGN_OR_RETURN(v1::Package package, VisiblePackage(caller, request.package_id()));
  absl::StatusOr<v1::Artifact> artifact = artifacts_->Get(request.artifact_id());
  if (!artifact.ok() || artifact->owner() != caller.principal) {
    return absl::InvalidArgumentError(
        absl::StrCat("artifact_id: artifact \"", request.artifact_id(), "\" not found among ",
                     caller.principal, "'s"));
  }
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(artifacts_->BlobPath(artifact->sha256()));
  absl::Status check = file.ok() ? CheckAdapter(package.manifest(), *file) : file.status();
  if (!check.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter refused: ", check.message()));
  }
  v1::Adapter adapter;
  adapter.set_id(NewId("adp"));
  adapter.set_package_id(package.id());
  adapter.set_owner(caller.principal);
  adapter.set_artifact_id(artifact->id());
  adapter.set_create_time_ms(NowMs());
  // Recorded before the job is queued, so the job always finds it.
  OFFSITE_RETURN_IF_ERROR(store_->AddAdapter(adapter));
  v1::JobSpec spec;
  spec.set_display_name(absl::StrCat("plug-in evaluation of ", adapter.id()));
  spec.mutable_plugin_eval()->set_adapter_id(adapter.id());
  OFFSITE_ASSIGN_OR_RETURN(v1::Job job, jobs_->SubmitInternal(caller, spec));
  adapter.set_job_id(job.id());
  OFFSITE_RETURN_IF_ERROR(store_->UpdateAdapter(adapter));
  return adapter;
}

absl::StatusOr<v1::ListAdaptersResponse> OffsiteManager::ListAdapters(
    const Caller& caller, const v1::ListAdaptersRequest& request) {
  OFFSITE_RETURN_IF_ERROR(RequireTenant(caller));
  OFFSITE_ASSIGN_OR_RETURN(
      std::vector<v1::Adapter> adapters,
      store_->ListAdapters(caller.is_owner() ? "" : caller.principal, request.package_id()));
  v1::ListAdaptersResponse response;
  for (auto& adapter : adapters) *response.add_adapters() = std::move(adapter);
  return response;
}

bool OffsiteManager::GrantedArtifact(const Caller& caller, const v1::Artifact& artifact) {
  absl::StatusOr<v1::Package> package = store_->PackageByArtifact(artifact.id());
  return package.ok() && Granted(*package, caller.principal);
}

}  // namespace offsite
