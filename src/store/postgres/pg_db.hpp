// Thin RAII over libpq for the postgres store: a connection, results, text-format
// parameters, prepared statements, pipeline rounds, LISTEN. Not thread-safe: one thread
// uses a connection at a time. libpq types and SQLSTATEs never leave
// src/store/postgres/.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
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

// A statement of a pipeline round: a prepared statement's name, or SQL text sent as an
// unnamed statement, with text parameters (nullptr = NULL). send() copies them.
struct statement {
  const char* prepared = nullptr;
  const char* sql = nullptr;
  std::span<const char* const> values = {};
};

class connection {
 public:
  static result<std::unique_ptr<connection>> open(const std::string& conninfo);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  result<query_result> exec(const std::string& sql, const params& p = {});
  // Runs one query in libpq's single-row mode: on_row gets each row (row 0 of its result)
  // as it arrives, so the caller decodes while the server is still sending. An error from
  // on_row stops the calls; the rest of the rows is read and dropped, the connection
  // stays usable, and the error is returned.
  result<void> exec_rows(const std::string& sql, const params& p,
                         const std::function<result<void>(const query_result& row)>& on_row);

  // Prepares a named statement on this connection (parsed once, executed by name). The
  // names live as long as the connection: a new connection must prepare them again.
  result<void> prepare(const std::string& name, const std::string& sql);
  bool is_prepared(const std::string& name) const;

  // Pipeline rounds (libpq pipeline mode): send() queues statements without waiting for
  // anything, sync() ends the round and sends it, receive() collects the results of every
  // statement of the round, in order. Between sync() and receive() the caller may do other
  // work while the server runs the round. When a statement fails, the server skips the
  // rest of the round: receive() returns that statement's error (and last_sqlstate()); an
  // open transaction is then in the aborted state and needs a ROLLBACK.
  result<void> send(const statement& s);
  // Sends what send() queued so far without ending the round: the server starts on it
  // while the caller prepares the rest of the round.
  result<void> flush();
  result<void> sync();
  result<std::vector<query_result>> receive();
  // The index in its round of the statement whose error receive() returned (the number of
  // statements when the commit at the round's end failed); none when the connection was
  // lost.
  std::optional<std::size_t> failed_statement() const { return failed_statement_; }
  // Waits up to `timeout` for a NOTIFY on a LISTENing connection; true when one (or more)
  // arrived that `counts` (given the sending server process; empty: all) counts. All are
  // consumed.
  bool wait_for_notification(std::chrono::milliseconds timeout, const std::function<bool(int pid)>& counts = {});
  // True when the server connection is gone (killed backend, restart, network).
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }
  // True when the connection is usable for a new transaction: connected, out of pipeline
  // mode, no transaction open.
  bool idle() const {
    return !broken() && PQpipelineStatus(conn_) == PQ_PIPELINE_OFF && PQtransactionStatus(conn_) == PQTRANS_IDLE;
  }
  // The server process of this connection (kept after the connection broke).
  int backend_pid() const { return PQbackendPID(conn_); }
  // SQLSTATE of the last failed command ("" when none).
  const std::string& last_sqlstate() const { return sqlstate_; }

 private:
  explicit connection(PGconn* c) : conn_(c) {}
  error fail(PGresult* r, std::string_view what);
  result<void> enter_pipeline();
  PGconn* conn_;
  std::string sqlstate_;
  std::vector<std::string> prepared_;  // names prepared on this connection
  std::size_t pending_ = 0;            // statements sent in the current round
  bool synced_ = false;                // the current round is sent, its results not yet read
  std::optional<std::size_t> failed_statement_;
};

// An element of an array literal ('{"a","b"}'), quoted and escaped.
void append_array_element(std::string& out, std::string_view value);

}  // namespace pliers::pg
