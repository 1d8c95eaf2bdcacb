// The log tailer (DESIGN "Distribution"): one per node. A thread follows the global log in
// position order, woken by the store's commit observer (local commits at once, other
// processes' through LISTEN/NOTIFY on PostgreSQL) and, as a safety net, every
// poll_interval. It keeps the most recent `ring_capacity` events in memory. The events of
// this process's own commits come with the wake-up (the store hands them over): when they
// follow the ring's head they join it without a store read; anything else (another
// process's commits, a gap, a poll) is read from the store.
//
// The tailer follows the log only while it has listeners (a server with no subscriber does
// not read every commit back); read_after answers from the store whatever the ring lacks.
// Readers never receive a pushed event: each reader keeps its own position and asks for
// "events after p" (read_after). Recent positions come from the ring, older ones from the
// store, so a reader sees every stored position once, in order, with no gap and no
// duplicate (holes left by compaction are skipped only below the store's head),
// whatever its speed; a slow reader costs only store reads, never memory or other
// readers' time. Listeners are told when the head advances.
// Thread-safety: all members may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "store/event_store.hpp"

namespace pliers {

// An event as the tailer hands it out, with its API JSON (write_event_json) made on first
// use and then shared by every reader: live streams serialize an event once, not once per
// subscriber.
class tailed_event : public event {
 public:
  explicit tailed_event(event e) : event(std::move(e)) {}
  const std::string& json() const;

 private:
  mutable std::once_flag json_once_;
  mutable std::string json_;
};

class log_tailer {
 public:
  struct options {
    std::size_t ring_capacity = 8192;  // about 23 MB of 400-byte events (decoded, plus their JSON once streamed); older ones come from the store
    std::size_t read_batch = 2000;
    std::chrono::milliseconds poll_interval{1000};
  };
  using event_ptr = std::shared_ptr<const tailed_event>;
  using listener = std::function<void(log_position head)>;

  log_tailer(event_store& store, options opts);
  ~log_tailer();
  log_tailer(const log_tailer&) = delete;
  log_tailer& operator=(const log_tailer&) = delete;

  // Events with position > after, at most max, in position order. Blocking (store reads).
  result<std::vector<event_ptr>> read_after(log_position after, std::size_t max);
  // The same for a reader woken by a listener: at or past the head of a tailer that follows
  // the log it returns nothing (the listener is told when there is more) instead of asking
  // the store.
  result<std::vector<event_ptr>> read_next(log_position after, std::size_t max);
  // The highest position the tailer has seen (it may lag the store while idle).
  log_position head() const;
  // Listeners run on the tailer thread after the head advanced; they must not block.
  std::uint64_t add_listener(listener l);
  void remove_listener(std::uint64_t id);
  // Asks the tailer to look for new events in the store now.
  void wake();
  // How many times it read events from the store (statistics; own commits come without).
  std::uint64_t store_reads() const { return store_reads_.load(std::memory_order_relaxed); }

 private:
  void run();
  result<std::vector<event_ptr>> read(log_position after, std::size_t max, bool wait_at_head);
  // The store's commit observer: `committed` (possibly empty) as event_store describes it.
  void offer(std::vector<event> committed);
  // Adds offered events that follow the head to the ring; false when one does not (a
  // gap: the store must be read).
  bool take_offered(std::vector<event>& committed);
  void tell_listeners(log_position head);
  // Empties the ring when the store applied a compaction or restore since the last look
  // (event_store::rewrites): it may hold events that are no longer live.
  void forget_rewritten();

  event_store& store_;
  const options opts_;
  mutable std::shared_mutex ring_mutex_;
  std::deque<event_ptr> ring_;  // GUARDED_BY(ring_mutex_); contiguous positions
  log_position head_;           // GUARDED_BY(ring_mutex_)
  std::mutex listeners_mutex_;
  std::map<std::uint64_t, std::shared_ptr<listener>> listeners_;  // GUARDED_BY(listeners_mutex_)
  std::uint64_t next_listener_ = 1;
  std::atomic<bool> following_{false};  // listeners_ is not empty: the thread follows the log
  std::mutex wake_mutex_;
  std::condition_variable wake_cv_;
  bool woken_ = false;                       // GUARDED_BY(wake_mutex_)
  bool must_read_ = false;                   // GUARDED_BY(wake_mutex_)
  std::vector<std::vector<event>> offered_;  // GUARDED_BY(wake_mutex_); commits in order
  std::size_t offered_events_ = 0;           // GUARDED_BY(wake_mutex_); events in offered_
  bool stopping_ = false;                    // GUARDED_BY(wake_mutex_)
  std::atomic<std::uint64_t> store_reads_{0};
  std::atomic<std::uint64_t> seen_rewrites_{0};
  std::thread thread_;
};

}  // namespace pliers
