// In-process publish/subscribe (spec EventPublisher / EventSubscriber) over the log tailer.
// A subscription delivers, in position order and at least once per process lifetime,
// every event matching its filter after its start position, to a handler run on the bus's
// delivery threads (one delivery at a time per subscription). A handler that throws is
// counted and logged through `on_handler_error`; delivery to it and to the others goes on.
// Thread-safety: all members may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bus/log_tailer.hpp"
#include "core/event_filter.hpp"

namespace pliers {

class event_bus;

class subscription {
 public:
  void close();
  bool closed() const { return closed_.load(); }
  log_position position() const { return log_position(position_.load()); }
  std::uint64_t delivered() const { return delivered_.load(); }
  std::uint64_t handler_failures() const { return failures_.load(); }

 private:
  friend class event_bus;
  event_filter filter_;
  std::function<void(const event&)> handler_;
  std::atomic<std::int64_t> position_{0};
  std::atomic<std::uint64_t> delivered_{0}, failures_{0};
  std::atomic<bool> closed_{false};
  std::atomic<bool> scheduled_{false};
  event_bus* bus_ = nullptr;
};

struct subscription_start {
  enum class kind { now, beginning, after_position, at_time } k = kind::now;
  log_position position{};
  timestamp time{};
  static subscription_start now() { return {}; }
  static subscription_start beginning() { return {kind::beginning, log_position(0), {}}; }
  static subscription_start after(log_position p) { return {kind::after_position, p, {}}; }
  // The first event at or after `t` (the head when there is none).
  static subscription_start at(timestamp t) { return {kind::at_time, log_position(0), t}; }
  // The position to read after.
  result<log_position> resolve(event_store& store, log_tailer& tailer) const;
};

class event_bus {
 public:
  using handler = std::function<void(const event&)>;
  event_bus(event_store& store, log_tailer& tailer, unsigned delivery_threads = 2);
  ~event_bus();

  // EventSubscriber.
  std::shared_ptr<subscription> subscribe(const std::vector<std::string>& event_types, handler h,
                                          subscription_start start = subscription_start::now());
  std::shared_ptr<subscription> subscribe_with_filter(event_filter filter, handler h,
                                                      subscription_start start = subscription_start::now());
  result<std::shared_ptr<subscription>> subscribe_to_pattern(std::string_view pattern, handler h,
                                                             subscription_start start = subscription_start::now());

  // EventPublisher: append to the event's aggregate (no version check); publish_to stores
  // the routing key in metadata.routingKey, where filters (routingKeys) see it.
  result<append_result> publish(std::string aggregate_id, new_event e);
  result<append_result> publish_to(std::string aggregate_id, new_event e, std::string routing_key);
  // scheduleEvent: stored durably, published by a scheduler (bus/scheduler.hpp) when due.
  result<scheduled_event> schedule_event(std::string aggregate_id, new_event e, timestamp publish_at);

  std::function<void(const event&, const std::string& what)> on_handler_error;

 private:
  void schedule(const std::shared_ptr<subscription>& s);
  void drain(const std::shared_ptr<subscription>& s);
  void worker();

  event_store& store_;
  log_tailer& tailer_;
  std::uint64_t listener_id_ = 0;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::weak_ptr<subscription>> subscriptions_;  // GUARDED_BY(mutex_)
  std::deque<std::shared_ptr<subscription>> ready_;         // GUARDED_BY(mutex_)
  bool stopping_ = false;                                   // GUARDED_BY(mutex_)
  std::vector<std::thread> workers_;
};

}  // namespace pliers
