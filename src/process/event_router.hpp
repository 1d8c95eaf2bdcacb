// The spec's EventRouter: routing rules (id, name, description, conditions, targets,
// enabled, priority, rateLimit) send the events they match to targets (route_target.hpp).
//
// Conditions (spec RoutingCondition) are all required to hold (an empty list matches
// every event). type event_type | aggregate_type | metadata | payload map to the leaves of
// core/event_filter.hpp (fields type, aggregateType, metadata.<field>, payload.<field>)
// with its operators (the spec's equals, contains, regex (RE2: linear time), in, not_in,
// and exists, prefix, suffix, not_equals, gt...); type custom evaluates `customFunction`,
// a Lua expression of `event` (e.g. "event.payload.total > 100"), in a sandbox of the
// calling thread (one per thread, instruction and memory capped); a custom condition that
// fails to run does not match.
// Matching cost: rules whose conditions pin the event type (event_type equals / in) are
// indexed by type, rules with a string equality (equals / in) on aggregate_type, a
// metadata or a payload field by that field's value; of the others, those with a
// `contains` (string value) or `regex` condition are grouped by its field and prefiltered
// by one RE2::Set pass over the field's string per event; the rest are tested on every
// event. Each field a condition tests is resolved once per event. The prefilter only
// skips rules whose condition cannot hold: a rule is matched by evaluating every one of
// its conditions, so the index and the prefilter change the cost, never the result.
//
// Delivery (process_batch, run by route_processor from the consumer group
// "pliers.routes"): at least once per (event, rule, target); the event id is the
// idempotency key each target hands on. Deliveries of a batch run concurrently on a pool
// of `max_concurrent_deliveries` threads, each bounded by its target's timeout, so a slow
// receiver costs at most one timeout per batch and never blocks appends. A failed delivery
// goes to the retry engine as consumer "route:<ruleId>:<targetIndex>" with the target's
// retryConfig (Retry-After honoured); a target that failed with timeout or connection
// error is "down" for a short, growing while: its deliveries go straight to the retry
// engine (error `target_down`) without trying, so it does not cost a timeout per batch.
// HTTP 410 disables the target (a route.updated event) and is not retried.
// Rate limits: a rule's rateLimit {maxEvents, timeWindow ms} spaces its deliveries; a
// delivery over the limit is handed to the retry engine due at its slot (error
// `rate_limited`), delayed, never dropped.
//
// The rules are event-sourced (lifecycle_log): route.added, route.updated, route.removed
// on the aggregate "route-<id>" of type "route"; load() replays them, apply_lifecycle()
// applies other nodes'. Events of aggregate type "route" are never routed.
// Thread-safety: every member may be called from any thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>

#include "process/lifecycle_log.hpp"
#include "process/retry_engine.hpp"
#include "process/route_target.hpp"

namespace pliers {

struct routing_rule;         // compiled (internal)
struct route_rule_set;       // the indexed rules (internal)
struct route_match_scratch;  // per-event field values (internal)

// The spec's RouteResult (+ the target index and whether the delivery was deferred).
struct route_result {
  std::string rule_id;
  std::size_t target_index = 0;
  std::string target_type;
  bool success = false;
  std::optional<std::string> error;
  std::string error_type;
  std::int64_t delivery_time_ms = 0;
};
boost::json::object to_json(const route_result& r);

// Why a rule matched or not (dry run).
struct route_explanation {
  std::string rule_id;
  bool enabled = true;
  bool matched = false;
  std::vector<std::string> reasons;  // one per condition: "conditions[0] (event_type equals): true"
  std::vector<std::string> targets;  // "0: webhook" ...
};

class event_router {
 public:
  struct options {
    std::size_t max_concurrent_deliveries = 32;
    bool record_deliveries = false;  // route.delivered per successful delivery
    std::chrono::milliseconds down_initial{1000}, down_max{30000};
  };

  event_router(event_store& store, const clock& clk, retry_engine& retries, route_target_factory make, options opts);
  ~event_router();
  event_router(const event_router&) = delete;
  event_router& operator=(const event_router&) = delete;

  // addRoute: validates (errors name the member: "conditions[1].operator",
  // "targets[0].config.url"...), appends route.added; conflict when the id is taken.
  result<boost::json::object> add_route(const boost::json::value& rule);
  // Replaces a rule (route.updated); not_found when unknown.
  result<boost::json::object> update_route(std::string_view id, const boost::json::value& rule);
  // removeRoute (route.removed).
  result<void> remove_route(std::string_view id);
  std::vector<boost::json::object> list() const;
  result<boost::json::object> get(std::string_view id) const;

  // getRoutesForEvent: the enabled rules matching, highest priority first (their JSON).
  std::vector<boost::json::object> routes_for_event(const event& e) const;
  // Dry run: every rule with why it matches or not; nothing delivered.
  std::vector<route_explanation> explain(const event& e) const;
  // routeEvent: delivers `e` to every matching rule's targets now (concurrently), failures
  // filed with the retry engine. Unavailable when the store is (dead letters not filed).
  result<std::vector<route_result>> route_event(const event& e);
  // A durable consumer's batch: like route_event for each event (lifecycle events skipped).
  result<void> process_batch(std::span<const event* const> events);

  // The retry engine's handler for "route:<rule>:<target>" entries.
  retry_engine::attempt_outcome retry(const dead_letter& entry, std::int64_t attempt);

  // Applies the rule lifecycle events stored after the last load (all of them the first
  // time): the start-up replay, then the poll for other nodes' changes.
  result<void> load();
  // The log position up to which load() has read the lifecycle events.
  log_position loaded_through() const;
  void apply_lifecycle(const event& e);
  bool empty() const;
  // The position of the route.added that made the rule set non-empty.
  log_position first_rule_position() const;
  // Called (from the thread that made it) after a rule was added.
  void set_on_change(std::function<void()> f);
  bool is_lifecycle(const event& e) const { return log_.is_lifecycle(e); }

  std::uint64_t delivered() const { return delivered_.load(); }
  std::uint64_t failed() const { return failed_.load(); }
  std::uint64_t matched() const { return matched_.load(); }

 private:
  class delivery_pool;
  result<std::shared_ptr<routing_rule>> compile(const boost::json::value& v, std::optional<std::string_view> id) const;
  std::shared_ptr<const route_rule_set> snapshot() const;
  void rebuild();  // REQUIRES: mutex_ held exclusively
  void match(const route_rule_set& rs, const event& e, route_match_scratch& s,
             std::vector<std::shared_ptr<routing_rule>>& out) const;
  result<std::vector<route_result>> run(std::span<const event* const> events, bool want_results);
  delivery_outcome deliver_one(routing_rule& rule, std::size_t index, const event& e, std::int64_t attempt);
  void disable_target(const std::string& rule_id, std::size_t index, const std::string& why);

  event_store& store_;
  const clock& clock_;
  retry_engine& retries_;
  const route_target_factory make_;
  const options opts_;
  lifecycle_log log_;
  std::unique_ptr<delivery_pool> pool_;
  mutable std::shared_mutex mutex_;
  std::map<std::string, std::shared_ptr<routing_rule>, std::less<>> rules_;  // GUARDED_BY(mutex_)
  std::int64_t first_rule_position_ = 0;                                       // GUARDED_BY(mutex_)
  void changed();
  std::mutex on_change_mutex_;
  std::function<void()> on_change_;  // GUARDED_BY(on_change_mutex_)
  std::shared_ptr<const route_rule_set> set_;  // GUARDED_BY(mutex_)
  mutable std::mutex load_mutex_;  // serializes load(); taken before log_.mutex()
  log_position loaded_through_{};  // GUARDED_BY(load_mutex_)
  std::atomic<std::uint64_t> delivered_{0}, failed_{0}, matched_{0};
};

}  // namespace pliers
