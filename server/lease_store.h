#ifndef OFFSITE_SERVER_LEASE_STORE_H_
#define OFFSITE_SERVER_LEASE_STORE_H_

// Remote workers' leases on running jobs, in the server's SQLite database so a
// server restart loses none: a worker that keeps sending heartbeats across the
// restart keeps its job. A data-parallel job holds one lease per rank.
//
// The *Locked functions run inside a transaction the caller holds (JobStore's
// hooks), so a lease changes together with its job.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/database.h"

namespace offsite {

struct LeaseRecord {
  std::string id;
  std::string job_id;
  // The worker's principal (certificate common name) and advertised name.
  std::string worker;
  std::string worker_name;
  int rank = 0;
  int world_size = 1;
  // Rank 0's TCPStore, for data-parallel jobs.
  std::string store_address;
  // The job attempt the lease belongs to.
  int attempt = 0;
  // Wall-clock ms since the epoch.
  int64_t expiry_ms = 0;
};

class LeaseStore {
 public:
  // Creates the table if needed. `db` must outlive the store.
  static absl::StatusOr<std::unique_ptr<LeaseStore>> Create(Database* db);

  static absl::Status InsertLocked(Database& db, const LeaseRecord& lease);
  static absl::Status DeleteForJobLocked(Database& db, const std::string& job_id);
  static absl::StatusOr<std::vector<LeaseRecord>> ForJobLocked(Database& db,
                                                               const std::string& job_id);

  // NotFound unless lease `id` exists, belongs to `worker` and has not expired
  // at `now_ms`: the worker must then stop the job.
  absl::StatusOr<LeaseRecord> GetLive(const std::string& id, const std::string& worker,
                                      int64_t now_ms);
  absl::Status DeleteForJob(const std::string& job_id);
  // Moves a live lease's expiry; NotFound as GetLive.
  absl::Status Renew(const std::string& id, const std::string& worker, int64_t now_ms,
                     int64_t expiry_ms);
  // Leases whose expiry is before `now_ms`.
  absl::StatusOr<std::vector<LeaseRecord>> Expired(int64_t now_ms);
  // All leases of a job, ordered by rank.
  absl::StatusOr<std::vector<LeaseRecord>> ForJob(const std::string& job_id);
  // Live leases held by `worker`.
  absl::StatusOr<std::vector<LeaseRecord>> ForWorker(const std::string& worker, int64_t now_ms);

 private:
  explicit LeaseStore(Database* db) : db_(db) {}
  Database* db_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_LEASE_STORE_H_
