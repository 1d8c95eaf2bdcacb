#include "store/append_planner.hpp"

#include "core/uuid.hpp"

#include <map>
#include <type_traits>
#include <utility>

namespace pliers {

namespace {

// A retry of an append that was stored: every event carries an id, each is stored in this
// aggregate, at consecutive sequence numbers, in the request's order.
std::optional<append_result> as_replay(const append_request& req, append_lookup& lookup,
                                       std::optional<append_lookup::stored_event> first) {
  append_result r;
  r.aggregate_id = req.aggregate_id;
  r.idempotent_replay = true;
  for (std::size_t i = 0; i < req.events.size(); ++i) {
    const auto& id = req.events[i].id;
    if (!id) return std::nullopt;
    auto found = i == 0 ? first : lookup.find_event(*id);
    if (!found || found->aggregate_id != req.aggregate_id ||
        found->sequence.value != first->sequence.value + static_cast<std::int64_t>(i))
      return std::nullopt;
    r.events.push_back({*id, found->sequence, found->position, found->time});
  }
  r.version = r.events.back().sequence.value;
  return r;
}

}  // namespace

template <class Request>
result<append_plan> plan_impl(Request&& req, append_lookup& lookup, log_position head, timestamp now,
                              bool generate_ids) {
  append_plan plan;
  // Idempotency and duplicate ids come first: a retry must succeed even though the
  // aggregate's version has moved past its expectedVersion.
  const auto& first_id = req.events.front().id;
  if (first_id) {
    if (auto first = lookup.find_event(*first_id)) {
      if (auto replay = as_replay(req, lookup, first)) {
        plan.replay = true;
        plan.result = std::move(*replay);
        return plan;
      }
      error e = error::make(errc::conflict, "event id " + *first_id + " already exists (aggregate '" +
                                                first->aggregate_id + "', sequence " +
                                                std::to_string(first->sequence.value) + ")");
      e.field = "events[0].id";
      return e;
    }
  }
  for (std::size_t i = 1; i < req.events.size(); ++i) {
    const auto& id = req.events[i].id;
    if (!id) continue;
    if (auto found = lookup.find_event(*id)) {
      error e = error::make(errc::conflict, "event id " + *id + " already exists (aggregate '" +
                                                found->aggregate_id + "', sequence " +
                                                std::to_string(found->sequence.value) + ")");
      e.field = "events[" + std::to_string(i) + "].id";
      return e;
    }
  }

  auto agg = lookup.find_aggregate(req.aggregate_id);
  const std::int64_t current = agg ? agg->version : 0;
  if (req.expected_version && *req.expected_version != current) {
    error e = error::make(errc::conflict, "aggregate '" + req.aggregate_id + "' is at version " +
                                              std::to_string(current) + ", expected " +
                                              std::to_string(*req.expected_version));
    e.field = "expectedVersion";
    e.current_version = current;
    e.expected_version = req.expected_version;
    return e;
  }
  const std::string& type = req.events.front().aggregate_type;
  if (agg && agg->aggregate_type != type)
    return error::invalid("events[0].aggregateType", "aggregate '" + req.aggregate_id + "' has type '" +
                                                         agg->aggregate_type + "', not '" + type + "'");

  plan.creates_aggregate = !agg;
  plan.aggregate_type = type;
  plan.events.reserve(req.events.size());
  plan.result.aggregate_id = req.aggregate_id;
  plan.result.events.reserve(req.events.size());
  std::int64_t seq = current, pos = head.value;
  constexpr bool consume = std::is_rvalue_reference_v<Request&&>;
  auto take = [](auto& field) -> decltype(auto) {
    if constexpr (consume) return std::move(field);
    else return std::as_const(field);
  };
  for (auto& ne : req.events) {
    event e;
    if (ne.id) e.id = take(*ne.id);
    else if (generate_ids) e.id = new_uuid_v7();
    e.type = take(ne.type);
    e.version = ne.version;
    e.time = now;
    e.aggregate_id = req.aggregate_id;
    e.aggregate_type = type;
    e.sequence = sequence_number(++seq);
    e.position = log_position(++pos);
    e.causation_id = take(ne.causation_id);
    e.correlation_id = take(ne.correlation_id);
    e.metadata = take(ne.metadata);
    e.payload = take(ne.payload);
    plan.result.events.push_back({e.id, e.sequence, e.position, e.time});
    plan.events.push_back(std::move(e));
  }
  plan.result.version = seq;
  return plan;
}

namespace {

// What the earlier appends of a group would write, seen before the store's own state.
class overlay_lookup final : public append_lookup {
 public:
  explicit overlay_lookup(append_lookup& base) : base_(base) {}
  void add(const append_plan& plan) {
    for (const auto& e : plan.events)
      if (!e.id.empty()) events_[e.id] = {e.aggregate_id, e.sequence, e.position, e.time};
    if (!plan.events.empty()) aggregates_[plan.events.back().aggregate_id] = {plan.aggregate_type, plan.result.version};
  }
  std::optional<stored_event> find_event(std::string_view id) override {
    if (auto it = events_.find(std::string(id)); it != events_.end()) return it->second;
    return base_.find_event(id);
  }
  std::optional<aggregate_state> find_aggregate(std::string_view id) override {
    if (auto it = aggregates_.find(std::string(id)); it != aggregates_.end()) return it->second;
    return base_.find_aggregate(id);
  }

 private:
  append_lookup& base_;
  std::map<std::string, stored_event> events_;
  std::map<std::string, aggregate_state> aggregates_;
};

template <class Requests>
result<std::vector<append_plan>> plan_group_impl(Requests&& requests, append_lookup& lookup, log_position head,
                                                 timestamp now, bool generate_ids) {
  std::vector<append_plan> plans;
  plans.reserve(requests.size());
  if (requests.size() == 1) {
    auto plan = std::is_rvalue_reference_v<Requests&&> ? plan_append(std::move(requests.front()), lookup, head, now, generate_ids)
                                                       : plan_append(std::as_const(requests.front()), lookup, head, now, generate_ids);
    if (!plan) return std::move(plan).error();
    plans.push_back(std::move(*plan));
    return plans;
  }
  overlay_lookup overlay(lookup);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto plan = std::is_rvalue_reference_v<Requests&&> ? plan_append(std::move(requests[i]), overlay, head, now, generate_ids)
                                                       : plan_append(std::as_const(requests[i]), overlay, head, now, generate_ids);
    if (!plan) {
      error e = std::move(plan).error();
      e.field = "appends[" + std::to_string(i) + "]" + (e.field.empty() ? "" : "." + e.field);
      return e;
    }
    if (!plan->replay) {
      overlay.add(*plan);
      head = plan->events.back().position;
    }
    plans.push_back(std::move(*plan));
  }
  return plans;
}

}  // namespace

result<std::vector<append_plan>> plan_group(const std::vector<append_request>& requests, append_lookup& lookup,
                                            log_position head, timestamp now, bool generate_ids) {
  return plan_group_impl(requests, lookup, head, now, generate_ids);
}

result<std::vector<append_plan>> plan_group(std::vector<append_request>&& requests, append_lookup& lookup,
                                            log_position head, timestamp now, bool generate_ids) {
  return plan_group_impl(std::move(requests), lookup, head, now, generate_ids);
}

result<append_plan> plan_append(const append_request& req, append_lookup& lookup, log_position head, timestamp now,
                                bool generate_ids) {
  return plan_impl(req, lookup, head, now, generate_ids);
}

result<append_plan> plan_append(append_request&& req, append_lookup& lookup, log_position head, timestamp now,
                                bool generate_ids) {
  return plan_impl(std::move(req), lookup, head, now, generate_ids);
}

}  // namespace pliers
