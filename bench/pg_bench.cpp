// PostgreSQL section of pliers-bench (`--only pg --pg-url URL`). Every scenario runs in a
// fresh schema of the given database (CREATE SCHEMA pliers_bench_<pid>_<n>, reached with
// `?options=-csearch_path%3D<schema>`), dropped afterwards. Layers:
//
//   raw PG      libpq alone, on tables made by the store's own DDL (postgres_schema_sql,
//               migration_1) with one monthly partition covering now: COPY and multi-row
//               INSERT of 100-row batches from one connection, 1-row INSERT transactions
//               from 1 and 16 connections; reading the log with the store's SELECT; the
//               store's append transaction replayed (same SQL, prepared, pipelined), timed
//               per round trip.
//   PG C++ API  pliers::open_store("postgres://...") in this process.
//   PG HTTP     the real pliers-events serving the postgres store (http_bench.cpp).
//
// Next to events/s and latency, every row records what PostgreSQL did meanwhile: write
// transactions (transaction ids assigned), WAL bytes (pg_current_wal_lsn), and the CPU time
// of the server's processes (/proc, when it runs on this machine). A CHECKPOINT precedes
// every scenario.
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <thread>

#include "bench.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "store/event_store.hpp"
#include "store/postgres/postgres_store.hpp"

namespace pliers::bench {

namespace fs = std::filesystem;

namespace {

const std::string raw_layer = "raw PG";
const std::string api_layer = "PG C++ API";
const std::string http_layer = "PG HTTP";

// --- libpq ------------------------------------------------------------------------------

using pg_result = std::unique_ptr<PGresult, decltype(&PQclear)>;

class pg_conn {
 public:
  explicit pg_conn(const std::string& url) : c_(PQconnectdb(url.c_str())) {
    if (!c_ || PQstatus(c_) != CONNECTION_OK) {
      std::string msg = c_ ? PQerrorMessage(c_) : "out of memory";
      if (c_) PQfinish(c_);
      c_ = nullptr;
      throw failure("cannot connect to PostgreSQL: " + msg);
    }
    PQsetNoticeProcessor(c_, [](void*, const char*) {}, nullptr);  // DROP ... CASCADE notices
  }
  ~pg_conn() {
    if (c_) PQfinish(c_);
  }
  pg_conn(const pg_conn&) = delete;
  pg_conn& operator=(const pg_conn&) = delete;

  // One or more ;-separated statements (the last result is returned).
  pg_result exec(const std::string& sql) { return check(PQexec(c_, sql.c_str()), sql); }
  // Text parameters, unnamed statement (what src/store/postgres/pg_db.cpp does).
  pg_result exec(const std::string& sql, const std::vector<std::string>& params) {
    std::vector<const char*> v;
    for (const auto& p : params) v.push_back(p.c_str());
    return check(PQexecParams(c_, sql.c_str(), static_cast<int>(v.size()), nullptr, v.data(), nullptr, nullptr, 0),
                 sql);
  }
  void prepare(const std::string& name, const std::string& sql) {
    check(PQprepare(c_, name.c_str(), sql.c_str(), 0, nullptr), sql);
  }
  pg_result exec_prepared(const std::string& name, const std::vector<const char*>& values) {
    return check(PQexecPrepared(c_, name.c_str(), static_cast<int>(values.size()), values.data(), nullptr, nullptr, 0),
                 name);
  }
  // COPY ... FROM STDIN with text-format data.
  void copy_in(const std::string& sql, std::string_view data) {
    pg_result r(PQexec(c_, sql.c_str()), &PQclear);
    if (!r || PQresultStatus(r.get()) != PGRES_COPY_IN) fail(r.get(), sql);
    if (PQputCopyData(c_, data.data(), static_cast<int>(data.size())) != 1 || PQputCopyEnd(c_, nullptr) != 1)
      fail(nullptr, "COPY data");
    pg_result done(PQgetResult(c_), &PQclear);
    const bool ok = done && PQresultStatus(done.get()) == PGRES_COMMAND_OK;
    std::string msg = ok ? "" : done ? PQresultErrorMessage(done.get()) : PQerrorMessage(c_);
    while (PGresult* rest = PQgetResult(c_)) PQclear(rest);
    if (!ok) throw failure("postgres " + sql.substr(0, 60) + ": " + msg);
  }
  PGconn* handle() const { return c_; }
  std::string value(const std::string& sql, const std::vector<std::string>& params = {}) {
    auto r = params.empty() ? exec(sql) : exec(sql, params);
    if (PQntuples(r.get()) < 1 || PQnfields(r.get()) < 1) throw failure("postgres: no value from " + sql);
    return PQgetvalue(r.get(), 0, 0);
  }

 private:
  pg_result check(PGresult* r, const std::string& what) {
    pg_result res(r, &PQclear);
    const auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) fail(r, what);
    return res;
  }
  [[noreturn]] void fail(PGresult* r, const std::string& what) {
    std::string msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    throw failure("postgres " + what.substr(0, 80) + ": " + msg);
  }
  PGconn* c_;
};

std::string schema_url(const std::string& base, const std::string& schema) {
  return base + (base.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" + schema;
}

// A fresh schema for one scenario, dropped (CASCADE) at the end.
class bench_schema {
 public:
  bench_schema(const config& cfg, pg_conn& admin) : admin_(admin), keep_(cfg.keep_files) {
    static int counter = 0;
    name_ = "pliers_bench_" + std::to_string(getpid()) + "_" + std::to_string(++counter);
    url_ = schema_url(cfg.pg_url, name_);
    admin_.exec("DROP SCHEMA IF EXISTS " + name_ + " CASCADE; CREATE SCHEMA " + name_);
  }
  ~bench_schema() {
    if (keep_) return;
    try {
      admin_.exec("DROP SCHEMA IF EXISTS " + name_ + " CASCADE");
    } catch (const std::exception& e) {
      progress(std::string("warning: ") + e.what());
    }
  }
  bench_schema(const bench_schema&) = delete;
  bench_schema& operator=(const bench_schema&) = delete;
  const std::string& name() const { return name_; }
  const std::string& url() const { return url_; }

 private:
  pg_conn& admin_;
  bool keep_;
  std::string name_, url_;
};

// --- what PostgreSQL did during a scenario ------------------------------------------------

// Fields of /proc/PID/stat after "(comm)": state(3) ppid(4) ... utime(14) stime(15).
struct proc_stat {
  long long ppid = 0, ticks = 0;
};

std::optional<proc_stat> read_proc_stat(const fs::path& file) {
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 2));
  std::string state;
  proc_stat out;
  fields >> state >> out.ppid;
  std::string f;
  for (int i = 5; i <= 13; ++i) fields >> f;
  long long utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  out.ticks = utime + stime;
  return out;
}

// The postmaster of the server `admin` is connected to: the parent of its backend, when the
// server runs on this machine (as the same PID namespace sees it); 0 otherwise.
long long postmaster_pid(pg_conn& admin) {
  const auto backend = admin.value("SELECT pg_backend_pid()");
  auto st = read_proc_stat(fs::path("/proc") / backend / "stat");
  if (!st) return 0;
  std::ifstream comm(fs::path("/proc") / std::to_string(st->ppid) / "comm");
  std::string name;
  comm >> name;
  return name == "postgres" ? st->ppid : 0;
}

// utime+stime of the postmaster and its children (backends, walwriter, checkpointer...) of
// that server only; other clusters on the machine are left out. Processes that ended
// during the scenario are missed, so scenarios keep their connections open until sampled.
std::optional<double> postgres_cpu_seconds(long long postmaster) {
  if (postmaster <= 0) return std::nullopt;
  long long ticks = 0;
  std::error_code ec;
  for (const auto& d : fs::directory_iterator("/proc", ec)) {
    const auto name = d.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    auto st = read_proc_stat(d.path() / "stat");
    if (st && (st->ppid == postmaster || std::stoll(name) == postmaster)) ticks += st->ticks;
  }
  return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct pg_sample {
  std::optional<double> cpu;
  std::string lsn;
  std::int64_t next_xid = 0;
};

pg_sample sample(pg_conn& admin) {
  pg_sample s;
  auto r = admin.exec("SELECT pg_current_wal_lsn()::text, pg_snapshot_xmax(pg_current_snapshot())::text");
  s.lsn = PQgetvalue(r.get(), 0, 0);
  s.next_xid = std::stoll(PQgetvalue(r.get(), 0, 1));
  static long long postmaster = postmaster_pid(admin);  // one server per run of the tool
  s.cpu = postgres_cpu_seconds(postmaster);
  return s;
}

void record(row& r, pg_conn& admin, const pg_sample& before) {
  const auto after = sample(admin);
  // A backend that exited in between takes its CPU time with it: no value then.
  if (before.cpu && after.cpu && *after.cpu >= *before.cpu) r.pg_cpu = *after.cpu - *before.cpu;
  r.pg_xids = after.next_xid - before.next_xid;
  r.pg_wal_bytes = std::stod(admin.value("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::text", {after.lsn, before.lsn}));
}

// Every scenario starts after a checkpoint, so that none pays for the previous one's dirty
// pages. Needs superuser (or pg_checkpoint); skipped with a warning otherwise.
void checkpoint(pg_conn& admin) {
  static bool warned = false;
  try {
    admin.exec("CHECKPOINT");
  } catch (const std::exception& e) {
    if (!warned) progress(std::string("warning: CHECKPOINT failed, scenarios run without it: ") + e.what());
    warned = true;
  }
}

void report(std::vector<row>& out, row r) {
  progress(r.layer + " " + r.key + ": " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
  out.push_back(std::move(r));
}

// --- the raw table: migration_1's `events` ----------------------------------------------

timestamp month_start(timestamp t) {
  using namespace std::chrono;
  const year_month_day ymd{floor<days>(t)};
  return timestamp(sys_days{ymd.year() / ymd.month() / 1});
}

timestamp next_month(timestamp start) {
  using namespace std::chrono;
  const year_month_day ymd{floor<days>(start)};
  return timestamp(sys_days{ymd.year() / ymd.month() / 1 + months(1)});
}

timestamp now_micros() {
  return std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
}

// The store's own schema DDL (postgres_schema_sql: migration_1, monthly partitioning) in
// the current schema of `db`, with monthly partitions of `events` covering [from, to] (one
// partition, unless the run crosses the end of a month). The raw scenarios write `events`
// (and `event_ids` for insert_with_ids); the other tables stay empty.
void create_raw_events(pg_conn& db, const std::string& json_index, timestamp from, timestamp to) {
  db.exec(postgres_schema_sql("monthly", json_index));
  for (auto start = month_start(from); start <= to; start = next_month(start)) {
    const auto s = format_rfc3339(start);
    db.exec("CREATE TABLE events_p" + s.substr(0, 4) + s.substr(5, 2) + s.substr(8, 2) +
            " PARTITION OF events FOR VALUES FROM ('" + s + "') TO ('" + format_rfc3339(next_month(start)) + "')");
  }
}

constexpr const char* event_column_list =
    "position, id, type, version, timestamp, aggregate_id, aggregate_type, sequence_number, causation_id, "
    "correlation_id, metadata, payload";

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

// Rows of one writer, prepared before the clock: positions first_position.., sequence
// numbers 1.., one timestamp per transaction (as the store gives a batch one commit time),
// 1 ms apart.
struct raw_row {
  std::string position, id, ts, seq;
};

struct raw_rows {
  std::string aggregate_id;
  std::vector<std::vector<raw_row>> txns;
  timestamp first{}, last{};
};

raw_rows make_rows(const std::string& aggregate_id, int txns, int per_txn, std::int64_t first_position, timestamp base) {
  raw_rows out;
  out.aggregate_id = aggregate_id;
  out.first = base;
  std::int64_t position = first_position, seq = 0;
  out.txns.resize(static_cast<std::size_t>(txns));
  for (int t = 0; t < txns; ++t) {
    const auto ts_point = base + std::chrono::milliseconds(t);
    out.last = ts_point;
    const auto ts = format_rfc3339(ts_point);
    auto& txn = out.txns[static_cast<std::size_t>(t)];
    for (int i = 0; i < per_txn; ++i)
      txn.push_back({std::to_string(position++), new_uuid_v4(), ts, std::to_string(++seq)});
  }
  return out;
}

// 12 parameters per row, in event_column_list order.
std::vector<const char*> row_params(const raw_rows& rows, const std::vector<raw_row>& txn, const event_shape& shape) {
  std::vector<const char*> v;
  v.reserve(txn.size() * 12);
  for (const auto& r : txn) {
    v.insert(v.end(), {r.position.c_str(), r.id.c_str(), shape.type.c_str(), "1", r.ts.c_str(),
                       rows.aggregate_id.c_str(), shape.aggregate_type.c_str(), r.seq.c_str(), nullptr, nullptr,
                       shape.metadata_text.c_str(), shape.payload_text.c_str()});
  }
  return v;
}

std::string insert_sql(int rows_per_statement) {
  std::string sql = std::string("INSERT INTO events (") + event_column_list + ") VALUES ";
  int p = 0;
  for (int i = 0; i < rows_per_statement; ++i) {
    sql += i ? ",(" : "(";
    for (int c = 0; c < 12; ++c) sql += (c ? ",$" : "$") + std::to_string(++p);
    sql += ")";
  }
  return sql;
}

std::string copy_text(const raw_rows& rows, const std::vector<raw_row>& txn, const event_shape& shape) {
  std::string out;
  for (const auto& r : txn) {
    out += r.position + '\t' + r.id + '\t';
    append_copy_field(out, shape.type);
    out += "\t1\t" + r.ts + '\t';
    append_copy_field(out, rows.aggregate_id);
    out += '\t';
    append_copy_field(out, shape.aggregate_type);
    out += '\t' + r.seq + "\t\\N\t\\N\t";
    append_copy_field(out, shape.metadata_text);
    out += '\t';
    append_copy_field(out, shape.payload_text);
    out += '\n';
  }
  return out;
}

enum class raw_method { copy, insert, insert_with_ids };

// One connection, `txns` autocommit statements of `per_txn` rows each (COPY, or a prepared
// multi-row INSERT; insert_with_ids: the INSERT plus the same rows into event_ids, in one
// statement): every statement is one transaction and one commit.
row raw_writes(const config& cfg, pg_conn& admin, const event_shape& shape, raw_method method, const std::string& key,
               const std::string& label, int txns, int per_txn, const std::string& json_index = "gin_path_ops") {
  bench_schema schema(cfg, admin);
  pg_conn db(schema.url());
  auto rows = make_rows("bench-order-1", txns, per_txn, 1, now_micros());
  create_raw_events(db, json_index, rows.first, rows.last);
  std::vector<std::vector<const char*>> params;
  std::vector<std::string> copies;
  if (method == raw_method::insert_with_ids) {
    db.prepare("ins", "WITH e AS (" + insert_sql(per_txn) +
                          " RETURNING id, aggregate_id, sequence_number, position, timestamp) "
                          "INSERT INTO event_ids (id, aggregate_id, sequence_number, position, timestamp) "
                          "SELECT * FROM e");
    for (const auto& t : rows.txns) params.push_back(row_params(rows, t, shape));
  } else if (method == raw_method::insert) {
    db.prepare("ins", insert_sql(per_txn));
    for (const auto& t : rows.txns) params.push_back(row_params(rows, t, shape));
  } else {
    for (const auto& t : rows.txns) copies.push_back(copy_text(rows, t, shape));
  }
  const std::string copy_sql = std::string("COPY events (") + event_column_list + ") FROM STDIN";
  row r{raw_layer, key, label};
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(txns));
  checkpoint(admin);
  const auto before = sample(admin);
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  for (std::size_t i = 0; i < rows.txns.size(); ++i) {
    const auto t = steady::now();
    if (method == raw_method::copy) db.copy_in(copy_sql, copies[i]);
    else db.exec_prepared("ins", params[i]);
    lat.push_back(ms_between(t, steady::now()));
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  const auto count = std::stoll(db.value("SELECT count(*) FROM events"));
  r.events = static_cast<std::int64_t>(txns) * per_txn;
  if (count != r.events) throw failure(key + ": " + std::to_string(count) + " rows, expected " + std::to_string(r.events));
  if (method == raw_method::insert_with_ids && std::stoll(db.value("SELECT count(*) FROM event_ids")) != r.events)
    throw failure(key + ": event_ids incomplete");
  r.requests = txns;
  set_percentiles(r, std::move(lat));
  return r;
}

// `connections` threads, each its own connection and aggregate, `per_connection` 1-row
// INSERT transactions (prepared, autocommit) each.
row raw_single_rows(const config& cfg, pg_conn& admin, const event_shape& shape, int connections, int per_connection,
                    const std::string& key, const std::string& label) {
  bench_schema schema(cfg, admin);
  const auto base = now_micros();
  std::vector<raw_rows> rows;
  for (int c = 0; c < connections; ++c)
    rows.push_back(make_rows("bench-order-" + std::to_string(c), per_connection, 1,
                             static_cast<std::int64_t>(c) * per_connection + 1, base));
  std::vector<std::unique_ptr<pg_conn>> conns;
  for (int c = 0; c < connections; ++c) {
    conns.push_back(std::make_unique<pg_conn>(schema.url()));
    if (c == 0) create_raw_events(*conns[0], "gin_path_ops", rows[0].first, rows[0].last);
    conns.back()->prepare("ins", insert_sql(1));
  }
  std::vector<std::vector<std::vector<const char*>>> params(static_cast<std::size_t>(connections));
  for (std::size_t c = 0; c < rows.size(); ++c)
    for (const auto& t : rows[c].txns) params[c].push_back(row_params(rows[c], t, shape));

  row r{raw_layer, key, label};
  const auto n = static_cast<std::size_t>(connections);
  std::vector<std::vector<double>> lat(n);
  std::vector<std::string> errors(n);
  checkpoint(admin);
  const auto before = sample(admin);
  double cpu0 = 0;
  steady::time_point t0;
  std::barrier start(static_cast<std::ptrdiff_t>(n), [&]() noexcept {
    cpu0 = process_cpu_seconds();
    t0 = steady::now();
  });
  std::vector<std::thread> threads;
  for (std::size_t c = 0; c < n; ++c) {
    threads.emplace_back([&, c] {
      start.arrive_and_wait();
      try {
        for (const auto& p : params[c]) {
          const auto t = steady::now();
          conns[c]->exec_prepared("ins", p);
          lat[c].push_back(ms_between(t, steady::now()));
        }
      } catch (const std::exception& e) {
        errors[c] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  for (const auto& e : errors)
    if (!e.empty()) throw failure(key + ": " + e);
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  r.events = r.requests = static_cast<std::int64_t>(connections) * per_connection;
  set_percentiles(r, std::move(all));
  return r;
}

// Round trip of `SELECT 1` on one connection: the floor under every statement.
row round_trip(const config& cfg, pg_conn& admin) {
  pg_conn db(cfg.pg_url);
  db.prepare("one", "SELECT 1");
  row r{raw_layer, "rtt", "round trip: prepared SELECT 1 (not an event; requests/s)"};
  constexpr int n = 2000;
  std::vector<double> lat;
  const auto before = sample(admin);
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  for (int i = 0; i < n; ++i) {
    const auto t = steady::now();
    db.exec_prepared("one", {});
    lat.push_back(ms_between(t, steady::now()));
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  r.events = r.requests = n;
  set_percentiles(r, std::move(lat));
  return r;
}

// --- C++ API -----------------------------------------------------------------------------

std::unique_ptr<event_store> open_pg_store(const std::string& url, const std::string& json_index) {
  store_options opts;
  opts.json_index = json_index;
  opts.warn = [](const std::string& m) { progress("store warning: " + m); };
  auto s = open_store(url, opts);
  if (!s) throw failure("open_store(postgres): " + s.error().message);
  return std::move(*s);
}

// Creates the store's schema (migrations, partitions) in `schema` and closes the store.
void migrate(const bench_schema& schema, const std::string& json_index) { (void)open_pg_store(schema.url(), json_index); }

append_request make_request(const event_shape& shape, const std::string& aggregate_id, int n) {
  append_request req;
  req.aggregate_id = aggregate_id;
  for (int i = 0; i < n; ++i) {
    new_event e;
    e.type = shape.type;
    e.aggregate_type = shape.aggregate_type;
    e.metadata = shape.metadata;
    e.payload = shape.payload;
    req.events.push_back(std::move(e));
  }
  return req;
}

std::vector<append_request> make_requests(const event_shape& shape, const std::string& aggregate_id, int appends,
                                          int per_append) {
  const auto one = make_request(shape, aggregate_id, per_append);
  return std::vector<append_request>(static_cast<std::size_t>(appends), one);
}

std::vector<double> append_all(event_store& store, std::vector<append_request>& reqs) {
  std::vector<double> lat;
  lat.reserve(reqs.size());
  for (auto& req : reqs) {
    const auto t = steady::now();
    auto r = store.append(std::move(req));
    lat.push_back(ms_between(t, steady::now()));
    if (!r) throw failure("append: " + r.error().message);
  }
  return lat;
}

row api_sequential(const config& cfg, pg_conn& admin, const event_shape& shape, const std::string& key,
                   const std::string& label, int appends, int per_append, const std::string& json_index = "gin_path_ops") {
  bench_schema schema(cfg, admin);
  auto store = open_pg_store(schema.url(), json_index);
  auto reqs = make_requests(shape, "bench-order-1", appends, per_append);
  row r{api_layer, key, label};
  checkpoint(admin);
  const auto before = sample(admin);
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  auto lat = append_all(*store, reqs);
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  r.events = static_cast<std::int64_t>(appends) * per_append;
  r.requests = appends;
  set_percentiles(r, std::move(lat));
  return r;
}

row api_concurrent(const config& cfg, pg_conn& admin, const event_shape& shape) {
  bench_schema schema(cfg, admin);
  auto store = open_pg_store(schema.url(), "gin_path_ops");
  const auto n = static_cast<std::size_t>(cfg.clients);
  std::vector<std::vector<append_request>> reqs;
  for (std::size_t i = 0; i < n; ++i)
    reqs.push_back(make_requests(shape, "bench-order-" + std::to_string(i), cfg.concurrent_appends, 1));
  row r{api_layer, "write_concurrent",
        "b. " + std::to_string(cfg.clients) + " threads x 1 event per append, 1 aggregate each"};
  std::vector<std::vector<double>> lat(n);
  std::vector<std::string> errors(n);
  checkpoint(admin);
  const auto before = sample(admin);
  double cpu0 = 0;
  steady::time_point t0;
  std::barrier start(static_cast<std::ptrdiff_t>(n), [&]() noexcept {
    cpu0 = process_cpu_seconds();
    t0 = steady::now();
  });
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      try {
        lat[i] = append_all(*store, reqs[i]);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  for (const auto& e : errors)
    if (!e.empty()) throw failure("concurrent writer: " + e);
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  r.events = r.requests = static_cast<std::int64_t>(cfg.clients) * cfg.concurrent_appends;
  set_percentiles(r, std::move(all));
  return r;
}

// Reads `total` rows of the log with the store's own SELECT (text results, no JSON
// parsing), pages of `page`.
row raw_read_log(pg_conn& admin, const std::string& url, std::int64_t total, const std::string& key,
                 const std::string& label, const std::string& columns) {
  pg_conn db(url);
  db.exec("SET TimeZone = 'UTC'");
  db.prepare("page", "SELECT " + columns + " FROM events WHERE position > $1 ORDER BY position LIMIT $2");
  row r{raw_layer, key, label};
  std::vector<double> lat;
  std::int64_t n = 0, bytes = 0;
  std::string after = "0", limit = "10000";
  const auto before = sample(admin);
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  while (true) {
    const auto t = steady::now();
    auto res = db.exec_prepared("page", {after.c_str(), limit.c_str()});
    const int rows = PQntuples(res.get()), cols = PQnfields(res.get());
    for (int i = 0; i < rows; ++i)
      for (int c = 0; c < cols; ++c) bytes += PQgetlength(res.get(), i, c);
    lat.push_back(ms_between(t, steady::now()));
    n += rows;
    if (rows < 10000) break;
    after = PQgetvalue(res.get(), rows - 1, 0);
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  record(r, admin, before);
  if (n != total || bytes == 0)
    throw failure(key + ": read " + std::to_string(n) + " rows, expected " + std::to_string(total));
  r.events = n;
  r.requests = static_cast<std::int64_t>(lat.size());
  set_percentiles(r, std::move(lat));
  return r;
}

// d: load read_events events (100 per append), read_all them in pages of 10,000, then read
// the same rows with raw libpq (the store's SELECT; and with the timestamp as text).
void api_reads(const config& cfg, pg_conn& admin, const event_shape& shape, std::vector<row>& out) {
  bench_schema schema(cfg, admin);
  const int per_append = cfg.batch_size;
  const int appends = (cfg.read_events + per_append - 1) / per_append;
  const std::int64_t total = static_cast<std::int64_t>(appends) * per_append;
  {
    auto store = open_pg_store(schema.url(), "gin_path_ops");
    {
      row r{api_layer, "load", "load: 1 thread x " + std::to_string(per_append) + " events per append (read setup)"};
      auto reqs = make_requests(shape, "bench-big", appends, per_append);
      checkpoint(admin);
      const auto before = sample(admin);
      const auto cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      auto lat = append_all(*store, reqs);
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - cpu0;
      record(r, admin, before);
      r.events = total;
      r.requests = appends;
      set_percentiles(r, std::move(lat));
      report(out, std::move(r));
    }
    // Hint bits and visibility: the first reader of freshly written rows sets hint bits and
    // dirties the pages. VACUUM (as autovacuum would soon) so the timed reads are steady.
    admin.exec("VACUUM (ANALYZE) " + schema.name() + ".events");
    checkpoint(admin);
    {
      row r{api_layer, "read_log", "d. read the global log: read_all, pages of 10000"};
      constexpr std::size_t page = 10000;
      std::vector<double> lat;
      std::int64_t n = 0;
      log_position after{};
      const auto before = sample(admin);
      const auto cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      while (true) {
        const auto t = steady::now();
        auto events = store->read_all(after, page);
        lat.push_back(ms_between(t, steady::now()));
        if (!events) throw failure("read_all: " + events.error().message);
        n += static_cast<std::int64_t>(events->size());
        if (events->size() < page) break;
        after = events->back().position;
      }
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - cpu0;
      record(r, admin, before);
      if (n != total) throw failure("read_all returned " + std::to_string(n) + " events, expected " + std::to_string(total));
      r.events = n;
      r.requests = static_cast<std::int64_t>(lat.size());
      set_percentiles(r, std::move(lat));
      report(out, std::move(r));
    }
  }
  // The store's column list (event_columns in postgres_store.cpp), then plain columns.
  report(out, raw_read_log(admin, schema.url(), total, "read_log",
                           "d. read the log: the store's SELECT, pages of 10000, text, no JSON parsing",
                           "position, id, type, version, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint, "
                           "aggregate_id, aggregate_type, sequence_number, causation_id, correlation_id, metadata, "
                           "payload"));
  report(out, raw_read_log(admin, schema.url(), total, "read_log_plain",
                           "d. read the log: same, timestamp as text (no EXTRACT)", event_column_list));
}

// --- HTTP --------------------------------------------------------------------------------

// Runs an HTTP scenario on a server serving a fresh, already migrated schema; the PostgreSQL
// counters cover the clock only (not the server's start and stop).
using http_run = std::function<row(const std::string& url, const std::function<void(bool)>& probe)>;
row http_scenario(const config& cfg, pg_conn& admin, const http_run& run) {
  bench_schema schema(cfg, admin);
  migrate(schema, "gin_path_ops");  // the server then starts without DDL
  checkpoint(admin);
  pg_sample before;
  row stats{http_layer, "", ""};
  auto r = run(schema.url(), [&](bool started) {
    if (started) before = sample(admin);
    else record(stats, admin, before);
  });
  r.pg_cpu = stats.pg_cpu;
  r.pg_xids = stats.pg_xids;
  r.pg_wal_bytes = stats.pg_wal_bytes;
  return r;
}

// --- the store's append transaction, replayed -----------------------------------------------

// The statements postgres_store's writer sends for a batch (postgres_append_sql()),
// prepared, in libpq pipeline mode,
// with parameters built before the clock: what the append costs in PostgreSQL and on the
// wire, without the store's work in the process (queueing, planning, serialization).
//   known = true:  the writer knows the aggregates' versions (it committed to them last):
//                  one round trip, lock expecting those versions + write, one implicit
//                  transaction committed at the round's sync.
//   known = false: round 1 BEGIN + reserve + lock, round 2 write + COMMIT (an aggregate
//                  the writer does not know, e.g. one another process appended to).
// A batch is `aggregates` appends of `per_append` events each, one per aggregate.
row replay_store_txn(const config& cfg, pg_conn& admin, const event_shape& shape, int txns, int aggregates,
                     int per_append, bool known, const std::string& key, const std::string& label) {
  bench_schema schema(cfg, admin);
  migrate(schema, "gin_path_ops");
  pg_conn db(schema.url());
  db.exec("SET TimeZone = 'UTC'; SET synchronous_commit = on");
  auto element = [](std::string& out, std::string_view v) {
    out.push_back('"');
    for (char c : v) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  };
  auto array = [&](const std::vector<std::string>& v, bool quote) {
    std::string out = "{";
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) out += ',';
      if (quote) element(out, v[i]);
      else out += v[i];
    }
    return out + "}";
  };
  std::vector<std::string> aggs;
  for (int a = 0; a < aggregates; ++a) {
    char name[32];
    std::snprintf(name, sizeof name, "bench-order-%04d", a);
    aggs.emplace_back(name);
  }
  const std::string aggs_param = array(aggs, true);
  const std::string types_param = array(std::vector<std::string>(aggs.size(), shape.aggregate_type), true);
  const std::string count_param = std::to_string(aggs.size());
  // The aggregates exist (created by an earlier append), at version 0 here.
  db.exec("INSERT INTO aggregates (aggregate_id, aggregate_type, version) SELECT a, '" + shape.aggregate_type +
          "', 0 FROM unnest('" + aggs_param + "'::text[]) a");
  db.prepare("begin", "BEGIN");
  db.prepare("commit", "COMMIT");
  const auto& sql = postgres_append_sql();
  db.prepare("reserve", sql.reserve);
  db.prepare("lock", sql.lock);
  db.prepare("lock_expecting", sql.lock_expecting);
  db.prepare("write", sql.write);
  // Generated ids, as the store makes them: the schema's tag, one writer.
  const std::string tag = db.value("SELECT value FROM pliers_settings WHERE key = 'id_tag'");
  const std::string id_prefix = uuid_v8_positional_prefix(std::stoull(tag, nullptr, 16));
  const std::string writer = new_uuid_v4();
  struct txn {
    std::vector<std::string> lock, write;
  };
  std::vector<txn> work;
  const auto base = now_micros();
  const int per_txn = aggregates * per_append;
  for (int t = 0; t < txns; ++t) {
    txn w;
    const std::int64_t before = static_cast<std::int64_t>(t) * per_append;
    w.lock = {aggs_param, types_param, array(std::vector<std::string>(aggs.size(), std::to_string(before)), false),
              count_param};
    std::string ids = "{", types = "{", versions = "{", agg_ids = "{", agg_types = "{", seqs = "{", causes = "{",
                corrs = "{", mds = "[", pls = "[";
    int n = 0;
    for (const auto& agg : aggs)
      for (int i = 0; i < per_append; ++i) {
        if (n++) {
          for (auto* s : {&ids, &types, &versions, &agg_ids, &agg_types, &seqs, &causes, &corrs, &mds, &pls}) *s += ',';
        }
        ids += "NULL";  // generated from the position
        element(types, shape.type);
        versions += "1";
        element(agg_ids, agg);
        element(agg_types, shape.aggregate_type);
        seqs += std::to_string(before + i + 1);
        causes += "NULL";
        corrs += "NULL";
        mds += shape.metadata_text;
        pls += shape.payload_text;
      }
    for (auto* s : {&ids, &types, &versions, &agg_ids, &agg_types, &seqs, &causes, &corrs}) *s += '}';
    mds += ']', pls += ']';
    w.write = {std::to_string(per_txn), format_rfc3339(base + std::chrono::milliseconds(t)), ids, types, versions,
               agg_ids, agg_types, seqs, causes, corrs, mds, pls, id_prefix, writer, std::to_string(t + 1)};
    work.push_back(std::move(w));
  }
  PGconn* c = db.handle();
  if (PQenterPipelineMode(c) != 1) throw failure("pipeline mode: " + std::string(PQerrorMessage(c)));
  auto send = [&](const char* name, const std::vector<std::string>& params) {
    std::vector<const char*> v;
    for (const auto& p : params) v.push_back(p.c_str());
    if (PQsendQueryPrepared(c, name, static_cast<int>(v.size()), v.data(), nullptr, nullptr, 0) != 1)
      throw failure("pipeline send: " + std::string(PQerrorMessage(c)));
  };
  // Sends the sync and reads `queries` results; returns the first value of the write's row.
  auto sync = [&](int queries, int write_at) {
    std::int64_t value = -1;
    if (PQpipelineSync(c) != 1) throw failure("pipeline sync: " + std::string(PQerrorMessage(c)));
    for (int q = 0; q < queries; ++q) {
      pg_result r(PQgetResult(c), &PQclear);
      const auto st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        throw failure("pipeline: " + std::string(r ? PQresultErrorMessage(r.get()) : PQerrorMessage(c)));
      if (q == write_at && st == PGRES_TUPLES_OK && PQntuples(r.get()) > 0) value = std::stoll(PQgetvalue(r.get(), 0, 0));
      if (PGresult* end = PQgetResult(c)) {
        PQclear(end);
        throw failure("pipeline: more results than expected");
      }
    }
    pg_result s(PQgetResult(c), &PQclear);
    if (!s || PQresultStatus(s.get()) != PGRES_PIPELINE_SYNC) throw failure("pipeline: no sync");
    return value;
  };
  const std::vector<std::string> steps =
      known ? std::vector<std::string>{"one round: lock expecting versions, write (implicit transaction)"}
            : std::vector<std::string>{"round 1: BEGIN, reserve, lock", "round 2: write, COMMIT"};
  std::vector<double> step_total(steps.size(), 0.0);
  row r{raw_layer, key, label};
  std::vector<double> lat;
  checkpoint(admin);
  const auto before = sample(admin);
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  std::int64_t expected_base = 0;
  for (const auto& w : work) {
    const auto start = steady::now();
    auto mid = start;
    std::int64_t got_base = -1;
    if (known) {
      send("lock_expecting", w.lock);
      send("write", w.write);
      got_base = sync(2, 1);
    } else {
      send("begin", {});
      send("reserve", {aggs_param, types_param});
      send("lock", {aggs_param});
      sync(3, -1);
      mid = steady::now();
      send("write", w.write);
      send("commit", {});
      got_base = sync(2, 0);
    }
    const auto end = steady::now();
    if (got_base != expected_base) throw failure(key + ": unexpected log_head position");
    if (known) {
      step_total[0] += ms_between(start, end);
    } else {
      step_total[0] += ms_between(start, mid);
      step_total[1] += ms_between(mid, end);
    }
    lat.push_back(ms_between(start, end));
    expected_base += per_txn;
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  PQexitPipelineMode(c);
  record(r, admin, before);
  if (std::stoll(db.value("SELECT count(*) FROM events")) != expected_base ||
      std::stoll(db.value("SELECT count(*) FROM event_ids")) != 0 ||
      std::stoll(db.value("SELECT position FROM log_head")) != expected_base)
    throw failure(key + ": rows missing");
  r.events = static_cast<std::int64_t>(txns) * per_txn;
  r.requests = txns;
  set_percentiles(r, std::move(lat));
  for (std::size_t i = 0; i < steps.size(); ++i) r.steps_ms.emplace_back(steps[i], step_total[i] / txns);
  return r;
}

}  // namespace

void run_pg(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  pg_conn admin(cfg.pg_url);
  const auto batch = cfg.batch_size;
  const auto b = std::to_string(batch);
  const auto t0 = steady::now();
  // --pg-scenarios: a comma-separated list of the groups below; empty runs them all.
  auto wanted = [&](std::string_view group) {
    if (cfg.pg_scenarios.empty()) return true;
    std::string_view list = cfg.pg_scenarios;
    while (!list.empty()) {
      const auto comma = list.find(',');
      if (list.substr(0, comma) == group) return true;
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
    return false;
  };

  // 3. The physical limit: raw libpq on migration_1's events table.
  if (wanted("raw")) {
    report(out, round_trip(cfg, admin));
    report(out, raw_writes(cfg, admin, shape, raw_method::copy, "copy_batch",
                           "COPY of " + b + "-row batches, 1 connection (1 statement = 1 txn)", cfg.batch_appends, batch));
    report(out, raw_writes(cfg, admin, shape, raw_method::insert, "insert_batch",
                           "multi-row INSERT of " + b + " rows, 1 connection (prepared, 1 statement = 1 txn)",
                           cfg.batch_appends, batch));
    report(out, raw_writes(cfg, admin, shape, raw_method::insert_with_ids, "insert_batch_ids",
                           "same INSERT plus the rows into event_ids (store schema), 1 statement = 1 txn",
                           cfg.batch_appends, batch));
  }
  if (wanted("raw_single")) {
    report(out, raw_single_rows(cfg, admin, shape, 1, cfg.single_appends, "insert_1",
                                "1-row INSERT transactions, 1 connection"));
    report(out, raw_single_rows(cfg, admin, shape, cfg.pg_raw_connections, cfg.concurrent_appends,
                                "insert_1_concurrent",
                                "1-row INSERT transactions, " + std::to_string(cfg.pg_raw_connections) +
                                    " connections (1 aggregate each)"));
  }

  // 1. The C++ API.
  if (wanted("api"))
    report(out, api_sequential(cfg, admin, shape, "write_batch", "a. 1 thread x " + b + " events per append",
                               cfg.batch_appends, batch));
  if (wanted("api_concurrent")) report(out, api_concurrent(cfg, admin, shape));
  if (wanted("api_single"))
    report(out, api_sequential(cfg, admin, shape, "write_1", "c. 1 thread x 1 event per append", cfg.single_appends, 1));
  if (wanted("read")) api_reads(cfg, admin, shape, out);

  // 2. HTTP.
  if (wanted("http")) {
    report(out, http_scenario(cfg, admin, [&](const std::string& url, const std::function<void(bool)>& probe) {
             return http_sequential_writes(cfg, shape, http_layer, url, "write_batch",
                                           "a. 1 client x " + b + " events per append", cfg.batch_appends, batch, probe);
           }));
    report(out, http_scenario(cfg, admin, [&](const std::string& url, const std::function<void(bool)>& probe) {
             auto r = http_concurrent_writes(cfg, shape, http_layer, url, probe);
             r.scenario = "b. " + std::to_string(cfg.clients) + " clients x 1 event per append, 1 aggregate each";
             return r;
           }));
  }

  // 4. JSON index kinds (gin_path_ops, the default, is measured above).
  if (wanted("json"))
    for (const std::string kind : {"none", "gin"}) {
      report(out, raw_writes(cfg, admin, shape, raw_method::insert, "insert_batch_json_" + kind,
                             "multi-row INSERT of " + b + " rows, json_index " + kind, cfg.batch_appends, batch, kind));
      report(out, api_sequential(cfg, admin, shape, "write_batch_json_" + kind,
                                 "a. 1 thread x " + b + " events per append, json_index " + kind, cfg.batch_appends,
                                 batch, kind));
    }

  // Where the time of an append goes: the store's transaction without the process's work.
  if (wanted("replay")) {
    report(out, replay_store_txn(cfg, admin, shape, cfg.batch_appends, 1, batch, true, "replay_batch",
                                 "the store's transaction replayed, 1 append of " + b +
                                     " events, aggregate known (1 round trip)"));
    report(out, replay_store_txn(cfg, admin, shape, cfg.batch_appends, 1, batch, false, "replay_batch_2",
                                 "the store's transaction replayed, 1 append of " + b +
                                     " events, aggregate not known (2 round trips)"));
    report(out, replay_store_txn(cfg, admin, shape, cfg.concurrent_appends, cfg.clients, 1, true, "replay_group",
                                 "the store's transaction replayed, " + std::to_string(cfg.clients) +
                                     " appends of 1 event (1 aggregate each), known (1 round trip)"));
    report(out, replay_store_txn(cfg, admin, shape, cfg.single_appends, 1, 1, true, "replay_1",
                                 "the store's transaction replayed, 1 append of 1 event, aggregate known (1 round trip)"));
    report(out, replay_store_txn(cfg, admin, shape, cfg.single_appends, 1, 1, false, "replay_1_2",
                                 "the store's transaction replayed, 1 append of 1 event, aggregate not known "
                                 "(2 round trips)"));
  }
  progress("PG section: " + std::to_string(seconds_since(t0)) + " s");
}

// --- results ---------------------------------------------------------------------------------

namespace {

std::string fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string grouped(double v) {
  auto n = static_cast<long long>(std::llround(v));
  std::string s = std::to_string(n < 0 ? -n : n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return n < 0 ? "-" + s : s;
}

std::string latency(double ms) { return ms >= 100 ? fmt(ms, 0) : ms >= 10 ? fmt(ms, 1) : fmt(ms, 2); }

const row* find(const std::vector<row>& rows, const std::string& layer, const std::string& key) {
  for (const auto& r : rows)
    if (r.layer == layer && r.key == key) return &r;
  return nullptr;
}

std::string server_description(const config& cfg) {
  try {
    pg_conn db(cfg.pg_url);
    std::string out = db.value("SELECT split_part(version(), ' on ', 1)");
    auto r = db.exec(
        "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name IN ('shared_buffers', "
        "'synchronous_commit', 'fsync', 'wal_sync_method', 'full_page_writes', 'max_wal_size', 'wal_compression', "
        "'checkpoint_timeout', 'commit_delay', 'wal_buffers', 'shared_preload_libraries') ORDER BY name");
    for (int i = 0; i < PQntuples(r.get()); ++i)
      out += std::string(", ") + PQgetvalue(r.get(), i, 0) + "=" + PQgetvalue(r.get(), i, 1);
    return out;
  } catch (const std::exception& e) {
    return std::string("(unavailable: ") + e.what() + ")";
  }
}

}  // namespace

std::string pg_results_markdown(const config& cfg, const std::vector<row>& rows) {
  std::vector<const row*> pg;
  for (const auto& r : rows)
    if (r.layer == raw_layer || r.layer == api_layer || r.layer == http_layer) pg.push_back(&r);
  if (pg.empty()) return "";
  std::ostringstream md;
  md << "\n### PostgreSQL\n\n";
  md << "- server: " << server_description(cfg) << "\n";
  md << "- every scenario in a fresh schema, after a CHECKPOINT; store_options defaults unless noted "
        "(partition_strategy monthly, json_index gin_path_ops)\n";
  md << "- write txns = transaction ids assigned during the scenario; WAL B/event = WAL bytes / events; "
        "PG CPU = user+system seconds of the server's processes (postmaster and children, when local)\n\n";
  md << "| Layer | Scenario | Events | Requests | Wall s | Events/s | Range of " << cfg.repeat
     << (cfg.repeat == 1 ? " run" : " runs")
     << " | p50 ms | p99 ms | Write txns | WAL B/event | PG CPU s | Server CPU s | Bench CPU s |\n";
  md << "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
  for (const auto* r : pg) {
    std::string range = "-";
    if (r->runs_eps.size() > 1) range = grouped(r->runs_eps.front()) + " - " + grouped(r->runs_eps.back());
    md << "| " << r->layer << " | " << r->scenario << " | " << grouped(static_cast<double>(r->events)) << " | "
       << grouped(static_cast<double>(r->requests)) << " | " << fmt(r->seconds, 3) << " | "
       << grouped(r->events_per_second()) << " | " << range << " | " << latency(r->p50_ms) << " | "
       << latency(r->p99_ms) << " | " << (r->pg_xids ? grouped(static_cast<double>(*r->pg_xids)) : "-") << " | "
       << (r->pg_wal_bytes && r->events > 0 ? grouped(*r->pg_wal_bytes / static_cast<double>(r->events)) : "-") << " | "
       << (r->pg_cpu ? fmt(*r->pg_cpu, 2) : "-") << " | " << (r->server_cpu ? fmt(*r->server_cpu, 2) : "-") << " | "
       << fmt(r->bench_cpu, 2) << " |\n";
  }

  auto eps = [&](const std::string& layer, const std::string& key) -> std::optional<double> {
    const row* r = find(rows, layer, key);
    if (!r) return std::nullopt;
    return r->events_per_second();
  };
  auto rate = [](std::optional<double> v) { return v ? grouped(*v) : std::string("-"); };
  auto ratio = [](std::optional<double> a, std::optional<double> b) {
    return a && b && *b > 0 ? fmt(*a / *b, 2) : std::string("-");
  };

  // Ours beside the physical limit.
  struct cmp {
    std::string label, key, raw_key, raw_label;
  };
  const std::vector<cmp> comparisons = {
      {"a. 100 events per append, 1 writer", "write_batch", "insert_batch", "multi-row INSERT, 100 rows/txn"},
      {"a. 100 events per append, 1 writer", "write_batch", "copy_batch", "COPY, 100 rows/txn"},
      {"a. 100 events per append, 1 writer", "write_batch", "insert_batch_ids",
       "multi-row INSERT, 100 rows/txn, plus event_ids rows"},
      {"b. 1 event per append, " + std::to_string(cfg.clients) + " writers", "write_concurrent", "insert_1_concurrent",
       "1-row INSERT txns, " + std::to_string(cfg.pg_raw_connections) + " connections"},
      {"b. 1 event per append, " + std::to_string(cfg.clients) + " writers", "write_concurrent", "insert_1",
       "1-row INSERT txns, 1 connection"},
      {"c. 1 event per append, 1 writer", "write_1", "insert_1", "1-row INSERT txns, 1 connection"},
      {"d. read the global log (pages of 10000)", "read_log", "read_log", "the store's SELECT, text, no JSON parsing"},
  };
  md << "\nOurs beside raw PostgreSQL on the same schema and indexes:\n\n";
  md << "| Scenario | HTTP events/s | C++ API events/s | Raw PostgreSQL | raw events/s | API / raw | HTTP / raw |\n";
  md << "|---|--:|--:|---|--:|--:|--:|\n";
  for (const auto& c : comparisons) {
    const auto h = eps(http_layer, c.key), a = eps(api_layer, c.key), w = eps(raw_layer, c.raw_key);
    if (!h && !a) continue;
    md << "| " << c.label << " | " << rate(h) << " | " << rate(a) << " | " << c.raw_label << " | " << rate(w) << " | "
       << ratio(a, w) << " | " << ratio(h, w) << " |\n";
  }

  // Targets of the issue.
  md << "\n| Target | Layer | Required | Measured | Result |\n|---|---|---|---|---|\n";
  auto pass = [](bool ok) { return ok ? std::string("pass") : std::string("**FAIL**"); };
  const auto raw_insert = eps(raw_layer, "insert_batch");
  for (const auto& layer : {api_layer, http_layer}) {
    const auto v = eps(layer, "write_batch");
    if (!v || !raw_insert) continue;
    md << "| 100-event batches >= 80% of raw multi-row INSERT (1 connection, same schema and indexes) | " << layer
       << " | >= " << grouped(0.8 * *raw_insert) << " events/s (0.8 x " << grouped(*raw_insert) << ") | "
       << grouped(*v) << " (" << fmt(*v / *raw_insert, 2) << " x raw) | " << pass(*v >= 0.8 * *raw_insert) << " |\n";
  }
  const auto raw_conc = eps(raw_layer, "insert_1_concurrent");
  for (const auto& layer : {api_layer, http_layer}) {
    const auto v = eps(layer, "write_concurrent");
    if (!v) continue;
    md << "| " << cfg.clients << " concurrent single-event clients >= 10,000 events/s | " << layer
       << " | >= 10,000 events/s | " << grouped(*v) << " | " << pass(*v >= 10000) << " |\n";
    if (raw_conc)
      md << "| " << cfg.clients << " concurrent single-event clients beat raw 1-row INSERTs from "
         << cfg.pg_raw_connections << " connections | " << layer << " | > " << grouped(*raw_conc) << " events/s | "
         << grouped(*v) << " (" << fmt(*v / *raw_conc, 2) << " x raw) | " << pass(*v > *raw_conc) << " |\n";
  }
  if (const auto v = eps(api_layer, "read_log"))
    md << "| reading the global log >= 200,000 events/s | " << api_layer << " (read_all, pages of 10000) | >= 200,000 "
       << "events/s | " << grouped(*v) << " | " << pass(*v >= 200000) << " |\n";

  // JSON index kinds.
  struct kind {
    std::string name, raw_key, api_key;
  };
  const std::vector<kind> kinds = {{"none", "insert_batch_json_none", "write_batch_json_none"},
                                   {"gin_path_ops (default)", "insert_batch", "write_batch"},
                                   {"gin", "insert_batch_json_gin", "write_batch_json_gin"}};
  if (eps(raw_layer, kinds[0].raw_key) || eps(api_layer, kinds[0].api_key)) {
    const auto raw_none = eps(raw_layer, kinds[0].raw_key), api_none = eps(api_layer, kinds[0].api_key);
    md << "\nCost of the JSON index kind (store_options.json_index; 100-event batches, 1 writer):\n\n";
    md << "| json_index | raw multi-row INSERT events/s | vs none | C++ API events/s | vs none | API / raw | "
          "raw WAL B/event | API WAL B/event |\n";
    md << "|---|--:|--:|--:|--:|--:|--:|--:|\n";
    for (const auto& k : kinds) {
      const auto w = eps(raw_layer, k.raw_key), a = eps(api_layer, k.api_key);
      auto wal = [&](const std::string& layer, const std::string& key) {
        const row* r = find(rows, layer, key);
        return r && r->pg_wal_bytes && r->events ? grouped(*r->pg_wal_bytes / static_cast<double>(r->events))
                                                 : std::string("-");
      };
      md << "| " << k.name << " | " << rate(w) << " | " << ratio(w, raw_none) << " | " << rate(a) << " | "
         << ratio(a, api_none) << " | " << ratio(a, w) << " | " << wal(raw_layer, k.raw_key) << " | "
         << wal(api_layer, k.api_key) << " |\n";
    }
  }

  // The store's transaction replayed: PostgreSQL and the wire, without the process's work.
  struct replay_col {
    std::string label, key, api_key;
  };
  const std::vector<replay_col> cols = {
      {"1 x " + std::to_string(cfg.batch_size) + " events, known", "replay_batch", "write_batch"},
      {"1 x " + std::to_string(cfg.batch_size) + " events, not known", "replay_batch_2", ""},
      {std::to_string(cfg.clients) + " x 1 event, known", "replay_group", "write_concurrent"},
      {"1 x 1 event, known", "replay_1", "write_1"},
      {"1 x 1 event, not known", "replay_1_2", ""}};
  bool any_replay = false;
  for (const auto& c : cols) any_replay = any_replay || find(rows, raw_layer, c.key);
  if (any_replay) {
    md << "\nThe store's append transaction replayed with libpq (same SQL, prepared, pipeline mode, parameters built "
          "before the clock), mean ms per transaction; \"known\" = the writer knows the aggregates' versions:\n\n";
    md << "| Round trip";
    for (const auto& c : cols) md << " | " << c.label;
    md << " |\n|---";
    for (std::size_t i = 0; i < cols.size(); ++i) md << "|--:";
    md << "|\n";
    for (const std::string step : {"one round: lock expecting versions, write (implicit transaction)",
                                   "round 1: BEGIN, reserve, lock", "round 2: write, COMMIT"}) {
      md << "| " << step;
      for (const auto& c : cols) {
        const row* r = find(rows, raw_layer, c.key);
        std::string v = "-";
        if (r)
          for (const auto& s : r->steps_ms)
            if (s.first == step) v = fmt(s.second, 3);
        md << " | " << v;
      }
      md << " |\n";
    }
    md << "| p50 per transaction";
    for (const auto& c : cols) {
      const row* r = find(rows, raw_layer, c.key);
      md << " | " << (r ? fmt(r->p50_ms, 3) : std::string("-"));
    }
    md << " |\n| C++ API append p50 (plus queueing, planning, serialization, handoffs)";
    for (const auto& c : cols) {
      const row* r = c.api_key.empty() ? nullptr : find(rows, api_layer, c.api_key);
      md << " | " << (r ? fmt(r->p50_ms, 3) : std::string("-"));
    }
    md << " |\n";
  }
  if (cfg.scale < 1.0) md << "\n(scale " << cfg.scale << ": a smoke run; the targets are judged on a full run.)\n";
  return md.str();
}

}  // namespace pliers::bench
