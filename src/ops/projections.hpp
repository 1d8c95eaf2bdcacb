// Named projections that run continuously (spec "Event Replay & Projection"; docs/replay.md):
// a Lua projector (ops/lua_projector.hpp) over an EventFilter, folded over the global log
// in position order, its state kept inside Lua between events, checkpointed in the store,
// queryable, rebuildable from scratch, with progress (position, head, lag).
//
// Registry: event-sourced (process/lifecycle_log.hpp, aggregate type "pliers-projection",
// aggregate "pliers-projection-<name>"): projection.registered {name, source, filter},
// projection.rebuilt {}, projection.removed {}. The sequence number of the latest
// registered/rebuilt event is the projection's `generation`. Changes made by other nodes
// sharing the store are picked up by polling those lifecycle events.
//
// Checkpoints: a snapshot of the projection's lifecycle aggregate (at its current version)
// with data {"generation", "position", "state"}; written every `checkpoint_events` events or
// `checkpoint_interval`, and when caught up. At start-up a projection resumes from its
// checkpoint when the generation matches, else from position 0. Processing is at least
// once from the checkpoint's point of view: after a crash, events after the checkpoint are
// folded again into the checkpointed state (never twice into the same state).
//
// Failures: a Lua error (or limit) stops that projection at the failing batch; its status is
// "failed" with the error, its published state stays the last good one. A rebuild (or a
// new registration) restarts it.
//
// One owner per projection: nodes sharing a store take a lease per projection (the store's
// consumer-group lease: group "projection:<name>", one partition, `lease` long, renewed
// every lease/3). Only the owner folds and checkpoints; before writing a checkpoint it
// confirms the lease (group_checkpoint fails once the lease was lost) and a node that lost
// it drops its in-memory state and, when it owns the projection again, resumes from the
// newest checkpoint. Other nodes report the projection from its newest checkpoint
// (`owner` false). If the owner dies, another node takes over when the lease expires.
//
// Threads: one runner thread per manager folds every projection (its Lua states live only
// there); the public members may be called from any thread and never wait for the runner
// except wait_for().
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "core/event_filter.hpp"
#include "ops/lua_projector.hpp"
#include "process/lifecycle_log.hpp"

namespace pliers {

struct projection_status {
  std::string name;
  std::string source;
  boost::json::value filter;     // as registered (null: every event)
  std::int64_t generation = 0;
  std::string status;            // running | failed
  std::int64_t position = 0;     // last position folded (0: none yet)
  std::int64_t head = 0;         // the log head when last looked at
  std::int64_t events_processed = 0;  // matching events folded since the start of this generation
  std::int64_t checkpoint_position = 0;
  std::optional<std::string> error;
  bool owner = false;            // this node holds the projection's lease
  boost::json::value state;      // as of checkpoint_position
  boost::json::object to_json(bool with_state) const;  // lag = head - position
};

class projection_manager {
 public:
  struct options {
    std::size_t page_size = 2000;
    std::int64_t checkpoint_events = 50'000;
    std::chrono::milliseconds checkpoint_interval{2000};
    std::chrono::milliseconds idle_poll{100};
    std::size_t max_projections = 100;
    std::size_t max_source_bytes = 256 * 1024;
    lua_limits limits;
    std::string member = "node";                 // this node's name in the leases
    std::chrono::milliseconds lease{15000};
  };
  projection_manager(event_store& store, options o);
  ~projection_manager();
  projection_manager(const projection_manager&) = delete;
  projection_manager& operator=(const projection_manager&) = delete;

  // Reads the registry and the checkpoints, then starts the runner thread.
  result<void> start();
  void stop();

  // Body {"name", "source", "filter"?}. invalid_argument naming the field (Lua that does not
  // compile: field "source", message with the line); conflict if the name exists.
  result<projection_status> register_projection(const boost::json::value& body);
  result<projection_status> rebuild(std::string_view name);
  result<void> remove(std::string_view name);
  std::vector<projection_status> list() const;
  result<projection_status> get(std::string_view name) const;
  // Wakes the runner (new events).
  void wake();
  // Blocks until `name` has folded everything up to `position` (or failed); false on timeout.
  bool wait_for(std::string_view name, std::int64_t position, std::chrono::milliseconds timeout) const;

 private:
  struct entry;
  void apply_lifecycle(const event& e);  // REQUIRES: mutex_ held
  result<void> poll_registry();
  void run();
  bool step(entry& p);  // folds one page; true when it did work
  void checkpoint(entry& p);
  bool holds_lease(entry& p);     // renews the lease when due; false: another node owns it
  void follow_checkpoint(entry& p);  // publishes the newest checkpoint (not the owner)

  event_store& store_;
  const options opts_;
  lifecycle_log log_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;  // published progress
  std::condition_variable wake_;
  std::map<std::string, std::shared_ptr<entry>, std::less<>> entries_;  // GUARDED_BY(mutex_)
  log_position registry_after_{};                                        // GUARDED_BY(mutex_)
  bool woken_ = false;                                                   // GUARDED_BY(mutex_)
  bool stopping_ = false;                                                // GUARDED_BY(mutex_)
  std::thread runner_;
};

}  // namespace pliers
