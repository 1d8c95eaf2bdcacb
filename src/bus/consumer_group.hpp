// A member of a consumer group: a durable named subscription whose work is shared by its
// members, keyed by aggregate. The group has `partitions` partitions (FNV-1a of the
// aggregate id); each partition is leased to one member at a time and has a stored
// checkpoint. Members heartbeat; partition p belongs to the (p mod n)-th live member in
// sorted order. A member releases a partition it no longer should own only after
// checkpointing it, and claims one only when it is free or its lease expired, so while all
// members are healthy no event is processed twice and the events of one aggregate are
// processed by one member at a time, in order. After a crash, delivery is at least once:
// the next owner resumes from the checkpoint when the lease runs out.
// Lifecycle: the member's thread starts in the constructor; the destructor checkpoints,
// releases its partitions and leaves the group.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <optional>
#include <span>
#include <mutex>
#include <thread>

#include "bus/event_bus.hpp"
#include "bus/log_tailer.hpp"
#include "core/clock.hpp"
#include "core/event_filter.hpp"

namespace pliers {

class consumer_group_member {
 public:
  struct options {
    int partitions = 16;
    std::chrono::milliseconds lease{10000};
    std::chrono::milliseconds heartbeat{1000};
    std::size_t batch = 500;
    subscription_start start = subscription_start::beginning();  // where a new group begins
    std::chrono::milliseconds retry_delay{1000};  // after a batch handler threw
    // Store checkpoints at most this often while busy (each is a write); they are always
    // stored when the member goes idle, before partitions move and when it stops. A crash
    // repeats at most this much work (delivery is at least once either way).
    std::chrono::milliseconds checkpoint_interval{0};
  };
  // Per event: a handler that throws is counted and the event skipped.
  using handler = std::function<void(const event&)>;
  // Per batch (the matching events of the partitions that stood at one checkpoint): the
  // checkpoints move only when it returns; when it throws they stay, and the batch comes
  // again after `retry_delay` (at-least-once for work that must not be skipped).
  using batch_handler = std::function<void(std::span<const event* const>)>;
  // Pipelined: starts the batch's work and returns a function that waits until that work is
  // durable (throwing when it failed). The member reads and starts the next batch before
  // waiting on the previous one, so processing overlaps the store's commits; checkpoints
  // still move only past work that is durable, in order, and a failure rewinds the
  // partitions to the last durable checkpoint (the work after it comes again).
  using async_batch_handler = std::function<std::function<void()>(std::span<const event* const>)>;

  consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                        std::string member, event_filter filter, handler h, options opts);
  consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                        std::string member, event_filter filter, batch_handler h, options opts);
  consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                        std::string member, event_filter filter, async_batch_handler h, options opts);
  ~consumer_group_member();
  consumer_group_member(const consumer_group_member&) = delete;
  consumer_group_member& operator=(const consumer_group_member&) = delete;

  std::vector<int> owned_partitions() const;
  std::uint64_t processed() const { return processed_.load(); }
  std::uint64_t handler_failures() const { return failures_.load(); }
  static int partition_of(std::string_view aggregate_id, int partitions);

 private:
  consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group, std::string member,
                        event_filter filter, async_batch_handler h, options opts, bool counts_itself);
  // The batch started last whose work may not be durable yet (member thread only).
  struct pending_batch {
    std::vector<int> partitions;
    log_position from, last;
    std::function<void()> wait;
    std::shared_ptr<const void> events;  // the batch's events stay alive until it is durable
  };
  // Waits for the pending batch; checkpoints its partitions on success, rewinds them on
  // failure. False when it failed.
  bool finish_pending();
  // Stores the checkpoints held back by checkpoint_interval.
  void save_checkpoints();
  std::map<int, log_position> unsaved_;  // member thread only
  std::chrono::steady_clock::time_point last_save_{};
  const bool counts_itself_;  // the per-event wrapper counts processed_ itself
  void run();
  void sync();
  bool process();  // true when it did some work

  event_store& store_;
  log_tailer& tailer_;
  const clock& clock_;
  const std::string group_, member_;
  const event_filter filter_;
  const async_batch_handler handler_;
  std::optional<pending_batch> pending_;
  const options opts_;
  std::uint64_t listener_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false, woken_ = false;  // GUARDED_BY(mutex_)
  std::map<int, log_position> owned_;      // GUARDED_BY(mutex_); written by the member thread only
  std::atomic<std::uint64_t> processed_{0}, failures_{0};
  std::chrono::steady_clock::time_point next_sync_{}, retry_at_{};
  std::thread thread_;
};

}  // namespace pliers
