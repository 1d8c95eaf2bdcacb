#include "store/postgres/pg_db.hpp"

#include <poll.h>

#include <algorithm>
#include <charconv>

namespace pliers::pg {

std::int64_t query_result::int64(int row, int col) const {
  auto t = text(row, col);
  std::int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

result<std::unique_ptr<connection>> connection::open(const std::string& conninfo) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (!c) return error::make(errc::unavailable, "out of memory opening a PostgreSQL connection");
  if (PQstatus(c) != CONNECTION_OK) {
    std::string why = PQerrorMessage(c);
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    PQfinish(c);
    return error::make(errc::unavailable, "cannot connect to PostgreSQL: " + why);
  }
  PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);  // NOTICEs are not errors; keep stderr clean
  return std::unique_ptr<connection>(new connection(c));
}

connection::~connection() { PQfinish(conn_); }

// SQLSTATE classes: 08 connection, 57P0x shutdown, 53 resources (disk full) → unavailable;
// 57014 statement timeout and 55P03 lock timeout → timeout; 23505 unique → conflict.
error connection::fail(PGresult* r, std::string_view what) {
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  sqlstate_ = state ? state : (broken() ? "08006" : "XX000");
  std::string msg = r ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (r) PQclear(r);
  errc code = errc::internal;
  if (sqlstate_.starts_with("08") || sqlstate_.starts_with("57P") || sqlstate_.starts_with("53") ||
      sqlstate_ == "40001" || sqlstate_ == "40P01" || broken())
    code = errc::unavailable;
  else if (sqlstate_ == "57014" || sqlstate_ == "55P03")
    code = errc::timeout;
  else if (sqlstate_ == "23505")
    code = errc::conflict;
  return error::make(code, "postgres " + std::string(what) + ": " + msg);
}

namespace {

// libpq's view of text parameters: one C string per value, nullptr for NULL.
std::vector<const char*> param_values(const params& p) {
  std::vector<const char*> values;
  values.reserve(p.size());
  for (const auto& v : p) values.push_back(v ? v->c_str() : nullptr);
  return values;
}

}  // namespace

result<query_result> connection::exec(const std::string& sql, const params& p) {
  const auto values = param_values(p);
  // Without parameters, PQexec (which also runs several ;-separated commands).
  PGresult* r = p.empty() ? PQexec(conn_, sql.c_str())
                          : PQexecParams(conn_, sql.c_str(), static_cast<int>(p.size()), nullptr, values.data(),
                                         nullptr, nullptr, 0);
  auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return fail(r, sql.substr(0, 60));
  sqlstate_.clear();
  return query_result(r);
}

result<void> connection::exec_rows(const std::string& sql, const params& p,
                                   const std::function<result<void>(const query_result& row)>& on_row) {
  const auto values = param_values(p);
  if (PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(p.size()), nullptr, values.data(), nullptr, nullptr,
                        0) != 1)
    return fail(nullptr, sql.substr(0, 60));
  (void)PQsetSingleRowMode(conn_);  // refused only if the query was not sent: then no rows come
  std::optional<error> failed;
  while (PGresult* r = PQgetResult(conn_)) {
    const auto st = PQresultStatus(r);
    if (st == PGRES_SINGLE_TUPLE) {
      query_result row(r);
      if (!failed)
        if (auto ok = on_row(row); !ok) failed = std::move(ok).error();
    } else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
      PQclear(r);  // the end of the rows
    } else {
      error e = fail(r, sql.substr(0, 60));  // takes r; later rows of a failed query do not come
      if (!failed) failed = std::move(e);
    }
  }
  if (failed) return std::move(*failed);
  sqlstate_.clear();
  return {};
}

result<void> connection::prepare(const std::string& name, const std::string& sql) {
  PGresult* r = PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) return fail(r, "PREPARE " + name);
  PQclear(r);
  sqlstate_.clear();
  if (!is_prepared(name)) prepared_.push_back(name);
  return {};
}

bool connection::is_prepared(const std::string& name) const {
  return std::find(prepared_.begin(), prepared_.end(), name) != prepared_.end();
}

result<void> connection::enter_pipeline() {
  if (PQpipelineStatus(conn_) != PQ_PIPELINE_OFF) return {};
  if (PQenterPipelineMode(conn_) != 1) return fail(nullptr, "pipeline mode");
  return {};
}

result<void> connection::send(const statement& s) {
  if (synced_) return error::make(errc::internal, "postgres: statement sent after the round's sync");
  if (auto r = enter_pipeline(); !r) return r;
  const int n = static_cast<int>(s.values.size());
  const int ok = s.prepared ? PQsendQueryPrepared(conn_, s.prepared, n, s.values.data(), nullptr, nullptr, 0)
                            : PQsendQueryParams(conn_, s.sql, n, nullptr, s.values.data(), nullptr, nullptr, 0);
  if (ok != 1) return fail(nullptr, s.prepared ? s.prepared : "send");
  ++pending_;
  return {};
}

result<void> connection::flush() {
  if (PQflush(conn_) != 0) return fail(nullptr, "pipeline flush");
  return {};
}

result<void> connection::sync() {
  if (auto r = enter_pipeline(); !r) return r;
  // PQpipelineSync also flushes the round to the server (libpq reads incoming data while
  // it cannot write, so large rounds do not deadlock against large results).
  if (PQpipelineSync(conn_) != 1) return fail(nullptr, "pipeline sync");
  synced_ = true;
  return {};
}

result<std::vector<query_result>> connection::receive() {
  std::vector<query_result> out;
  out.reserve(pending_);
  std::optional<error> failed;
  const std::size_t statements = pending_;
  pending_ = 0;
  synced_ = false;
  failed_statement_.reset();
  // Each statement yields one result (its own, PIPELINE_ABORTED after a failure) followed
  // by a NULL; then comes PIPELINE_SYNC. An error after the last statement's result is the
  // failure of the implicit transaction's commit. A NULL that follows no result, or any
  // NULL once the connection is gone, ends the reading: the connection is not usable.
  std::size_t seen = 0;  // statements whose result was read
  bool after_result = false;
  while (true) {
    PGresult* r = PQgetResult(conn_);
    if (!r) {
      if (!after_result || broken()) {
        if (!failed) failed = broken() ? fail(nullptr, "pipeline") : error::make(errc::internal, "postgres: pipeline out of step");
        return std::move(*failed);
      }
      after_result = false;
      continue;
    }
    const auto st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    after_result = true;
    const std::size_t index = seen++;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      if (index < statements) out.emplace_back(r);
      else PQclear(r);
    } else if (st == PGRES_PIPELINE_ABORTED) {
      PQclear(r);
    } else if (!failed) {
      failed = fail(r, index < statements ? "pipeline statement " + std::to_string(index + 1) : std::string("COMMIT"));
      if (!broken()) failed_statement_ = index;
    } else {
      PQclear(r);
    }
  }
  if (PQexitPipelineMode(conn_) != 1 && !failed) failed = fail(nullptr, "leaving pipeline mode");
  if (failed) return std::move(*failed);
  if (out.size() != statements) return error::make(errc::internal, "postgres: pipeline results missing");
  sqlstate_.clear();
  return out;
}

bool connection::wait_for_notification(std::chrono::milliseconds timeout, const std::function<bool(int pid)>& counts) {
  auto drain = [&] {
    bool any = false;
    while (PGnotify* n = PQnotifies(conn_)) {
      any = any || !counts || counts(n->be_pid);
      PQfreemem(n);
    }
    return any;
  };
  if (PQconsumeInput(conn_) == 0) return false;
  if (drain()) return true;
  pollfd pfd{PQsocket(conn_), POLLIN, 0};
  if (pfd.fd < 0 || ::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return false;
  if (PQconsumeInput(conn_) == 0) return false;
  return drain();
}

void append_array_element(std::string& out, std::string_view v) {
  out.push_back('"');
  std::size_t start = 0;
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] == '"' || v[i] == '\\') {
      out.append(v.data() + start, i - start);
      out.push_back('\\');
      start = i;
    }
  out.append(v.data() + start, v.size() - start);
  out.push_back('"');
}

}  // namespace pliers::pg
