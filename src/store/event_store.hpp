// The event store interface: every operation of the spec's EventStore plus reads of the
// global log. Implementations: memory (the reference), sqlite (embedded default), and
// postgres. All implementations pass tests/conformance unchanged.
//
// Thread-safety: every member function may be called from any thread concurrently.
// Blocking: every function but append_async may block on I/O; call them off I/O threads.
// Errors: expected outcomes are result<> values; no exception crosses this interface.
#pragma once

#include <atomic>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

#include "core/event.hpp"
#include "core/event_query.hpp"
#include "core/result.hpp"

namespace pliers {

class clock;

// A scheduled publication (spec scheduleEvent). The event's id is fixed when it is
// scheduled, so firing it twice (two nodes, a crash between publishing and marking) stores
// it once: the second append is an idempotent replay.
struct scheduled_event {
  std::string id;                 // of the schedule entry (UUID)
  append_request request;         // one event, its id set
  timestamp publish_at{};
  std::string status = "pending";  // pending | published | cancelled | failed
  timestamp created_at{};
  std::optional<log_position> position;  // once published
  std::optional<std::string> last_error;
  std::int64_t attempts = 0;
};

// A partition of a consumer group (durable named subscription): events whose aggregate
// hashes to it are processed by its owner, in order, from its checkpoint.
struct group_partition {
  int partition = 0;
  std::optional<std::string> owner;  // a consumer id while leased
  timestamp lease_until{};
  log_position checkpoint{};          // every event up to here is processed
};

// The spec's ProcessingError: why a delivery failed. `type` is a stable kind
// ("timeout", "exception", "http_500", "non_retryable", ...) that retry policies match on.
struct processing_error {
  std::string type;
  std::string message;
  std::optional<std::string> stack;
  boost::json::object context;
};

// One attempt at delivering an event to a consumer, kept in the entry's history.
struct delivery_attempt {
  std::int64_t attempt = 0;      // 1-based
  timestamp at{};
  bool success = false;
  std::optional<processing_error> error;
  std::int64_t duration_ms = 0;
  bool manual = false;           // an operator's retry
};

// A dead-letter entry (spec DeadLetterEvent): work that failed for one consumer — a plugin
// ("plugin:<id>") or a routing target ("route:<ruleId>:<targetIndex>") — with everything
// the retry engine and an operator need. One entry per (consumer, event): adding it again
// returns the existing one. `retry_config` is the consumer's policy (process/retry_policy)
// as JSON, kept so retries follow it after a restart.
struct dead_letter {
  std::string id;                 // UUID
  std::int64_t seq = 0;           // assigned by the store: insertion order, the list cursor
  event original_event;
  std::string consumer;
  processing_error error;         // the last failure
  std::int64_t attempts = 0;
  std::int64_t max_attempts = 0;
  timestamp first_failed_at{};
  timestamp failed_at{};          // the last failure
  std::optional<timestamp> next_retry_at;
  std::string status = "pending_retry";  // pending_retry | retrying | permanent_failure | resolved
  std::optional<std::string> permanent_reason;
  std::optional<timestamp> resolved_at;
  timestamp lease_until{};        // while `retrying`: the claimant's lease
  boost::json::object retry_config;
  std::vector<delivery_attempt> history;
};

// getDeadLetterEvents filter: every member present must match. `event_type` is a type
// pattern; the time range applies to failed_at (both ends included).
struct dead_letter_filter {
  std::optional<std::string> event_type;
  std::optional<std::string> consumer;
  std::optional<std::string> status;
  std::optional<timestamp> from, to;
};

struct dead_letter_page {
  std::vector<dead_letter> entries;  // ascending seq
  std::int64_t total_count = 0;      // entries matching the filter
  bool has_more = false;
  std::optional<std::int64_t> next_after;  // pass as `after_seq` for the next page
};

// One compaction of one aggregate, decided by ops/compaction and applied atomically by the
// store. Only events at or below `upto` are touched; events appended meanwhile are above it.
// `remove`d events move to the archive; `rewrite` replaces the payload and metadata of a
// kept event (a merge) and archives its original; `snapshot` is created in the same
// transaction; `keep_snapshots` > 0 deletes all but the newest K snapshots afterwards.
// Conflict when an event named is no longer live (another compaction got there first).
struct compaction_change {
  std::string compaction_id;   // UUID, names the archive rows and the ranges
  std::string aggregate_id;
  std::string strategy;
  std::int64_t upto = 0;       // the version the plan was computed at
  std::vector<std::int64_t> remove;  // sequence numbers, ascending
  struct rewrite_event {
    std::int64_t sequence = 0;
    boost::json::object payload;
    boost::json::object metadata;
  };
  std::vector<rewrite_event> rewrite;
  std::optional<std::pair<std::int64_t, boost::json::object>> snapshot;  // (sequence, state)
  std::int64_t keep_snapshots = 0;
};

// What the store measured while applying a compaction_change. Bytes are the stored size of
// the aggregate's live events (SQLite: column bytes; PostgreSQL: pg_column_size of the
// rows; memory: the JSON encoding) plus its snapshots, before and after.
struct compaction_outcome {
  std::int64_t events_before = 0;   // live events of the aggregate
  std::int64_t events_after = 0;
  std::int64_t bytes_before = 0;
  std::int64_t bytes_after = 0;
  std::int64_t snapshots_created = 0;
  std::vector<sequence_range> ranges;  // of this compaction
};

// An event moved out of the live log by a compaction; restorable.
struct archived_event {
  event original;
  std::string compaction_id;
  timestamp archived_at{};
};

class event_store {
 public:
  using append_callback = std::function<void(result<append_result>)>;
  using group_callback = std::function<void(result<std::vector<append_result>>)>;

  virtual ~event_store() = default;
  event_store(const event_store&) = delete;
  event_store& operator=(const event_store&) = delete;

  // appendEvents. Validates (core/validation.hpp), then queues the append for the next
  // group commit. `done` is called exactly once, on a store thread or inline, after the
  // events are durable (or with the error). Never blocks on I/O.
  void append_async(append_request request, append_callback done);
  // Blocking form of append_async.
  result<append_result> append(append_request request);
  // publishBatch: several appends, to any aggregates, that commit all together or not at
  // all. An error names the failing append as "appends[i]...". Same threading as
  // append_async.
  void append_group_async(std::vector<append_request> requests, group_callback done);
  result<std::vector<append_result>> append_group(std::vector<append_request> requests);

  // readEvents: events of one aggregate with fromVersion <= sequenceNumber <= toVersion,
  // in sequence order, at most `limit` of them. An unknown aggregate gives an empty list.
  virtual result<std::vector<event>> read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                                    std::optional<std::int64_t> to_version,
                                                    std::size_t limit) = 0;
  // readEventsByType: events whose type matches `type` (a type pattern) within the time
  // range, in position order, at most `limit`.
  result<std::vector<event>> read_by_type(std::string_view type, std::optional<timestamp> from,
                                          std::optional<timestamp> to, std::size_t limit = max_page_limit);
  // queryEvents with pagination (totalCount, hasMore, cursor).
  virtual result<query_result> query(const event_query& q, const pagination& page) = 0;
  // read_aggregate and query rendered as the API's JSON (core/event_query.hpp
  // event_json_page); what the HTTP reads serve. The defaults render the decoded events; a
  // backend that keeps metadata and payload as JSON text copies it instead.
  // read_aggregate_json appends to `page` (after whatever text it holds, with a comma
  // before each event but the page's first), so a caller can put its framing around it.
  virtual result<void> read_aggregate_json(std::string_view aggregate_id, std::int64_t from_version,
                                           std::optional<std::int64_t> to_version, std::size_t limit,
                                           event_json_page& page);
  virtual result<query_json_result> query_json(const event_query& q, const pagination& page);
  // The global log: events with position > after, in position order, at most `limit`.
  virtual result<std::vector<event>> read_all(log_position after, std::size_t limit) = 0;
  // One event by id; not_found when absent.
  virtual result<event> get_event(std::string_view id) = 0;
  // getAggregateMetadata; not_found when the aggregate does not exist.
  virtual result<aggregate_metadata> get_aggregate_metadata(std::string_view aggregate_id) = 0;
  // createSnapshot: state of the aggregate as of `sequence` (1 <= sequence <= version).
  virtual result<void> create_snapshot(std::string_view aggregate_id, std::int64_t sequence,
                                       boost::json::object data) = 0;
  // getLatestSnapshot: the snapshot with the highest sequence number, if any.
  virtual result<std::optional<snapshot>> get_latest_snapshot(std::string_view aggregate_id) = 0;
  // The position of the last committed event (0 when the log is empty).
  virtual log_position head() = 0;

  // Scheduled publications. schedule stores a pending entry (the event validated and its
  // id assigned); claim_due hands out at most `max` pending entries due at `now`, each to
  // one claimant for `lease` (PostgreSQL: FOR UPDATE SKIP LOCKED); finish_scheduled
  // records the outcome; cancel_scheduled works on pending entries only (else conflict).
  virtual result<scheduled_event> schedule(scheduled_event entry) = 0;
  virtual result<std::vector<scheduled_event>> list_scheduled(std::optional<std::string> status, std::size_t limit) = 0;
  virtual result<scheduled_event> get_scheduled(std::string_view id) = 0;
  virtual result<void> cancel_scheduled(std::string_view id) = 0;
  virtual result<std::vector<scheduled_event>> claim_due(timestamp now, std::size_t max, std::chrono::seconds lease) = 0;
  virtual result<void> finish_scheduled(std::string_view id, std::string status, std::optional<log_position> position,
                                        std::optional<std::string> error) = 0;

  // Consumer groups. group_sync records the member's heartbeat, creates the group's
  // partitions (checkpoint `start`) on first use, and returns the members seen within
  // `ttl` (sorted) and the partitions. group_claim takes a partition that is free, expired
  // or already the member's (renewing the lease); group_checkpoint stores progress only
  // while the member owns the partition (false: it was lost); group_release frees one;
  // group_leave frees all of the member's and forgets it.
  struct group_view {
    std::vector<std::string> members;
    std::vector<group_partition> partitions;
  };
  virtual result<group_view> group_sync(std::string_view group, std::string_view member, int partitions,
                                        log_position start, timestamp now, std::chrono::milliseconds ttl) = 0;
  virtual result<bool> group_claim(std::string_view group, int partition, std::string_view member, timestamp now,
                                   std::chrono::milliseconds ttl) = 0;
  virtual result<bool> group_checkpoint(std::string_view group, int partition, std::string_view member,
                                        log_position position) = 0;
  virtual result<void> group_release(std::string_view group, int partition, std::string_view member) = 0;
  virtual result<void> group_leave(std::string_view group, std::string_view member) = 0;

  // Dead-letter queue. dlq_add stores a new entry (id assigned when empty, else it must be a
  // UUID; seq always assigned by the store) or,
  // when one exists for (consumer, original_event.id), returns that one unchanged.
  // dlq_claim_due hands out at most `max` entries that are pending_retry with
  // next_retry_at <= now, or retrying with an expired lease (a claimant died), setting them
  // retrying with lease_until = now + lease (PostgreSQL: FOR UPDATE SKIP LOCKED).
  // dlq_claim takes one entry by id the same way for an operator's retry, whatever its
  // status but resolved (conflict) or retrying under a live lease (conflict).
  // dlq_update writes back an entry's mutable fields (error, attempts, times, status,
  // reason, lease, history) by id; not_found when absent.
  virtual result<dead_letter> dlq_add(dead_letter entry) = 0;
  virtual result<dead_letter> dlq_get(std::string_view id) = 0;
  virtual result<dead_letter_page> dlq_list(const dead_letter_filter& filter, std::size_t limit,
                                            std::optional<std::int64_t> after_seq) = 0;
  virtual result<std::vector<dead_letter>> dlq_claim_due(timestamp now, std::size_t max,
                                                         std::chrono::milliseconds lease) = 0;
  virtual result<dead_letter> dlq_claim(std::string_view id, timestamp now, std::chrono::milliseconds lease) = 0;
  virtual result<void> dlq_update(const dead_letter& entry) = 0;

  // Compaction (ops/compaction.hpp). apply_compaction is atomic and serialized with appends
  // to the aggregate (SQLite: the single write lock; PostgreSQL: the aggregate's row lock),
  // never changes the version or a position, and records the change's ranges so that
  // get_aggregate_metadata reports them. list_archived returns archived events of one
  // aggregate (optionally of one compaction) in position order after `after`;
  // restore_archived puts them back in the live log (merged events get their originals
  // back) and forgets their ranges; it returns how many it restored. Both count in
  // rewrites() once done.
  result<compaction_outcome> apply_compaction(const compaction_change& change);
  virtual result<std::vector<archived_event>> list_archived(std::string_view aggregate_id,
                                                            std::optional<std::string> compaction_id,
                                                            log_position after, std::size_t limit) = 0;
  result<std::int64_t> restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id);
  // How many compactions and restores this process applied: events already read may have
  // changed since (the log tailer drops its ring when this moves).
  std::uint64_t rewrites() const { return rewrites_.load(); }

  // Called (from a store thread, possibly concurrently) after events were committed, by
  // this process or, on PostgreSQL, by another one. Must be cheap and must not block: it is
  // a wake-up for the log tailer. `committed` is what this process's writer just stored,
  // in position order with no gap, when the store hands it over (SQLite, PostgreSQL): the
  // tailer then need not read it back. Empty: something was committed, read the store.
  // One observer; nullptr removes it.
  using commit_observer = std::function<void(std::vector<event> committed)>;
  void set_commit_observer(commit_observer observer);
  // Makes a handed-over event what a read returns (PostgreSQL: the JSON as jsonb gives it
  // back). The observer calls it on its own thread, off the writer's. Default: as it is.
  virtual void make_as_read(event& e) const { (void)e; }

 protected:
  event_store() = default;
  // Whether an observer is set: only then is it worth keeping the committed events.
  bool observed();
  void notify_committed(std::vector<event> committed = {});
  // Called with validated requests (one for append_async, several for a group).
  virtual void submit_group(std::vector<append_request> requests, group_callback done) = 0;
  virtual result<compaction_outcome> do_apply_compaction(const compaction_change& change) = 0;
  virtual result<std::int64_t> do_restore_archived(std::string_view aggregate_id,
                                                   std::optional<std::string> compaction_id) = 0;

 private:
  std::mutex observer_mutex_;
  std::shared_ptr<commit_observer> observer_;  // GUARDED_BY(observer_mutex_)
  std::atomic<std::uint64_t> rewrites_{0};
};

struct store_options {
  const clock* time_source = nullptr;  // nullptr = system clock
  std::size_t max_pending_appends = 20000;  // group-commit queue bound; beyond it: unavailable
  std::size_t read_connections = 4;          // sqlite: reader pool size; postgres: pool size
  bool unsafe_no_fsync = false;               // sqlite synchronous=OFF: for negative controls only
  // postgres
  std::string partition_strategy = "monthly";  // monthly | weekly | daily | none (fixed at creation)
  std::string json_index = "gin_path_ops";     // gin | gin_path_ops | none (fixed at creation)
  std::chrono::milliseconds query_timeout{30000};
  std::chrono::milliseconds connect_timeout{30000};  // total time to keep retrying at start
  bool run_migrations = true;
  std::function<void(const std::string&)> warn;  // start-up retries and maintenance problems
};

// Opens a store from its URL: "memory:", "sqlite:PATH" (or "sqlite://PATH"),
// "postgres://..." / "postgresql://..." (libpq URI).
result<std::unique_ptr<event_store>> open_store(std::string_view url, const store_options& options = {});

}  // namespace pliers
