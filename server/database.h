#ifndef OFFSITE_SERVER_DATABASE_H_
#define OFFSITE_SERVER_DATABASE_H_

// A SQLite connection shared by the stores, opened in WAL mode. All access is
// serialised by one mutex: the server's writes are small and the simplicity is
// worth more than concurrent readers at this scale (see tests/bench/job_api_bench).

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// A prepared statement; bind with 1-based indices, Step() until it reports false.
class Statement {
 public:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Statement(Statement&& other) noexcept : db_(other.db_), stmt_(other.stmt_) {
    other.stmt_ = nullptr;
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  Statement& Bind(int index, absl::string_view text);
  Statement& Bind(int index, int64_t value);
  Statement& BindBlob(int index, absl::string_view bytes);

  // True while a row is available; false when done. Errors name the SQL.
  absl::StatusOr<bool> Step();
  absl::Status Run();  // Steps to completion, ignoring rows.

  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

class Database {
 public:
  // Opens (creating if needed) the database file and applies `schema`.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path,
                                                        absl::string_view schema = "");
  ~Database();

  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT under the connection mutex;
  // rolls back when it returns an error. Nested calls are not allowed.
  absl::Status Transaction(const std::function<absl::Status(Database&)>& body);
  // Runs `body` under the connection mutex without a transaction (reads).
  absl::Status Read(const std::function<absl::Status(Database&)>& body);

  // Only valid inside Transaction / Read bodies.
  absl::StatusOr<Statement> Prepare(absl::string_view sql);
  absl::Status Exec(absl::string_view sql);
  int64_t Changes() const { return sqlite3_changes(db_); }

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  std::mutex mu_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_DATABASE_H_
