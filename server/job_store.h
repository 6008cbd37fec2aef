#ifndef OFFSITE_SERVER_JOB_STORE_H_
#define OFFSITE_SERVER_JOB_STORE_H_

// Durable jobs and their event streams, in SQLite. Every change of a job is
// written together with the event that reports it, in one transaction, so the
// stream a watcher replays always agrees with the job it reads.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offsite/v1/job.pb.h"
#include "server/database.h"

namespace offsite {

struct JobQuery {
  std::string owner;  // empty: any owner
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  std::string kind;
  int page_size = 50;
  std::string page_token;
};

struct JobPage {
  std::vector<v1::Job> jobs;
  std::string next_page_token;
};

class JobStore {
 public:
  // Creates the tables if needed. `db` must outlive the store.
  static absl::StatusOr<std::unique_ptr<JobStore>> Create(Database* db);

  // Inserts a new job (state QUEUED) with its first event.
  absl::StatusOr<v1::JobEvent> Insert(const v1::Job& job, v1::JobEvent first_event);
  absl::StatusOr<v1::Job> Get(const std::string& id);
  // Newest first. InvalidArgument for a malformed page token.
  absl::StatusOr<JobPage> List(const JobQuery& query);

  // Reads the job, lets `mutate` change it (an error aborts with nothing
  // written), then stores it and appends `event` (seq and time filled in).
  // Returns the appended event.
  using Mutation = std::function<absl::Status(v1::Job&)>;
  absl::StatusOr<v1::JobEvent> Update(const std::string& id, const Mutation& mutate,
                                      v1::JobEvent event);
  // As Update, for changes whose event depends on the job: `mutate` fills in both.
  using EventMutation = std::function<absl::Status(v1::Job&, v1::JobEvent&)>;
  // `also`, if set, runs first in the same transaction, with the job as
  // stored, for changes to other tables that must commit (or not) together
  // with the job's (e.g. a remote worker's lease); its error aborts both.
  using TransactionHook = std::function<absl::Status(Database&, const v1::Job&)>;
  absl::StatusOr<v1::JobEvent> UpdateWith(const std::string& id, const EventMutation& mutate,
                                          const TransactionHook& also = nullptr);

  // Marks the oldest QUEUED job for which `fits` holds (any, when unset)
  // RUNNING (attempts + 1) and returns it, or nullopt when there is none.
  // `on_claim`, if set, runs in the same transaction and may add to the
  // RUNNING event's message; its error aborts the claim.
  using ClaimHook = std::function<absl::Status(Database&, const v1::Job&, std::string& message)>;
  absl::StatusOr<std::optional<v1::Job>> ClaimNextQueued(
      int64_t now_ms, const std::function<bool(const v1::Job&)>& fits = nullptr,
      const ClaimHook& on_claim = nullptr);

  // Ids of jobs in `state`, oldest first.
  absl::StatusOr<std::vector<std::string>> IdsInState(v1::JobState state);

  // Events with seq > after_seq, in order; at most `limit` (0: all).
  absl::StatusOr<std::vector<v1::JobEvent>> Events(const std::string& id, int64_t after_seq,
                                                   int limit, bool logs_only);

 private:
  explicit JobStore(Database* db) : db_(db) {}
  absl::StatusOr<v1::JobEvent> AppendLocked(Database& db, v1::Job& job, v1::JobEvent event);
  Database* db_;
};

bool IsTerminal(v1::JobState state);
int64_t NowMs();

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOB_STORE_H_
