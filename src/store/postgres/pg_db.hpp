// Thin RAII over libpq for the postgres store: a connection, results, text-format
// parameters, COPY FROM STDIN. Not thread-safe: one thread uses a connection at a time.
// libpq types and SQLSTATEs never leave src/store/postgres/.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hpp"

namespace pliers::pg {

class query_result {
 public:
  explicit query_result(PGresult* r) : r_(r, &PQclear) {}
  int rows() const { return PQntuples(r_.get()); }
  bool is_null(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view text(int row, int col) const {
    return {PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col))};
  }
  std::int64_t int64(int row, int col) const;

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> r_;
};

using params = std::vector<std::optional<std::string>>;

class connection {
 public:
  static result<std::unique_ptr<connection>> open(const std::string& conninfo);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  result<query_result> exec(const std::string& sql, const params& p = {});
  // COPY ... FROM STDIN with `data` in COPY text format.
  result<void> copy_in(const std::string& copy_sql, std::string_view data);
  // Waits up to `timeout` for a NOTIFY on a LISTENing connection; true when one (or more)
  // arrived, all of which are consumed.
  bool wait_for_notification(std::chrono::milliseconds timeout);
  // True when the server connection is gone (killed backend, restart, network).
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }
  // SQLSTATE of the last failed command ("" when none).
  const std::string& last_sqlstate() const { return sqlstate_; }

 private:
  explicit connection(PGconn* c) : conn_(c) {}
  error fail(PGresult* r, std::string_view what);
  PGconn* conn_;
  std::string sqlstate_;
};

// COPY text format and array literal escaping.
void append_copy_field(std::string& out, std::string_view value);
void append_array_element(std::string& out, std::string_view value);

}  // namespace pliers::pg
