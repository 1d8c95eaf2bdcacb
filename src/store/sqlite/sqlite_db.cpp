#include "store/sqlite/sqlite_db.hpp"

#include <mutex>

namespace pliers::sqlite {

void configure_library() {
  static std::once_flag once;
  std::call_once(once, [] { (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
}

result<std::unique_ptr<connection>> connection::open(const std::string& path, bool create, bool read_only) {
  configure_library();
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX | (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE);
  if (create && !read_only) flags |= SQLITE_OPEN_CREATE;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string why = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return error::make(errc::unavailable, "cannot open sqlite database '" + path + "': " + why);
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, 10000);
  return std::unique_ptr<connection>(new connection(db));
}

connection::~connection() {
  for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
  sqlite3_close_v2(db_);
}

result<statement> connection::prepare(const std::string& sql) {
  auto it = cache_.find(sql);
  if (it != cache_.end()) return statement(it->second, false);
  // The cache is bounded (query texts vary with their filters); past the bound a statement
  // is prepared for this use only.
  const bool cache = cache_.size() < 256;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()), cache ? SQLITE_PREPARE_PERSISTENT : 0, &s,
                         nullptr) != SQLITE_OK)
    return last_error("prepare");
  if (!cache) return statement(s, true);
  cache_.emplace(sql, s);
  return statement(s, false);
}

result<void> connection::exec(const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    sqlite3_free(msg);
    return last_error(sql);
  }
  return {};
}

result<void> connection::run(const char* sql) {
  auto st = prepare(sql);
  if (!st) return std::move(st).error();
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) return last_error(sql);
  return {};
}

error connection::last_error(std::string_view what) const {
  int rc = sqlite3_extended_errcode(db_);
  int primary = rc & 0xff;
  errc code = errc::internal;
  if (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
      primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY || primary == SQLITE_NOMEM)
    code = errc::unavailable;
  return error::make(code, "sqlite " + std::string(what) + ": " + sqlite3_errmsg(db_));
}

}  // namespace pliers::sqlite
