#include "store/postgres/pg_db.hpp"

#include <poll.h>

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

result<query_result> connection::exec(const std::string& sql, const params& p) {
  std::vector<const char*> values;
  values.reserve(p.size());
  for (const auto& v : p) values.push_back(v ? v->c_str() : nullptr);
  // Without parameters, PQexec (which also runs several ;-separated commands).
  PGresult* r = p.empty() ? PQexec(conn_, sql.c_str())
                          : PQexecParams(conn_, sql.c_str(), static_cast<int>(p.size()), nullptr, values.data(),
                                         nullptr, nullptr, 0);
  auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return fail(r, sql.substr(0, 60));
  sqlstate_.clear();
  return query_result(r);
}

result<void> connection::copy_in(const std::string& copy_sql, std::string_view data) {
  PGresult* r = PQexec(conn_, copy_sql.c_str());
  if (!r || PQresultStatus(r) != PGRES_COPY_IN) return fail(r, "COPY");
  PQclear(r);
  if (PQputCopyData(conn_, data.data(), static_cast<int>(data.size())) != 1 || PQputCopyEnd(conn_, nullptr) != 1)
    return fail(nullptr, "COPY data");
  r = PQgetResult(conn_);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
    auto e = fail(r, "COPY");
    while (PGresult* rest = PQgetResult(conn_)) PQclear(rest);
    return e;
  }
  PQclear(r);
  while (PGresult* rest = PQgetResult(conn_)) PQclear(rest);
  sqlstate_.clear();
  return {};
}

bool connection::wait_for_notification(std::chrono::milliseconds timeout) {
  auto drain = [&] {
    bool any = false;
    while (PGnotify* n = PQnotifies(conn_)) {
      PQfreemem(n);
      any = true;
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

void append_copy_field(std::string& out, std::string_view v) {
  for (char c : v) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: out.push_back(c);
    }
  }
}

void append_array_element(std::string& out, std::string_view v) {
  out.push_back('"');
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
}

}  // namespace pliers::pg
