// Background upkeep of the log: snapshot policies and scheduled (recurring) compaction.
//
// snapshot_policies: "every N events per aggregate type, keep the last K snapshots". Fed
// with the log in position order (a consumer's batch handler, or pages of read_all), it
// snapshots an aggregate of a policy's type whenever an event's sequence number is a
// multiple of N: the state as of that event is folded from the latest snapshot at or below
// it (a fresh folder from the policy's factory) and stored together with the pruning to the
// newest K snapshots, atomically (event_store::apply_compaction with no event removed).
// Feeding the same events twice is harmless (the snapshot is rewritten with the same state).
//
// compaction_scheduler: scheduleCompaction. A schedule (id, criteria, strategy, reducer,
// interval) is registered as an event ("compaction.scheduled" in aggregate
// "pliers-compaction-schedule-<id>"), so every node sharing the store knows it. tick()
// runs the schedules that are due. One node only runs a given occurrence: the run is
// claimed by appending "compaction.run_started" with expectedVersion = the version the
// node read (the store's optimistic concurrency is the lease: a second node gets a conflict
// and skips). The occurrence is due when the last run_started (or the registration) is at
// least `interval` old; the run's result is appended as "compaction.run_completed".
// A node that dies mid-run leaves run_started without run_completed: the next occurrence
// runs normally (compaction itself is atomic per aggregate).
//
// Thread-safety: snapshot_policies: one feeding thread at a time; compaction_scheduler:
// tick() from one thread per node; schedule()/cancel() from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "core/clock.hpp"
#include "ops/batch_processor.hpp"

namespace pliers {

struct snapshot_policy {
  std::string aggregate_type;
  std::int64_t every_events = 100;  // N >= 1
  std::int64_t keep_last = 0;        // K; 0 keeps every snapshot
  std::function<std::unique_ptr<state_folder>()> make_folder;
};

class snapshot_policies {
 public:
  explicit snapshot_policies(event_store& store) : store_(store) {}
  // invalid_argument (field "everyEvents", "keepLast", "reducer") for a bad policy; replaces
  // the policy of the same aggregate type.
  result<void> set(snapshot_policy p);
  // Looks at events (in position order) and snapshots where a policy says so; returns how
  // many snapshots were written. Errors of one aggregate do not stop the others; the first
  // is returned after the batch.
  result<std::int64_t> on_events(std::span<const event> events);

 private:
  event_store& store_;
  std::map<std::string, snapshot_policy, std::less<>> policies_;
};

// snapshot_policies run on the server: policies registered as events (aggregate
// "pliers-snapshot-policy-<aggregateType>": snapshot_policy.set {aggregateType, everyEvents,
// keepLast, reducer (Lua)}, snapshot_policy.removed), applied to the log by one node at a
// time: a durable consumer on the store's consumer-group API (group "snapshot-policies",
// one partition: the lease says who runs, the checkpoint where it is). It starts at the
// log head when the group is first created (policies apply to events appended after). A
// policy whose reducer fails is reported (lastError) and does not stop the others.
class snapshot_policy_service {
 public:
  struct options {
    std::string member = "node";
    std::chrono::milliseconds lease{15000};
    std::chrono::milliseconds idle_poll{200};
    std::size_t page_size = 1000;
  };
  snapshot_policy_service(event_store& store, options o) : store_(store), opts_(std::move(o)) {}
  ~snapshot_policy_service() { stop(); }
  result<void> start();
  void stop();
  // Body {aggregateType, everyEvents, keepLast?, reducer}; errors name the field.
  result<boost::json::object> set(const boost::json::value& body);
  result<void> remove(std::string_view aggregate_type);
  // The policies, and the consumer's progress {position, head, lag, owner, lastError}.
  result<boost::json::object> list();

 private:
  result<void> reload();  // the registry from the log
  void run();
  event_store& store_;
  const options opts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, boost::json::object, std::less<>> defs_;  // GUARDED_BY(mutex_)
  std::uint64_t defs_version_ = 0;                                 // GUARDED_BY(mutex_)
  std::int64_t position_ = 0;                                      // GUARDED_BY(mutex_)
  // While there is no policy the log is not followed; the policies then follow the events
  // after the "set" event that ended the last policy-free stretch (its position - 1).
  std::int64_t follow_after_ = 0;  // GUARDED_BY(mutex_)
  bool owner_ = false;                                             // GUARDED_BY(mutex_)
  std::optional<std::string> last_error_;                          // GUARDED_BY(mutex_)
  bool stopping_ = false;                                          // GUARDED_BY(mutex_)
  std::thread thread_;
};

struct compaction_schedule {
  std::string id;                      // [A-Za-z0-9._-], 1..100
  compaction_criteria criteria;
  compaction_strategy strategy;
  std::string reducer_source;          // Lua (ops/lua_projector.hpp); required by `snapshot`
  std::chrono::milliseconds interval{std::chrono::hours(24)};
  boost::json::object to_json() const;
  static result<compaction_schedule> from_json(const boost::json::value& v);
};

// A schedule as read back from the log.
struct compaction_schedule_state {
  compaction_schedule schedule;
  std::int64_t version = 0;           // of its aggregate (the claim's expected version)
  timestamp last_run{};               // the last run_started, or the registration
  timestamp next_run{};               // last_run + interval
  boost::json::value last_result;     // the last run_completed payload (null: none yet)
  boost::json::object to_json() const;
};

class compaction_scheduler {
 public:
  compaction_scheduler(event_store& store, const clock& clk, std::string node) : store_(store), clock_(clk), node_(std::move(node)) {}
  ~compaction_scheduler() { stop(); }

  // Registers (or replaces) a schedule; its first run is due `interval` after now.
  result<void> schedule(const compaction_schedule& s);
  result<void> cancel(std::string_view id);
  // The schedules in force (not cancelled), by id.
  result<std::vector<compaction_schedule_state>> list();
  // Runs every schedule that is due and that this node claims; returns the results of the
  // runs it did (schedule id, result).
  result<std::vector<std::pair<std::string, batch_compaction_result>>> tick();

  // tick() every `period` on a thread until stop().
  void start(std::chrono::milliseconds period);
  void stop();

 private:
  event_store& store_;
  const clock& clock_;
  const std::string node_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;  // GUARDED_BY(mutex_)
  std::thread thread_;
};

}  // namespace pliers
