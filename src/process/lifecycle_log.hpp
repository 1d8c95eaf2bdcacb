// The event-sourced part of a registry whose entries are managed at run time (routes; the
// plugin chain has the same shape): each change is a lifecycle event appended to the
// aggregate "<aggregate_type>-<id>" of type `aggregate_type`, load() replays them at
// start-up and events appended by other nodes are applied live (an event_bus
// subscription). The log remembers, per entry, the position of the last lifecycle event
// applied or appended here, so that the echo of our own append (and anything older) is not
// applied twice.
// Thread-safety: every member may be called from any thread; append() and should_apply()
// must be called with mutex() held, which also serializes the registry's own changes.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "store/event_store.hpp"

namespace pliers {

class lifecycle_log {
 public:
  lifecycle_log(event_store& store, std::string aggregate_type);

  const std::string& aggregate_type() const { return aggregate_type_; }
  std::string aggregate_of(std::string_view id) const { return aggregate_type_ + "-" + std::string(id); }
  bool is_lifecycle(const event& e) const { return e.aggregate_type == aggregate_type_; }

  // Appends one lifecycle event for `id`. REQUIRES: mutex() held.
  result<append_result> append(std::string_view id, std::string type, boost::json::object payload);
  // Whether `e` (a lifecycle event of `id`) is newer than what this node has applied; if so
  // it is recorded as applied. REQUIRES: mutex() held.
  bool should_apply(std::string_view id, const event& e);
  // Calls `apply` on every stored lifecycle event of the given types, in log order.
  result<void> replay(const std::vector<std::string>& types, const std::function<void(const event&)>& apply);

  std::mutex& mutex() { return mutex_; }

 private:
  event_store& store_;
  const std::string aggregate_type_;
  std::mutex mutex_;
  std::map<std::string, std::int64_t, std::less<>> applied_;  // GUARDED_BY(mutex_)
};

// Engine-made event metadata (sourceSystem pliers-events).
boost::json::object engine_event_metadata();

}  // namespace pliers
