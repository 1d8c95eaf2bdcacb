// The spec's PluginHookSystem: plugins registered for event types (type patterns) run on
// every matching event in priority order (higher first, then registration order), each
// seeing the results before it. A plugin that fails, throws or overruns its timeout gets a
// failed result, its generated events are discarded, the failure goes to the retry engine
// (consumer "plugin:<id>"), and the chain goes on. `async` plugins run beside the chain
// (not in previousResults) and their results are recorded when they finish.
//
// Effects: a successful plugin's generated events are appended with causationId = the
// trigger, the trigger's correlationId (or its id), metadata.pluginHops = the trigger's + 1,
// and ids derived from (plugin, trigger, index), so that running the same work again
// (at-least-once delivery, retries) stores them once. Past `max_hops` a plugin's generated
// events are refused (a loop): a permanent failure. Lifecycle events (plugin.registered,
// .enabled, .disabled, .unregistered, .executed, .failed) are appended to the aggregate
// "plugin-<id>" of type "plugin"; the chain never runs on events of aggregate type
// "plugin".
//
// The registry is event-sourced: registering, enabling, disabling and unregistering are
// events, and load() rebuilds the Lua and remote plugins from them after a restart (native
// plugins are registered again by the embedding process).
//
// Native plugins run on worker threads with a deadline: one that overruns is abandoned
// (its result discarded, its worker replaced) and the chain goes on. Lua plugins stop
// themselves at the deadline (instruction hook); remote plugins by the HTTP timeout.
// Batches (process_batch_async, process_event) run on the chain thread, which calls the
// synchronous native plugins itself while the caller sleeps and watches their deadlines: a
// hand-off per batch rather than per native call (those hand-offs were most of the chain's
// time). A native call that overruns there is abandoned the same way: the chain thread is
// left to finish it alone, the caller runs the rest of that event's chain and a fresh chain
// thread the rest of the batch. The caller makes the batch's effects from the events already
// done while the chain thread goes on. Dry runs (execute) and single runs (run_plugin) hand
// each native call to the pool. Calls left running past their deadline, in the pool or on
// chain threads, count towards one limit (`max_abandoned`).
// Thread-safety: all members may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <shared_mutex>

#include "core/clock.hpp"
#include "core/type_pattern.hpp"
#include "process/plugin.hpp"
#include "process/retry_engine.hpp"

namespace pliers {

class native_runner;

// A registered plugin as operators see it.
struct plugin_view {
  plugin_info info;
  std::string kind;
  std::vector<std::string> event_types;
  plugin_options options;
  bool enabled = true;
  std::int64_t priority = 0;  // effective
  std::uint64_t executions = 0, failures = 0;
  boost::json::object definition;
};
boost::json::object to_json(const plugin_view& v);

class plugin_chain {
 public:
  struct options {
    std::chrono::milliseconds default_timeout{5000};
    int max_hops = 8;
    bool record_executions = true;       // plugin.executed per successful run
    std::size_t native_workers = 4;      // threads for async calls and native calls outside batches
    std::size_t max_abandoned = 64;      // native calls left running past their deadline
  };
  // Builds a Lua or remote plugin from its stored definition (process/plugin_kinds.hpp).
  using factory = std::function<result<std::shared_ptr<event_plugin>>(const std::string& kind, plugin_info info,
                                                                      const boost::json::object& definition,
                                                                      std::chrono::milliseconds timeout)>;

  plugin_chain(event_store& store, const clock& clk, retry_engine& retries, factory make, options opts);
  ~plugin_chain();
  plugin_chain(const plugin_chain&) = delete;
  plugin_chain& operator=(const plugin_chain&) = delete;

  // registerPlugin. Refuses (invalid_argument naming the field) a bad id, an empty or bad
  // pattern list, bad options; conflict when the id is taken (unregister first). Appends
  // plugin.registered, then calls on_enable.
  result<plugin_view> register_plugin(std::shared_ptr<event_plugin> plugin, std::vector<std::string> event_types,
                                      plugin_options opts);
  result<void> unregister_plugin(std::string_view id);
  result<plugin_view> enable(std::string_view id);
  result<plugin_view> disable(std::string_view id);
  std::vector<plugin_view> list() const;
  result<plugin_view> get(std::string_view id) const;
  // getPluginsForEvent: enabled plugins matching the type, in chain order.
  std::vector<std::shared_ptr<event_plugin>> plugins_for_event(std::string_view type) const;

  // Reads the log's plugin lifecycle events not read before and applies them: at start-up
  // it rebuilds the registry; called again (plugin_processor polls) it picks up what other
  // nodes registered. apply_lifecycle applies one event (idempotent, ignores old ones).
  result<void> load();
  void apply_lifecycle(const event& e);
  bool empty() const;
  // The position of the earliest plugin.registered among the registered plugins.
  log_position first_registration() const;
  // Called (from the thread that made it) after a plugin was added to the registry.
  void set_on_change(std::function<void()> f);

  // The results of running the chain on one event, before any effect is stored.
  struct run {
    const event* trigger = nullptr;
    std::vector<plugin_result> results;  // chain order; async ones last
  };
  // Runs the chain without storing anything (dry run / tests).
  run execute(const event& e, std::int64_t attempt = 1);
  // processEvent: runs the chain and stores its effects (generated and lifecycle events,
  // dead-letter entries). Unavailable when the store is; the work may then be repeated.
  result<std::vector<plugin_result>> process_event(const event& e);
  // The same for many events (a durable consumer's batch): every effect in one atomic
  // append. Events of aggregate type "plugin" are skipped.
  result<void> process_batch(std::span<const event* const> events);
  // The same, pipelined: runs the chain and files dead letters now, starts the append, and
  // returns a function that waits for it (and handles a refusal). The events must stay
  // alive until that function has returned. Plugins run on the chain thread (above).
  std::function<result<void>()> process_batch_async(std::span<const event* const> events);

  // The retry engine's handler for "plugin:<id>" entries.
  retry_engine::attempt_outcome retry(const dead_letter& entry, std::int64_t attempt);
  // Runs one plugin alone on an event and stores its effects (a routing rule's plugin
  // target; retries). No previous results; failures are the caller's to file.
  retry_engine::attempt_outcome run_plugin(std::string_view plugin_id, const event& e, std::int64_t attempt);

  static bool is_lifecycle(const event& e) { return e.aggregate_type == "plugin"; }

 private:
  struct entry;
  struct call;
  struct effects {
    std::vector<append_request> appends;
    // Who each append belongs to: when the store refuses one (say, an aggregateType that
    // differs from the stored aggregate's), that plugin's run fails, not the whole batch.
    struct owner {
      const event* trigger;
      std::shared_ptr<entry> en;
      std::int64_t attempt;
      std::int64_t duration_ms;
    };
    std::vector<owner> owners;  // of appends (generated events)
    // Lifecycle events (plugin.executed, plugin.failed) per plugin: one append each.
    std::map<std::string, append_request> lifecycle;
    std::size_t expected_triggers = 0;  // room reserved in each lifecycle append
    void add_lifecycle(const std::string& plugin_id, new_event e);
    struct failure {
      const event* trigger;
      std::string consumer;
      processing_error error;
      retry_policy policy;
      std::int64_t duration_ms;
    };
    std::vector<failure> failures;
  };
  struct progress;
  struct batch_job;
  call start(const std::shared_ptr<entry>& en, const event& e, std::span<const plugin_result> previous,
             std::int64_t attempt);
  // execute() in steps: begin (false: no plugin applies), advance through the synchronous
  // plugins (false: `job` was abandoned meanwhile), end (the async results).
  bool begin(const event& e, std::int64_t attempt, progress& p);
  bool advance(progress& p, batch_job* job);
  run end(progress& p);
  // Runs the chain on every event on the chain thread (batch_job in the .cpp); `ready` (on
  // the calling thread) gets each event's run, in order, as chunks of them are done.
  std::vector<run> execute_batch(std::span<const event* const> events, const std::function<void(run&)>& ready = {});
  static constexpr std::size_t ready_chunk = 64;
  void run_job(batch_job& job);
  std::chrono::milliseconds shortest_native_timeout() const;
  plugin_result finish(call& c);
  plugin_result run_one(const std::shared_ptr<entry>& en, const event& e, std::span<const plugin_result> previous,
                        std::int64_t attempt);
  // The effects of one plugin run: its generated events (validated; a bad one turns `r` into
  // a failure) unless `generated_events` is false (r was collected before), its lifecycle
  // event and its dead letter.
  void collect(const event& trigger, const std::shared_ptr<entry>& en, plugin_result& r, std::int64_t attempt,
               effects& out, bool generated_events = true);
  result<void> store_effects(effects& fx);
  // Appends a lifecycle event and remembers its position, so that its echo from the log
  // (and any older event) is not applied again. Called with lifecycle_mutex_ held.
  result<void> append_lifecycle(const std::string& plugin_id, std::string type, boost::json::object payload);
  std::shared_ptr<entry> find(std::string_view id) const;
  std::vector<std::shared_ptr<entry>> chain_for(std::string_view type) const;
  plugin_view view_of(const entry& en) const;
  const retry_policy& policy_of(const entry& en) const;

  event_store& store_;
  const clock& clock_;
  retry_engine& retries_;
  const factory make_;
  const options opts_;
  std::unique_ptr<native_runner> native_;        // async calls; native calls outside batches
  std::unique_ptr<native_runner> chain_thread_;  // batches (execute_batch)
  mutable std::shared_mutex mutex_;
  std::map<std::string, std::shared_ptr<entry>, std::less<>> plugins_;  // GUARDED_BY(mutex_)
  std::uint64_t next_order_ = 0;                                       // GUARDED_BY(mutex_)
  // chain_for's cache: the chain per event type, dropped whenever the registry changes.
  std::atomic<std::uint64_t> chain_generation_{0};
  mutable std::mutex cache_mutex_;
  mutable std::uint64_t cache_generation_ = 0;  // GUARDED_BY(cache_mutex_)
  mutable std::map<std::string, std::vector<std::shared_ptr<entry>>, std::less<>> chain_cache_;  // GUARDED_BY(cache_mutex_)
  void changed();
  std::atomic<std::int64_t> lifecycle_read_{0};  // load() has read the lifecycle events up to here
  std::mutex on_change_mutex_;
  std::function<void()> on_change_;  // GUARDED_BY(on_change_mutex_)
  // Serializes registry changes made here with those read from the log.
  std::mutex lifecycle_mutex_;
  std::map<std::string, std::int64_t, std::less<>> applied_;  // GUARDED_BY(lifecycle_mutex_): last lifecycle position per plugin
};

}  // namespace pliers
