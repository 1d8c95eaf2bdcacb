// File format (schema version 4), owned by this file and described in docs/storage.md:
//
//   events(position INTEGER PRIMARY KEY      -- global log position = rowid, 1, 2, 3 ...
//          id TEXT UNIQUE, type, version, timestamp INTEGER (microseconds since epoch, UTC),
//          aggregate_id, aggregate_type, sequence_number, causation_id, correlation_id,
//          metadata TEXT (JSON object), payload TEXT (JSON object),
//          UNIQUE(aggregate_id, sequence_number))
//   aggregates(aggregate_id PRIMARY KEY, aggregate_type, version, event_count,
//              first_timestamp, last_timestamp)            -- one row per aggregate
//   snapshots(aggregate_id, sequence_number, aggregate_type, data TEXT, created_at,
//             PRIMARY KEY(aggregate_id, sequence_number))
//   schema_migrations(version PRIMARY KEY, applied_at)
//   scheduled_events (2), consumer_group_members / consumer_group_partitions (3)
//   dead_letters(seq INTEGER PRIMARY KEY AUTOINCREMENT, id UNIQUE, consumer, event_id,
//                event_type, status, failed_at, next_retry_at, lease_until (micros),
//                body TEXT (the entry as store/dead_letter_codec.hpp writes it),
//                UNIQUE(consumer, event_id))                    -- (4)
//   event_archive(seq AUTOINCREMENT, the events columns, compaction_id, archived_at,
//                 UNIQUE(position, compaction_id))             -- (5) events moved out by
//   compacted_ranges(aggregate_id, compaction_id, from_seq, to_seq)  compaction
//
// Compaction removes events from `events` (their positions become holes in the log, never
// reused: the head is the highest position of events and event_archive) and rewrites
// merged ones in place; every original goes to event_archive first.
//
// Positions are gap-free and commit-ordered because exactly one writer (the group-commit
// thread) assigns them inside its transaction, and a failed transaction restores the head.
#include "store/sqlite/sqlite_store.hpp"

#include <boost/json.hpp>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/clock.hpp"
#include "core/event_codec.hpp"
#include "store/append_planner.hpp"
#include "store/compaction_support.hpp"
#include "store/dead_letter_codec.hpp"
#include "store/group_commit.hpp"
#include "store/scheduled_codec.hpp"
#include "store/sqlite/sqlite_db.hpp"

namespace pliers {

namespace json = boost::json;
using sqlite::connection;
using sqlite::statement;

namespace {

// BEGIN IMMEDIATE on a pooled connection; rolled back unless committed.
class write_transaction {
 public:
  explicit write_transaction(connection& c) : c_(c) {}
  ~write_transaction() {
    if (open_) (void)c_.run("ROLLBACK");
  }
  write_transaction(const write_transaction&) = delete;
  write_transaction& operator=(const write_transaction&) = delete;
  result<void> begin() {
    auto r = c_.run("BEGIN IMMEDIATE");
    open_ = r.has_value();
    return r;
  }
  result<void> commit() {
    auto r = c_.run("COMMIT");
    if (r) open_ = false;
    return r;
  }

 private:
  connection& c_;
  bool open_ = false;
};

// BEGIN on a pooled connection, so that several reads see one snapshot; ended on scope exit.
class read_transaction {
 public:
  explicit read_transaction(connection& c) : c_(c) {}
  ~read_transaction() {
    if (open_) (void)c_.run("COMMIT");
  }
  read_transaction(const read_transaction&) = delete;
  read_transaction& operator=(const read_transaction&) = delete;
  result<void> begin() {
    auto r = c_.run("BEGIN");
    open_ = r.has_value();
    return r;
  }

 private:
  connection& c_;
  bool open_ = false;
};

constexpr const char* pointer_type = "pliers_event_query";

const char* const migrations[] = {
    R"sql(
CREATE TABLE events (
  position INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  version INTEGER NOT NULL DEFAULT 1,
  timestamp INTEGER NOT NULL,
  aggregate_id TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  sequence_number INTEGER NOT NULL,
  causation_id TEXT,
  correlation_id TEXT,
  metadata TEXT NOT NULL,
  payload TEXT NOT NULL,
  UNIQUE (aggregate_id, sequence_number)
);
CREATE INDEX idx_events_type ON events (type);
CREATE INDEX idx_events_timestamp ON events (timestamp);
CREATE INDEX idx_events_correlation ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE aggregates (
  aggregate_id TEXT PRIMARY KEY,
  aggregate_type TEXT NOT NULL,
  version INTEGER NOT NULL,
  event_count INTEGER NOT NULL,
  first_timestamp INTEGER NOT NULL,
  last_timestamp INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshots (
  aggregate_id TEXT NOT NULL,
  sequence_number INTEGER NOT NULL,
  aggregate_type TEXT NOT NULL,
  data TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (aggregate_id, sequence_number)
) WITHOUT ROWID;
)sql",
    R"sql(
CREATE TABLE scheduled_events (
  id TEXT PRIMARY KEY,
  publish_at INTEGER NOT NULL,
  request TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  claimed_until INTEGER,
  position INTEGER,
  last_error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX idx_scheduled_due ON scheduled_events (status, publish_at);
)sql",
    R"sql(
CREATE TABLE consumer_group_members (
  group_name TEXT NOT NULL,
  member TEXT NOT NULL,
  heartbeat INTEGER NOT NULL,
  PRIMARY KEY (group_name, member)
) WITHOUT ROWID;
CREATE TABLE consumer_group_partitions (
  group_name TEXT NOT NULL,
  partition INTEGER NOT NULL,
  owner TEXT,
  lease_until INTEGER NOT NULL DEFAULT 0,
  checkpoint INTEGER NOT NULL,
  PRIMARY KEY (group_name, partition)
) WITHOUT ROWID;
)sql",
    R"sql(
CREATE TABLE dead_letters (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  consumer TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  status TEXT NOT NULL,
  failed_at INTEGER NOT NULL,
  next_retry_at INTEGER,
  lease_until INTEGER NOT NULL,
  body TEXT NOT NULL,
  UNIQUE (consumer, event_id)
);
CREATE INDEX idx_dead_letters_due ON dead_letters (status, next_retry_at);
)sql",
    R"sql(
CREATE TABLE event_archive (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  position INTEGER NOT NULL,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  version INTEGER NOT NULL,
  timestamp INTEGER NOT NULL,
  aggregate_id TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  sequence_number INTEGER NOT NULL,
  causation_id TEXT,
  correlation_id TEXT,
  metadata TEXT NOT NULL,
  payload TEXT NOT NULL,
  compaction_id TEXT NOT NULL,
  archived_at INTEGER NOT NULL,
  UNIQUE (position, compaction_id)
);
CREATE INDEX idx_event_archive_aggregate ON event_archive (aggregate_id, position);
CREATE INDEX idx_event_archive_id ON event_archive (id);
CREATE TABLE compacted_ranges (
  aggregate_id TEXT NOT NULL,
  compaction_id TEXT NOT NULL,
  from_seq INTEGER NOT NULL,
  to_seq INTEGER NOT NULL,
  PRIMARY KEY (aggregate_id, from_seq, compaction_id)
) WITHOUT ROWID;
)sql",
};

constexpr const char* scheduled_columns = "id, publish_at, request, status, created_at, position, last_error, attempts";

constexpr const char* event_columns =
    "position, id, type, version, timestamp, aggregate_id, aggregate_type, sequence_number, causation_id, "
    "correlation_id, metadata, payload";

result<event> row_to_event(const statement& st) {
  event e;
  e.position = log_position(st.int64(0));
  e.id = st.text(1);
  e.type = st.text(2);
  e.version = static_cast<std::int32_t>(st.int64(3));
  e.time = from_micros(st.int64(4));
  e.aggregate_id = st.text(5);
  e.aggregate_type = st.text(6);
  e.sequence = sequence_number(st.int64(7));
  if (!st.is_null(8)) e.causation_id = std::string(st.text(8));
  if (!st.is_null(9)) e.correlation_id = std::string(st.text(9));
  auto md = parse_stored_object(st.text(10), "metadata");
  if (!md) return std::move(md).error();
  auto pl = parse_stored_object(st.text(11), "payload");
  if (!pl) return std::move(pl).error();
  e.metadata = std::move(*md);
  e.payload = std::move(*pl);
  return e;
}

// Whether a query with one int64 parameter (?1) returns a row.
result<bool> any_row(connection& db, const char* sql, std::int64_t param) {
  auto st = db.prepare(sql);
  if (!st) return std::move(st).error();
  st->bind(1, param);
  const int rc = st->step();
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return db.last_error("poll");
}

// A row of event_columns as a view for write_event_json: metadata and payload are the JSON
// text the store wrote (json::serialize), copied, not parsed.
event_json_view row_view(const statement& st) {
  event_json_view v;
  v.position = log_position(st.int64(0));
  v.id = st.text(1);
  v.type = st.text(2);
  v.version = static_cast<std::int32_t>(st.int64(3));
  v.time = from_micros(st.int64(4));
  v.aggregate_id = st.text(5);
  v.aggregate_type = st.text(6);
  v.sequence = sequence_number(st.int64(7));
  if (!st.is_null(8)) v.causation_id = st.text(8);
  if (!st.is_null(9)) v.correlation_id = st.text(9);
  v.metadata_json = st.text(10);
  v.payload_json = st.text(11);
  return v;
}

result<std::vector<scheduled_event>> collect_scheduled(connection& db, statement& st) {
  std::vector<scheduled_event> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) {
    scheduled_event e;
    e.id = st.text(0);
    e.publish_at = from_micros(st.int64(1));
    auto req = decode_scheduled_request(st.text(2));
    if (!req) return std::move(req).error();
    e.request = std::move(*req);
    e.status = st.text(3);
    e.created_at = from_micros(st.int64(4));
    if (!st.is_null(5)) e.position = log_position(st.int64(5));
    if (!st.is_null(6)) e.last_error = std::string(st.text(6));
    e.attempts = st.int64(7);
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return db.last_error("scheduled events");
  return out;
}

// Steps a statement selecting event_columns to the end.
result<std::vector<event>> collect_events(connection& db, statement& st, std::size_t expected, const char* what) {
  std::vector<event> out;
  out.reserve(std::min<std::size_t>(expected, 4096));
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) {
    auto e = row_to_event(st);
    if (!e) return std::move(e).error();
    out.push_back(std::move(*e));
  }
  if (rc != SQLITE_DONE) return db.last_error(what);
  return out;
}

// The same, rendered as JSON onto page. Room for `expected` events the size of the first
// is reserved once, so the text is not copied as it grows.
result<void> collect_events_json(connection& db, statement& st, std::size_t expected, const char* what,
                                 event_json_page& page) {
  int rc;
  for (bool first = true; (rc = st.step()) == SQLITE_ROW; first = false) {
    const auto before = page.json.size();
    add_to_page(page, row_view(st));
    if (first) page.json.reserve(before + (page.json.size() - before + 16) * std::min<std::size_t>(expected, 10000));
  }
  if (rc != SQLITE_DONE) return db.last_error(what);
  return {};
}

// SQL function pliers_match(column, query_pointer, which): evaluates the parts of an
// event_query that SQL cannot (type patterns, JSON queries) with the same code the memory
// store uses, so every backend agrees. which: 0 = type patterns, 1 = metadata, 2 = payload.
void pliers_match(sqlite3_context* ctx, int, sqlite3_value** argv) {
  const auto* q = static_cast<const event_query*>(sqlite3_value_pointer(argv[1], pointer_type));
  if (!q) {
    sqlite3_result_error(ctx, "pliers_match: missing query", -1);
    return;
  }
  const auto which = sqlite3_value_int(argv[2]);
  const auto* text = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
  const auto size = static_cast<std::size_t>(sqlite3_value_bytes(argv[0]));
  std::string_view col(text ? text : "", text ? size : 0);
  if (which == 0) {
    for (const auto& p : q->event_types)
      if (p.matches(col)) return sqlite3_result_int(ctx, 1);
    return sqlite3_result_int(ctx, 0);
  }
  boost::system::error_code ec;
  auto doc = json::parse(json::string_view(col.data(), col.size()), ec);
  if (ec) return sqlite3_result_int(ctx, 0);
  for (const auto& jq : which == 1 ? q->metadata_query : q->payload_query)
    if (!jq.matches(doc)) return sqlite3_result_int(ctx, 0);
  sqlite3_result_int(ctx, 1);
}

// WAL checkpoints off the commit path. SQLite's own automatic checkpoint runs inside the
// COMMIT that crosses its threshold: the WAL copied into the database file and two fsyncs,
// which the append that happened to cross it waits for (with 100-event appends, a sixth
// of the writer's time went there). Instead every connection's WAL hook wakes this
// thread, which checkpoints PASSIVE (never waiting for, nor blocking, the writer or a
// reader) from a connection of its own while appends go on. Should it fall behind, the
// connection that commits past `hard_pages` checkpoints itself, as SQLite would, so the
// WAL stays bounded. Lifecycle: start() after the connection is opened; the destructor
// finishes the checkpoint under way and joins.
class wal_checkpointer {
 public:
  static constexpr int wake_pages = 4096;   // 16 MiB of 4 KiB pages
  static constexpr int hard_pages = 65536;  // 256 MiB

  wal_checkpointer() = default;
  wal_checkpointer(const wal_checkpointer&) = delete;
  wal_checkpointer& operator=(const wal_checkpointer&) = delete;
  ~wal_checkpointer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  void start(std::unique_ptr<connection> db) {
    db_ = std::move(db);
    thread_ = std::thread([this] { run(); });
  }

  // Installed as every connection's WAL hook (replacing the automatic checkpoint).
  void watch(connection& c) { sqlite3_wal_hook(c.handle(), &wal_checkpointer::on_commit, this); }

 private:
  static int on_commit(void* self, sqlite3* db, const char* schema, int pages) {
    auto& me = *static_cast<wal_checkpointer*>(self);
    // Before start() (migrations on the opening thread) there is no thread to wake.
    if (pages >= (me.db_ ? hard_pages : wake_pages)) {
      sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    } else if (pages >= wake_pages) {
      {
        std::lock_guard lock(me.mutex_);
        me.wanted_ = true;
      }
      me.cv_.notify_one();
    }
    return SQLITE_OK;
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (true) {
      cv_.wait(lock, [&] { return wanted_ || stopping_; });
      if (stopping_) return;
      wanted_ = false;
      lock.unlock();
      // SQLITE_BUSY (another checkpoint under way) is not an error: the next wake retries.
      sqlite3_wal_checkpoint_v2(db_->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      lock.lock();
    }
  }

  std::unique_ptr<connection> db_;  // used only by the thread
  std::mutex mutex_;
  std::condition_variable cv_;
  bool wanted_ = false;    // GUARDED_BY(mutex_)
  bool stopping_ = false;  // GUARDED_BY(mutex_)
  std::thread thread_;
};

result<std::unique_ptr<connection>> open_connection(const std::string& path, bool writer, bool unsafe_no_fsync,
                                                    wal_checkpointer* checkpoints = nullptr) {
  auto c = connection::open(path, writer, false);
  if (!c) return std::move(c).error();
  auto& db = **c;
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA foreign_keys=OFF", "PRAGMA cache_size=-65536",
                             "PRAGMA temp_store=MEMORY"})
    if (auto r = db.exec(pragma); !r) return std::move(r).error();
  if (checkpoints) checkpoints->watch(db);
  if (auto r = db.exec(unsafe_no_fsync ? "PRAGMA synchronous=OFF" : "PRAGMA synchronous=FULL"); !r)
    return std::move(r).error();
  if (!writer) {
    if (sqlite3_create_function_v2(db.handle(), "pliers_match", 3, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                                   pliers_match, nullptr, nullptr, nullptr) != SQLITE_OK)
      return db.last_error("create_function");
  }
  return c;
}

// Appends the WHERE conditions of q (without the cursor) and records what to bind.
struct where_clause {
  std::string sql;
  std::vector<std::variant<std::int64_t, std::string>> binds;
  bool uses_pointer = false;
};

// Parameters are numbered explicitly: ?1 is the query pointer (when used), the values of
// the conditions follow from ?2; next_param() gives the number after them.
where_clause build_where(const event_query& q) {
  where_clause w;
  w.sql = " WHERE 1=1";
  auto param = [&] { return "?" + std::to_string(w.binds.size() + 2); };
  auto in_list = [&](const char* col, const std::vector<std::string>& vals) {
    w.sql += " AND ";
    w.sql += col;
    w.sql += " IN (";
    for (std::size_t i = 0; i < vals.size(); ++i) {
      if (i) w.sql += ",";
      w.sql += param();
      w.binds.emplace_back(vals[i]);
    }
    w.sql += ")";
  };
  if (!q.event_types.empty()) {
    bool all_literal = std::all_of(q.event_types.begin(), q.event_types.end(), [](auto& p) { return p.is_literal(); });
    if (all_literal) {
      std::vector<std::string> names;
      for (const auto& p : q.event_types) names.push_back(p.text());
      in_list("type", names);
    } else {
      w.sql += " AND pliers_match(type, ?1, 0)";
      w.uses_pointer = true;
    }
  }
  if (!q.aggregate_types.empty()) in_list("aggregate_type", q.aggregate_types);
  if (!q.aggregate_ids.empty()) in_list("aggregate_id", q.aggregate_ids);
  auto cmp = [&](const char* expr, std::int64_t v) {
    w.sql += expr;
    w.sql += param();
    w.binds.emplace_back(v);
  };
  if (q.from) cmp(" AND timestamp >= ", to_micros(*q.from));
  if (q.to) cmp(" AND timestamp <= ", to_micros(*q.to));
  if (q.sequence_from) cmp(" AND sequence_number >= ", *q.sequence_from);
  if (q.sequence_to) cmp(" AND sequence_number <= ", *q.sequence_to);
  if (!q.metadata_query.empty()) {
    w.sql += " AND pliers_match(metadata, ?1, 1)";
    w.uses_pointer = true;
  }
  if (!q.payload_query.empty()) {
    w.sql += " AND pliers_match(payload, ?1, 2)";
    w.uses_pointer = true;
  }
  return w;
}

void bind_where(statement& st, const where_clause& w, const event_query& q) {
  int i = 2;
  for (const auto& b : w.binds) {
    if (const auto* n = std::get_if<std::int64_t>(&b)) st.bind(i++, *n);
    else st.bind(i++, std::string_view(std::get<std::string>(b)));
  }
  if (w.uses_pointer) st.bind_pointer(1, &q, pointer_type);
}

// queryEvents' count and page in one read transaction (so both see one snapshot). `row`
// is called for each of at most page.limit rows of event_columns in position order and
// returns the row's position. Returns has_more.
template <class Row>
result<bool> query_rows(connection& db, const event_query& q, const pagination& page, std::int64_t& total_count,
                        Row&& row) {
  read_transaction txn(db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  const auto w = build_where(q);
  if (page.count_total) {
    auto st = db.prepare("SELECT COUNT(*) FROM events" + w.sql);
    if (!st) return std::move(st).error();
    bind_where(*st, w, q);
    if (st->step() != SQLITE_ROW) return db.last_error("count");
    total_count = st->int64(0);
  }
  const int n = static_cast<int>(w.binds.size()) + 2;
  auto st = db.prepare(std::string("SELECT ") + event_columns + " FROM events" + w.sql + " AND position > ?" +
                       std::to_string(n) + " ORDER BY position LIMIT ?" + std::to_string(n + 1));
  if (!st) return std::move(st).error();
  bind_where(*st, w, q);
  st->bind(n, page.after.value).bind(n + 1, static_cast<std::int64_t>(page.limit + 1));
  std::size_t rows = 0;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    if (rows == page.limit) return true;
    if (auto r = row(*st); !r) return std::move(r).error();
    ++rows;
  }
  if (rc != SQLITE_DONE) return db.last_error("query");
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct sqlite_store::impl final : private append_lookup {
  std::string path;
  const clock& clk;
  std::unique_ptr<connection> writer;  // used only by the group-commit thread
  log_position head{};                 // last committed position; written by the commit thread
  std::mutex head_mutex;               // guards `head` for readers of head()
  timestamp last_time{};

  // Reader pool: connections handed out one per call.
  std::mutex pool_mutex;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<connection>> idle;  // GUARDED_BY(pool_mutex)

  std::unique_ptr<group_commit> committer;
  std::function<void(std::vector<event>)> on_commit;  // the owner's notify_committed
  std::function<bool()> observed;                     // the owner's observed()
  // Declared last: destroyed (its thread joined) before the connections above close.
  wal_checkpointer checkpoints;

  impl(std::string p, const clock& c) : path(std::move(p)), clk(c) {}

  class reader_lease {
   public:
    reader_lease(impl& owner, std::unique_ptr<connection> c) : owner_(owner), c_(std::move(c)) {}
    ~reader_lease() {
      {
        std::lock_guard lock(owner_.pool_mutex);
        owner_.idle.push_back(std::move(c_));
      }
      owner_.pool_cv.notify_one();
    }
    connection& operator*() { return *c_; }
    connection* operator->() { return c_.get(); }

   private:
    impl& owner_;
    std::unique_ptr<connection> c_;
  };

  reader_lease reader() {
    std::unique_lock lock(pool_mutex);
    pool_cv.wait(lock, [&] { return !idle.empty(); });
    auto c = std::move(idle.back());
    idle.pop_back();
    return reader_lease(*this, std::move(c));
  }

  // --- append_lookup over the writer connection (sees this transaction's writes) ---
  std::optional<stored_event> find_event(std::string_view id) override {
    auto st = writer->prepare("SELECT aggregate_id, sequence_number, position, timestamp FROM events WHERE id = ?");
    if (!st) return std::nullopt;
    st->bind(1, id);
    if (st->step() == SQLITE_ROW)
      return stored_event{std::string(st->text(0)), sequence_number(st->int64(1)), log_position(st->int64(2)),
                          from_micros(st->int64(3))};
    // A compacted event keeps its id: a retry of its append is still recognised.
    auto ar = writer->prepare("SELECT aggregate_id, sequence_number, position, timestamp FROM event_archive WHERE id = ? LIMIT 1");
    if (!ar) return std::nullopt;
    ar->bind(1, id);
    if (ar->step() != SQLITE_ROW) return std::nullopt;
    return stored_event{std::string(ar->text(0)), sequence_number(ar->int64(1)), log_position(ar->int64(2)),
                        from_micros(ar->int64(3))};
  }
  std::optional<aggregate_state> find_aggregate(std::string_view aggregate_id) override {
    auto st = writer->prepare("SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = ?");
    if (!st) return std::nullopt;
    st->bind(1, aggregate_id);
    if (st->step() != SQLITE_ROW) return std::nullopt;
    return aggregate_state{std::string(st->text(0)), st->int64(1)};
  }

  result<void> write_plan(const append_plan& plan) {
    auto ins = writer->prepare(
        "INSERT INTO events (position, id, type, version, timestamp, aggregate_id, aggregate_type, "
        "sequence_number, causation_id, correlation_id, metadata, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!ins) return std::move(ins).error();
    std::string md, pl;
    for (const auto& e : plan.events) {
      md = json::serialize(e.metadata);
      pl = json::serialize(e.payload);
      // The event and md/pl outlive the step: bind without copies.
      ins->bind(1, e.position.value).bind_static(2, e.id).bind_static(3, e.type);
      ins->bind(4, std::int64_t{e.version}).bind(5, to_micros(e.time)).bind_static(6, e.aggregate_id);
      ins->bind_static(7, e.aggregate_type).bind(8, e.sequence.value).bind_static(9, e.causation_id);
      ins->bind_static(10, e.correlation_id).bind_static(11, md).bind_static(12, pl);
      if (ins->step() != SQLITE_DONE) return writer->last_error("insert event");
      ins->reset();
    }
    const auto& last = plan.events.back();
    auto up = writer->prepare(
        "INSERT INTO aggregates (aggregate_id, aggregate_type, version, event_count, first_timestamp, last_timestamp) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, "
        "event_count = event_count + excluded.event_count, last_timestamp = excluded.last_timestamp");
    if (!up) return std::move(up).error();
    up->bind(1, std::string_view(last.aggregate_id)).bind(2, std::string_view(plan.aggregate_type));
    up->bind(3, last.sequence.value).bind(4, static_cast<std::int64_t>(plan.events.size())).bind(5, to_micros(last.time));
    if (up->step() != SQLITE_DONE) return writer->last_error("update aggregate");
    return {};
  }

  std::vector<group_commit::unit_result> commit(std::span<group_commit::pending> batch) {
    std::vector<group_commit::unit_result> results;
    results.reserve(batch.size());
    const timestamp start_time = last_time;
    log_position next_head = head;
    auto fail_all = [&](const error& e) {
      results.clear();
      for (std::size_t i = 0; i < batch.size(); ++i) results.emplace_back(e);
      last_time = start_time;
      return std::move(results);
    };
    if (auto r = writer->run("BEGIN IMMEDIATE"); !r) return fail_all(r.error());
    last_time = std::max(last_time, clk.now());
    // What the batch stores, in position order, for the commit observer (the log tailer).
    const bool keep = observed && observed();
    std::vector<event> committed;
    for (auto& p : batch) {
      auto plans = plan_group(std::move(p.requests), *this, next_head, last_time);
      if (!plans) {
        results.emplace_back(std::move(plans).error());
        continue;
      }
      // A unit is written under its own savepoint: a failure undoes all of it and
      // nothing of its neighbours.
      if (auto r = writer->run("SAVEPOINT one_unit"); !r) {
        results.emplace_back(r.error());
        continue;
      }
      std::optional<error> failed;
      for (const auto& plan : *plans)
        if (!plan.replay)
          if (auto w = write_plan(plan); !w) {
            failed = w.error();
            break;
          }
      if (failed) {
        (void)writer->run("ROLLBACK TO one_unit");
        (void)writer->run("RELEASE one_unit");
        results.emplace_back(*failed);
        continue;
      }
      (void)writer->run("RELEASE one_unit");
      std::vector<append_result> unit;
      for (auto& plan : *plans) {
        if (!plan.replay) next_head = plan.events.back().position;
        if (!plan.replay && keep)
          committed.insert(committed.end(), std::make_move_iterator(plan.events.begin()),
                           std::make_move_iterator(plan.events.end()));
        unit.push_back(std::move(plan.result));
      }
      results.emplace_back(std::move(unit));
    }
    if (auto r = writer->run("COMMIT"); !r) {
      error e = r.error();
      (void)writer->run("ROLLBACK");
      e.message = "append not stored: " + e.message;
      return fail_all(e);
    }
    bool advanced = false;
    {
      std::lock_guard lock(head_mutex);
      advanced = next_head != head;
      head = next_head;
    }
    if (advanced && on_commit) on_commit(std::move(committed));
    return results;
  }
};

sqlite_store::sqlite_store(std::unique_ptr<impl> p) : impl_(std::move(p)) {
  impl_->on_commit = [this](std::vector<event> committed) { notify_committed(std::move(committed)); };
  impl_->observed = [this] { return observed(); };
}

const char* sqlite_store::schema_sql() {
  static const std::string all = [] {
    std::string sql;
    for (const char* m : migrations) sql += m;
    return sql;
  }();
  return all.c_str();
}

sqlite_store::~sqlite_store() {
  if (impl_ && impl_->committer) impl_->committer->stop();
}

result<std::unique_ptr<sqlite_store>> sqlite_store::open(const std::string& path, const store_options& options) {
  auto p = std::make_unique<impl>(path, options.time_source ? *options.time_source : default_clock());
  auto w = open_connection(path, true, options.unsafe_no_fsync, &p->checkpoints);
  if (!w) return std::move(w).error();
  p->writer = std::move(*w);
  auto& db = *p->writer;
  // Migrations: each runs once, in its own transaction, recorded in schema_migrations.
  if (auto r = db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"); !r)
    return std::move(r).error();
  std::int64_t applied = 0;
  {
    auto st = db.prepare("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    if (!st) return std::move(st).error();
    if (st->step() == SQLITE_ROW) applied = st->int64(0);
  }
  const auto known = static_cast<std::int64_t>(std::size(migrations));
  if (applied > known)
    return error::make(errc::unavailable, "database '" + path + "' has schema version " + std::to_string(applied) +
                                              ", newer than this server knows (" + std::to_string(known) + ")");
  for (auto v = applied + 1; v <= known; ++v) {
    if (auto r = db.exec("BEGIN IMMEDIATE"); !r) return std::move(r).error();
    if (auto r = db.exec(migrations[v - 1]); !r) {
      (void)db.exec("ROLLBACK");
      return std::move(r).error();
    }
    auto st = db.prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)");
    if (!st) return std::move(st).error();
    st->bind(1, v).bind(2, to_micros(p->clk.now()));
    if (st->step() != SQLITE_DONE) return db.last_error("record migration");
    if (auto r = db.exec("COMMIT"); !r) return std::move(r).error();
  }
  {
    // Compaction may have moved the newest events to the archive: their positions stay taken.
    auto st = db.prepare(
        "SELECT MAX(COALESCE((SELECT MAX(position) FROM events), 0), COALESCE((SELECT MAX(position) FROM event_archive), 0)), "
        "MAX(COALESCE((SELECT MAX(timestamp) FROM events), 0), COALESCE((SELECT MAX(timestamp) FROM event_archive), 0))");
    if (!st) return std::move(st).error();
    if (st->step() == SQLITE_ROW) {
      p->head = log_position(st->int64(0));
      p->last_time = from_micros(st->int64(1));
    }
  }
  for (std::size_t i = 0; i < std::max<std::size_t>(options.read_connections, 1); ++i) {
    auto r = open_connection(path, false, options.unsafe_no_fsync, &p->checkpoints);
    if (!r) return std::move(r).error();
    p->idle.push_back(std::move(*r));
  }
  {
    auto r = open_connection(path, false, options.unsafe_no_fsync);
    if (!r) return std::move(r).error();
    p->checkpoints.start(std::move(*r));
  }
  auto* raw = p.get();
  p->committer = std::make_unique<group_commit>(
      [raw](std::span<group_commit::pending> batch) { return raw->commit(batch); }, options.max_pending_appends);
  return std::unique_ptr<sqlite_store>(new sqlite_store(std::move(p)));
}

void sqlite_store::submit_group(std::vector<append_request> requests, group_callback done) {
  impl_->committer->enqueue(std::move(requests), std::move(done));
}

log_position sqlite_store::head() {
  std::lock_guard lock(impl_->head_mutex);
  return impl_->head;
}

result<std::vector<event>> sqlite_store::read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                                        std::optional<std::int64_t> to_version, std::size_t limit) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + event_columns +
                        " FROM events WHERE aggregate_id = ? AND sequence_number >= ? AND sequence_number <= ? "
                        "ORDER BY sequence_number LIMIT ?");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id).bind(2, from_version).bind(3, to_version.value_or(INT64_MAX));
  st->bind(4, static_cast<std::int64_t>(limit));
  return collect_events(*db, *st, limit, "read aggregate");
}

result<void> sqlite_store::read_aggregate_json(std::string_view aggregate_id, std::int64_t from_version,
                                              std::optional<std::int64_t> to_version, std::size_t limit,
                                              event_json_page& page) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + event_columns +
                        " FROM events WHERE aggregate_id = ? AND sequence_number >= ? AND sequence_number <= ? "
                        "ORDER BY sequence_number LIMIT ?");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id).bind(2, from_version).bind(3, to_version.value_or(INT64_MAX));
  st->bind(4, static_cast<std::int64_t>(limit));
  return collect_events_json(*db, *st, limit, "read aggregate", page);
}

result<std::vector<event>> sqlite_store::read_all(log_position after, std::size_t limit) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + event_columns + " FROM events WHERE position > ? ORDER BY position LIMIT ?");
  if (!st) return std::move(st).error();
  st->bind(1, after.value).bind(2, static_cast<std::int64_t>(limit));
  return collect_events(*db, *st, limit, "read log");
}

result<query_result> sqlite_store::query(const event_query& q, const pagination& page) {
  auto db = impl_->reader();
  query_result out;
  auto more = query_rows(*db, q, page, out.total_count, [&](const statement& st) -> result<void> {
    auto e = row_to_event(st);
    if (!e) return std::move(e).error();
    out.events.push_back(std::move(*e));
    return {};
  });
  if (!more) return std::move(more).error();
  out.has_more = *more;
  if (out.has_more) out.cursor = encode_cursor(out.events.back().position);
  return out;
}

result<query_json_result> sqlite_store::query_json(const event_query& q, const pagination& page) {
  auto db = impl_->reader();
  query_json_result out;
  auto more = query_rows(*db, q, page, out.total_count, [&](const statement& st) -> result<void> {
    const auto before = out.events.json.size();
    add_to_page(out.events, row_view(st));
    if (out.events.count == 1) out.events.json.reserve((out.events.json.size() - before + 16) * page.limit);
    return {};
  });
  if (!more) return std::move(more).error();
  out.has_more = *more;
  if (out.has_more) out.cursor = encode_cursor(out.events.last_position);
  return out;
}

result<event> sqlite_store::get_event(std::string_view id) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + event_columns + " FROM events WHERE id = ?");
  if (!st) return std::move(st).error();
  st->bind(1, id);
  int rc = st->step();
  if (rc == SQLITE_DONE) return error::make(errc::not_found, "no event with id " + std::string(id));
  if (rc != SQLITE_ROW) return db->last_error("get event");
  return row_to_event(*st);
}

result<aggregate_metadata> sqlite_store::get_aggregate_metadata(std::string_view aggregate_id) {
  auto db = impl_->reader();
  read_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  aggregate_metadata m;
  {
    auto st = db->prepare(
        "SELECT aggregate_type, version, event_count, first_timestamp, last_timestamp FROM aggregates "
        "WHERE aggregate_id = ?");
    if (!st) return std::move(st).error();
    st->bind(1, aggregate_id);
    int rc = st->step();
    if (rc == SQLITE_DONE) return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
    if (rc != SQLITE_ROW) return db->last_error("aggregate metadata");
    m.aggregate_id = aggregate_id;
    m.aggregate_type = st->text(0);
    m.version = st->int64(1);
    m.event_count = st->int64(2);
    m.first_event_time = from_micros(st->int64(3));
    m.last_event_time = from_micros(st->int64(4));
  }
  {
    auto st = db->prepare(
        "SELECT sequence_number, created_at FROM snapshots WHERE aggregate_id = ? ORDER BY sequence_number DESC LIMIT 1");
    if (!st) return std::move(st).error();
    st->bind(1, aggregate_id);
    if (st->step() == SQLITE_ROW) {
      m.snapshot_version = st->int64(0);
      m.snapshot_time = from_micros(st->int64(1));
    }
  }
  auto st = db->prepare("SELECT from_seq, to_seq FROM compacted_ranges WHERE aggregate_id = ? ORDER BY from_seq");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id);
  while (st->step() == SQLITE_ROW) m.compacted_ranges.push_back({st->int64(0), st->int64(1)});
  m.compacted_ranges = merge_ranges(std::move(m.compacted_ranges));
  return m;
}

result<void> sqlite_store::create_snapshot(std::string_view aggregate_id, std::int64_t sequence, json::object data) {
  // Snapshots go through a reader connection in its own write transaction: they are not
  // events, take no log position, and so need not queue behind the group commit.
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  std::string type;
  std::int64_t version = 0;
  {
    auto st = db->prepare("SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = ?");
    if (!st) return std::move(st).error();
    st->bind(1, aggregate_id);
    if (st->step() != SQLITE_ROW) return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
    type = st->text(0);
    version = st->int64(1);
  }
  if (sequence < 1 || sequence > version)
    return error::invalid("sequenceNumber", "must be between 1 and the aggregate's version " + std::to_string(version));
  auto st = db->prepare(
      "INSERT OR REPLACE INTO snapshots (aggregate_id, sequence_number, aggregate_type, data, created_at) "
      "VALUES (?, ?, ?, ?, ?)");
  if (!st) return std::move(st).error();
  const std::string text = json::serialize(data);
  st->bind(1, aggregate_id).bind(2, sequence).bind(3, std::string_view(type)).bind(4, std::string_view(text));
  st->bind(5, to_micros(impl_->clk.now()));
  if (st->step() != SQLITE_DONE) return db->last_error("create snapshot");
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return {};
}

result<std::optional<snapshot>> sqlite_store::get_latest_snapshot(std::string_view aggregate_id) {
  auto db = impl_->reader();
  auto st = db->prepare(
      "SELECT sequence_number, aggregate_type, data, created_at FROM snapshots WHERE aggregate_id = ? "
      "ORDER BY sequence_number DESC LIMIT 1");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id);
  int rc = st->step();
  if (rc == SQLITE_DONE) return std::optional<snapshot>();
  if (rc != SQLITE_ROW) return db->last_error("get snapshot");
  snapshot s;
  s.aggregate_id = aggregate_id;
  s.sequence_number = st->int64(0);
  s.aggregate_type = st->text(1);
  auto data = parse_stored_object(st->text(2), "snapshot");
  if (!data) return std::move(data).error();
  s.data = std::move(*data);
  s.created_at = from_micros(st->int64(3));
  return std::optional<snapshot>(std::move(s));
}

}  // namespace pliers

namespace pliers {

// Scheduled entries are not events: they go through a reader connection in a write
// transaction of their own, like snapshots.
result<scheduled_event> sqlite_store::schedule(scheduled_event entry) {
  if (auto ok = prepare_scheduled(entry, impl_->clk.now()); !ok) return std::move(ok).error();
  auto db = impl_->reader();
  auto st = db->prepare("INSERT INTO scheduled_events (id, publish_at, request, status, created_at) VALUES (?, ?, ?, ?, ?)");
  if (!st) return std::move(st).error();
  const auto text = encode_scheduled_request(entry.request);
  st->bind(1, std::string_view(entry.id)).bind(2, to_micros(entry.publish_at)).bind(3, std::string_view(text));
  st->bind(4, std::string_view(entry.status)).bind(5, to_micros(entry.created_at));
  if (st->step() != SQLITE_DONE) {
    auto e = db->last_error("schedule");
    if ((sqlite3_extended_errcode(db->handle()) & 0xff) == SQLITE_CONSTRAINT)
      return error::make(errc::conflict, "scheduled entry " + entry.id + " exists");
    return e;
  }
  return entry;
}

result<std::vector<scheduled_event>> sqlite_store::list_scheduled(std::optional<std::string> status, std::size_t limit) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + scheduled_columns +
                        " FROM scheduled_events WHERE (?1 IS NULL OR status = ?1) ORDER BY publish_at LIMIT ?2");
  if (!st) return std::move(st).error();
  st->bind(1, status).bind(2, static_cast<std::int64_t>(limit));
  return collect_scheduled(*db, *st);
}

result<scheduled_event> sqlite_store::get_scheduled(std::string_view id) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + scheduled_columns + " FROM scheduled_events WHERE id = ?");
  if (!st) return std::move(st).error();
  st->bind(1, id);
  auto rows = collect_scheduled(*db, *st);
  if (!rows) return std::move(rows).error();
  if (rows->empty()) return error::make(errc::not_found, "no scheduled event " + std::string(id));
  return std::move(rows->front());
}

result<void> sqlite_store::cancel_scheduled(std::string_view id) {
  auto current = get_scheduled(id);
  if (!current) return std::move(current).error();
  auto db = impl_->reader();
  auto st = db->prepare("UPDATE scheduled_events SET status = 'cancelled' WHERE id = ? AND status = 'pending'");
  if (!st) return std::move(st).error();
  st->bind(1, id);
  if (st->step() != SQLITE_DONE) return db->last_error("cancel scheduled");
  if (sqlite3_changes(db->handle()) == 0)
    return error::make(errc::conflict, "scheduled event " + std::string(id) + " is " + current->status);
  return {};
}

result<std::vector<scheduled_event>> sqlite_store::claim_due(timestamp now, std::size_t max, std::chrono::seconds lease) {
  auto db = impl_->reader();
  // A read first: an idle poll does not take the write lock the appends need.
  if (auto any = any_row(*db, "SELECT 1 FROM scheduled_events WHERE status = 'pending' AND publish_at <= ?1 AND "
                              "(claimed_until IS NULL OR claimed_until < ?1) LIMIT 1",
                         to_micros(now));
      !any || !*any)
    return any ? result<std::vector<scheduled_event>>(std::vector<scheduled_event>{}) : std::move(any).error();
  auto st = db->prepare(std::string("UPDATE scheduled_events SET claimed_until = ?1, attempts = attempts + 1 "
                                    "WHERE id IN (SELECT id FROM scheduled_events WHERE status = 'pending' AND "
                                    "publish_at <= ?2 AND (claimed_until IS NULL OR claimed_until < ?2) "
                                    "ORDER BY publish_at LIMIT ?3) RETURNING ") +
                        scheduled_columns);
  if (!st) return std::move(st).error();
  st->bind(1, to_micros(now + lease)).bind(2, to_micros(now)).bind(3, static_cast<std::int64_t>(max));
  return collect_scheduled(*db, *st);
}

result<void> sqlite_store::finish_scheduled(std::string_view id, std::string status, std::optional<log_position> position,
                                            std::optional<std::string> err) {
  auto db = impl_->reader();
  auto st = db->prepare(
      "UPDATE scheduled_events SET status = ?, position = ?, last_error = ?, claimed_until = NULL WHERE id = ?");
  if (!st) return std::move(st).error();
  st->bind(1, std::string_view(status));
  if (position) st->bind(2, position->value);
  st->bind(3, err).bind(4, id);
  if (st->step() != SQLITE_DONE) return db->last_error("finish scheduled");
  return {};
}

}  // namespace pliers

namespace pliers {

result<event_store::group_view> sqlite_store::group_sync(std::string_view group, std::string_view member, int partitions,
                                                        log_position start, timestamp now, std::chrono::milliseconds ttl) {
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  {
    auto st = db->prepare("INSERT INTO consumer_group_members (group_name, member, heartbeat) VALUES (?1, ?2, ?3) "
                          "ON CONFLICT (group_name, member) DO UPDATE SET heartbeat = excluded.heartbeat");
    if (!st) return std::move(st).error();
    st->bind(1, group).bind(2, member).bind(3, to_micros(now));
    if (st->step() != SQLITE_DONE) return db->last_error("group heartbeat");
  }
  for (int p = 0; p < partitions; ++p) {
    auto st = db->prepare("INSERT OR IGNORE INTO consumer_group_partitions (group_name, partition, checkpoint) VALUES (?, ?, ?)");
    if (!st) return std::move(st).error();
    st->bind(1, group).bind(2, std::int64_t{p}).bind(3, start.value);
    if (st->step() != SQLITE_DONE) return db->last_error("group partitions");
  }
  group_view view;
  {
    auto st = db->prepare("SELECT member FROM consumer_group_members WHERE group_name = ? AND heartbeat >= ? ORDER BY member");
    if (!st) return std::move(st).error();
    st->bind(1, group).bind(2, to_micros(now) - std::chrono::duration_cast<std::chrono::microseconds>(ttl).count());
    while (st->step() == SQLITE_ROW) view.members.emplace_back(st->text(0));
  }
  {
    auto st = db->prepare("SELECT partition, owner, lease_until, checkpoint FROM consumer_group_partitions "
                          "WHERE group_name = ? ORDER BY partition");
    if (!st) return std::move(st).error();
    st->bind(1, group);
    while (st->step() == SQLITE_ROW) {
      group_partition gp;
      gp.partition = static_cast<int>(st->int64(0));
      if (!st->is_null(1)) gp.owner = std::string(st->text(1));
      gp.lease_until = from_micros(st->int64(2));
      gp.checkpoint = log_position(st->int64(3));
      view.partitions.push_back(std::move(gp));
    }
  }
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return view;
}

result<bool> sqlite_store::group_claim(std::string_view group, int partition, std::string_view member, timestamp now,
                                       std::chrono::milliseconds ttl) {
  auto db = impl_->reader();
  auto st = db->prepare("UPDATE consumer_group_partitions SET owner = ?3, lease_until = ?4 WHERE group_name = ?1 AND "
                        "partition = ?2 AND (owner IS NULL OR owner = ?3 OR lease_until < ?5)");
  if (!st) return std::move(st).error();
  st->bind(1, group).bind(2, std::int64_t{partition}).bind(3, member).bind(4, to_micros(now + ttl)).bind(5, to_micros(now));
  if (st->step() != SQLITE_DONE) return db->last_error("group claim");
  return sqlite3_changes(db->handle()) > 0;
}

result<bool> sqlite_store::group_checkpoint(std::string_view group, int partition, std::string_view member,
                                            log_position position) {
  auto db = impl_->reader();
  auto st = db->prepare("UPDATE consumer_group_partitions SET checkpoint = max(checkpoint, ?4) WHERE group_name = ?1 AND "
                        "partition = ?2 AND owner = ?3");
  if (!st) return std::move(st).error();
  st->bind(1, group).bind(2, std::int64_t{partition}).bind(3, member).bind(4, position.value);
  if (st->step() != SQLITE_DONE) return db->last_error("group checkpoint");
  return sqlite3_changes(db->handle()) > 0;
}

result<void> sqlite_store::group_release(std::string_view group, int partition, std::string_view member) {
  auto db = impl_->reader();
  auto st = db->prepare("UPDATE consumer_group_partitions SET owner = NULL WHERE group_name = ? AND partition = ? AND owner = ?");
  if (!st) return std::move(st).error();
  st->bind(1, group).bind(2, std::int64_t{partition}).bind(3, member);
  if (st->step() != SQLITE_DONE) return db->last_error("group release");
  return {};
}

result<void> sqlite_store::group_leave(std::string_view group, std::string_view member) {
  auto db = impl_->reader();
  for (const char* sql : {"UPDATE consumer_group_partitions SET owner = NULL WHERE group_name = ? AND owner = ?",
                          "DELETE FROM consumer_group_members WHERE group_name = ? AND member = ?"}) {
    auto st = db->prepare(sql);
    if (!st) return std::move(st).error();
    st->bind(1, group).bind(2, member);
    if (st->step() != SQLITE_DONE) return db->last_error("group leave");
  }
  return {};
}

}  // namespace pliers

// ---------------------------------------------------------------------------------------
// Dead-letter queue. Like scheduled entries, these are not events: they go through a
// reader connection in write transactions of their own. The row's `body` is the entry as
// dead_letter_codec writes it; the other columns copy what SQL filters and orders on, and
// are written only by store_dead_letter, together with the body. The `seq` column is
// authoritative (the body's copy is written from it).

namespace pliers {

namespace {

error dlq_missing(std::string_view id) {
  return error::make(errc::not_found, "no dead-letter entry " + std::string(id));
}


// Steps a statement selecting (seq, body) to the end.
result<std::vector<dead_letter>> collect_dead_letters(connection& db, statement& st, const char* what) {
  std::vector<dead_letter> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) {
    auto d = dead_letter_from_text(st.text(1));
    if (!d) return std::move(d).error();
    d->seq = st.int64(0);
    out.push_back(std::move(*d));
  }
  if (rc != SQLITE_DONE) return db.last_error(what);
  return out;
}

result<std::optional<dead_letter>> find_dead_letter(connection& db, const char* where, std::string_view a,
                                                    std::optional<std::string_view> b = std::nullopt) {
  auto st = db.prepare(std::string("SELECT seq, body FROM dead_letters WHERE ") + where);
  if (!st) return std::move(st).error();
  st->bind(1, a);
  if (b) st->bind(2, *b);
  auto rows = collect_dead_letters(db, *st, "read dead letter");
  if (!rows) return std::move(rows).error();
  if (rows->empty()) return std::optional<dead_letter>();
  return std::optional<dead_letter>(std::move(rows->front()));
}

// Writes the mutable columns and the body of the row d.seq.
result<void> store_dead_letter(connection& db, const dead_letter& d) {
  auto st = db.prepare(
      "UPDATE dead_letters SET status = ?1, failed_at = ?2, next_retry_at = ?3, lease_until = ?4, body = ?5 "
      "WHERE seq = ?6");
  if (!st) return std::move(st).error();
  const auto body = json::serialize(to_json(d));
  st->bind(1, std::string_view(d.status)).bind(2, to_micros(d.failed_at));
  if (d.next_retry_at) st->bind(3, to_micros(*d.next_retry_at));
  else st->bind(3, std::optional<std::string>());
  st->bind(4, to_micros(d.lease_until)).bind_static(5, body).bind(6, d.seq);
  if (st->step() != SQLITE_DONE) return db.last_error("write dead letter");
  return {};
}

}  // namespace

result<dead_letter> sqlite_store::dlq_add(dead_letter entry) {
  if (auto ok = prepare_dead_letter(entry); !ok) return std::move(ok).error();
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  auto existing = find_dead_letter(*db, "consumer = ?1 AND event_id = ?2", entry.consumer, entry.original_event.id);
  if (!existing) return std::move(existing).error();
  if (*existing) return std::move(**existing);
  auto st = db->prepare(
      "INSERT INTO dead_letters (id, consumer, event_id, event_type, status, failed_at, lease_until, body) "
      "VALUES (?, ?, ?, ?, '', 0, 0, '')");
  if (!st) return std::move(st).error();
  st->bind(1, std::string_view(entry.id)).bind(2, std::string_view(entry.consumer));
  st->bind(3, std::string_view(entry.original_event.id)).bind(4, std::string_view(entry.original_event.type));
  if (st->step() != SQLITE_DONE) {
    if ((sqlite3_extended_errcode(db->handle()) & 0xff) == SQLITE_CONSTRAINT)
      return error::make(errc::conflict, "dead-letter entry " + entry.id + " exists");
    return db->last_error("add dead letter");
  }
  entry.seq = sqlite3_last_insert_rowid(db->handle());
  if (auto r = store_dead_letter(*db, entry); !r) return std::move(r).error();
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return entry;
}

result<dead_letter> sqlite_store::dlq_get(std::string_view id) {
  auto db = impl_->reader();
  auto d = find_dead_letter(*db, "id = ?1", id);
  if (!d) return std::move(d).error();
  if (!*d) return dlq_missing(id);
  return std::move(**d);
}

result<dead_letter_page> sqlite_store::dlq_list(const dead_letter_filter& filter, std::size_t limit,
                                                std::optional<std::int64_t> after_seq) {
  auto matcher = dead_letter_matcher::make(filter);
  if (!matcher) return std::move(matcher).error();
  limit = std::min(limit, max_page_limit);
  // The same parameter scheme as event queries: ?1 is the pattern (through pliers_match,
  // the memory store's matcher), the conditions follow.
  event_query patterns;
  where_clause w;
  w.sql = " WHERE 1=1";
  auto cond = [&](const char* sql, std::variant<std::int64_t, std::string> v) {
    w.sql += sql;
    w.sql += "?" + std::to_string(w.binds.size() + 2);
    w.binds.push_back(std::move(v));
  };
  if (const auto& p = matcher->pattern()) {
    if (p->is_literal()) {
      cond(" AND event_type = ", p->text());
    } else {
      patterns.event_types.push_back(*p);
      w.sql += " AND pliers_match(event_type, ?1, 0)";
      w.uses_pointer = true;
    }
  }
  if (filter.consumer) cond(" AND consumer = ", *filter.consumer);
  if (filter.status) cond(" AND status = ", *filter.status);
  if (filter.from) cond(" AND failed_at >= ", to_micros(*filter.from));
  if (filter.to) cond(" AND failed_at <= ", to_micros(*filter.to));

  auto db = impl_->reader();
  // One read transaction so that the count and the page see the same snapshot.
  read_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  dead_letter_page page;
  {
    auto st = db->prepare("SELECT COUNT(*) FROM dead_letters" + w.sql);
    if (!st) return std::move(st).error();
    bind_where(*st, w, patterns);
    if (st->step() != SQLITE_ROW) return db->last_error("count dead letters");
    page.total_count = st->int64(0);
  }
  const int n = static_cast<int>(w.binds.size()) + 2;
  auto st = db->prepare("SELECT seq, body FROM dead_letters" + w.sql + " AND seq > ?" + std::to_string(n) +
                        " ORDER BY seq LIMIT ?" + std::to_string(n + 1));
  if (!st) return std::move(st).error();
  bind_where(*st, w, patterns);
  st->bind(n, after_seq.value_or(0)).bind(n + 1, static_cast<std::int64_t>(limit + 1));
  auto rows = collect_dead_letters(*db, *st, "list dead letters");
  if (!rows) return std::move(rows).error();
  page.entries = std::move(*rows);
  if (page.entries.size() > limit) {
    page.entries.resize(limit);
    page.has_more = true;
    page.next_after = page.entries.empty() ? after_seq.value_or(0) : page.entries.back().seq;
  }
  return page;
}

result<std::vector<dead_letter>> sqlite_store::dlq_claim_due(timestamp now, std::size_t max,
                                                             std::chrono::milliseconds lease) {
  auto db = impl_->reader();
  // A read first: an idle poll does not take the write lock the appends need.
  if (auto any = any_row(*db, "SELECT 1 FROM dead_letters WHERE (status = 'pending_retry' AND next_retry_at <= ?1) OR "
                              "(status = 'retrying' AND lease_until <= ?1) LIMIT 1",
                         to_micros(now));
      !any || !*any)
    return any ? result<std::vector<dead_letter>>(std::vector<dead_letter>{}) : std::move(any).error();
  // BEGIN IMMEDIATE takes the database's write lock first: concurrent claimers, in this
  // process or another, run one after the other and never see the same entry as due.
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  auto st = db->prepare(
      "SELECT seq, body FROM dead_letters WHERE (status = 'pending_retry' AND next_retry_at <= ?1) OR "
      "(status = 'retrying' AND lease_until <= ?1) ORDER BY seq LIMIT ?2");
  if (!st) return std::move(st).error();
  st->bind(1, to_micros(now)).bind(2, static_cast<std::int64_t>(std::min<std::size_t>(max, INT64_MAX)));
  auto rows = collect_dead_letters(*db, *st, "claim dead letters");
  if (!rows) return std::move(rows).error();
  for (auto& d : *rows) {
    d.status = "retrying";
    d.lease_until = now + lease;
    if (auto r = store_dead_letter(*db, d); !r) return std::move(r).error();
  }
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return std::move(*rows);
}

result<dead_letter> sqlite_store::dlq_claim(std::string_view id, timestamp now, std::chrono::milliseconds lease) {
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  auto found = find_dead_letter(*db, "id = ?1", id);
  if (!found) return std::move(found).error();
  if (!*found) return dlq_missing(id);
  auto& d = **found;
  if (d.status == "resolved") return error::make(errc::conflict, "dead-letter entry " + d.id + " is resolved");
  if (d.status == "retrying" && d.lease_until > now)
    return error::make(errc::conflict, "dead-letter entry " + d.id + " is being retried");
  d.status = "retrying";
  d.lease_until = now + lease;
  if (auto r = store_dead_letter(*db, d); !r) return std::move(r).error();
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return std::move(d);
}

result<void> sqlite_store::dlq_update(const dead_letter& entry) {
  if (auto ok = check_dead_letter_update(entry); !ok) return ok;
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  auto found = find_dead_letter(*db, "id = ?1", entry.id);
  if (!found) return std::move(found).error();
  if (!*found) return dlq_missing(entry.id);
  apply_dead_letter_update(**found, entry);
  if (auto r = store_dead_letter(*db, **found); !r) return std::move(r).error();
  return txn.commit();
}

}  // namespace pliers

// ---------------------------------------------------------------------------------------
// Compaction. Runs on a reader connection in its own BEGIN IMMEDIATE transaction: SQLite's
// single write lock serializes it with the group commit, so an append to the aggregate is
// either wholly before (and above `upto`, untouched) or wholly after it.

namespace pliers {

namespace {

constexpr const char* archive_columns =
    "position, id, type, version, timestamp, aggregate_id, aggregate_type, sequence_number, causation_id, "
    "correlation_id, metadata, payload";

// (live events, stored bytes of live events + snapshots) of one aggregate.
result<std::pair<std::int64_t, std::int64_t>> measure(connection& db, std::string_view aggregate_id) {
  auto st = db.prepare(
      "SELECT COUNT(*), COALESCE(SUM(length(CAST(id AS BLOB)) + length(CAST(type AS BLOB)) + "
      "length(CAST(aggregate_id AS BLOB)) + length(CAST(aggregate_type AS BLOB)) + length(CAST(metadata AS BLOB)) + "
      "length(CAST(payload AS BLOB)) + COALESCE(length(causation_id), 0) + COALESCE(length(correlation_id), 0) + 32), 0) "
      "FROM events WHERE aggregate_id = ?1");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id);
  if (st->step() != SQLITE_ROW) return db.last_error("measure events");
  std::pair<std::int64_t, std::int64_t> out{st->int64(0), st->int64(1)};
  auto sn = db.prepare(
      "SELECT COALESCE(SUM(length(CAST(data AS BLOB)) + length(CAST(aggregate_id AS BLOB)) + "
      "length(CAST(aggregate_type AS BLOB)) + 16), 0) FROM snapshots WHERE aggregate_id = ?1");
  if (!sn) return std::move(sn).error();
  sn->bind(1, aggregate_id);
  if (sn->step() != SQLITE_ROW) return db.last_error("measure snapshots");
  out.second += sn->int64(0);
  return out;
}

result<void> archive_one(connection& db, std::string_view aggregate_id, std::int64_t seq, std::string_view compaction_id,
                         std::int64_t now) {
  auto st = db.prepare(std::string("INSERT INTO event_archive (") + archive_columns + ", compaction_id, archived_at) SELECT " +
                       archive_columns + ", ?3, ?4 FROM events WHERE aggregate_id = ?1 AND sequence_number = ?2");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id).bind(2, seq).bind(3, compaction_id).bind(4, now);
  if (st->step() != SQLITE_DONE) return db.last_error("archive event");
  if (sqlite3_changes(db.handle()) != 1)
    return error::make(errc::conflict, "event " + std::to_string(seq) + " of '" + std::string(aggregate_id) + "' is not live");
  return {};
}

}  // namespace

result<compaction_outcome> sqlite_store::do_apply_compaction(const compaction_change& change) {
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  std::string type;
  {
    auto st = db->prepare("SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = ?");
    if (!st) return std::move(st).error();
    st->bind(1, std::string_view(change.aggregate_id));
    if (st->step() != SQLITE_ROW) return error::make(errc::not_found, "no aggregate '" + change.aggregate_id + "'");
    type = st->text(0);
    if (auto ok = check_compaction(change, st->int64(1)); !ok) return std::move(ok).error();
  }
  compaction_outcome out;
  auto before = measure(*db, change.aggregate_id);
  if (!before) return std::move(before).error();
  out.events_before = before->first;
  out.bytes_before = before->second;
  const auto now = to_micros(impl_->clk.now());
  for (auto seq : change.remove) {
    if (auto r = archive_one(*db, change.aggregate_id, seq, change.compaction_id, now); !r) return std::move(r).error();
    auto del = db->prepare("DELETE FROM events WHERE aggregate_id = ? AND sequence_number = ?");
    if (!del) return std::move(del).error();
    del->bind(1, std::string_view(change.aggregate_id)).bind(2, seq);
    if (del->step() != SQLITE_DONE) return db->last_error("remove event");
  }
  for (const auto& rw : change.rewrite) {
    if (auto r = archive_one(*db, change.aggregate_id, rw.sequence, change.compaction_id, now); !r)
      return std::move(r).error();
    auto up = db->prepare("UPDATE events SET payload = ?, metadata = ? WHERE aggregate_id = ? AND sequence_number = ?");
    if (!up) return std::move(up).error();
    const auto pl = json::serialize(rw.payload), md = json::serialize(rw.metadata);
    up->bind(1, std::string_view(pl)).bind(2, std::string_view(md)).bind(3, std::string_view(change.aggregate_id));
    up->bind(4, rw.sequence);
    if (up->step() != SQLITE_DONE) return db->last_error("rewrite event");
  }
  if (change.snapshot) {
    auto st = db->prepare(
        "INSERT OR REPLACE INTO snapshots (aggregate_id, sequence_number, aggregate_type, data, created_at) VALUES (?, ?, ?, ?, ?)");
    if (!st) return std::move(st).error();
    const auto text = json::serialize(change.snapshot->second);
    st->bind(1, std::string_view(change.aggregate_id)).bind(2, change.snapshot->first).bind(3, std::string_view(type));
    st->bind(4, std::string_view(text)).bind(5, now);
    if (st->step() != SQLITE_DONE) return db->last_error("create snapshot");
    out.snapshots_created = 1;
  }
  if (change.keep_snapshots > 0) {
    auto st = db->prepare(
        "DELETE FROM snapshots WHERE aggregate_id = ?1 AND sequence_number NOT IN (SELECT sequence_number FROM snapshots "
        "WHERE aggregate_id = ?1 ORDER BY sequence_number DESC LIMIT ?2)");
    if (!st) return std::move(st).error();
    st->bind(1, std::string_view(change.aggregate_id)).bind(2, change.keep_snapshots);
    if (st->step() != SQLITE_DONE) return db->last_error("prune snapshots");
  }
  out.ranges = compaction_ranges(change);
  for (const auto& r : out.ranges) {
    auto st = db->prepare("INSERT INTO compacted_ranges (aggregate_id, compaction_id, from_seq, to_seq) VALUES (?, ?, ?, ?)");
    if (!st) return std::move(st).error();
    st->bind(1, std::string_view(change.aggregate_id)).bind(2, std::string_view(change.compaction_id)).bind(3, r.from).bind(4, r.to);
    if (st->step() != SQLITE_DONE) return db->last_error("record compacted range");
  }
  auto after = measure(*db, change.aggregate_id);
  if (!after) return std::move(after).error();
  out.events_after = after->first;
  out.bytes_after = after->second;
  {
    auto st = db->prepare("UPDATE aggregates SET event_count = ? WHERE aggregate_id = ?");
    if (!st) return std::move(st).error();
    st->bind(1, out.events_after).bind(2, std::string_view(change.aggregate_id));
    if (st->step() != SQLITE_DONE) return db->last_error("update aggregate");
  }
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return out;
}

result<std::vector<archived_event>> sqlite_store::list_archived(std::string_view aggregate_id,
                                                                std::optional<std::string> compaction_id,
                                                                log_position after, std::size_t limit) {
  auto db = impl_->reader();
  auto st = db->prepare(std::string("SELECT ") + archive_columns +
                        ", compaction_id, archived_at FROM event_archive WHERE aggregate_id = ?1 AND position > ?2 "
                        "AND (?3 IS NULL OR compaction_id = ?3) ORDER BY position, seq LIMIT ?4");
  if (!st) return std::move(st).error();
  st->bind(1, aggregate_id).bind(2, after.value).bind(3, compaction_id).bind(4, static_cast<std::int64_t>(limit));
  std::vector<archived_event> out;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    auto e = row_to_event(*st);
    if (!e) return std::move(e).error();
    out.push_back(archived_event{std::move(*e), std::string(st->text(12)), from_micros(st->int64(13))});
  }
  if (rc != SQLITE_DONE) return db->last_error("list archive");
  return out;
}

result<std::int64_t> sqlite_store::do_restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id) {
  auto db = impl_->reader();
  write_transaction txn(*db);
  if (auto r = txn.begin(); !r) return std::move(r).error();
  // Newest archive rows first, so that when one event was archived by several compactions
  // (merged twice), the oldest original is written last and wins.
  auto put = db->prepare(std::string("INSERT OR REPLACE INTO events (") + archive_columns + ") SELECT " + archive_columns +
                         " FROM event_archive WHERE aggregate_id = ?1 AND (?2 IS NULL OR compaction_id = ?2) ORDER BY seq DESC");
  if (!put) return std::move(put).error();
  put->bind(1, aggregate_id).bind(2, compaction_id);
  if (put->step() != SQLITE_DONE) return db->last_error("restore events");
  auto del = db->prepare("DELETE FROM event_archive WHERE aggregate_id = ?1 AND (?2 IS NULL OR compaction_id = ?2)");
  if (!del) return std::move(del).error();
  del->bind(1, aggregate_id).bind(2, compaction_id);
  if (del->step() != SQLITE_DONE) return db->last_error("restore events");
  const std::int64_t restored = sqlite3_changes(db->handle());
  auto rg = db->prepare("DELETE FROM compacted_ranges WHERE aggregate_id = ?1 AND (?2 IS NULL OR compaction_id = ?2)");
  if (!rg) return std::move(rg).error();
  rg->bind(1, aggregate_id).bind(2, compaction_id);
  if (rg->step() != SQLITE_DONE) return db->last_error("restore ranges");
  auto up = db->prepare(
      "UPDATE aggregates SET event_count = (SELECT COUNT(*) FROM events WHERE aggregate_id = ?1) WHERE aggregate_id = ?1");
  if (!up) return std::move(up).error();
  up->bind(1, aggregate_id);
  if (up->step() != SQLITE_DONE) return db->last_error("restore count");
  if (auto r = txn.commit(); !r) return std::move(r).error();
  return restored;
}

}  // namespace pliers
