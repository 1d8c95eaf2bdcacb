// The embedded default store on SQLite 3.40. One writer thread commits appends in groups
// (store/group_commit.hpp) through one connection; reads use a pool of connections that
// see committed data only (WAL). Durable: journal_mode=WAL, synchronous=FULL, so an
// acknowledged append survives a crash or power loss. The file format is described in
// sqlite_schema.hpp and docs/storage.md.
#pragma once

#include <memory>
#include <string>

#include "store/event_store.hpp"

namespace pliers {

class sqlite_store final : public event_store {
 public:
  static result<std::unique_ptr<sqlite_store>> open(const std::string& path, const store_options& options);
  // The DDL of the current schema: every migration, in order (for tools that measure the
  // same tables, e.g. bench/). schema_migrations is created by open() itself.
  static const char* schema_sql();
  ~sqlite_store() override;

  result<std::vector<event>> read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                            std::optional<std::int64_t> to_version, std::size_t limit) override;
  result<query_result> query(const event_query& q, const pagination& page) override;
  result<void> read_aggregate_json(std::string_view aggregate_id, std::int64_t from_version,
                                   std::optional<std::int64_t> to_version, std::size_t limit,
                                   event_json_page& page) override;
  result<query_json_result> query_json(const event_query& q, const pagination& page) override;
  result<std::vector<event>> read_all(log_position after, std::size_t limit) override;
  result<event> get_event(std::string_view id) override;
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

  struct impl;

 private:
  explicit sqlite_store(std::unique_ptr<impl> p);
  void submit_group(std::vector<append_request> requests, group_callback done) override;
  std::unique_ptr<impl> impl_;
};

}  // namespace pliers
