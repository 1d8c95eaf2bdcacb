#include "process/lifecycle_log.hpp"

#include <algorithm>

namespace pliers {

boost::json::object engine_event_metadata() { return {{"sourceSystem", "pliers-events"}, {"sourceVersion", "0.1.0"}}; }

lifecycle_log::lifecycle_log(event_store& store, std::string aggregate_type)
    : store_(store), aggregate_type_(std::move(aggregate_type)) {}

result<append_result> lifecycle_log::append(std::string_view id, std::string type, boost::json::object payload) {
  append_request req;
  req.aggregate_id = aggregate_of(id);
  new_event ne;
  ne.type = std::move(type);
  ne.aggregate_type = aggregate_type_;
  ne.metadata = engine_event_metadata();
  ne.payload = std::move(payload);
  req.events.push_back(std::move(ne));
  auto r = store_.append(std::move(req));
  if (!r) return r;
  auto it = applied_.find(id);
  if (it == applied_.end()) it = applied_.emplace(std::string(id), 0).first;
  it->second = std::max(it->second, r->events.back().position.value);
  return r;
}

bool lifecycle_log::should_apply(std::string_view id, const event& e) {
  auto it = applied_.find(id);
  if (it == applied_.end()) it = applied_.emplace(std::string(id), 0).first;
  if (e.position.value <= it->second) return false;
  it->second = e.position.value;
  return true;
}

result<void> lifecycle_log::replay(const std::vector<std::string>& types, const std::function<void(const event&)>& apply) {
  event_query q;
  for (const auto& t : types) {
    auto p = type_pattern::parse(t);
    if (!p) return std::move(p).error();
    q.event_types.push_back(std::move(*p));
  }
  q.aggregate_types.push_back(aggregate_type_);
  pagination page;
  page.limit = max_page_limit;
  page.count_total = false;
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (const auto& e : r->events) apply(e);
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  return {};
}

}  // namespace pliers
