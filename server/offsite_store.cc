#include "server/offsite_store.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS models (
  name TEXT PRIMARY KEY,
  model BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
  id TEXT PRIMARY KEY,
  artifact_id TEXT NOT NULL,
  package BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS packages_by_artifact ON packages(artifact_id);
CREATE TABLE IF NOT EXISTS grants (
  package_id TEXT NOT NULL,
  principal TEXT NOT NULL,
  PRIMARY KEY (package_id, principal)
);
CREATE TABLE IF NOT EXISTS adapters (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  package_id TEXT NOT NULL,
  adapter BLOB NOT NULL
);
)sql";

template <typename Message>
absl::StatusOr<Message> ParseBlob(const std::string& bytes, const std::string& what) {
  Message message;
  if (!message.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("corrupt ", what, " record in the database"));
  }
  return message;
}

}  // namespace

absl::StatusOr<std::unique_ptr<OffsiteStore>> OffsiteStore::Create(Database* db) {
  OFFSITE_RETURN_IF_ERROR(db->Transaction([](Database& d) { return d.Exec(kSchema); }));
  return std::unique_ptr<OffsiteStore>(new OffsiteStore(db));
}

absl::Status OffsiteStore::AddModel(const v1::Model& model) {
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement find, d.Prepare("SELECT 1 FROM models WHERE name = ?"));
    find.Bind(1, model.name());
    OFFSITE_ASSIGN_OR_RETURN(bool exists, find.Step());
    if (exists) {
      return absl::AlreadyExistsError(absl::StrCat("model \"", model.name(), "\" already exists"));
    }
    OFFSITE_ASSIGN_OR_RETURN(Statement insert,
                             d.Prepare("INSERT INTO models (name, model) VALUES (?, ?)"));
    insert.Bind(1, model.name()).BindBlob(2, model.SerializeAsString());
    return insert.Run();
  });
}

absl::StatusOr<v1::Model> OffsiteStore::GetModel(const std::string& name) {
  std::string blob;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query, d.Prepare("SELECT model FROM models WHERE name = ?"));
    query.Bind(1, name);
    OFFSITE_ASSIGN_OR_RETURN(bool found, query.Step());
    if (!found) return absl::NotFoundError(absl::StrCat("no model named \"", name, "\""));
    blob = query.Text(0);
    return absl::OkStatus();
  }));
  return ParseBlob<v1::Model>(blob, "model");
}

absl::StatusOr<std::vector<v1::Model>> OffsiteStore::ListModels() {
  std::vector<v1::Model> models;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query, d.Prepare("SELECT model FROM models ORDER BY name"));
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, query.Step());
      if (!row) break;
      OFFSITE_ASSIGN_OR_RETURN(v1::Model model, ParseBlob<v1::Model>(query.Text(0), "model"));
      models.push_back(std::move(model));
    }
    return absl::OkStatus();
  }));
  return models;
}

absl::Status OffsiteStore::FillGrants(Database& d, v1::Package& package) {
  package.clear_granted_to();
  OFFSITE_ASSIGN_OR_RETURN(
      Statement query,
      d.Prepare("SELECT principal FROM grants WHERE package_id = ? ORDER BY principal"));
  query.Bind(1, package.id());
  while (true) {
    OFFSITE_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) return absl::OkStatus();
    package.add_granted_to(query.Text(0));
  }
}

absl::Status OffsiteStore::AddPackage(const v1::Package& package) {
  v1::Package stored = package;
  stored.clear_granted_to();
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement insert,
        d.Prepare("INSERT OR REPLACE INTO packages (id, artifact_id, package) VALUES (?, ?, ?)"));
    insert.Bind(1, stored.id()).Bind(2, stored.artifact_id()).BindBlob(3, stored.SerializeAsString());
    return insert.Run();
  });
}

absl::StatusOr<v1::Package> OffsiteStore::GetPackage(const std::string& id) {
  v1::Package package;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query, d.Prepare("SELECT package FROM packages WHERE id = ?"));
    query.Bind(1, id);
    OFFSITE_ASSIGN_OR_RETURN(bool found, query.Step());
    if (!found) return absl::NotFoundError(absl::StrCat("no package \"", id, "\""));
    OFFSITE_ASSIGN_OR_RETURN(package, ParseBlob<v1::Package>(query.Text(0), "package"));
    return FillGrants(d, package);
  }));
  return package;
}

absl::StatusOr<v1::Package> OffsiteStore::PackageByArtifact(const std::string& artifact_id) {
  std::string id;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query,
                             d.Prepare("SELECT id FROM packages WHERE artifact_id = ?"));
    query.Bind(1, artifact_id);
    OFFSITE_ASSIGN_OR_RETURN(bool found, query.Step());
    if (!found) return absl::NotFoundError("not a package file");
    id = query.Text(0);
    return absl::OkStatus();
  }));
  return GetPackage(id);
}

absl::StatusOr<std::vector<v1::Package>> OffsiteStore::ListPackages() {
  std::vector<v1::Package> packages;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query, d.Prepare("SELECT package FROM packages ORDER BY id"));
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, query.Step());
      if (!row) break;
      OFFSITE_ASSIGN_OR_RETURN(v1::Package package,
                               ParseBlob<v1::Package>(query.Text(0), "package"));
      packages.push_back(std::move(package));
    }
    for (v1::Package& package : packages) OFFSITE_RETURN_IF_ERROR(FillGrants(d, package));
    return absl::OkStatus();
  }));
  std::sort(packages.begin(), packages.end(), [](const v1::Package& a, const v1::Package& b) {
    return a.create_time_ms() > b.create_time_ms();
  });
  return packages;
}

absl::Status OffsiteStore::Grant(const std::string& package_id, const std::string& principal) {
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement insert,
        d.Prepare("INSERT OR IGNORE INTO grants (package_id, principal) VALUES (?, ?)"));
    insert.Bind(1, package_id).Bind(2, principal);
    return insert.Run();
  });
}

absl::Status OffsiteStore::Revoke(const std::string& package_id, const std::string& principal) {
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement remove, d.Prepare("DELETE FROM grants WHERE package_id = ? AND principal = ?"));
    remove.Bind(1, package_id).Bind(2, principal);
    return remove.Run();
  });
}

absl::Status OffsiteStore::AddAdapter(const v1::Adapter& adapter) {
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement insert,
        d.Prepare("INSERT INTO adapters (id, owner, package_id, adapter) VALUES (?, ?, ?, ?)"));
    insert.Bind(1, adapter.id())
        .Bind(2, adapter.owner())
        .Bind(3, adapter.package_id())
        .BindBlob(4, adapter.SerializeAsString());
    return insert.Run();
  });
}

absl::Status OffsiteStore::UpdateAdapter(const v1::Adapter& adapter) {
  return db_->Transaction([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement update,
                             d.Prepare("UPDATE adapters SET adapter = ? WHERE id = ?"));
    update.BindBlob(1, adapter.SerializeAsString()).Bind(2, adapter.id());
    return update.Run();
  });
}

absl::StatusOr<v1::Adapter> OffsiteStore::GetAdapter(const std::string& id) {
  std::string blob;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement query, d.Prepare("SELECT adapter FROM adapters WHERE id = ?"));
    query.Bind(1, id);
    OFFSITE_ASSIGN_OR_RETURN(bool found, query.Step());
    if (!found) return absl::NotFoundError(absl::StrCat("no adapter \"", id, "\""));
    blob = query.Text(0);
    return absl::OkStatus();
  }));
  return ParseBlob<v1::Adapter>(blob, "adapter");
}

absl::StatusOr<std::vector<v1::Adapter>> OffsiteStore::ListAdapters(const std::string& owner,
                                                                    const std::string& package_id) {
  std::vector<v1::Adapter> adapters;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& d) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement query,
        d.Prepare("SELECT adapter FROM adapters WHERE (?1 = '' OR owner = ?1) AND "
                  "(?2 = '' OR package_id = ?2) ORDER BY id"));
    query.Bind(1, owner).Bind(2, package_id);
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, query.Step());
      if (!row) break;
      OFFSITE_ASSIGN_OR_RETURN(v1::Adapter adapter,
                               ParseBlob<v1::Adapter>(query.Text(0), "adapter"));
      adapters.push_back(std::move(adapter));
    }
    return absl::OkStatus();
  }));
  std::sort(adapters.begin(), adapters.end(), [](const v1::Adapter& a, const v1::Adapter& b) {
    return a.create_time_ms() > b.create_time_ms();
  });
  return adapters;
}

}  // namespace offsite
