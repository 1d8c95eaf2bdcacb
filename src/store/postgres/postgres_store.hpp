// The production store on PostgreSQL 15 (DESIGN "The log", docs/adr/0003 and 0005). Tables:
// `aggregates` (one row per aggregate: type and version, the row lock serializes appends to
// it), `log_head` (the one-row position counter), `event_ids` (global id uniqueness and
// idempotency), `events` (partitioned by timestamp: monthly | weekly | daily | none),
// `event_snapshots`, `schema_migrations`, `pliers_settings`; beside the log,
// `scheduled_events`, `consumer_group_*` and `dead_letters` (the dead-letter queue).
//
// Appends: one group-commit thread per process with its own connection and prepared
// statements; each batch is one transaction, in one or two pipelined round trips: lock the
// aggregate rows (sorted; reserved first when new), check versions and ids, then one
// statement takes positions from log_head and writes the events, their ids and the
// aggregates. Positions are therefore gap-free and visible in commit order across any
// number of processes. After a commit a separate connection sends a debounced,
// payload-free NOTIFY pliers_events.
// Reads use a pool of connections; a broken connection is replaced on next use.
// Thread-safety: all members may be called concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "store/event_store.hpp"

namespace pliers {

struct partition_info {
  std::string name;
  std::string from;  // RFC 3339, inclusive
  std::string to;    // RFC 3339, exclusive
  std::int64_t rows = 0;  // estimate from the planner statistics
};

class postgres_store final : public event_store {
 public:
  static result<std::unique_ptr<postgres_store>> open(const std::string& url, const store_options& options);
  ~postgres_store() override;

  result<std::vector<event>> read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                            std::optional<std::int64_t> to_version, std::size_t limit) override;
  result<query_result> query(const event_query& q, const pagination& page) override;
  result<std::vector<event>> read_all(log_position after, std::size_t limit) override;
  result<event> get_event(std::string_view id) override;
  void make_as_read(event& e) const override;
  result<aggregate_metadata> get_aggregate_metadata(std::string_view aggregate_id) override;
  result<void> create_snapshot(std::string_view aggregate_id, std::int64_t sequence, boost::json::object data) override;
  result<std::optional<snapshot>> get_latest_snapshot(std::string_view aggregate_id) override;
  log_position head() override;
  result<group_view> group_sync(std::string_view group, std::string_view member, int partitions, log_position start,
                                timestamp now, std::chrono::milliseconds ttl) override;
  result<bool> group_claim(std::string_view group, int partition, std::string_view member, timestamp now,
                           std::chrono::milliseconds ttl) override;
  result<bool> group_checkpoint(std::string_view group, int partition, std::string_view member,
                                log_position position) override;
  result<void> group_release(std::string_view group, int partition, std::string_view member) override;
  result<void> group_leave(std::string_view group, std::string_view member) override;
  result<scheduled_event> schedule(scheduled_event entry) override;
  result<std::vector<scheduled_event>> list_scheduled(std::optional<std::string> status, std::size_t limit) override;
  result<scheduled_event> get_scheduled(std::string_view id) override;
  result<void> cancel_scheduled(std::string_view id) override;
  result<std::vector<scheduled_event>> claim_due(timestamp now, std::size_t max, std::chrono::seconds lease) override;
  result<void> finish_scheduled(std::string_view id, std::string status, std::optional<log_position> position,
                                std::optional<std::string> error) override;
  result<dead_letter> dlq_add(dead_letter entry) override;
  result<dead_letter> dlq_get(std::string_view id) override;
  result<dead_letter_page> dlq_list(const dead_letter_filter& filter, std::size_t limit,
                                    std::optional<std::int64_t> after_seq) override;
  result<std::vector<dead_letter>> dlq_claim_due(timestamp now, std::size_t max, std::chrono::milliseconds lease) override;
  result<dead_letter> dlq_claim(std::string_view id, timestamp now, std::chrono::milliseconds lease) override;
  result<void> dlq_update(const dead_letter& entry) override;
  result<compaction_outcome> do_apply_compaction(const compaction_change& change) override;
  result<std::vector<archived_event>> list_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id,
                                                    log_position after, std::size_t limit) override;
  result<std::int64_t> do_restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id) override;

  // Partition operations (also run by the maintenance job: current period + 3 ahead).
  result<std::vector<partition_info>> list_partitions();
  result<void> ensure_partitions(timestamp around, int ahead = 3);
  // Detaches a partition from the log (its rows stay in a standalone table); with `drop`,
  // the table is dropped too.
  result<void> detach_partition(const std::string& name, bool drop);

  struct impl;

 private:
  explicit postgres_store(std::unique_ptr<impl> p);
  void submit_group(std::vector<append_request> requests, group_callback done) override;
  std::unique_ptr<impl> impl_;
};

// The DDL of the current schema (every migration, in order) for a partition strategy and
// JSON index kind (for tools that measure the same tables, e.g. bench/). Partitions and
// schema_migrations are not included.
std::string postgres_schema_sql(const std::string& partition_strategy, const std::string& json_index);

// The statements of the append transaction (docs/adr/0005, docs/adr/0007), for the
// benchmark that replays them with libpq alone.
struct postgres_append_statements {
  const char* reserve;
  const char* lock;
  const char* lock_expecting;
  const char* known_ids;
  const char* write;  // $13 the id prefix, $14 the writer's id, $15 its batch number
};
const postgres_append_statements& postgres_append_sql();

// Runs the migrations only (the `migrate` command).
result<void> migrate_postgres(const std::string& url, const store_options& options);

}  // namespace pliers
