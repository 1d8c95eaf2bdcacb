// The in-memory store: the reference model of the store contract (NATS-style), used by
// tests and by embedders that need no persistence. Everything is lost at exit.
// Thread-safety: one shared_mutex; appends take it exclusively and complete inline.
#pragma once

#include <map>
#include <shared_mutex>
#include <unordered_map>

#include "store/append_planner.hpp"
#include "store/event_store.hpp"

namespace pliers {

class memory_store final : public event_store, private append_lookup {
 public:
  explicit memory_store(const store_options& options);

  result<std::vector<event>> read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                            std::optional<std::int64_t> to_version, std::size_t limit) override;
  result<query_result> query(const event_query& q, const pagination& page) override;
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

 private:
  void submit_group(std::vector<append_request> requests, group_callback done) override;
  std::optional<stored_event> find_event(std::string_view id) override;
  std::optional<aggregate_state> find_aggregate(std::string_view aggregate_id) override;

  struct aggregate {
    std::string type;
    std::int64_t version = 0;
    timestamp first_time{}, last_time{};
    std::map<std::int64_t, std::size_t> events;  // live events: sequence -> index into log_
    std::vector<std::pair<std::string, sequence_range>> compacted;  // (compaction id, range)
  };
  std::int64_t stored_bytes(const aggregate& a, std::string_view id) const;  // REQUIRES: mutex_ held

  const clock& clock_;
  std::shared_mutex mutex_;
  std::vector<event> log_;                                  // log_[i].position == i + 1
  std::vector<char> live_;                                  // live_[i]: log_[i] not compacted away
  std::map<std::int64_t, archived_event> archive_;          // by position
  std::unordered_map<std::string, std::size_t> by_id_;      // id -> index into log_
  std::unordered_map<std::string, aggregate> aggregates_;
  std::unordered_map<std::string, std::map<std::int64_t, snapshot>> snapshots_;
  timestamp last_time_{};
  std::map<std::string, scheduled_event> scheduled_;
  std::map<std::string, timestamp> claimed_until_;
  struct group {
    std::map<std::string, timestamp> heartbeats;
    std::vector<group_partition> partitions;
  };
  std::map<std::string, group, std::less<>> groups_;
  std::map<std::int64_t, dead_letter> dead_letters_;             // by seq
  std::map<std::string, std::int64_t, std::less<>> dlq_by_id_;   // id -> seq
  std::map<std::pair<std::string, std::string>, std::int64_t> dlq_by_key_;  // (consumer, event id) -> seq
  std::int64_t dlq_last_seq_ = 0;
};

}  // namespace pliers
