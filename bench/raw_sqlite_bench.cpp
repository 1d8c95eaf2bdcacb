// Raw SQLite layer: the same rows, the same schema and indexes, the same pragmas as
// src/store/sqlite/sqlite_store.cpp, written with the sqlite3 C API and nothing else: the
// floor under the engine's cost. Per transaction: BEGIN IMMEDIATE, one INSERT per event,
// the aggregates upsert (as the store does), COMMIT.
#include <sqlite3.h>

#include <chrono>

#include "store/sqlite/sqlite_db.hpp"
#include "store/sqlite/sqlite_store.hpp"
#include "bench.hpp"
#include "core/uuid.hpp"

namespace pliers::bench {

namespace fs = std::filesystem;

namespace {

// The store's own DDL (schema version 1: events, aggregates, snapshots), so the raw figure
// is for the same tables and indexes.
const char* const schema = sqlite_store::schema_sql();

constexpr const char* insert_sql =
    "INSERT INTO events (position, id, type, version, timestamp, aggregate_id, aggregate_type, "
    "sequence_number, causation_id, correlation_id, metadata, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
constexpr const char* upsert_sql =
    "INSERT INTO aggregates (aggregate_id, aggregate_type, version, event_count, first_timestamp, last_timestamp) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, "
    "event_count = event_count + excluded.event_count, last_timestamp = excluded.last_timestamp";

class db {
 public:
  explicit db(const fs::path& path) {
    sqlite::configure_library();  // the store's process-wide settings
    const int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) fail("open");
    sqlite3_busy_timeout(db_, 10000);
    for (const char* p : {"PRAGMA journal_mode=WAL", "PRAGMA foreign_keys=OFF", "PRAGMA cache_size=-16384",
                          "PRAGMA temp_store=MEMORY", "PRAGMA synchronous=FULL"})
      exec(p);
  }
  ~db() {
    for (auto* s : stmts_) sqlite3_finalize(s);
    sqlite3_close_v2(db_);
  }
  db(const db&) = delete;
  db& operator=(const db&) = delete;

  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(sql);
  }
  sqlite3_stmt* prepare(const char* sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) fail("prepare");
    stmts_.push_back(s);
    return s;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw failure("raw sqlite " + what + ": " + (db_ ? sqlite3_errmsg(db_) : "cannot open"));
  }
  sqlite3* handle() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
  std::vector<sqlite3_stmt*> stmts_;
};

// Writes transactions of `per_txn` rows to one aggregate; positions and sequence numbers
// continue from the previous call.
class writer {
 public:
  writer(db& d, const event_shape& shape, std::string aggregate_id)
      : db_(d), shape_(shape), aggregate_id_(std::move(aggregate_id)), ins_(d.prepare(insert_sql)),
        up_(d.prepare(upsert_sql)) {}

  void transaction(int per_txn) {
    db_.exec("BEGIN IMMEDIATE");
    const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    for (int i = 0; i < per_txn; ++i) {
      ++position_;
      ++sequence_;
      const std::string id = new_uuid_v4();
      sqlite3_bind_int64(ins_, 1, position_);
      sqlite3_bind_text(ins_, 2, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
      sqlite3_bind_text(ins_, 3, shape_.type.data(), static_cast<int>(shape_.type.size()), SQLITE_STATIC);
      sqlite3_bind_int64(ins_, 4, 1);
      sqlite3_bind_int64(ins_, 5, now);
      sqlite3_bind_text(ins_, 6, aggregate_id_.data(), static_cast<int>(aggregate_id_.size()), SQLITE_STATIC);
      sqlite3_bind_text(ins_, 7, shape_.aggregate_type.data(), static_cast<int>(shape_.aggregate_type.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(ins_, 8, sequence_);
      sqlite3_bind_null(ins_, 9);
      sqlite3_bind_null(ins_, 10);
      sqlite3_bind_text(ins_, 11, shape_.metadata_text.data(), static_cast<int>(shape_.metadata_text.size()),
                        SQLITE_STATIC);
      sqlite3_bind_text(ins_, 12, shape_.payload_text.data(), static_cast<int>(shape_.payload_text.size()),
                        SQLITE_STATIC);
      if (sqlite3_step(ins_) != SQLITE_DONE) db_.fail("insert");
      sqlite3_reset(ins_);
    }
    sqlite3_bind_text(up_, 1, aggregate_id_.data(), static_cast<int>(aggregate_id_.size()), SQLITE_STATIC);
    sqlite3_bind_text(up_, 2, shape_.aggregate_type.data(), static_cast<int>(shape_.aggregate_type.size()),
                      SQLITE_STATIC);
    sqlite3_bind_int64(up_, 3, sequence_);
    sqlite3_bind_int64(up_, 4, per_txn);
    sqlite3_bind_int64(up_, 5, now);
    if (sqlite3_step(up_) != SQLITE_DONE) db_.fail("upsert aggregate");
    sqlite3_reset(up_);
    db_.exec("COMMIT");
  }

 private:
  db& db_;
  const event_shape& shape_;
  std::string aggregate_id_;
  sqlite3_stmt* ins_;
  sqlite3_stmt* up_;
  std::int64_t position_ = 0, sequence_ = 0;
};

std::unique_ptr<db> create(const fs::path& dir) {
  auto d = std::make_unique<db>(dir / "raw.db");
  d->exec(schema);
  return d;
}

row writes(const config& cfg, db& d, const event_shape& shape, const char* key, const std::string& label, int txns,
           int per_txn) {
  writer w(d, shape, "bench-order-1");
  row r{"raw SQLite", key, label};
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(txns));
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  for (int i = 0; i < txns; ++i) {
    const auto t = steady::now();
    w.transaction(per_txn);
    lat.push_back(ms_between(t, steady::now()));
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  r.events = static_cast<std::int64_t>(txns) * per_txn;
  r.requests = txns;
  set_percentiles(r, std::move(lat));
  (void)cfg;
  return r;
}

// One SELECT over every row, reading the text columns (as the engine must to build events).
row select_all(db& d, const char* key, const std::string& label, const char* sql, std::int64_t expected) {
  row r{"raw SQLite", key, label};
  auto* st = d.prepare(sql);
  std::int64_t n = 0, bytes = 0;
  const auto cpu0 = process_cpu_seconds();
  const auto t0 = steady::now();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    for (int c = 0; c < 6; ++c) {
      const auto* text = sqlite3_column_text(st, c);
      bytes += sqlite3_column_bytes(st, c) + (text ? 1 : 0);
    }
    ++n;
  }
  r.seconds = seconds_since(t0);
  r.bench_cpu = process_cpu_seconds() - cpu0;
  if (rc != SQLITE_DONE) d.fail("select");
  if (n != expected) throw failure(std::string("raw select returned ") + std::to_string(n) + " rows, expected " +
                                   std::to_string(expected));
  if (bytes == 0) throw failure("raw select read nothing");
  r.events = n;
  r.requests = 1;
  r.p50_ms = r.p99_ms = r.seconds * 1000;
  return r;
}

}  // namespace

void run_raw_sqlite(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  auto report = [&](row r) {
    progress(r.layer + " " + r.key + ": " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
    out.push_back(std::move(r));
  };
  {
    auto dir = scenario_dir(cfg, "raw-write_1");
    {
      auto d = create(dir);
      report(writes(cfg, *d, shape, "write_1", "a. 1 thread x 1-row transactions", cfg.single_appends, 1));
    }
    remove_scenario_dir(cfg, dir);
  }
  {
    auto dir = scenario_dir(cfg, "raw-write_batch");
    {
      auto d = create(dir);
      report(writes(cfg, *d, shape, "write_batch",
                    "b. 1 thread x " + std::to_string(cfg.batch_size) + "-row transactions", cfg.batch_appends,
                    cfg.batch_size));
    }
    remove_scenario_dir(cfg, dir);
  }
  {
    auto dir = scenario_dir(cfg, "raw-read");
    {
      const int txns = (cfg.read_events + cfg.batch_size - 1) / cfg.batch_size;
      const std::int64_t total = static_cast<std::int64_t>(txns) * cfg.batch_size;
      {
        auto d = create(dir);
        auto r = writes(cfg, *d, shape, "load", "load: 1 thread x " + std::to_string(cfg.batch_size) +
                                                    "-row transactions (read setup)",
                        txns, cfg.batch_size);
        r.key = "load";
        report(std::move(r));
      }
      // A new connection for the reads, like the store's reader pool.
      db reader(dir / "raw.db");
      report(select_all(reader, "read_aggregate", "d. SELECT text columns of one aggregate (by aggregate_id, sequence)",
                        "SELECT id, type, aggregate_id, aggregate_type, metadata, payload FROM events "
                        "WHERE aggregate_id = 'bench-order-1' ORDER BY sequence_number",
                        total));
      report(select_all(reader, "read_log", "d. SELECT text columns of all rows (by position)",
                        "SELECT id, type, aggregate_id, aggregate_type, metadata, payload FROM events ORDER BY position",
                        total));
    }
    remove_scenario_dir(cfg, dir);
  }
}

}  // namespace pliers::bench
