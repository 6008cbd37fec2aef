#include "server/job_store.h"

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  kind TEXT NOT NULL,
  state INTEGER NOT NULL,
  create_time_ms INTEGER NOT NULL,
  next_seq INTEGER NOT NULL,
  job BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(create_time_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner, create_time_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, create_time_ms, id);
CREATE TABLE IF NOT EXISTS job_events (
  job_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  is_log INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
)sql";

absl::StatusOr<v1::Job> ParseJob(const std::string& bytes, const std::string& id) {
  v1::Job job;
  if (!job.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("job ", id, ": stored record does not parse"));
  }
  return job;
}

absl::StatusOr<v1::Job> LoadJob(Database& db, const std::string& id, int64_t* next_seq) {
  OFFSITE_ASSIGN_OR_RETURN(Statement stmt,
                           db.Prepare("SELECT job, next_seq FROM jobs WHERE id = ?"));
  stmt.Bind(1, id);
  OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  if (next_seq) *next_seq = stmt.Int(1);
  return ParseJob(stmt.Text(0), id);
}

absl::Status StoreJob(Database& db, const v1::Job& job) {
  OFFSITE_ASSIGN_OR_RETURN(Statement stmt,
                           db.Prepare("UPDATE jobs SET state = ?, job = ? WHERE id = ?"));
  stmt.Bind(1, static_cast<int64_t>(job.state())).BindBlob(2, job.SerializeAsString());
  stmt.Bind(3, job.id());
  return stmt.Run();
}

}  // namespace

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsTerminal(v1::JobState state) {
  return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED;
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Create(Database* db) {
  OFFSITE_RETURN_IF_ERROR(db->Transaction([](Database& d) { return d.Exec(kSchema); }));
  return std::unique_ptr<JobStore>(new JobStore(db));
}

absl::StatusOr<v1::JobEvent> JobStore::AppendLocked(Database& db, v1::Job& job,
                                                    v1::JobEvent event) {
  OFFSITE_ASSIGN_OR_RETURN(Statement next,
                           db.Prepare("UPDATE jobs SET next_seq = next_seq + 1 WHERE id = ? "
                                      "RETURNING next_seq - 1"));
  next.Bind(1, job.id());
  OFFSITE_ASSIGN_OR_RETURN(bool row, next.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", job.id(), " not found"));
  event.set_seq(next.Int(0));
  OFFSITE_RETURN_IF_ERROR(next.Run());
  event.set_job_id(job.id());
  if (event.time_ms() == 0) event.set_time_ms(NowMs());
  OFFSITE_ASSIGN_OR_RETURN(
      Statement insert,
      db.Prepare("INSERT INTO job_events (job_id, seq, is_log, event) VALUES (?, ?, ?, ?)"));
  insert.Bind(1, job.id()).Bind(2, event.seq());
  insert.Bind(3, static_cast<int64_t>(event.has_log())).BindBlob(4, event.SerializeAsString());
  OFFSITE_RETURN_IF_ERROR(insert.Run());
  return event;
}

absl::StatusOr<v1::JobEvent> JobStore::Insert(const v1::Job& job, v1::JobEvent first_event) {
  absl::StatusOr<v1::JobEvent> result;
  OFFSITE_RETURN_IF_ERROR(db_->Transaction([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement stmt, db.Prepare("INSERT INTO jobs (id, owner, kind, state, create_time_ms, "
                                   "next_seq, job) VALUES (?, ?, ?, ?, ?, 1, ?)"));
    stmt.Bind(1, job.id()).Bind(2, job.owner()).Bind(3, job.kind());
    stmt.Bind(4, static_cast<int64_t>(job.state())).Bind(5, job.create_time_ms());
    stmt.BindBlob(6, job.SerializeAsString());
    OFFSITE_RETURN_IF_ERROR(stmt.Run());
    v1::Job copy = job;
    result = AppendLocked(db, copy, std::move(first_event));
    return result.status();
  }));
  return result;
}

absl::StatusOr<v1::Job> JobStore::Get(const std::string& id) {
  absl::StatusOr<v1::Job> job;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) {
    job = LoadJob(db, id, nullptr);
    return job.status();
  }));
  return job;
}

absl::StatusOr<JobPage> JobStore::List(const JobQuery& query) {
  // The page token is the (create time, id) of the last job returned: keyset
  // pagination stays fast and stable however many jobs are stored.
  int64_t after_time = INT64_MAX;
  std::string after_id;
  if (!query.page_token.empty()) {
    std::vector<std::string> parts = absl::StrSplit(query.page_token, absl::MaxSplits(':', 1));
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &after_time) || parts[1].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token: malformed value \"", query.page_token, "\""));
    }
    after_id = parts[1];
  }
  std::string sql =
      "SELECT id, job FROM jobs WHERE (create_time_ms < ?1 OR (create_time_ms = ?1 AND id < ?2))";
  if (!query.owner.empty()) sql += " AND owner = ?3";
  if (query.state != v1::JOB_STATE_UNSPECIFIED) sql += " AND state = ?4";
  if (!query.kind.empty()) sql += " AND kind = ?5";
  sql += " ORDER BY create_time_ms DESC, id DESC LIMIT ?6";
  if (after_id.empty()) after_id = "\xff";  // sorts after every id

  JobPage page;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(Statement stmt, db.Prepare(sql));
    stmt.Bind(1, after_time).Bind(2, after_id).Bind(3, query.owner);
    stmt.Bind(4, static_cast<int64_t>(query.state)).Bind(5, query.kind);
    stmt.Bind(6, static_cast<int64_t>(query.page_size) + 1);
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      OFFSITE_ASSIGN_OR_RETURN(v1::Job job, ParseJob(stmt.Text(1), stmt.Text(0)));
      page.jobs.push_back(std::move(job));
    }
    return absl::OkStatus();
  }));
  if (static_cast<int>(page.jobs.size()) > query.page_size) {
    page.jobs.pop_back();
    const v1::Job& last = page.jobs.back();
    page.next_page_token = absl::StrCat(last.create_time_ms(), ":", last.id());
  }
  return page;
}

absl::StatusOr<v1::JobEvent> JobStore::Update(const std::string& id, const Mutation& mutate,
                                              v1::JobEvent event) {
  return UpdateWith(id, [&](v1::Job& job, v1::JobEvent& out) {
    out = std::move(event);
    return mutate(job);
  });
}

absl::StatusOr<v1::JobEvent> JobStore::UpdateWith(const std::string& id,
                                                  const EventMutation& mutate,
                                                  const TransactionHook& also) {
  absl::StatusOr<v1::JobEvent> result;
  OFFSITE_RETURN_IF_ERROR(db_->Transaction([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(v1::Job job, LoadJob(db, id, nullptr));
    if (also) OFFSITE_RETURN_IF_ERROR(also(db, job));
    v1::JobEvent event;
    OFFSITE_RETURN_IF_ERROR(mutate(job, event));
    OFFSITE_RETURN_IF_ERROR(StoreJob(db, job));
    result = AppendLocked(db, job, std::move(event));
    return result.status();
  }));
  return result;
}

absl::StatusOr<std::optional<v1::Job>> JobStore::ClaimNextQueued(
    int64_t now_ms, const std::function<bool(const v1::Job&)>& fits, const ClaimHook& on_claim) {
  std::optional<v1::Job> claimed;
  OFFSITE_RETURN_IF_ERROR(db_->Transaction([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement stmt,
        db.Prepare("SELECT id, job FROM jobs WHERE state = ? ORDER BY create_time_ms, id"));
    stmt.Bind(1, static_cast<int64_t>(v1::QUEUED));
    std::optional<v1::Job> found;
    while (!found) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return absl::OkStatus();
      OFFSITE_ASSIGN_OR_RETURN(v1::Job candidate, ParseJob(stmt.Text(1), stmt.Text(0)));
      if (!fits || fits(candidate)) found = std::move(candidate);
    }
    v1::Job& job = *found;
    job.set_state(v1::RUNNING);
    job.set_attempts(job.attempts() + 1);
    if (job.start_time_ms() == 0) job.set_start_time_ms(now_ms);
    std::string message = absl::StrCat("attempt ", job.attempts());
    if (on_claim) OFFSITE_RETURN_IF_ERROR(on_claim(db, job, message));
    OFFSITE_RETURN_IF_ERROR(StoreJob(db, job));
    v1::JobEvent event;
    event.mutable_state()->set_state(v1::RUNNING);
    event.mutable_state()->set_message(message);
    OFFSITE_RETURN_IF_ERROR(AppendLocked(db, job, std::move(event)).status());
    claimed = std::move(job);
    return absl::OkStatus();
  }));
  return claimed;
}

absl::StatusOr<std::vector<std::string>> JobStore::IdsInState(v1::JobState state) {
  std::vector<std::string> ids;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) -> absl::Status {
    OFFSITE_ASSIGN_OR_RETURN(
        Statement stmt,
        db.Prepare("SELECT id FROM jobs WHERE state = ? ORDER BY create_time_ms, id"));
    stmt.Bind(1, static_cast<int64_t>(state));
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return absl::OkStatus();
      ids.push_back(stmt.Text(0));
    }
  }));
  return ids;
}

absl::StatusOr<std::vector<v1::JobEvent>> JobStore::Events(const std::string& id,
                                                           int64_t after_seq, int limit,
                                                           bool logs_only) {
  std::vector<v1::JobEvent> events;
  OFFSITE_RETURN_IF_ERROR(db_->Read([&](Database& db) -> absl::Status {
    std::string sql = "SELECT event FROM job_events WHERE job_id = ? AND seq > ?";
    if (logs_only) sql += " AND is_log = 1";
    sql += " ORDER BY seq LIMIT ?";
    OFFSITE_ASSIGN_OR_RETURN(Statement stmt, db.Prepare(sql));
    stmt.Bind(1, id).Bind(2, after_seq).Bind(3, limit > 0 ? int64_t{limit} : int64_t{-1});
    while (true) {
      OFFSITE_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return absl::OkStatus();
      v1::JobEvent event;
      if (!event.ParseFromString(stmt.Text(0))) {
        return absl::DataLossError(absl::StrCat("job ", id, ": stored event does not parse"));
      }
      events.push_back(std::move(event));
    }
  }));
  return events;
}

}  // namespace offsite
