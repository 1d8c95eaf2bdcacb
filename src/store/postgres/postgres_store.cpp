#include "store/postgres/postgres_store.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <boost/json.hpp>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/clock.hpp"
#include "core/event_codec.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "store/append_planner.hpp"
#include "store/compaction_support.hpp"
#include "store/dead_letter_codec.hpp"
#include "store/group_commit.hpp"
#include "store/postgres/pg_db.hpp"
#include "store/scheduled_codec.hpp"

namespace pliers {

namespace json = boost::json;
using pg::connection;
using pg::params;

namespace {

constexpr const char* event_columns =
    "position, id, type, version, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint, aggregate_id, aggregate_type, "
    "sequence_number, causation_id, correlation_id, metadata, payload";

std::string migration_1(const std::string& strategy, const std::string& json_index) {
  const bool partitioned = strategy != "none";
  std::string sql = R"sql(
CREATE TABLE aggregates (
  aggregate_id VARCHAR(255) PRIMARY KEY,
  aggregate_type VARCHAR(50) NOT NULL,
  version BIGINT NOT NULL,                 -- 0: reserved by an append that wrote nothing yet
  event_count BIGINT NOT NULL DEFAULT 0,
  first_timestamp TIMESTAMPTZ,
  last_timestamp TIMESTAMPTZ
);
CREATE TABLE log_head (
  singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
  position BIGINT NOT NULL,               -- the last position handed out
  last_timestamp TIMESTAMPTZ NOT NULL     -- timestamps never go backwards, across processes
);
INSERT INTO log_head VALUES (TRUE, 0, '-infinity');
CREATE TABLE event_ids (
  id UUID PRIMARY KEY,
  aggregate_id VARCHAR(255) NOT NULL,
  sequence_number BIGINT NOT NULL,
  position BIGINT NOT NULL,
  timestamp TIMESTAMPTZ NOT NULL
);
CREATE TABLE events (
  position BIGINT NOT NULL,
  id UUID NOT NULL,
  type VARCHAR(100) NOT NULL,
  version INTEGER NOT NULL DEFAULT 1,
  timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  aggregate_id VARCHAR(255) NOT NULL,
  aggregate_type VARCHAR(50) NOT NULL,
  sequence_number BIGINT NOT NULL,
  causation_id UUID,
  correlation_id UUID,
  metadata JSONB NOT NULL DEFAULT '{}',
  payload JSONB NOT NULL,
)sql";
  sql += partitioned ? "  PRIMARY KEY (position, timestamp)\n) PARTITION BY RANGE (timestamp);\n"
                     : "  PRIMARY KEY (position)\n);\n";
  sql += R"sql(
CREATE INDEX idx_events_type ON events (type);
CREATE INDEX idx_events_aggregate ON events (aggregate_id, sequence_number);
CREATE INDEX idx_events_timestamp ON events (timestamp);
CREATE INDEX idx_events_correlation ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE event_snapshots (
  aggregate_id VARCHAR(255) NOT NULL,
  sequence_number BIGINT NOT NULL,
  aggregate_type VARCHAR(50) NOT NULL,
  snapshot_data JSONB NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  PRIMARY KEY (aggregate_id, sequence_number)
);
CREATE TABLE pliers_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";
  if (json_index == "gin")
    sql += "CREATE INDEX idx_events_metadata ON events USING gin (metadata);\n"
           "CREATE INDEX idx_events_payload ON events USING gin (payload);\n";
  else if (json_index == "gin_path_ops")
    sql += "CREATE INDEX idx_events_metadata ON events USING gin (metadata jsonb_path_ops);\n"
           "CREATE INDEX idx_events_payload ON events USING gin (payload jsonb_path_ops);\n";
  sql += "INSERT INTO pliers_settings VALUES ('partition_strategy', '" + strategy + "'), ('json_index', '" +
         json_index + "');\n";
  return sql;
}

constexpr const char* migration_2 = R"sql(
CREATE TABLE scheduled_events (
  id UUID PRIMARY KEY,
  publish_at TIMESTAMPTZ NOT NULL,
  request TEXT NOT NULL,            -- {"aggregateId", "expectedVersion", "event"}
  status TEXT NOT NULL,             -- pending | published | cancelled | failed
  created_at TIMESTAMPTZ NOT NULL,
  claimed_until TIMESTAMPTZ,
  position BIGINT,
  last_error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_scheduled_due ON scheduled_events (publish_at) WHERE status = 'pending';
)sql";

constexpr const char* migration_3 = R"sql(
CREATE TABLE consumer_group_members (
  group_name TEXT NOT NULL,
  member TEXT NOT NULL,
  heartbeat TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (group_name, member)
);
CREATE TABLE consumer_group_partitions (
  group_name TEXT NOT NULL,
  partition INTEGER NOT NULL,
  owner TEXT,
  lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
  checkpoint BIGINT NOT NULL,
  PRIMARY KEY (group_name, partition)
);
)sql";

constexpr const char* migration_4 = R"sql(
CREATE TABLE dead_letters (
  seq BIGSERIAL PRIMARY KEY,        -- insertion order: the list cursor
  id UUID NOT NULL UNIQUE,
  consumer TEXT NOT NULL,           -- plugin:<id> | route:<ruleId>:<targetIndex>
  event_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  status TEXT NOT NULL,             -- pending_retry | retrying | permanent_failure | resolved
  failed_at TIMESTAMPTZ NOT NULL,
  next_retry_at TIMESTAMPTZ,
  lease_until TIMESTAMPTZ NOT NULL,
  body TEXT NOT NULL,               -- the whole entry (store/dead_letter_codec.hpp)
  UNIQUE (consumer, event_id)
);
CREATE INDEX idx_dead_letters_due ON dead_letters (status, next_retry_at);
)sql";

// Compaction (docs/storage.md): events moved out of the live log, restorable; the ranges
// of each aggregate that compactions rewrote. event_ids keeps the ids of archived events,
// so a retried append of one is still recognised.
constexpr const char* migration_5 = R"sql(
CREATE TABLE event_archive (
  seq BIGSERIAL PRIMARY KEY,
  position BIGINT NOT NULL,
  id UUID NOT NULL,
  type VARCHAR(100) NOT NULL,
  version INTEGER NOT NULL,
  timestamp TIMESTAMPTZ NOT NULL,
  aggregate_id VARCHAR(255) NOT NULL,
  aggregate_type VARCHAR(50) NOT NULL,
  sequence_number BIGINT NOT NULL,
  causation_id UUID,
  correlation_id UUID,
  metadata JSONB NOT NULL,
  payload JSONB NOT NULL,
  compaction_id UUID NOT NULL,
  archived_at TIMESTAMPTZ NOT NULL,
  UNIQUE (position, compaction_id)
);
CREATE INDEX idx_event_archive_aggregate ON event_archive (aggregate_id, position);
CREATE TABLE compacted_ranges (
  aggregate_id VARCHAR(255) NOT NULL,
  compaction_id UUID NOT NULL,
  from_seq BIGINT NOT NULL,
  to_seq BIGINT NOT NULL,
  PRIMARY KEY (aggregate_id, from_seq, compaction_id)
);
)sql";

// Generated event ids name their position (docs/adr/0007): `id_tag` is the database's
// part of every such id, so event_ids holds only the ids callers chose. Each writer (one
// per process) records its last committed batch in `pliers_writers`: after a connection
// broke during a commit, that row says whether the batch committed and where.
std::string migration_6() {
  const auto random = new_uuid_v4();  // 15 random hex digits: skip the dashes and the version digit
  const auto tag = random.substr(0, 8) + random.substr(9, 4) + random.substr(15, 3);
  return R"sql(
CREATE TABLE pliers_writers (
  writer UUID PRIMARY KEY,
  batch BIGINT NOT NULL,             -- the writer's last committed batch
  base BIGINT NOT NULL,              -- its first position minus one
  timestamp TIMESTAMPTZ NOT NULL     -- its commit time
);
INSERT INTO pliers_settings VALUES ('id_tag', ')sql" +
         tag + "');\n";
}

constexpr const char* scheduled_columns =
    "id, (EXTRACT(EPOCH FROM publish_at) * 1000000)::bigint, request, status, "
    "(EXTRACT(EPOCH FROM created_at) * 1000000)::bigint, position, last_error, attempts";

// Period boundaries in UTC.
timestamp period_start(timestamp t, const std::string& strategy) {
  using namespace std::chrono;
  auto day = floor<days>(t);
  if (strategy == "daily") return timestamp(day);
  if (strategy == "weekly") {
    weekday wd{day};
    return timestamp(day - days((wd.c_encoding() + 6) % 7));  // Monday
  }
  year_month_day ymd{day};
  return timestamp(sys_days{ymd.year() / ymd.month() / 1});
}

timestamp period_next(timestamp start, const std::string& strategy) {
  using namespace std::chrono;
  if (strategy == "daily") return start + days(1);
  if (strategy == "weekly") return start + days(7);
  year_month_day ymd{floor<days>(start)};
  auto next = ymd.year() / ymd.month() / 1 + months(1);
  return timestamp(sys_days{next});
}

std::string partition_name(timestamp start) {
  auto s = format_rfc3339(start);  // YYYY-MM-DDT...
  return "events_p" + s.substr(0, 4) + s.substr(5, 2) + s.substr(8, 2);
}

// What a JSON value becomes once stored as jsonb and read back (so that events handed to
// the commit observer equal the ones a read returns): object keys in jsonb's order
// (shorter first, then bytewise), and whole numbers written as doubles (the serializer
// writes 2.0 as 2E0, jsonb keeps it as the numeric 2) read back as integers.
void as_jsonb_returns(json::value& v);

void as_jsonb_returns(json::object& o) {
  for (auto& kv : o) as_jsonb_returns(kv.value());
  auto before = [](std::string_view a, std::string_view b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  };
  bool ordered = true;
  for (std::size_t i = 1; i < o.size() && ordered; ++i) ordered = before((o.begin() + i - 1)->key(), (o.begin() + i)->key());
  if (ordered) return;
  std::vector<json::key_value_pair*> entries;
  entries.reserve(o.size());
  for (auto& kv : o) entries.push_back(&kv);
  std::sort(entries.begin(), entries.end(), [&](auto* a, auto* b) { return before(a->key(), b->key()); });
  json::object sorted(o.storage());
  sorted.reserve(o.size());
  for (auto* kv : entries) sorted.emplace(kv->key(), std::move(kv->value()));
  o = std::move(sorted);
}

void as_jsonb_returns(json::value& v) {
  if (auto* o = v.if_object()) {
    as_jsonb_returns(*o);
  } else if (auto* a = v.if_array()) {
    for (auto& x : *a) as_jsonb_returns(x);
  } else if (const auto* d = v.if_double(); d && std::isfinite(*d) && std::trunc(*d) == *d) {
    if (*d >= -9223372036854775808.0 && *d < 9223372036854775808.0) v = static_cast<std::int64_t>(*d);
    else if (*d >= 0 && *d < 18446744073709551616.0) v = static_cast<std::uint64_t>(*d);
  }
}

result<event> row_to_event(const pg::query_result& r, int row) {
  event e;
  e.position = log_position(r.int64(row, 0));
  e.id = r.text(row, 1);
  e.type = r.text(row, 2);
  e.version = static_cast<std::int32_t>(r.int64(row, 3));
  e.time = from_micros(r.int64(row, 4));
  e.aggregate_id = r.text(row, 5);
  e.aggregate_type = r.text(row, 6);
  e.sequence = sequence_number(r.int64(row, 7));
  if (!r.is_null(row, 8)) e.causation_id = std::string(r.text(row, 8));
  if (!r.is_null(row, 9)) e.correlation_id = std::string(r.text(row, 9));
  auto md = parse_stored_object(r.text(row, 10), "metadata");
  if (!md) return std::move(md).error();
  auto pl = parse_stored_object(r.text(row, 11), "payload");
  if (!pl) return std::move(pl).error();
  e.metadata = std::move(*md);
  e.payload = std::move(*pl);
  return e;
}

std::string text_array(const std::vector<std::string>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    pg::append_array_element(out, values[i]);
  }
  return out + "}";
}

// A type pattern as a PostgreSQL regex over '.' || type (see docs/adr/0003).
std::string pattern_regex(const type_pattern& p) {
  std::string out = "^";
  std::string_view text = p.text();
  std::size_t start = 0;
  while (start <= text.size()) {
    auto dot = text.find('.', start);
    auto tok = text.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (tok == "**") out += "(\\.[^.]+)*";
    else if (tok == "*") out += "\\.[^.]+";
    else {
      out += "\\.";
      for (char c : tok) {
        if (!std::isalnum(static_cast<unsigned char>(c))) out += '\\';
        out += c;
      }
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return out + "$";
}

bool path_is_keys_only(const json_path& p) {
  return std::all_of(p.steps().begin(), p.steps().end(),
                     [](const auto& s) { return std::holds_alternative<std::string>(s); });
}

std::string path_array(const json_path& p) {
  std::vector<std::string> keys;
  for (const auto& s : p.steps()) keys.push_back(std::get<std::string>(s));
  return text_array(keys);
}

// The value at a keys-only path wrapped back into objects: {"a":{"b":v}} for $.a.b.
json::value wrap(const json_path& p, const json::value& v) {
  json::value out = v;
  for (auto it = p.steps().rbegin(); it != p.steps().rend(); ++it) {
    json::object o;
    o[std::get<std::string>(*it)] = std::move(out);
    out = std::move(o);
  }
  return out;
}

struct sql_query {
  std::string where;           // " WHERE ..." (never empty)
  params values;               // $1..$n
  event_query residual;        // conditions SQL does not evaluate exactly (checked in C++)
  bool has_residual = false;
};

sql_query build_query(const event_query& q) {
  sql_query s;
  s.where = " WHERE TRUE";
  auto param = [&](std::string v) {
    s.values.emplace_back(std::move(v));
    return "$" + std::to_string(s.values.size());
  };
  if (!q.event_types.empty()) {
    bool literal = std::all_of(q.event_types.begin(), q.event_types.end(), [](auto& p) { return p.is_literal(); });
    std::vector<std::string> items;
    for (const auto& p : q.event_types) items.push_back(literal ? p.text() : pattern_regex(p));
    s.where += literal ? " AND type = ANY(" + param(text_array(items)) + "::text[])"
                       : " AND ('.' || type) ~ ANY(" + param(text_array(items)) + "::text[])";
  }
  if (!q.aggregate_types.empty()) s.where += " AND aggregate_type = ANY(" + param(text_array(q.aggregate_types)) + "::text[])";
  if (!q.aggregate_ids.empty()) s.where += " AND aggregate_id = ANY(" + param(text_array(q.aggregate_ids)) + "::text[])";
  if (q.from) s.where += " AND timestamp >= " + param(format_rfc3339(*q.from)) + "::timestamptz";
  if (q.to) s.where += " AND timestamp <= " + param(format_rfc3339(*q.to)) + "::timestamptz";
  if (q.sequence_from) s.where += " AND sequence_number >= " + param(std::to_string(*q.sequence_from)) + "::bigint";
  if (q.sequence_to) s.where += " AND sequence_number <= " + param(std::to_string(*q.sequence_to)) + "::bigint";
  auto json_conditions = [&](const std::vector<json_query>& conds, const char* column, std::vector<json_query>& residual) {
    for (const auto& c : conds) {
      const bool keys = path_is_keys_only(c.path());
      if (keys && c.op() == json_operator::equals) {
        // #> equality is exact (jsonb compares numbers by value, objects deeply); the
        // containment test before it lets the GIN index narrow the rows.
        s.where += std::string(" AND ") + column + " @> " + param(json::serialize(wrap(c.path(), c.value()))) +
                   "::jsonb AND " + column + " #> " + param(path_array(c.path())) + "::text[] = " +
                   param(json::serialize(c.value())) + "::jsonb";
      } else if (keys && c.op() == json_operator::exists) {
        s.where += std::string(" AND ") + column + " #> " + param(path_array(c.path())) + "::text[] IS NOT NULL";
      } else {
        residual.push_back(c);  // regex (RE2, never PostgreSQL's engine), contains, index paths
        s.has_residual = true;
      }
    }
  };
  json_conditions(q.metadata_query, "metadata", s.residual.metadata_query);
  json_conditions(q.payload_query, "payload", s.residual.payload_query);
  return s;
}

// The statements of the append transaction, prepared once per writer connection.
constexpr const char* sql_reserve =
    "INSERT INTO aggregates (aggregate_id, aggregate_type, version) "
    "SELECT a, t, 0 FROM unnest($1::text[], $2::text[]) AS x(a, t) ORDER BY a ON CONFLICT DO NOTHING";
constexpr const char* sql_lock =
    "SELECT aggregate_id, aggregate_type, version FROM aggregates WHERE aggregate_id = ANY($1::text[]) "
    "ORDER BY aggregate_id FOR UPDATE";
// The same locks, checked against the versions the writer expects ($2 types, $3
// versions, $4 how many): fails (22P02) unless every aggregate is at its expected
// version, which aborts the transaction and makes the server skip the rest of the round.
constexpr const char* sql_lock_expecting =
    "WITH a AS MATERIALIZED (SELECT aggregate_id, aggregate_type, version FROM aggregates "
    "WHERE aggregate_id = ANY($1::text[]) ORDER BY aggregate_id FOR UPDATE) "
    "SELECT (CASE WHEN count(*) = $4 THEN '0' ELSE 'pliers: aggregates moved on' END)::int "
    "FROM a JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS x(id, type, version) "
    "ON a.aggregate_id = x.id AND a.aggregate_type = x.type AND a.version = x.version";
// The stored events among the ids callers chose ($1): chosen ids are in event_ids; an id
// of the form this store generates names its position ($2, decoded), in the live log or
// the archive.
constexpr const char* sql_known_ids =
    "SELECT id, aggregate_id, sequence_number, position, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint "
    "FROM event_ids WHERE id = ANY($1::uuid[]) UNION ALL "
    "SELECT id, aggregate_id, sequence_number, position, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint "
    "FROM events WHERE position = ANY($2::bigint[]) AND id = ANY($1::uuid[]) UNION ALL "
    "SELECT id, aggregate_id, sequence_number, position, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint "
    "FROM event_archive WHERE position = ANY($2::bigint[]) AND id = ANY($1::uuid[])";
// Positions from the counter, the events from arrays (metadata and payloads as JSON
// arrays: one parse each, no array escaping), the aggregates' versions and counts, the
// writer's record of the batch: one statement. x is numbered in the order of the planned
// positions, so base + n is the event's position. An event without a chosen id ($3 NULL)
// gets the id of its position ($13 || hex(position | 2^63), core/uuid.hpp
// uuid_v8_positional); only chosen ids go to event_ids. Several appends of a batch may
// touch one aggregate: its highest sequence number is its version, the counts add up.
constexpr const char* sql_write =
    "WITH h AS (UPDATE log_head SET position = position + $1, last_timestamp = GREATEST(last_timestamp, "
    "$2::timestamptz) RETURNING position - $1 AS base, last_timestamp AS ts), "
    "x AS (SELECT * FROM ROWS FROM (unnest($3::uuid[]), unnest($4::text[]), unnest($5::int[]), "
    "unnest($6::text[]), unnest($7::text[]), unnest($8::bigint[]), unnest($9::uuid[]), unnest($10::uuid[]), "
    "jsonb_array_elements($11::jsonb), jsonb_array_elements($12::jsonb)) WITH ORDINALITY AS x(id, type, version, "
    "aggregate_id, aggregate_type, seq, causation_id, correlation_id, metadata, payload, n)), "
    "y AS (SELECT h.base + x.n AS position, h.ts, x.* FROM h, x), "
    "e AS (INSERT INTO events (position, id, type, version, timestamp, aggregate_id, aggregate_type, "
    "sequence_number, causation_id, correlation_id, metadata, payload) SELECT position, COALESCE(id, ($13::text "
    "|| overlay(to_hex(position | x'8000000000000000'::bigint) placing '-' from 5 for 0))::uuid), type, version, "
    "ts, aggregate_id, aggregate_type, seq, causation_id, correlation_id, metadata, payload FROM y), "
    "i AS (INSERT INTO event_ids (id, aggregate_id, sequence_number, position, timestamp) "
    "SELECT id, aggregate_id, seq, position, ts FROM y WHERE id IS NOT NULL), "
    "w AS (INSERT INTO pliers_writers (writer, batch, base, timestamp) SELECT $14::uuid, $15::bigint, base, ts "
    "FROM h ON CONFLICT (writer) DO UPDATE SET batch = excluded.batch, base = excluded.base, "
    "timestamp = excluded.timestamp), "
    "a AS (UPDATE aggregates a SET version = v.version, event_count = a.event_count + v.n, aggregate_type = v.t, "
    "first_timestamp = COALESCE(a.first_timestamp, h.ts), last_timestamp = h.ts FROM h, ("
    "SELECT aggregate_id, max(seq) AS version, count(*) AS n, min(aggregate_type) AS t FROM x GROUP BY "
    "aggregate_id) v WHERE a.aggregate_id = v.aggregate_id) "
    "SELECT base, (EXTRACT(EPOCH FROM ts) * 1000000)::bigint FROM h";

// What the planner sees in a PostgreSQL batch: rows read (and locked) at the start of the
// transaction, updated as each append of the batch is planned.
class batch_lookup final : public append_lookup {
 public:
  std::unordered_map<std::string, stored_event> events;
  std::unordered_map<std::string, aggregate_state> aggregates;  // version > 0 only
  std::optional<stored_event> find_event(std::string_view id) override {
    auto it = events.find(std::string(id));
    if (it == events.end()) return std::nullopt;
    return it->second;
  }
  std::optional<aggregate_state> find_aggregate(std::string_view id) override {
    auto it = aggregates.find(std::string(id));
    if (it == aggregates.end()) return std::nullopt;
    return it->second;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------

struct postgres_store::impl {
  std::string url;
  store_options opts;
  const clock& clk;
  std::string strategy = "monthly";

  // Reader pool.
  std::mutex pool_mutex;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<connection>> idle;  // GUARDED_BY(pool_mutex); nullptr = to reconnect
  std::unique_ptr<connection> writer;             // group-commit thread only
  std::unique_ptr<group_commit> committer;

  // Debounced NOTIFY after commits, and the partition maintenance job.
  std::mutex notify_mutex;
  std::condition_variable notify_cv;
  bool notify_pending = false;  // GUARDED_BY(notify_mutex)
  bool stopping = false;        // GUARDED_BY(notify_mutex)
  std::thread notifier;
  std::thread maintenance;
  std::thread listener;              // LISTEN pliers_events: commits of other processes
  std::atomic<int> notifier_pid{0};  // the server process that sends this process's NOTIFYs
  std::function<void(std::vector<event>)> on_commit;  // the owner's notify_committed
  std::function<bool()> observed;                     // the owner's observed()
  bool keep_events = false;  // this batch's events go to the commit observer (writer thread only)

  // Generated event ids (docs/adr/0007): the database's tag, read at open, and the text
  // every such id starts with.
  std::uint64_t id_tag = 0;
  std::string id_prefix;
  // This process's writer: its row in pliers_writers, the number of its last batch, and
  // the server process of its connection (group-commit thread only).
  const std::string writer_id = new_uuid_v4();
  std::int64_t writer_batch = 0;
  int writer_pid = 0;
  std::string writer_started;

  impl(std::string u, const store_options& o) : url(std::move(u)), opts(o), clk(o.time_source ? *o.time_source : default_clock()) {}

  void warn(const std::string& msg) const {
    if (opts.warn) opts.warn(msg);
  }

  result<std::unique_ptr<connection>> connect() {
    auto c = connection::open(url);
    if (!c) return std::move(c).error();
    auto& db = **c;
    // Commits wait for the WAL flush (DESIGN "Durability"): synchronous_commit is raised to
    // `on` unless the server asks for more (`remote_apply`: standbys applied the commit,
    // which read-your-writes on a standby needs).
    std::string setup =
        "SET TimeZone = 'UTC'; SELECT set_config('synchronous_commit', 'on', false) WHERE "
        "current_setting('synchronous_commit') <> 'remote_apply'; SET statement_timeout = " +
        std::to_string(opts.query_timeout.count());
    if (auto r = db.exec(setup); !r) return std::move(r).error();
    return c;
  }

  // Connects, retrying with backoff until connect_timeout (start-up and recovery).
  result<std::unique_ptr<connection>> connect_with_retry(std::chrono::milliseconds budget) {
    auto deadline = std::chrono::steady_clock::now() + budget;
    auto delay = std::chrono::milliseconds(50);
    while (true) {
      auto c = connect();
      if (c || c.error().code != errc::unavailable || std::chrono::steady_clock::now() + delay > deadline) return c;
      warn(c.error().message + "; retrying in " + std::to_string(delay.count()) + " ms");
      std::this_thread::sleep_for(delay);
      delay = std::min(delay * 2, std::chrono::milliseconds(2000));
    }
  }

  class lease {
   public:
    lease(impl& owner, std::unique_ptr<connection> c) : owner_(owner), c_(std::move(c)) {}
    ~lease() {
      {
        std::lock_guard lock(owner_.pool_mutex);
        owner_.idle.push_back(c_ && !c_->broken() ? std::move(c_) : nullptr);
      }
      owner_.pool_cv.notify_one();
    }
    connection& operator*() { return *c_; }
    connection* operator->() { return c_.get(); }

   private:
    impl& owner_;
    std::unique_ptr<connection> c_;
  };

  // Runs fn(connection&) on a pooled connection; once more on a fresh connection when the
  // first one turns out to be broken (server restart, terminated backend).
  template <class F>
  auto with_reader(F fn) -> decltype(fn(std::declval<connection&>())) {
    for (int attempt = 0;; ++attempt) {
      std::unique_ptr<connection> c;
      {
        std::unique_lock lock(pool_mutex);
        pool_cv.wait(lock, [&] { return !idle.empty(); });
        c = std::move(idle.back());
        idle.pop_back();
      }
      if (!c) {
        auto fresh = connect();
        if (!fresh) {
          lease giveback(*this, nullptr);
          return std::move(fresh).error();
        }
        c = std::move(*fresh);
      }
      lease l(*this, std::move(c));
      auto r = fn(*l);
      if (!r && l->broken() && attempt == 0) continue;
      return r;
    }
  }

  // --- partitions ---
  result<void> create_partition(connection& db, timestamp start) {
    const auto end = period_next(start, strategy);
    const auto name = partition_name(start);
    if (auto r = db.exec("BEGIN"); !r) return std::move(r).error();
    auto body = [&]() -> result<void> {
      // One creator at a time per schema; other processes wait, then find it attached.
      if (auto r = db.exec("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.pliers_partitions'))"); !r)
        return std::move(r).error();
      auto exists = db.exec("SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1) AND inhparent = to_regclass('events')",
                            {name});
      if (!exists) return std::move(exists).error();
      if (exists->rows() > 0) return {};
      if (auto r = db.exec("SET LOCAL lock_timeout = '5s'"); !r) return std::move(r).error();
      if (auto r = db.exec("CREATE TABLE IF NOT EXISTS " + name + " (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"); !r)
        return std::move(r).error();
      if (auto r = db.exec("ALTER TABLE events ATTACH PARTITION " + name + " FOR VALUES FROM ('" + format_rfc3339(start) +
                           "') TO ('" + format_rfc3339(end) + "')");
          !r)
        return std::move(r).error();
      return {};
    };
    auto r = body();
    if (!r) {
      (void)db.exec("ROLLBACK");
      return r;
    }
    return db.exec("COMMIT").has_value() ? result<void>() : result<void>(error::make(errc::unavailable, "commit partition"));
  }

  result<void> ensure(connection& db, timestamp around, int ahead) {
    if (strategy == "none") return {};
    auto start = period_start(around, strategy);
    for (int i = 0; i <= ahead; ++i) {
      if (auto r = create_partition(db, start); !r) return r;
      start = period_next(start, strategy);
    }
    return {};
  }

  // --- appends (docs/adr/0005-postgres-append-pipeline.md) ---

  result<void> prepare_writer(connection& db) {
    if (!db.is_prepared("pliers_write")) {
      // A new writer connection: what identifies its server process, to end it should the
      // connection break during a commit (see committed()).
      auto started = db.exec("SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()");
      if (!started) return std::move(started).error();
      writer_pid = db.backend_pid();
      writer_started = started->rows() > 0 ? std::string(started->text(0, 0)) : std::string();
    }
    static constexpr std::pair<const char*, const char*> statements[] = {
        {"pliers_begin", "BEGIN"},
        {"pliers_commit", "COMMIT"},
        {"pliers_rollback", "ROLLBACK"},
        {"pliers_reserve", sql_reserve},
        {"pliers_lock", sql_lock},
        {"pliers_lock_expecting", sql_lock_expecting},
        {"pliers_known_ids", sql_known_ids},
        {"pliers_write", sql_write}};
    for (const auto& [name, sql] : statements)
      if (!db.is_prepared(name))
        if (auto r = db.prepare(name, sql); !r) return r;
    return {};
  }

  // The aggregates this writer committed to last, with the version it left them at
  // (writer thread only). Another process may have moved them on since: a batch planned
  // with these versions locks its aggregates expecting them, and is planned again from the
  // locked rows when they differ. Bounded: cleared when full.
  static constexpr std::size_t max_known_aggregates = 65536;
  std::unordered_map<std::string, append_lookup::aggregate_state> known_aggregates;

  void remember(const std::string& id, append_lookup::aggregate_state state) {
    if (known_aggregates.size() >= max_known_aggregates && !known_aggregates.count(id)) known_aggregates.clear();
    known_aggregates.insert_or_assign(id, std::move(state));
  }

  // What every attempt at a batch needs, computed once per batch.
  struct batch_input {
    std::vector<std::string_view> aggregate_ids;  // sorted, distinct
    std::vector<std::string_view> first_types;    // of each: the aggregate type of its first event in the batch
    std::string aggregates, types;                // the same as text[]
    std::string client_ids;                       // uuid[]: ids the callers chose ("" when none)
    std::string generated_positions;              // bigint[]: the positions chosen ids of the generated form name
    // A caller chose an id of the form this store generates.
    bool chooses_generated() const { return generated_positions != "{}"; }
    // Metadata and payload of every event (units, requests, events in order), serialized:
    // event k's metadata is json[bounds[2k], bounds[2k+1]), its payload json[bounds[2k+1],
    // bounds[2k+2]). Filled while the server locks.
    std::string json;
    std::vector<std::size_t> bounds;
  };

  static std::string text_array(const std::vector<std::string_view>& values) {
    std::string out = "{";
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (i) out += ',';
      pg::append_array_element(out, values[i]);
    }
    return out + '}';
  }

  batch_input describe(std::span<group_commit::pending> batch) const {
    batch_input in;
    std::map<std::string_view, std::string_view> aggregates;  // sorted: id -> type
    std::vector<std::string_view> client_ids;
    for (const auto& p : batch)
      for (const auto& req : p.requests) {
        aggregates.try_emplace(req.aggregate_id, req.events.front().aggregate_type);
        for (const auto& e : req.events) {
          if (!e.id) continue;
          client_ids.push_back(*e.id);
          if (const auto position = uuid_v8_position(*e.id, id_tag); position >= 0) {
            in.generated_positions += in.generated_positions.empty() ? '{' : ',';
            in.generated_positions += std::to_string(position);
          }
        }
      }
    in.generated_positions = in.generated_positions.empty() ? "{}" : in.generated_positions + '}';
    for (const auto& [id, type] : aggregates) in.aggregate_ids.push_back(id), in.first_types.push_back(type);
    in.aggregates = text_array(in.aggregate_ids);
    in.types = text_array(in.first_types);
    if (!client_ids.empty()) in.client_ids = text_array(client_ids);
    return in;
  }

  static void serialize_json(std::span<group_commit::pending> batch, batch_input& in) {
    if (!in.bounds.empty()) return;  // done by an earlier attempt
    std::size_t events = 0;
    for (const auto& p : batch) events += p.event_count();
    in.bounds.reserve(2 * events + 1);
    in.json.reserve(events * 512);
    json::serializer sr;
    char buf[4096];
    auto append = [&](const json::object& o) {
      in.bounds.push_back(in.json.size());
      sr.reset(&o);
      while (!sr.done()) in.json += sr.read(buf, sizeof buf);
    };
    for (const auto& p : batch)
      for (const auto& req : p.requests)
        for (const auto& e : req.events) append(e.metadata), append(e.payload);
    in.bounds.push_back(in.json.size());
  }

  // Metadata and payloads are needed no more once serialized (every attempt writes them
  // from `batch_input`): freeing them here, while the server works, keeps the frees off
  // the path of the next batch.
  static void release_json(std::span<group_commit::pending> batch) {
    for (auto& p : batch)
      for (auto& req : p.requests)
        for (auto& e : req.events) {
          e.metadata = json::object(e.metadata.storage());
          e.payload = json::object(e.payload.storage());
        }
  }

  // The requests of a unit without metadata and payload: the planner needs everything
  // else, and the write takes metadata and payload from `batch_input` (no copies of the
  // JSON objects).
  static std::vector<append_request> planning_copy(const std::vector<append_request>& requests) {
    std::vector<append_request> out;
    out.reserve(requests.size());
    for (const auto& r : requests) {
      append_request c;
      c.aggregate_id = r.aggregate_id;
      c.expected_version = r.expected_version;
      c.events.reserve(r.events.size());
      for (const auto& e : r.events) {
        new_event ne;
        ne.id = e.id;
        ne.type = e.type;
        ne.aggregate_type = e.aggregate_type;
        ne.version = e.version;
        ne.causation_id = e.causation_id;
        ne.correlation_id = e.correlation_id;
        c.events.push_back(std::move(ne));
      }
      out.push_back(std::move(c));
    }
    return out;
  }

  // The plans of a batch: every unit planned on its own, positions relative to the batch.
  struct batch_plan {
    std::vector<std::vector<append_plan>> units;  // empty for a failed unit
    std::unordered_set<std::string> planned_here;  // ids this batch writes
    std::int64_t events = 0;                        // to write; their relative positions are 1..events
  };

  struct batch_outcome {
    std::vector<group_commit::unit_result> results;  // positions and times final once committed
    batch_plan plan;
    std::int64_t batch = 0;    // the number the write recorded in pliers_writers: resolves an unknown outcome
    bool commit_sent = false;  // past this point a broken connection leaves the outcome unknown
    std::string sqlstate;      // of the statement that failed
  };

  // A chosen id of the form this store generates must name a stored event (a retry):
  // otherwise its position may be handed out later, and the id with it.
  std::optional<error> unknown_generated_id(const std::vector<append_request>& requests,
                                            const batch_lookup& lookup) const {
    for (std::size_t r = 0; r < requests.size(); ++r)
      for (std::size_t k = 0; k < requests[r].events.size(); ++k) {
        const auto& id = requests[r].events[k].id;
        if (!id || lookup.events.count(*id)) continue;
        const auto position = uuid_v8_position(*id, id_tag);
        if (position < 0) continue;
        std::string field = "events[" + std::to_string(k) + "].id";
        if (requests.size() > 1) field = "appends[" + std::to_string(r) + "]." + field;
        return error::invalid(field, "event id " + *id + " has the form of the ids this store generates (position " +
                                         std::to_string(position) +
                                         ") but no stored event has it; choose an id of your own");
      }
    return std::nullopt;
  }

  void plan_batch(std::span<group_commit::pending> batch, batch_lookup& lookup, timestamp now, batch_outcome& out) {
    auto& bp = out.plan;
    bp = batch_plan{};
    out.results.clear();
    for (const auto& p : batch) {
      if (auto refused = unknown_generated_id(p.requests, lookup)) {
        out.results.emplace_back(std::move(*refused));
        bp.units.emplace_back();
        continue;
      }
      // Ids are left empty for the write to make from the positions (docs/adr/0007).
      auto unit = plan_group(planning_copy(p.requests), lookup, log_position(bp.events), now, false);
      if (!unit) {
        out.results.emplace_back(std::move(unit).error());
        bp.units.emplace_back();
        continue;
      }
      for (std::size_t r = 0; r < unit->size(); ++r) {
        const auto& plan = (*unit)[r];
        if (plan.replay) continue;
        // Later appends of the batch may retry or reuse the ids callers chose; a generated
        // id is new to everyone.
        for (std::size_t k = 0; k < plan.events.size(); ++k) {
          if (!p.requests[r].events[k].id) continue;
          const auto& e = plan.events[k];
          lookup.events.emplace(e.id, append_lookup::stored_event{e.aggregate_id, e.sequence, e.position, e.time});
          bp.planned_here.insert(e.id);  // its position is relative to the batch until the counter is read
        }
        lookup.aggregates[plan.events.back().aggregate_id] = {plan.aggregate_type, plan.result.version};
        bp.events = plan.events.back().position.value;
      }
      out.results.emplace_back(std::vector<append_result>{});
      bp.units.push_back(std::move(*unit));
    }
  }

  // The write statement's parameters: text arrays, and JSON arrays for metadata and
  // payloads, in position order. build_write() refuses (false) plans whose positions are
  // not 1, 2, ... (a bug: nothing is written).
  struct write_arrays {
    std::string count, at, ids, types, versions, aggregate_ids, aggregate_types, seqs, causations, correlations,
        metadata, payloads;
  };

  static bool build_write(std::span<group_commit::pending> batch, const batch_input& in, const batch_plan& bp,
                          timestamp now, write_arrays& w) {
    w.count = std::to_string(bp.events);
    w.at = format_rfc3339(now);
    for (auto* s : {&w.ids, &w.types, &w.versions, &w.aggregate_ids, &w.aggregate_types, &w.seqs, &w.causations,
                    &w.correlations})
      *s = "{";
    w.metadata = w.payloads = "[";
    w.metadata.reserve(in.json.size() / 2 + 64);
    w.payloads.reserve(in.json.size() / 2 + 64);
    auto nullable = [](std::string& out_array, const std::optional<std::string>& v) {
      if (v) pg::append_array_element(out_array, *v);
      else out_array += "NULL";
    };
    std::size_t event_index = 0;  // into in.bounds, over every event of the batch
    std::int64_t written = 0;
    for (std::size_t u = 0; u < batch.size(); ++u) {
      const auto& requests = batch[u].requests;
      for (std::size_t r = 0; r < requests.size(); ++r) {
        const std::size_t first = event_index;
        event_index += requests[r].events.size();
        if (bp.units[u].empty() || bp.units[u][r].replay) continue;
        const auto& plan = bp.units[u][r];
        for (std::size_t k = 0; k < plan.events.size(); ++k) {
          const auto& e = plan.events[k];
          if (e.position.value != ++written) return false;
          if (written > 1)
            for (auto* s : {&w.ids, &w.types, &w.versions, &w.aggregate_ids, &w.aggregate_types, &w.seqs,
                            &w.causations, &w.correlations, &w.metadata, &w.payloads})
              *s += ',';
          if (e.id.empty()) w.ids += "NULL";  // generated from the position by the write
          else pg::append_array_element(w.ids, e.id);
          pg::append_array_element(w.types, e.type);
          w.versions += std::to_string(e.version);
          pg::append_array_element(w.aggregate_ids, e.aggregate_id);
          pg::append_array_element(w.aggregate_types, e.aggregate_type);
          w.seqs += std::to_string(e.sequence.value);
          nullable(w.causations, e.causation_id);
          nullable(w.correlations, e.correlation_id);
          const std::size_t j = 2 * (first + k);
          w.metadata.append(in.json, in.bounds[j], in.bounds[j + 1] - in.bounds[j]);
          w.payloads.append(in.json, in.bounds[j + 1], in.bounds[j + 2] - in.bounds[j + 1]);
        }
      }
    }
    for (auto* s : {&w.ids, &w.types, &w.versions, &w.aggregate_ids, &w.aggregate_types, &w.seqs, &w.causations,
                    &w.correlations})
      *s += '}';
    w.metadata += ']', w.payloads += ']';
    return written == bp.events;
  }

  // One attempt at the whole batch in one transaction, in libpq pipeline mode (ADR 0005).
  //
  // When the writer knows the version of every aggregate of the batch (it committed to
  // them last), the batch is planned with those versions, and with the ids callers chose
  // taken as new, and sent in one round trip as one implicit transaction (the statements
  // of a pipeline round up to its sync; committed at the sync): lock the aggregates
  // (sorted) expecting those versions, then write. The lock is flushed first, so the
  // server locks while the metadata and payloads are serialized and the batch is planned.
  // If another process moved an aggregate on, the lock statement fails; if a chosen id is
  // already stored (a retry), the write fails on event_ids' primary key. Either way the
  // transaction aborts with nothing written, and the batch goes the long way:
  //
  // round 1: BEGIN, reserve the aggregates the writer does not know, lock them all
  //          (sorted), read the callers' ids that are already stored; serialize meanwhile;
  // round 2: plan with the locked versions, then write and COMMIT.
  //
  // Reservations always come before row locks, so processes cannot deadlock on the
  // aggregates; the counter (log_head) is taken last. When nothing is to be written
  // (conflicts, replays), ROLLBACK instead of the write: no commit record to wait for. On
  // error the transaction is gone (rolled back, or the connection is broken).
  result<void> try_commit(std::span<group_commit::pending> batch, batch_input& in, connection& db,
                          batch_outcome& out) {
    if (auto r = prepare_writer(db); !r) return r;
    auto rollback = [&](error e) -> result<void> {
      out.sqlstate = db.last_sqlstate();
      if (!db.broken() && !db.idle()) (void)db.exec("ROLLBACK");
      return e;
    };
    const auto now = clk.now();
    batch_lookup lookup;
    // A chosen id of the generated form is checked by position, which the primary key of
    // event_ids cannot do: such a batch goes the long way.
    bool speculative = !in.chooses_generated();
    for (std::size_t i = 0; speculative && i < in.aggregate_ids.size(); ++i) {
      auto it = known_aggregates.find(std::string(in.aggregate_ids[i]));
      if (it == known_aggregates.end() || it->second.aggregate_type != in.first_types[i]) speculative = false;
      else lookup.aggregates.emplace(it->first, it->second);
    }
    if (speculative) {
      std::string versions = "{";
      for (const auto& id : in.aggregate_ids) {
        if (versions.size() > 1) versions += ',';
        versions += std::to_string(lookup.aggregates.at(std::string(id)).version);
      }
      versions += '}';
      const std::string count = std::to_string(in.aggregate_ids.size());
      const char* lock_values[] = {in.aggregates.c_str(), in.types.c_str(), versions.c_str(), count.c_str()};
      if (auto r = db.send({"pliers_lock_expecting", nullptr, lock_values}); !r) return rollback(r.error());
      if (auto r = db.flush(); !r) return rollback(r.error());
      serialize_json(batch, in);  // while the server locks
      // Ids the callers chose are planned as new: event_ids' primary key refuses one that
      // is already stored (23505), and the batch then goes the long way, which reads them.
      // An append refused by the planner writes nothing for the key to check, and had its
      // ids been stored the answer could differ (a retry is a replay, whatever its
      // expectedVersion): such a batch goes the long way at once.
      plan_batch(batch, lookup, now, out);
      bool unchecked = false;
      for (std::size_t u = 0; u < batch.size() && !unchecked; ++u)
        if (!out.results[u])
          for (const auto& req : batch[u].requests)
            for (const auto& e : req.events) unchecked = unchecked || e.id.has_value();
      auto done = unchecked ? abandon(db) : finish(batch, in, now, false, db, out);
      if (done) return done;
      const auto failed = db.failed_statement();
      const bool moved_on = failed == std::size_t{0};
      const bool id_stored = unchecked || (failed == std::size_t{1} && db.last_sqlstate() == "23505" &&
                                           !in.client_ids.empty());
      if (!moved_on && !id_stored) return rollback(done.error());
      // Another process appended to one of the aggregates: forget what this writer knew
      // about them and plan again from the locked rows. (The failed round's implicit
      // transaction is rolled back already.)
      if (moved_on)
        for (const auto& id : in.aggregate_ids) known_aggregates.erase(std::string(id));
      out = batch_outcome{};
      lookup = batch_lookup{};
    }
    // Round 1.
    std::vector<std::string_view> unknown_ids, unknown_types;
    for (std::size_t i = 0; i < in.aggregate_ids.size(); ++i)
      if (!known_aggregates.count(std::string(in.aggregate_ids[i])))
        unknown_ids.push_back(in.aggregate_ids[i]), unknown_types.push_back(in.first_types[i]);
    std::string reserve_ids, reserve_types;
    const char* reserve_values[] = {nullptr, nullptr};
    const char* lock_values[] = {in.aggregates.c_str()};
    const char* ids_values[] = {in.client_ids.c_str(), in.generated_positions.c_str()};
    auto send_round_1 = [&](bool restart) -> result<void> {
      if (restart) {
        // An aggregate this writer thought existed was not found: reserve them all.
        if (auto r = db.send({"pliers_rollback"}); !r) return r;
        reserve_values[0] = in.aggregates.c_str(), reserve_values[1] = in.types.c_str();
      } else if (!unknown_ids.empty()) {
        reserve_ids = text_array(unknown_ids), reserve_types = text_array(unknown_types);
        reserve_values[0] = reserve_ids.c_str(), reserve_values[1] = reserve_types.c_str();
      }
      if (auto r = db.send({"pliers_begin"}); !r) return r;
      if (reserve_values[0])
        if (auto r = db.send({"pliers_reserve", nullptr, reserve_values}); !r) return r;
      if (auto r = db.send({"pliers_lock", nullptr, lock_values}); !r) return r;
      if (!in.client_ids.empty())
        if (auto r = db.send({"pliers_known_ids", nullptr, ids_values}); !r) return r;
      return db.sync();
    };
    if (auto r = send_round_1(false); !r) return rollback(r.error());
    serialize_json(batch, in);  // while the server locks
    auto round = db.receive();
    if (!round) return rollback(round.error());
    const std::size_t ids_results = in.client_ids.empty() ? 0 : 1;
    if (static_cast<std::size_t>((*round)[round->size() - 1 - ids_results].rows()) < in.aggregate_ids.size()) {
      if (auto r = send_round_1(true); !r) return rollback(r.error());
      round = db.receive();
      if (!round) return rollback(round.error());
      if (static_cast<std::size_t>((*round)[round->size() - 1 - ids_results].rows()) < in.aggregate_ids.size())
        return rollback(error::make(errc::internal, "postgres: reserved aggregates not found"));
    }
    const auto& locked = (*round)[round->size() - 1 - ids_results];
    for (int i = 0; i < locked.rows(); ++i)
      if (locked.int64(i, 2) > 0)
        lookup.aggregates.emplace(std::string(locked.text(i, 0)),
                                  append_lookup::aggregate_state{std::string(locked.text(i, 1)), locked.int64(i, 2)});
    if (ids_results) {
      const auto& found = round->back();
      for (int i = 0; i < found.rows(); ++i)
        lookup.events.emplace(std::string(found.text(i, 0)),
                              append_lookup::stored_event{std::string(found.text(i, 1)), sequence_number(found.int64(i, 2)),
                                                          log_position(found.int64(i, 3)), from_micros(found.int64(i, 4))});
    }
    for (const auto& [id, state] : lookup.aggregates) remember(id, state);
    // Round 2.
    plan_batch(batch, lookup, now, out);
    if (auto r = finish(batch, in, now, true, db, out); !r) return rollback(r.error());
    return {};
  }

  // Ends a one-round attempt after its lock, without writing: ROLLBACK, then the round's
  // results. Returns an error (failed_statement() 0 when the lock failed) for the caller
  // to go the long way.
  static result<void> abandon(connection& db) {
    if (auto r = db.send({"pliers_begin"}); !r) return r;  // see finish()
    if (auto r = db.send({"pliers_rollback"}); !r) return r;
    if (auto r = db.sync(); !r) return r;
    if (auto r = db.receive(); !r) return std::move(r).error();
    return error::make(errc::unavailable, "postgres: chosen ids to check");
  }

  // Sends the rest of the round: the write (and COMMIT after an explicit BEGIN), or
  // ROLLBACK when there is nothing to write; receives the whole round and fills in the
  // stored positions and time. `locked`: the locks were taken and checked in an earlier
  // round, within BEGIN; otherwise the round is one implicit transaction. On error the
  // transaction may be open in the aborted state (the caller rolls back).
  result<void> finish(std::span<group_commit::pending> batch, const batch_input& in, timestamp now, bool locked,
                      connection& db, batch_outcome& out) {
    auto& bp = out.plan;
    write_arrays w;
    if (bp.events > 0) {
      if (!build_write(batch, in, bp, now, w)) {
        if (db.sync()) (void)db.receive();
        return error::make(errc::internal, "postgres: planned positions are not consecutive");
      }
      out.batch = ++writer_batch;
      const std::string batch_number = std::to_string(out.batch);
      const char* write_values[] = {w.count.c_str(),           w.at.c_str(),          w.ids.c_str(),
                                    w.types.c_str(),           w.versions.c_str(),    w.aggregate_ids.c_str(),
                                    w.aggregate_types.c_str(), w.seqs.c_str(),        w.causations.c_str(),
                                    w.correlations.c_str(),    w.metadata.c_str(),    w.payloads.c_str(),
                                    id_prefix.c_str(),         writer_id.c_str(),     batch_number.c_str()};
      out.commit_sent = true;
      if (auto r = db.send({"pliers_write", nullptr, write_values}); !r) return r;
      if (locked)
        if (auto r = db.send({"pliers_commit"}); !r) return r;
    } else {
      // In an implicit transaction, BEGIN first turns it into an explicit one (statements
      // before included), which ROLLBACK then ends: no commit record, no warning.
      if (!locked)
        if (auto r = db.send({"pliers_begin"}); !r) return r;
      if (auto r = db.send({"pliers_rollback"}); !r) return r;
    }
    if (auto r = db.sync(); !r) return r;
    if (!keep_events) release_json(batch);  // while the server writes and commits
    auto done = db.receive();
    if (!done) {
      out.sqlstate = db.last_sqlstate();
      // Nothing was to be written and the locks were checked before: the outcome stands
      // whatever happened to the ROLLBACK (a broken connection is replaced later).
      if (bp.events == 0 && locked && !db.failed_statement()) return finish_results(0, {}, out);
      return std::move(done).error();
    }
    if (bp.events == 0) return finish_results(0, {}, out);
    // The write statement's row: the first position minus one, and the commit time.
    const auto& head = (*done)[done->size() - (locked ? 2 : 1)];
    return finish_results(head.int64(0, 0), from_micros(head.int64(0, 1)), out);
  }

  // Once the batch committed (or wrote nothing): the stored positions, ids and time in
  // every result, and what this writer now knows of the aggregates it wrote.
  result<void> finish_results(std::int64_t base, timestamp commit_time, batch_outcome& out) {
    auto& bp = out.plan;
    for (std::size_t i = 0; i < bp.units.size(); ++i) {
      if (bp.units[i].empty()) continue;
      std::vector<append_result> unit;
      for (auto& plan : bp.units[i]) {
        if (!plan.replay) remember(plan.result.aggregate_id, {plan.aggregate_type, plan.result.version});
        for (auto& r : plan.result.events) {
          // A retry of an append planned earlier in this same batch replays provisional
          // positions too: make them the stored ones.
          if (!plan.replay || bp.planned_here.count(r.id))
            r.position = log_position(r.position.value + base), r.time = commit_time;
          if (r.id.empty()) r.id = uuid_v8_positional(id_tag, r.position.value);  // as the write made it
        }
        unit.push_back(std::move(plan.result));
      }
      out.results[i] = std::move(unit);
    }
    return {};
  }

  // Did this writer's batch number `batch` commit? Asked after the connection broke while
  // the commit was on its way. The server process of that connection may still be working
  // on it (it runs what it received before the break): it is ended first, and waited for,
  // so that the answer is final. When the batch committed: its base position and time.
  result<std::optional<std::pair<std::int64_t, timestamp>>> committed(std::int64_t batch) {
    const std::string old_pid = std::to_string(writer_pid), old_start = writer_started;
    auto c = connect_with_retry(opts.connect_timeout);
    if (!c) return std::move(c).error();
    writer = std::move(*c);
    if (!old_start.empty()) {
      const params old{old_pid, old_start};
      // Waits for the process to be gone, within the statement timeout.
      const auto wait_ms = std::max<std::int64_t>(1000, opts.query_timeout.count() - 1000);
      auto ended = writer->exec("SELECT pg_terminate_backend(pid, " + std::to_string(wait_ms) +
                                    ") FROM pg_stat_activity WHERE pid = $1::int AND backend_start = $2::timestamptz",
                                old);
      if (!ended) return std::move(ended).error();
      auto still = writer->exec("SELECT 1 FROM pg_stat_activity WHERE pid = $1::int AND backend_start = $2::timestamptz", old);
      if (!still) return std::move(still).error();
      if (still->rows() > 0)
        return error::make(errc::unavailable, "postgres: the server process of an interrupted commit (pid " + old_pid +
                                                  ") did not end; the outcome of that commit is unknown");
    }
    auto r = writer->exec(
        "SELECT base, (EXTRACT(EPOCH FROM timestamp) * 1000000)::bigint FROM pliers_writers "
        "WHERE writer = $1::uuid AND batch = $2::bigint",
        {writer_id, std::to_string(batch)});
    if (!r) return std::move(r).error();
    if (r->rows() == 0) return std::optional<std::pair<std::int64_t, timestamp>>();
    return std::optional<std::pair<std::int64_t, timestamp>>({r->int64(0, 0), from_micros(r->int64(0, 1))});
  }

  // The events a committed batch stored, in position order, for the commit observer: the
  // planned events with their stored ids, positions and time, and the callers' metadata
  // and payloads (moved out of the requests; make_as_read() turns them into what a read
  // returns, on the observer's thread).
  static std::vector<event> stored_events(std::span<group_commit::pending> batch, batch_outcome& out) {
    std::vector<event> events;
    events.reserve(static_cast<std::size_t>(out.plan.events));
    for (std::size_t u = 0; u < batch.size(); ++u) {
      if (out.plan.units[u].empty() || !out.results[u]) continue;
      for (std::size_t r = 0; r < out.plan.units[u].size(); ++r) {
        auto& plan = out.plan.units[u][r];
        if (plan.replay) continue;
        const auto& stored = (*out.results[u])[r].events;
        auto& requested = batch[u].requests[r].events;
        for (std::size_t k = 0; k < plan.events.size(); ++k) {
          event e = std::move(plan.events[k]);
          e.id = stored[k].id;
          e.position = stored[k].position;
          e.time = stored[k].time;
          e.metadata = std::move(requested[k].metadata);
          e.payload = std::move(requested[k].payload);
          events.push_back(std::move(e));
        }
      }
    }
    return events;
  }

  void committed_batch(std::span<group_commit::pending> batch, batch_outcome& out) {
    if (out.plan.events == 0) return;  // nothing stored: nobody to wake
    signal_commit(keep_events ? stored_events(batch, out) : std::vector<event>());
  }

  std::vector<group_commit::unit_result> commit(std::span<group_commit::pending> batch) {
    error last = error::make(errc::unavailable, "postgres: not connected");
    batch_input in = describe(batch);
    keep_events = observed && observed();
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (!writer || !writer->idle()) {
        writer.reset();
        auto c = connect_with_retry(opts.connect_timeout);
        if (!c) {
          last = c.error();
          break;
        }
        writer = std::move(*c);
      }
      batch_outcome out;
      auto r = try_commit(batch, in, *writer, out);
      if (r) {
        committed_batch(batch, out);
        return std::move(out.results);
      }
      last = r.error();
      if (out.sqlstate == "23514") {  // no partition for these timestamps: create, retry
        auto created = writer->idle() ? ensure(*writer, clk.now(), 1) : result<void>();
        if (!created) last = created.error();
        continue;
      }
      if (!writer->broken() && r.error().code != errc::unavailable) break;  // a real error: report it
      if (out.commit_sent && writer->broken()) {
        // The connection broke while the commit was on its way: it may have committed. Ask
        // before retrying, so that nothing is written twice and nothing acknowledged is lost.
        auto done = committed(out.batch);
        if (!done) {
          last = done.error();
          break;
        }
        if (*done) {
          (void)finish_results((*done)->first, (*done)->second, out);
          committed_batch(batch, out);
          return std::move(out.results);
        }
      }
      // Rolled back (deadlock, lost connection...): plan and write the batch again, on a
      // new connection when this one is not usable.
      std::this_thread::sleep_for(std::chrono::milliseconds(50 << attempt));
    }
    std::vector<group_commit::unit_result> out;
    for (std::size_t i = 0; i < batch.size(); ++i) out.emplace_back(last);
    return out;
  }

  void signal_commit(std::vector<event> committed) {
    if (on_commit) on_commit(std::move(committed));
    {
      std::lock_guard lock(notify_mutex);
      notify_pending = true;
    }
    // notify_all: the maintenance thread waits on the same condition variable, and a
    // notify_one that woke it (its predicate false, back to sleep) lost this NOTIFY.
    notify_cv.notify_all();
  }

  // After commits, at most one payload-free NOTIFY per 5 ms, from its own connection and
  // never inside an append transaction.
  void run_notifier() {
    std::unique_ptr<connection> db;
    std::unique_lock lock(notify_mutex);
    while (true) {
      notify_cv.wait(lock, [&] { return stopping || notify_pending; });
      if (stopping) return;
      notify_pending = false;
      lock.unlock();
      if (!db || db->broken()) {
        auto c = connect();
        db = c ? std::move(*c) : nullptr;
        // A wake-up carries no data: its transaction need not wait for a WAL flush next to
        // the writer's commits.
        if (db) (void)db->exec("SET synchronous_commit = off");
        notifier_pid = db ? db->backend_pid() : 0;
      }
      if (db) (void)db->exec("NOTIFY pliers_events");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      lock.lock();
    }
  }

  // Wakes the log tailer when any process commits (payload-free NOTIFY), so other
  // processes' events reach this node's subscribers without polling delay.
  void run_listener() {
    std::unique_ptr<connection> db;
    while (true) {
      {
        std::lock_guard lock(notify_mutex);
        if (stopping) return;
      }
      if (!db || db->broken()) {
        auto c = connect();
        if (c && (*c)->exec("LISTEN pliers_events")) {
          db = std::move(*c);
          if (on_commit) on_commit({});  // we may have missed some while reconnecting
        } else {
          db.reset();
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          continue;
        }
      }
      // This process's own commits were handed to the observer already: only another
      // process's NOTIFY means something to read.
      const auto foreign = [this](int pid) { return pid != notifier_pid.load(); };
      if (db->wait_for_notification(std::chrono::milliseconds(200), foreign) && on_commit) on_commit({});
    }
  }

  void run_maintenance() {
    std::unique_lock lock(notify_mutex);
    while (!stopping) {
      if (notify_cv.wait_for(lock, std::chrono::minutes(10), [&] { return stopping; })) return;
      lock.unlock();
      auto r = with_reader([&](connection& db) { return ensure(db, clk.now(), 3); });
      if (!r) warn("partition maintenance failed: " + r.error().message);
      // Writers' records matter only while a commit's outcome is in doubt: those of
      // processes gone for a day are dropped.
      auto pruned = with_reader([&](connection& db) -> result<void> {
        auto q = db.exec("DELETE FROM pliers_writers WHERE timestamp < now() - interval '1 day'");
        if (!q) return std::move(q).error();
        return {};
      });
      if (!pruned) warn("pruning pliers_writers failed: " + pruned.error().message);
      lock.lock();
    }
  }
};

postgres_store::postgres_store(std::unique_ptr<impl> p) : impl_(std::move(p)) {
  impl_->on_commit = [this](std::vector<event> committed) { notify_committed(std::move(committed)); };
  impl_->observed = [this] { return observed(); };
  auto* raw = impl_.get();
  impl_->listener = std::thread([raw] { raw->run_listener(); });
}

postgres_store::~postgres_store() {
  if (!impl_) return;
  if (impl_->committer) impl_->committer->stop();
  {
    std::lock_guard lock(impl_->notify_mutex);
    impl_->stopping = true;
  }
  impl_->notify_cv.notify_all();
  if (impl_->notifier.joinable()) impl_->notifier.join();
  if (impl_->maintenance.joinable()) impl_->maintenance.join();
  if (impl_->listener.joinable()) impl_->listener.join();
}

namespace {

result<void> run_migrations(connection& db, const store_options& o) {
  if (o.partition_strategy != "monthly" && o.partition_strategy != "weekly" && o.partition_strategy != "daily" &&
      o.partition_strategy != "none")
    return error::invalid("store.partition_strategy", "must be monthly, weekly, daily or none");
  if (o.json_index != "gin" && o.json_index != "gin_path_ops" && o.json_index != "none")
    return error::invalid("store.json_index", "must be gin, gin_path_ops or none");
  if (auto r = db.exec("BEGIN"); !r) return std::move(r).error();
  auto body = [&]() -> result<void> {
    // Serializes migrations across processes starting together.
    if (auto r = db.exec("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.pliers_migrations'))"); !r)
      return std::move(r).error();
    if (auto r = db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())");
        !r)
      return std::move(r).error();
    auto applied = db.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    if (!applied) return std::move(applied).error();
    const auto version = applied->int64(0, 0);
    constexpr std::int64_t known = 6;
    if (version > known)
      return error::make(errc::unavailable, "database schema version " + std::to_string(version) +
                                                " is newer than this server knows (" + std::to_string(known) + ")");
    if (version < 1) {
      if (auto r = db.exec(migration_1(o.partition_strategy, o.json_index)); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (1)"); !r) return std::move(r).error();
    }
    if (version < 2) {
      if (auto r = db.exec(migration_2); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (2)"); !r) return std::move(r).error();
    }
    if (version < 3) {
      if (auto r = db.exec(migration_3); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (3)"); !r) return std::move(r).error();
    }
    if (version < 4) {
      if (auto r = db.exec(migration_4); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (4)"); !r) return std::move(r).error();
    }
    if (version < 5) {
      if (auto r = db.exec(migration_5); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (5)"); !r) return std::move(r).error();
    }
    if (version < 6) {
      if (auto r = db.exec(migration_6()); !r) return std::move(r).error();
      if (auto r = db.exec("INSERT INTO schema_migrations (version) VALUES (6)"); !r) return std::move(r).error();
    }
    return {};
  };
  auto r = body();
  if (!r) {
    (void)db.exec("ROLLBACK");
    return r;
  }
  if (auto c = db.exec("COMMIT"); !c) return std::move(c).error();
  return {};
}

}  // namespace

const postgres_append_statements& postgres_append_sql() {
  static constexpr postgres_append_statements statements{sql_reserve, sql_lock, sql_lock_expecting, sql_known_ids,
                                                         sql_write};
  return statements;
}

std::string postgres_schema_sql(const std::string& partition_strategy, const std::string& json_index) {
  return migration_1(partition_strategy, json_index) + migration_2 + migration_3 + migration_4 + migration_5 +
         migration_6();
}

result<void> migrate_postgres(const std::string& url, const store_options& options) {
  postgres_store::impl p(url, options);
  auto c = p.connect_with_retry(options.connect_timeout);
  if (!c) return std::move(c).error();
  return run_migrations(**c, options);
}

result<std::unique_ptr<postgres_store>> postgres_store::open(const std::string& url, const store_options& options) {
  auto p = std::make_unique<impl>(url, options);
  auto w = p->connect_with_retry(options.connect_timeout);
  if (!w) return std::move(w).error();
  p->writer = std::move(*w);
  if (options.run_migrations)
    if (auto r = run_migrations(*p->writer, options); !r) return std::move(r).error();
  auto settings = p->writer->exec("SELECT value FROM pliers_settings WHERE key = 'partition_strategy'");
  if (!settings) return error::make(errc::unavailable, "the database has no pliers schema; run `pliers-events migrate`");
  if (settings->rows() > 0) p->strategy = settings->text(0, 0);
  auto tag = p->writer->exec("SELECT value FROM pliers_settings WHERE key = 'id_tag'");
  if (!tag) return std::move(tag).error();
  if (tag->rows() == 0 || tag->text(0, 0).size() != 15 ||
      !std::all_of(tag->text(0, 0).begin(), tag->text(0, 0).end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
    return error::make(errc::unavailable, "the database's pliers schema is older than this server; run `pliers-events migrate`");
  p->id_tag = std::stoull(std::string(tag->text(0, 0)), nullptr, 16);
  p->id_prefix = uuid_v8_positional_prefix(p->id_tag);
  if (auto r = p->ensure(*p->writer, p->clk.now(), 3); !r) return std::move(r).error();
  for (std::size_t i = 0; i < std::max<std::size_t>(options.read_connections, 1); ++i) {
    auto c = p->connect();
    if (!c) return std::move(c).error();
    p->idle.push_back(std::move(*c));
  }
  auto* raw = p.get();
  p->committer = std::make_unique<group_commit>(
      [raw](std::span<group_commit::pending> batch) { return raw->commit(batch); }, options.max_pending_appends);
  p->notifier = std::thread([raw] { raw->run_notifier(); });
  p->maintenance = std::thread([raw] { raw->run_maintenance(); });
  return std::unique_ptr<postgres_store>(new postgres_store(std::move(p)));
}

void postgres_store::submit_group(std::vector<append_request> requests, group_callback done) {
  impl_->committer->enqueue(std::move(requests), std::move(done));
}

log_position postgres_store::head() {
  auto r = impl_->with_reader([](connection& db) -> result<std::int64_t> {
    auto q = db.exec("SELECT position FROM log_head");
    if (!q) return std::move(q).error();
    return q->int64(0, 0);
  });
  return log_position(r ? *r : 0);
}

namespace {

// Events of a SELECT of event_columns, decoded row by row as they arrive (single-row mode):
// decoding the JSON of one page overlaps the server sending the rest of it.
result<std::vector<event>> select_events(connection& db, const std::string& sql, const pg::params& p,
                                         std::size_t expected_rows) {
  std::vector<event> out;
  out.reserve(std::min<std::size_t>(expected_rows, 10000));
  auto ok = db.exec_rows(sql, p, [&](const pg::query_result& row) -> result<void> {
    auto e = row_to_event(row, 0);
    if (!e) return std::move(e).error();
    out.push_back(std::move(*e));
    return {};
  });
  if (!ok) return std::move(ok).error();
  return out;
}

}  // namespace

result<std::vector<event>> postgres_store::read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                                          std::optional<std::int64_t> to_version, std::size_t limit) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<event>> {
    return select_events(db,
                         std::string("SELECT ") + event_columns +
                             " FROM events WHERE aggregate_id = $1 AND sequence_number >= $2 AND sequence_number <= $3 "
                             "ORDER BY sequence_number LIMIT $4",
                         {std::string(aggregate_id), std::to_string(from_version),
                          std::to_string(to_version.value_or(INT64_MAX)), std::to_string(limit)},
                         limit);
  });
}

result<std::vector<event>> postgres_store::read_all(log_position after, std::size_t limit) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<event>> {
    return select_events(db,
                         std::string("SELECT ") + event_columns + " FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                         {std::to_string(after.value), std::to_string(limit)}, limit);
  });
}

result<query_result> postgres_store::query(const event_query& q, const pagination& page) {
  auto s = build_query(q);
  return impl_->with_reader([&](connection& db) -> result<query_result> {
    if (auto r = db.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); !r) return std::move(r).error();
    auto run = [&]() -> result<query_result> {
      query_result out;
      const auto n = s.values.size();
      if (!s.has_residual) {
        if (page.count_total) {
          auto count = db.exec("SELECT count(*) FROM events" + s.where, s.values);
          if (!count) return std::move(count).error();
          out.total_count = count->int64(0, 0);
        }
        auto values = s.values;
        values.emplace_back(std::to_string(page.after.value));
        values.emplace_back(std::to_string(page.limit + 1));
        auto evs = select_events(db,
                                 std::string("SELECT ") + event_columns + " FROM events" + s.where + " AND position > $" +
                                     std::to_string(n + 1) + " ORDER BY position LIMIT $" + std::to_string(n + 2),
                                 values, page.limit + 1);
        if (!evs) return std::move(evs).error();
        out.events = std::move(*evs);
        if (out.events.size() > page.limit) {
          out.events.pop_back();
          out.has_more = true;
        }
      } else {
        // Conditions SQL cannot evaluate exactly are checked here, over the candidates in
        // position order, 1000 at a time (bounded memory); the count needs all of them.
        std::int64_t last = page.count_total ? 0 : page.after.value;
        while (true) {
          auto values = s.values;
          values.emplace_back(std::to_string(last));
          auto evs = select_events(db,
                                   std::string("SELECT ") + event_columns + " FROM events" + s.where + " AND position > $" +
                                       std::to_string(n + 1) + " ORDER BY position LIMIT 1000",
                                   values, 1000);
          if (!evs) return std::move(evs).error();
          for (auto& e : *evs) {
            last = e.position.value;
            if (!s.residual.matches(e)) continue;
            if (page.count_total) ++out.total_count;
            if (e.position <= page.after) continue;
            if (out.events.size() < page.limit) out.events.push_back(std::move(e));
            else out.has_more = true;
          }
          if (evs->size() < 1000 || (out.has_more && !page.count_total)) break;
        }
      }
      if (out.has_more) out.cursor = encode_cursor(out.events.back().position);
      return out;
    };
    auto r = run();
    if (!db.broken()) (void)db.exec(r ? "COMMIT" : "ROLLBACK");
    return r;
  });
}

result<event> postgres_store::get_event(std::string_view id) {
  return impl_->with_reader([&](connection& db) -> result<event> {
    // A generated id names its position; a chosen one is found through event_ids.
    const auto position = uuid_v8_position(id, impl_->id_tag);
    auto r = position >= 0
                 ? db.exec(std::string("SELECT ") + event_columns + " FROM events WHERE position = $1 AND id = $2::uuid",
                           {std::to_string(position), std::string(id)})
                 : db.exec(std::string("SELECT ") + event_columns +
                               " FROM events WHERE (position, timestamp) = (SELECT position, timestamp FROM event_ids "
                               "WHERE id = $1::uuid)",
                           {std::string(id)});
    if (!r) return std::move(r).error();
    if (r->rows() == 0) return error::make(errc::not_found, "no event with id " + std::string(id));
    return row_to_event(*r, 0);
  });
}

void postgres_store::make_as_read(event& e) const {
  as_jsonb_returns(e.metadata);
  as_jsonb_returns(e.payload);
}

result<aggregate_metadata> postgres_store::get_aggregate_metadata(std::string_view aggregate_id) {
  return impl_->with_reader([&](connection& db) -> result<aggregate_metadata> {
    auto r = db.exec(
        "SELECT aggregate_type, version, event_count, (EXTRACT(EPOCH FROM first_timestamp) * 1000000)::bigint, "
        "(EXTRACT(EPOCH FROM last_timestamp) * 1000000)::bigint, s.sequence_number, "
        "(EXTRACT(EPOCH FROM s.created_at) * 1000000)::bigint FROM aggregates a LEFT JOIN LATERAL ("
        "SELECT sequence_number, created_at FROM event_snapshots WHERE aggregate_id = a.aggregate_id "
        "ORDER BY sequence_number DESC LIMIT 1) s ON TRUE WHERE a.aggregate_id = $1 AND a.version > 0",
        {std::string(aggregate_id)});
    if (!r) return std::move(r).error();
    if (r->rows() == 0) return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
    aggregate_metadata m;
    m.aggregate_id = aggregate_id;
    m.aggregate_type = r->text(0, 0);
    m.version = r->int64(0, 1);
    m.event_count = r->int64(0, 2);
    m.first_event_time = from_micros(r->int64(0, 3));
    m.last_event_time = from_micros(r->int64(0, 4));
    if (!r->is_null(0, 5)) {
      m.snapshot_version = r->int64(0, 5);
      m.snapshot_time = from_micros(r->int64(0, 6));
    }
    auto ranges = db.exec("SELECT from_seq, to_seq FROM compacted_ranges WHERE aggregate_id = $1 ORDER BY from_seq",
                          {std::string(aggregate_id)});
    if (!ranges) return std::move(ranges).error();
    for (int i = 0; i < ranges->rows(); ++i) m.compacted_ranges.push_back({ranges->int64(i, 0), ranges->int64(i, 1)});
    m.compacted_ranges = merge_ranges(std::move(m.compacted_ranges));
    return m;
  });
}

result<void> postgres_store::create_snapshot(std::string_view aggregate_id, std::int64_t sequence, json::object data) {
  return impl_->with_reader([&](connection& db) -> result<void> {
    auto agg = db.exec("SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = $1 AND version > 0",
                       {std::string(aggregate_id)});
    if (!agg) return std::move(agg).error();
    if (agg->rows() == 0) return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
    const auto version = agg->int64(0, 1);
    if (sequence < 1 || sequence > version)
      return error::invalid("sequenceNumber", "must be between 1 and the aggregate's version " + std::to_string(version));
    auto r = db.exec(
        "INSERT INTO event_snapshots (aggregate_id, sequence_number, aggregate_type, snapshot_data, created_at) "
        "VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz) ON CONFLICT (aggregate_id, sequence_number) DO UPDATE SET "
        "snapshot_data = excluded.snapshot_data, created_at = excluded.created_at",
        {std::string(aggregate_id), std::to_string(sequence), std::string(agg->text(0, 0)), json::serialize(data),
         format_rfc3339(impl_->clk.now())});
    if (!r) return std::move(r).error();
    return {};
  });
}

result<std::optional<snapshot>> postgres_store::get_latest_snapshot(std::string_view aggregate_id) {
  return impl_->with_reader([&](connection& db) -> result<std::optional<snapshot>> {
    auto r = db.exec(
        "SELECT sequence_number, aggregate_type, snapshot_data, (EXTRACT(EPOCH FROM created_at) * 1000000)::bigint "
        "FROM event_snapshots WHERE aggregate_id = $1 ORDER BY sequence_number DESC LIMIT 1",
        {std::string(aggregate_id)});
    if (!r) return std::move(r).error();
    if (r->rows() == 0) return std::optional<snapshot>();
    snapshot s;
    s.aggregate_id = aggregate_id;
    s.sequence_number = r->int64(0, 0);
    s.aggregate_type = r->text(0, 1);
    auto data = parse_stored_object(r->text(0, 2), "snapshot");
    if (!data) return std::move(data).error();
    s.data = std::move(*data);
    s.created_at = from_micros(r->int64(0, 3));
    return std::optional<snapshot>(std::move(s));
  });
}

namespace {

result<std::vector<scheduled_event>> rows_to_scheduled(const pg::query_result& r) {
  std::vector<scheduled_event> out;
  for (int i = 0; i < r.rows(); ++i) {
    scheduled_event e;
    e.id = r.text(i, 0);
    e.publish_at = from_micros(r.int64(i, 1));
    auto req = decode_scheduled_request(r.text(i, 2));
    if (!req) return std::move(req).error();
    e.request = std::move(*req);
    e.status = r.text(i, 3);
    e.created_at = from_micros(r.int64(i, 4));
    if (!r.is_null(i, 5)) e.position = log_position(r.int64(i, 5));
    if (!r.is_null(i, 6)) e.last_error = std::string(r.text(i, 6));
    e.attempts = r.int64(i, 7);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

result<scheduled_event> postgres_store::schedule(scheduled_event entry) {
  if (auto ok = prepare_scheduled(entry, impl_->clk.now()); !ok) return std::move(ok).error();
  return impl_->with_reader([&](connection& db) -> result<scheduled_event> {
    auto r = db.exec("INSERT INTO scheduled_events (id, publish_at, request, status, created_at) "
                     "VALUES ($1::uuid, $2::timestamptz, $3, $4, $5::timestamptz)",
                     {entry.id, format_rfc3339(entry.publish_at), encode_scheduled_request(entry.request), entry.status,
                      format_rfc3339(entry.created_at)});
    if (!r) return std::move(r).error();
    return entry;
  });
}

result<std::vector<scheduled_event>> postgres_store::list_scheduled(std::optional<std::string> status, std::size_t limit) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<scheduled_event>> {
    auto r = db.exec(std::string("SELECT ") + scheduled_columns +
                         " FROM scheduled_events WHERE ($1::text IS NULL OR status = $1) ORDER BY publish_at LIMIT $2",
                     {status, std::to_string(limit)});
    if (!r) return std::move(r).error();
    return rows_to_scheduled(*r);
  });
}

result<scheduled_event> postgres_store::get_scheduled(std::string_view id) {
  if (!is_uuid(id)) return error::make(errc::not_found, "no scheduled event " + std::string(id));
  return impl_->with_reader([&](connection& db) -> result<scheduled_event> {
    auto r = db.exec(std::string("SELECT ") + scheduled_columns + " FROM scheduled_events WHERE id = $1::uuid",
                     {std::string(id)});
    if (!r) return std::move(r).error();
    auto rows = rows_to_scheduled(*r);
    if (!rows) return std::move(rows).error();
    if (rows->empty()) return error::make(errc::not_found, "no scheduled event " + std::string(id));
    return std::move(rows->front());
  });
}

result<void> postgres_store::cancel_scheduled(std::string_view id) {
  auto current = get_scheduled(id);
  if (!current) return std::move(current).error();
  return impl_->with_reader([&](connection& db) -> result<void> {
    auto r = db.exec("UPDATE scheduled_events SET status = 'cancelled' WHERE id = $1::uuid AND status = 'pending' RETURNING id",
                     {std::string(id)});
    if (!r) return std::move(r).error();
    if (r->rows() == 0) return error::make(errc::conflict, "scheduled event " + std::string(id) + " is " + current->status);
    return {};
  });
}

// Several nodes may claim at once: SKIP LOCKED hands each due entry to one of them.
result<std::vector<scheduled_event>> postgres_store::claim_due(timestamp now, std::size_t max, std::chrono::seconds lease) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<scheduled_event>> {
    auto r = db.exec(std::string("UPDATE scheduled_events SET claimed_until = $1::timestamptz, attempts = attempts + 1 "
                                 "WHERE id IN (SELECT id FROM scheduled_events WHERE status = 'pending' AND "
                                 "publish_at <= $2::timestamptz AND (claimed_until IS NULL OR claimed_until < $2::timestamptz) "
                                 "ORDER BY publish_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ") +
                         scheduled_columns,
                     {format_rfc3339(now + lease), format_rfc3339(now), std::to_string(max)});
    if (!r) return std::move(r).error();
    return rows_to_scheduled(*r);
  });
}

result<void> postgres_store::finish_scheduled(std::string_view id, std::string status, std::optional<log_position> position,
                                              std::optional<std::string> err) {
  return impl_->with_reader([&](connection& db) -> result<void> {
    auto r = db.exec("UPDATE scheduled_events SET status = $1, position = $2::bigint, last_error = $3, claimed_until = NULL "
                     "WHERE id = $4::uuid",
                     {status, position ? std::optional<std::string>(std::to_string(position->value)) : std::nullopt, err,
                      std::string(id)});
    if (!r) return std::move(r).error();
    return {};
  });
}

result<event_store::group_view> postgres_store::group_sync(std::string_view group, std::string_view member, int partitions,
                                                          log_position start, timestamp now, std::chrono::milliseconds ttl) {
  return impl_->with_reader([&](connection& db) -> result<group_view> {
    const std::string g(group);
    if (auto r = db.exec("INSERT INTO consumer_group_members (group_name, member, heartbeat) VALUES ($1, $2, $3::timestamptz) "
                         "ON CONFLICT (group_name, member) DO UPDATE SET heartbeat = excluded.heartbeat",
                         {g, std::string(member), format_rfc3339(now)});
        !r)
      return std::move(r).error();
    if (auto r = db.exec("INSERT INTO consumer_group_partitions (group_name, partition, checkpoint) "
                         "SELECT $1, p, $3 FROM generate_series(0, $2::int - 1) AS p ON CONFLICT DO NOTHING",
                         {g, std::to_string(partitions), std::to_string(start.value)});
        !r)
      return std::move(r).error();
    group_view view;
    auto members = db.exec("SELECT member FROM consumer_group_members WHERE group_name = $1 AND heartbeat >= $2::timestamptz "
                           "ORDER BY member COLLATE \"C\"",
                           {g, format_rfc3339(now - std::chrono::duration_cast<std::chrono::microseconds>(ttl))});
    if (!members) return std::move(members).error();
    for (int i = 0; i < members->rows(); ++i) view.members.emplace_back(members->text(i, 0));
    auto parts = db.exec("SELECT partition, owner, (EXTRACT(EPOCH FROM GREATEST(lease_until, 'epoch')) * 1000000)::bigint, "
                         "checkpoint FROM consumer_group_partitions WHERE group_name = $1 ORDER BY partition",
                         {g});
    if (!parts) return std::move(parts).error();
    for (int i = 0; i < parts->rows(); ++i) {
      group_partition gp;
      gp.partition = static_cast<int>(parts->int64(i, 0));
      if (!parts->is_null(i, 1)) gp.owner = std::string(parts->text(i, 1));
      gp.lease_until = from_micros(parts->int64(i, 2));
      gp.checkpoint = log_position(parts->int64(i, 3));
      view.partitions.push_back(std::move(gp));
    }
    return view;
  });
}

result<bool> postgres_store::group_claim(std::string_view group, int partition, std::string_view member, timestamp now,
                                         std::chrono::milliseconds ttl) {
  return impl_->with_reader([&](connection& db) -> result<bool> {
    auto r = db.exec("UPDATE consumer_group_partitions SET owner = $3, lease_until = $4::timestamptz WHERE group_name = $1 "
                     "AND partition = $2 AND (owner IS NULL OR owner = $3 OR lease_until < $5::timestamptz) RETURNING 1",
                     {std::string(group), std::to_string(partition), std::string(member),
                      format_rfc3339(now + std::chrono::duration_cast<std::chrono::microseconds>(ttl)), format_rfc3339(now)});
    if (!r) return std::move(r).error();
    return r->rows() > 0;
  });
}

result<bool> postgres_store::group_checkpoint(std::string_view group, int partition, std::string_view member,
                                              log_position position) {
  return impl_->with_reader([&](connection& db) -> result<bool> {
    auto r = db.exec("UPDATE consumer_group_partitions SET checkpoint = GREATEST(checkpoint, $4) WHERE group_name = $1 AND "
                     "partition = $2 AND owner = $3 RETURNING 1",
                     {std::string(group), std::to_string(partition), std::string(member), std::to_string(position.value)});
    if (!r) return std::move(r).error();
    return r->rows() > 0;
  });
}

result<void> postgres_store::group_release(std::string_view group, int partition, std::string_view member) {
  return impl_->with_reader([&](connection& db) -> result<void> {
    auto r = db.exec("UPDATE consumer_group_partitions SET owner = NULL WHERE group_name = $1 AND partition = $2 AND owner = $3",
                     {std::string(group), std::to_string(partition), std::string(member)});
    if (!r) return std::move(r).error();
    return {};
  });
}

result<void> postgres_store::group_leave(std::string_view group, std::string_view member) {
  return impl_->with_reader([&](connection& db) -> result<void> {
    if (auto r = db.exec("UPDATE consumer_group_partitions SET owner = NULL WHERE group_name = $1 AND owner = $2",
                         {std::string(group), std::string(member)});
        !r)
      return std::move(r).error();
    auto r = db.exec("DELETE FROM consumer_group_members WHERE group_name = $1 AND member = $2",
                     {std::string(group), std::string(member)});
    if (!r) return std::move(r).error();
    return {};
  });
}

result<std::vector<partition_info>> postgres_store::list_partitions() {
  return impl_->with_reader([&](connection& db) -> result<std::vector<partition_info>> {
    auto r = db.exec(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('events') ORDER BY c.relname");
    if (!r) return std::move(r).error();
    std::vector<partition_info> out;
    for (int i = 0; i < r->rows(); ++i) {
      partition_info p;
      p.name = r->text(i, 0);
      std::string bound(r->text(i, 1));  // FOR VALUES FROM ('...') TO ('...')
      auto q1 = bound.find('\''), q2 = bound.find('\'', q1 + 1), q3 = bound.find('\'', q2 + 1),
           q4 = bound.find('\'', q3 + 1);
      if (q4 != std::string::npos) {
        p.from = bound.substr(q1 + 1, q2 - q1 - 1);
        p.to = bound.substr(q3 + 1, q4 - q3 - 1);
      }
      p.rows = std::max<std::int64_t>(r->int64(i, 2), 0);
      out.push_back(std::move(p));
    }
    return out;
  });
}

result<void> postgres_store::ensure_partitions(timestamp around, int ahead) {
  return impl_->with_reader([&](connection& db) { return impl_->ensure(db, around, ahead); });
}

result<void> postgres_store::detach_partition(const std::string& name, bool drop) {
  if (!name.starts_with("events_p") || name.size() != 16 ||
      !std::all_of(name.begin() + 8, name.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return error::invalid("partition", "not a partition name (events_pYYYYMMDD): '" + name + "'");
  return impl_->with_reader([&](connection& db) -> result<void> {
    auto r = db.exec("ALTER TABLE events DETACH PARTITION " + name);
    if (!r) return std::move(r).error();
    if (drop)
      if (auto d = db.exec("DROP TABLE " + name); !d) return std::move(d).error();
    return {};
  });
}

// ---------------------------------------------------------------------------------------
// Dead-letter queue. The row's `body` is the entry as dead_letter_codec writes it (TEXT,
// not JSONB: byte-exact, and JSONB would refuse a "\u0000" in a plugin's error message);
// the other columns copy what SQL filters and orders on and are written only by
// store_dead_letters, together with the body. The `seq` column is authoritative.

namespace {

error dlq_missing(std::string_view id) {
  return error::make(errc::not_found, "no dead-letter entry " + std::string(id));
}

// Rows selecting (seq, body).
result<std::vector<dead_letter>> rows_to_dead_letters(const pg::query_result& r) {
  std::vector<dead_letter> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) {
    auto d = dead_letter_from_text(r.text(i, 1));
    if (!d) return std::move(d).error();
    d->seq = r.int64(i, 0);
    out.push_back(std::move(*d));
  }
  return out;
}

// Writes the mutable columns and the body of the rows `entries` (by seq), in one statement.
result<void> store_dead_letters(connection& db, const std::vector<dead_letter>& entries) {
  if (entries.empty()) return {};
  std::vector<std::string> seqs, statuses, bodies;
  std::string failed = "{", next = "{", lease = "{";
  for (const auto& d : entries) {
    const char* sep = seqs.empty() ? "" : ",";
    seqs.push_back(std::to_string(d.seq));
    statuses.push_back(d.status);
    bodies.push_back(json::serialize(to_json(d)));
    failed += sep + format_rfc3339(d.failed_at);
    next += sep + (d.next_retry_at ? format_rfc3339(*d.next_retry_at) : std::string("NULL"));
    lease += sep + format_rfc3339(d.lease_until);
  }
  auto r = db.exec(
      "UPDATE dead_letters AS d SET status = u.status, failed_at = u.failed_at, next_retry_at = u.next_retry_at, "
      "lease_until = u.lease_until, body = u.body FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], "
      "$4::timestamptz[], $5::timestamptz[], $6::text[]) AS u(seq, status, failed_at, next_retry_at, lease_until, body) "
      "WHERE d.seq = u.seq",
      {text_array(seqs), text_array(statuses), failed + "}", next + "}", lease + "}", text_array(bodies)});
  if (!r) return std::move(r).error();
  return {};
}

// Runs fn in a transaction on `db`: COMMIT when it succeeds, ROLLBACK otherwise.
template <class F>
auto in_transaction(connection& db, F fn) -> decltype(fn()) {
  if (auto r = db.exec("BEGIN"); !r) return std::move(r).error();
  auto r = fn();
  if (!r) {
    if (!db.broken()) (void)db.exec("ROLLBACK");
    return r;
  }
  if (auto c = db.exec("COMMIT"); !c) return std::move(c).error();
  return r;
}

}  // namespace

result<dead_letter> postgres_store::dlq_add(dead_letter entry) {
  if (auto ok = prepare_dead_letter(entry); !ok) return std::move(ok).error();
  return impl_->with_reader([&](connection& db) -> result<dead_letter> {
    // The seq is taken first so the body can carry it; a seq lost to a conflict leaves a
    // gap, which the list cursor does not mind.
    auto seq = db.exec("SELECT nextval(pg_get_serial_sequence('dead_letters', 'seq'))");
    if (!seq) return std::move(seq).error();
    dead_letter d = entry;
    d.seq = seq->int64(0, 0);
    auto ins = db.exec(
        "INSERT INTO dead_letters (seq, id, consumer, event_id, event_type, status, failed_at, next_retry_at, "
        "lease_until, body) VALUES ($1, $2::uuid, $3, $4, $5, $6, $7::timestamptz, $8::timestamptz, $9::timestamptz, $10) "
        "ON CONFLICT DO NOTHING RETURNING seq",
        {std::to_string(d.seq), d.id, d.consumer, d.original_event.id, d.original_event.type, d.status,
         format_rfc3339(d.failed_at),
         d.next_retry_at ? std::optional<std::string>(format_rfc3339(*d.next_retry_at)) : std::nullopt,
         format_rfc3339(d.lease_until), json::serialize(to_json(d))});
    if (!ins) return std::move(ins).error();
    if (ins->rows() == 1) return d;
    // Not inserted: an entry for (consumer, event) exists (return it), or the id is taken.
    auto existing = db.exec("SELECT seq, body FROM dead_letters WHERE consumer = $1 AND event_id = $2",
                            {d.consumer, d.original_event.id});
    if (!existing) return std::move(existing).error();
    auto rows = rows_to_dead_letters(*existing);
    if (!rows) return std::move(rows).error();
    if (rows->empty()) return error::make(errc::conflict, "dead-letter entry " + d.id + " exists");
    return std::move(rows->front());
  });
}

result<dead_letter> postgres_store::dlq_get(std::string_view id) {
  if (!is_uuid(id)) return dlq_missing(id);
  return impl_->with_reader([&](connection& db) -> result<dead_letter> {
    auto r = db.exec("SELECT seq, body FROM dead_letters WHERE id = $1::uuid", {std::string(id)});
    if (!r) return std::move(r).error();
    auto rows = rows_to_dead_letters(*r);
    if (!rows) return std::move(rows).error();
    if (rows->empty()) return dlq_missing(id);
    return std::move(rows->front());
  });
}

result<dead_letter_page> postgres_store::dlq_list(const dead_letter_filter& filter, std::size_t limit,
                                                  std::optional<std::int64_t> after_seq) {
  auto matcher = dead_letter_matcher::make(filter);
  if (!matcher) return std::move(matcher).error();
  limit = std::min(limit, max_page_limit);
  std::string where = " WHERE TRUE";
  params values;
  auto param = [&](std::string v) {
    values.emplace_back(std::move(v));
    return "$" + std::to_string(values.size());
  };
  // Type patterns as the same regex event queries use (exact, so the count is too).
  if (const auto& p = matcher->pattern())
    where += p->is_literal() ? " AND event_type = " + param(p->text())
                             : " AND ('.' || event_type) ~ " + param(pattern_regex(*p));
  if (filter.consumer) where += " AND consumer = " + param(*filter.consumer);
  if (filter.status) where += " AND status = " + param(*filter.status);
  if (filter.from) where += " AND failed_at >= " + param(format_rfc3339(*filter.from)) + "::timestamptz";
  if (filter.to) where += " AND failed_at <= " + param(format_rfc3339(*filter.to)) + "::timestamptz";
  return impl_->with_reader([&](connection& db) -> result<dead_letter_page> {
    if (auto r = db.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); !r) return std::move(r).error();
    auto run = [&]() -> result<dead_letter_page> {
      dead_letter_page page;
      auto count = db.exec("SELECT count(*) FROM dead_letters" + where, values);
      if (!count) return std::move(count).error();
      page.total_count = count->int64(0, 0);
      auto page_values = values;
      page_values.emplace_back(std::to_string(after_seq.value_or(0)));
      page_values.emplace_back(std::to_string(limit + 1));
      const auto n = values.size();
      auto rows = db.exec("SELECT seq, body FROM dead_letters" + where + " AND seq > $" + std::to_string(n + 1) +
                              " ORDER BY seq LIMIT $" + std::to_string(n + 2),
                          page_values);
      if (!rows) return std::move(rows).error();
      auto entries = rows_to_dead_letters(*rows);
      if (!entries) return std::move(entries).error();
      page.entries = std::move(*entries);
      if (page.entries.size() > limit) {
        page.entries.resize(limit);
        page.has_more = true;
        page.next_after = page.entries.empty() ? after_seq.value_or(0) : page.entries.back().seq;
      }
      return page;
    };
    auto r = run();
    if (!db.broken()) (void)db.exec(r ? "COMMIT" : "ROLLBACK");
    return r;
  });
}

// Several nodes may claim at once: SKIP LOCKED hands each due entry to one of them, and
// the re-check of the WHERE clause on a row another claimer just committed leaves it out.
result<std::vector<dead_letter>> postgres_store::dlq_claim_due(timestamp now, std::size_t max,
                                                               std::chrono::milliseconds lease) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<dead_letter>> {
    return in_transaction(db, [&]() -> result<std::vector<dead_letter>> {
      auto r = db.exec(
          "SELECT seq, body FROM dead_letters WHERE (status = 'pending_retry' AND next_retry_at <= $1::timestamptz) OR "
          "(status = 'retrying' AND lease_until <= $1::timestamptz) ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
          {format_rfc3339(now), std::to_string(std::min<std::size_t>(max, INT64_MAX))});
      if (!r) return std::move(r).error();
      auto rows = rows_to_dead_letters(*r);
      if (!rows) return std::move(rows).error();
      for (auto& d : *rows) {
        d.status = "retrying";
        d.lease_until = now + lease;
      }
      if (auto w = store_dead_letters(db, *rows); !w) return std::move(w).error();
      return rows;
    });
  });
}

result<dead_letter> postgres_store::dlq_claim(std::string_view id, timestamp now, std::chrono::milliseconds lease) {
  if (!is_uuid(id)) return dlq_missing(id);
  return impl_->with_reader([&](connection& db) -> result<dead_letter> {
    return in_transaction(db, [&]() -> result<dead_letter> {
      auto r = db.exec("SELECT seq, body FROM dead_letters WHERE id = $1::uuid FOR UPDATE", {std::string(id)});
      if (!r) return std::move(r).error();
      auto rows = rows_to_dead_letters(*r);
      if (!rows) return std::move(rows).error();
      if (rows->empty()) return dlq_missing(id);
      auto& d = rows->front();
      if (d.status == "resolved") return error::make(errc::conflict, "dead-letter entry " + d.id + " is resolved");
      if (d.status == "retrying" && d.lease_until > now)
        return error::make(errc::conflict, "dead-letter entry " + d.id + " is being retried");
      d.status = "retrying";
      d.lease_until = now + lease;
      if (auto w = store_dead_letters(db, *rows); !w) return std::move(w).error();
      return std::move(d);
    });
  });
}

result<void> postgres_store::dlq_update(const dead_letter& entry) {
  if (auto ok = check_dead_letter_update(entry); !ok) return ok;
  if (!is_uuid(entry.id)) return dlq_missing(entry.id);
  return impl_->with_reader([&](connection& db) -> result<void> {
    return in_transaction(db, [&]() -> result<void> {
      auto r = db.exec("SELECT seq, body FROM dead_letters WHERE id = $1::uuid FOR UPDATE", {entry.id});
      if (!r) return std::move(r).error();
      auto rows = rows_to_dead_letters(*r);
      if (!rows) return std::move(rows).error();
      if (rows->empty()) return dlq_missing(entry.id);
      apply_dead_letter_update(rows->front(), entry);
      return store_dead_letters(db, *rows);
    });
  });
}

}  // namespace pliers

// ---------------------------------------------------------------------------------------
// Compaction. One transaction that first takes the aggregate's row lock, the lock every
// append to it takes (docs/adr/0003): appends to the aggregate wait for the compaction or
// commit before it, and the plan only touches sequence numbers <= upto, which appends never
// write.

namespace pliers {

namespace {

constexpr const char* archive_columns =
    "position, id, type, version, timestamp, aggregate_id, aggregate_type, sequence_number, causation_id, "
    "correlation_id, metadata, payload";

std::string int_array(const std::vector<std::int64_t>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(values[i]);
  }
  return out + "}";
}

// (live events, stored bytes of live events + snapshots) of one aggregate.
result<std::pair<std::int64_t, std::int64_t>> measure(connection& db, const std::string& aggregate_id) {
  auto r = db.exec(
      "SELECT (SELECT count(*) FROM events WHERE aggregate_id = $1), "
      "(SELECT COALESCE(SUM(pg_column_size(e.*)), 0) FROM events e WHERE aggregate_id = $1) + "
      "(SELECT COALESCE(SUM(pg_column_size(s.*)), 0) FROM event_snapshots s WHERE aggregate_id = $1)",
      {aggregate_id});
  if (!r) return std::move(r).error();
  return std::pair<std::int64_t, std::int64_t>{r->int64(0, 0), r->int64(0, 1)};
}

template <class F>
auto compaction_txn(connection& db, F body) -> decltype(body()) {
  if (auto r = db.exec("BEGIN"); !r) return std::move(r).error();
  auto r = body();
  if (!r) {
    if (!db.broken()) (void)db.exec("ROLLBACK");
    return r;
  }
  if (auto c = db.exec("COMMIT"); !c) return std::move(c).error();
  return r;
}

}  // namespace

result<compaction_outcome> postgres_store::do_apply_compaction(const compaction_change& change) {
  return impl_->with_reader([&](connection& db) -> result<compaction_outcome> {
    return compaction_txn(db, [&]() -> result<compaction_outcome> {
      const auto& id = change.aggregate_id;
      auto agg = db.exec("SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = $1 AND version > 0 FOR UPDATE", {id});
      if (!agg) return std::move(agg).error();
      if (agg->rows() == 0) return error::make(errc::not_found, "no aggregate '" + id + "'");
      if (auto ok = check_compaction(change, agg->int64(0, 1)); !ok) return std::move(ok).error();
      const std::string type(agg->text(0, 0));
      compaction_outcome out;
      auto before = measure(db, id);
      if (!before) return std::move(before).error();
      out.events_before = before->first;
      out.bytes_before = before->second;
      const auto now = format_rfc3339(impl_->clk.now());
      if (!change.remove.empty()) {
        auto moved = db.exec(std::string("WITH moved AS (DELETE FROM events WHERE aggregate_id = $1 AND sequence_number = "
                                         "ANY($2::bigint[]) RETURNING *) INSERT INTO event_archive (") +
                                 archive_columns + ", compaction_id, archived_at) SELECT " + archive_columns +
                                 ", $3::uuid, $4::timestamptz FROM moved RETURNING 1",
                             {id, int_array(change.remove), change.compaction_id, now});
        if (!moved) return std::move(moved).error();
        if (moved->rows() != static_cast<int>(change.remove.size()))
          return error::make(errc::conflict, "events of '" + id + "' to compact are no longer live");
      }
      for (const auto& rw : change.rewrite) {
        auto r = db.exec(std::string("WITH old AS (INSERT INTO event_archive (") + archive_columns +
                             ", compaction_id, archived_at) SELECT " + archive_columns +
                             ", $3::uuid, $4::timestamptz FROM events WHERE aggregate_id = $1 AND sequence_number = $2 "
                             "RETURNING 1) UPDATE events SET payload = $5::jsonb, metadata = $6::jsonb "
                             "WHERE aggregate_id = $1 AND sequence_number = $2 AND (SELECT count(*) FROM old) = 1 RETURNING 1",
                         {id, std::to_string(rw.sequence), change.compaction_id, now, json::serialize(rw.payload),
                          json::serialize(rw.metadata)});
        if (!r) return std::move(r).error();
        if (r->rows() != 1)
          return error::make(errc::conflict, "event " + std::to_string(rw.sequence) + " of '" + id + "' is not live");
      }
      if (change.snapshot) {
        auto r = db.exec(
            "INSERT INTO event_snapshots (aggregate_id, sequence_number, aggregate_type, snapshot_data, created_at) "
            "VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz) ON CONFLICT (aggregate_id, sequence_number) DO UPDATE SET "
            "snapshot_data = excluded.snapshot_data, created_at = excluded.created_at",
            {id, std::to_string(change.snapshot->first), type, json::serialize(change.snapshot->second), now});
        if (!r) return std::move(r).error();
        out.snapshots_created = 1;
      }
      if (change.keep_snapshots > 0) {
        auto r = db.exec(
            "DELETE FROM event_snapshots WHERE aggregate_id = $1 AND sequence_number NOT IN (SELECT sequence_number "
            "FROM event_snapshots WHERE aggregate_id = $1 ORDER BY sequence_number DESC LIMIT $2)",
            {id, std::to_string(change.keep_snapshots)});
        if (!r) return std::move(r).error();
      }
      out.ranges = compaction_ranges(change);
      for (const auto& rg : out.ranges) {
        auto r = db.exec("INSERT INTO compacted_ranges (aggregate_id, compaction_id, from_seq, to_seq) VALUES ($1, $2::uuid, $3, $4)",
                         {id, change.compaction_id, std::to_string(rg.from), std::to_string(rg.to)});
        if (!r) return std::move(r).error();
      }
      auto after = measure(db, id);
      if (!after) return std::move(after).error();
      out.events_after = after->first;
      out.bytes_after = after->second;
      if (auto r = db.exec("UPDATE aggregates SET event_count = $2 WHERE aggregate_id = $1", {id, std::to_string(out.events_after)}); !r)
        return std::move(r).error();
      return out;
    });
  });
}

result<std::vector<archived_event>> postgres_store::list_archived(std::string_view aggregate_id,
                                                                  std::optional<std::string> compaction_id,
                                                                  log_position after, std::size_t limit) {
  return impl_->with_reader([&](connection& db) -> result<std::vector<archived_event>> {
    auto r = db.exec(std::string("SELECT ") + event_columns +
                         ", compaction_id, (EXTRACT(EPOCH FROM archived_at) * 1000000)::bigint FROM event_archive "
                         "WHERE aggregate_id = $1 AND position > $2 AND ($3::uuid IS NULL OR compaction_id = $3::uuid) "
                         "ORDER BY position, seq LIMIT $4",
                     {std::string(aggregate_id), std::to_string(after.value), compaction_id, std::to_string(limit)});
    if (!r) return std::move(r).error();
    std::vector<archived_event> out;
    for (int i = 0; i < r->rows(); ++i) {
      auto e = row_to_event(*r, i);
      if (!e) return std::move(e).error();
      out.push_back(archived_event{std::move(*e), std::string(r->text(i, 12)), from_micros(r->int64(i, 13))});
    }
    return out;
  });
}

result<std::int64_t> postgres_store::do_restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id) {
  return impl_->with_reader([&](connection& db) -> result<std::int64_t> {
    return compaction_txn(db, [&]() -> result<std::int64_t> {
      const std::string id(aggregate_id);
      auto agg = db.exec("SELECT 1 FROM aggregates WHERE aggregate_id = $1 AND version > 0 FOR UPDATE", {id});
      if (!agg) return std::move(agg).error();
      if (agg->rows() == 0) return error::make(errc::not_found, "no aggregate '" + id + "'");
      const params p{id, compaction_id};
      const std::string selected = " FROM event_archive WHERE aggregate_id = $1 AND ($2::uuid IS NULL OR compaction_id = $2::uuid)";
      // Merged events are live: their rewritten version goes, the archived original comes back
      // (the oldest archive row of a position, when several compactions archived it).
      if (auto r = db.exec("DELETE FROM events WHERE aggregate_id = $1 AND position IN (SELECT position" + selected + ")", p); !r)
        return std::move(r).error();
      if (auto r = db.exec(std::string("INSERT INTO events (") + archive_columns + ") SELECT DISTINCT ON (position) " +
                               archive_columns + selected + " ORDER BY position, seq",
                           p);
          !r)
        return std::move(r).error();
      auto del = db.exec("DELETE" + selected + " RETURNING 1", p);
      if (!del) return std::move(del).error();
      if (auto r = db.exec("DELETE FROM compacted_ranges WHERE aggregate_id = $1 AND ($2::uuid IS NULL OR compaction_id = $2::uuid)", p); !r)
        return std::move(r).error();
      if (auto r = db.exec("UPDATE aggregates SET event_count = (SELECT count(*) FROM events WHERE aggregate_id = $1) "
                           "WHERE aggregate_id = $1",
                           {id});
          !r)
        return std::move(r).error();
      return static_cast<std::int64_t>(del->rows());
    });
  });
}

}  // namespace pliers
