// Thin RAII over the SQLite C API for the sqlite store: a connection with a cache of
// prepared statements, and a statement cursor. Not thread-safe: one thread uses a
// connection at a time. SQLite details never leave src/store/sqlite/.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/result.hpp"

namespace pliers::sqlite {

class statement {
 public:
  // `owned`: finalize on destruction (a statement that is not in the cache).
  statement(sqlite3_stmt* s, bool owned) : s_(s), owned_(owned) {}
  statement(statement&& o) noexcept : s_(std::exchange(o.s_, nullptr)), owned_(o.owned_) {}
  ~statement() {
    if (!s_) return;
    if (owned_) {
      sqlite3_finalize(s_);
    } else {
      sqlite3_reset(s_);
      sqlite3_clear_bindings(s_);
    }
  }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  statement& operator=(statement&&) = delete;

  statement& bind(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); return *this; }
  statement& bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // Binds without copying: `v` must stay alive until the statement is reset.
  statement& bind_static(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  statement& bind_static(int i, const std::string& v) { return bind_static(i, std::string_view(v)); }
  statement& bind_static(int i, const std::optional<std::string>& v) {
    if (v) return bind_static(i, std::string_view(*v));
    sqlite3_bind_null(s_, i);
    return *this;
  }
  statement& bind(int i, const std::optional<std::string>& v) {
    if (v) return bind(i, std::string_view(*v));
    sqlite3_bind_null(s_, i);
    return *this;
  }
  statement& bind_pointer(int i, const void* p, const char* type) {
    sqlite3_bind_pointer(s_, i, const_cast<void*>(p), type, nullptr);
    return *this;
  }
  // Makes the statement ready to run again (bindings are kept).
  void reset() { sqlite3_reset(s_); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return sqlite3_step(s_); }
  std::int64_t int64(int col) const { return sqlite3_column_int64(s_, col); }
  std::string_view text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, col))) : std::string_view();
  }
  bool is_null(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }

 private:
  sqlite3_stmt* s_;
  bool owned_;
};

// Process-wide settings, applied once before SQLite's first use (open() calls it; a later
// call, or one after SQLite was initialised elsewhere, changes nothing). Memory statistics
// off: with them on, every allocation SQLite makes takes a global mutex.
void configure_library();

class connection {
 public:
  // Opens (creating if asked) a database file with our pragmas.
  static result<std::unique_ptr<connection>> open(const std::string& path, bool create, bool read_only);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  sqlite3* handle() const noexcept { return db_; }
  // A cached prepared statement; the returned cursor resets it when it goes away.
  // Only one cursor per distinct SQL text may be live at a time.
  result<statement> prepare(const std::string& sql);
  result<void> exec(const char* sql);
  // One statement, prepared once and kept in the cache (exec compiles its SQL every
  // time): for the transaction control of every commit (BEGIN, SAVEPOINT, COMMIT ...).
  result<void> run(const char* sql);
  // error for the connection's last failure; SQLITE_FULL / IOERR / BUSY map to unavailable.
  error last_error(std::string_view what) const;

 private:
  explicit connection(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

}  // namespace pliers::sqlite
