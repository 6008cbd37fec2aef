#include "server/lease_store.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS leases (
  id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  worker TEXT NOT NULL,
  worker_name TEXT NOT NULL,
  rank INTEGER NOT NULL,
  world_size INTEGER NOT NULL,
  store_address TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  expiry_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_job ON leases(job_id, rank);
CREATE INDEX IF NOT EXISTS leases_by_worker ON leases(worker);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expiry_ms);
)sql";

constexpr char kColumns[] =
    "id, job_id, worker, worker_name, rank, world_size, store_address, attempt, expiry_ms";

LeaseRecord ReadRow(const Statement& stmt) {
  LeaseRecord lease;
  lease.id = stmt.Text(0);
  lease.job_id = stmt.Text(1);
  lease.worker = stmt.Text(2);
  lease.worker_name = stmt.Text(3);
  lease.rank = static_cast<int>(stmt.Int(4));
  lease.world_size = static_cast<int>(stmt.Int(5));
  lease.store_address = stmt.Text(6);
  lease.attempt = static_cast<int>(stmt.Int(7));
  lease.expiry_ms = stmt.Int(8);
  return lease;
}

// Runs `sql` (with `bind` filling its parameters) and collects the rows.
absl::StatusOr<std::vector<LeaseRecord>> Query(Database& db, const std::string& sql,
                                               const std::function<void(Statement&)>& bind) {
  OFFSITE_ASSIGN_OR_RETURN(Statement stmt, db.Prepare(sql));
  bind(stmt);
  std::vector<LeaseRecord> leases;
  while (true) {
    OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return leases;
    leases.push_back(ReadRow(stmt));
  }
}

absl::Status LeaseLost(const std::string& id) {
  return absl::NotFoundError(
      absl::StrCat("lease ", id, " is unknown or expired; the job was taken back"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LeaseStore>> LeaseStore::Create(Database* db) {
  OFFSITE_RETURN_IF_ERROR(db->Transaction([](Database& d) { return d.Exec(kSchema); }));
  return std::unique_ptr<LeaseStore>(new LeaseStore(db));
}

absl::Status LeaseStore::InsertLocked(Database& db, const LeaseRecord& lease) {
  OFFSITE_ASSIGN_OR_RETURN(Statement stmt,
                           db.Prepare(absl::StrCat("INSERT INTO leases (", kColumns,
                                                   ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")));
  stmt.Bind(1, lease.id).Bind(2, lease.job_id).Bind(3, lease.worker).Bind(4, lease.worker_name);
  stmt.Bind(5, int64_t{lease.rank}).Bind(6, int64_t{lease.world_size});
  stmt.Bind(7, lease.store_address).Bind(8, int64_t{lease.attempt}).Bind(9, lease.expiry_ms);
  return stmt.Run();
}

absl::Status LeaseStore::DeleteForJobLocked(Database& db, const std::string& job_id) {
  OFFSITE_ASSIGN_OR_RETURN(Statement stmt, db.Prepare("DELETE FROM leases WHERE job_id = ?"));
  stmt.Bind(1, job_id);
  return stmt.Run();
}

absl::StatusOr<std::vector<LeaseRecord>> LeaseStore::ForJobLocked(Database& db,
                                                                  const std::string& job_id) {
  return Query(db, absl::StrCat("SELECT ", kColumns, " FROM leases WHERE job_id = ? ORDER BY rank"),
               [&](Statement& stmt) { stmt.Bind(1, job_id); });
}

absl::StatusOr<LeaseRecord> LeaseStore::GetLive(const std::string& id, const std::string& worker,
                                                int64_t now_ms) {
  absl::StatusOr<std::vector<LeaseRecord>> found;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) {
    found = Query(db,
                  absl::StrCat("SELECT ", kColumns,
                               " FROM leases WHERE id = ? AND worker = ? AND expiry_ms >= ?"),
                  [&](Statement& stmt) { stmt.Bind(1, id).Bind(2, worker).Bind(3, now_ms); });
    return found.status();
  }));
  if (found->empty()) return LeaseLost(id);
  return found->front();
}

absl::Status LeaseStore::Renew(const std::string& id, const std::string& worker, int64_t now_ms,
                               int64_t expiry_ms) {
  int64_t changed = 0;
  OFFSITE_RETURN_IF_ERROR(db_->Transaction([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement stmt,
        db.Prepare(
            "UPDATE leases SET expiry_ms = ? WHERE id = ? AND worker = ? AND expiry_ms >= ?"));
    stmt.Bind(1, expiry_ms).Bind(2, id).Bind(3, worker).Bind(4, now_ms);
    OFFSITE_RETURN_IF_ERROR(stmt.Run());
    changed = db.Changes();
    return absl::OkStatus();
  }));
  return changed == 1 ? absl::OkStatus() : LeaseLost(id);
}

absl::Status LeaseStore::DeleteForJob(const std::string& job_id) {
  return db_->Transaction([&](Database& db) { return DeleteForJobLocked(db, job_id); });
}

absl::StatusOr<std::vector<LeaseRecord>> LeaseStore::Expired(int64_t now_ms) {
  absl::StatusOr<std::vector<LeaseRecord>> found;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) {
    found = Query(db, absl::StrCat("SELECT ", kColumns, " FROM leases WHERE expiry_ms < ?"),
                  [&](Statement& stmt) { stmt.Bind(1, now_ms); });
    return found.status();
  }));
  return found;
}

absl::StatusOr<std::vector<LeaseRecord>> LeaseStore::ForJob(const std::string& job_id) {
  absl::StatusOr<std::vector<LeaseRecord>> found;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) {
    found = ForJobLocked(db, job_id);
    return found.status();
  }));
  return found;
}

absl::StatusOr<std::vector<LeaseRecord>> LeaseStore::ForWorker(const std::string& worker,
                                                               int64_t now_ms) {
  absl::StatusOr<std::vector<LeaseRecord>> found;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) {
    found = Query(
        db, absl::StrCat("SELECT ", kColumns, " FROM leases WHERE worker = ? AND expiry_ms >= ?"),
        [&](Statement& stmt) { stmt.Bind(1, worker).Bind(2, now_ms); });
    return found.status();
  }));
  return found;
}

}  // namespace offsite
