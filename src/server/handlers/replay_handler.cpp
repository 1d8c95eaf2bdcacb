// /v1/replay (spec EventReplay, docs/replay.md): an aggregate's events by sequence range,
// events in a time range matching a filter, replayToState with a Lua reducer (from the
// latest snapshot), and createProjection with a Lua projector over a time range. Nothing
// is written. Store reads and Lua run on the worker pool.
#include "ops/batch_processor.hpp"
#include "ops/lua_projector.hpp"
#include "ops/replay.hpp"
#include "server/handlers/ops_json.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

json::array ranges_json(const std::vector<sequence_range>& ranges) {
  json::array out;
  for (const auto& r : ranges) out.push_back(json::object{{"from", r.from}, {"to", r.to}});
  return out;
}

json::array events_json(const std::vector<event>& events) {
  json::array out;
  out.reserve(events.size());
  for (const auto& e : events) out.push_back(event_to_json(e));
  return out;
}

// POST /v1/replay/events {aggregateId, fromSequence?, toSequence?, limit?}
result<json::object> replay_events(event_store& store, const json::object& body) {
  auto id = ops_json::required_string(body, "aggregateId");
  if (!id) return std::move(id).error();
  auto from = ops_json::optional_int(body, "fromSequence", 1);
  if (!from) return std::move(from).error();
  auto to = ops_json::optional_int(body, "toSequence", 1);
  if (!to) return std::move(to).error();
  auto limit = ops_json::optional_int(body, "limit", 1, 100000);
  if (!limit) return std::move(limit).error();
  event_replay replay(store);
  auto meta = store.get_aggregate_metadata(*id);
  std::vector<sequence_range> ranges;
  if (meta) ranges = meta->compacted_ranges;
  else if (meta.error().code != errc::not_found) return std::move(meta).error();
  auto events = replay.replay_events(*id, *from, *to, static_cast<std::size_t>(limit->value_or(10000)));
  if (!events) return std::move(events).error();
  return json::object{{"aggregateId", *id}, {"events", events_json(*events)}, {"compactedRanges", ranges_json(ranges)}};
}

// POST /v1/replay/time-range {from, to, filter?, limit?}
result<json::object> replay_time_range(event_store& store, const json::object& body) {
  auto from = ops_json::required_time(body, "from");
  if (!from) return std::move(from).error();
  auto to = ops_json::required_time(body, "to");
  if (!to) return std::move(to).error();
  auto filter = ops_json::optional_filter(body, "filter");
  if (!filter) return std::move(filter).error();
  auto limit = ops_json::optional_int(body, "limit", 1, 100000);
  if (!limit) return std::move(limit).error();
  event_replay replay(store);
  auto events = replay.replay_by_time_range(*from, *to, filter->has_value() ? &**filter : nullptr,
                                            static_cast<std::size_t>(limit->value_or(10000)));
  if (!events) return std::move(events).error();
  return json::object{{"events", events_json(*events)}};
}

// POST /v1/replay/state {aggregateId, reducer, initialState?, useSnapshot?}
result<json::object> replay_state(event_store& store, const json::object& body) {
  auto id = ops_json::required_string(body, "aggregateId");
  if (!id) return std::move(id).error();
  auto projector = ops_json::required_projector(body, "reducer");
  if (!projector) return std::move(projector).error();
  json::value initial;
  if (const auto* v = body.if_contains("initialState")) initial = *v;
  bool use_snapshot = true;
  if (const auto* v = body.if_contains("useSnapshot"); v && !v->is_null()) {
    if (!v->is_bool()) return error::invalid("useSnapshot", "must be a boolean");
    use_snapshot = v->get_bool();
  }
  event_replay replay(store);
  auto r = replay.replay_to_state(*id, std::move(initial), **projector, use_snapshot);
  if (!r) {
    auto e = std::move(r).error();
    if (lua_failure_of(e)) e.field = "reducer";
    return e;
  }
  json::object out{{"aggregateId", *id},
                   {"state", std::move(r->state)},
                   {"version", r->version},
                   {"eventsApplied", r->events_applied},
                   {"compactedRanges", ranges_json(r->compacted_ranges)}};
  out["snapshotSequence"] = r->snapshot_sequence ? json::value(*r->snapshot_sequence) : json::value(nullptr);
  return out;
}

// POST /v1/replay/projection {projector, from?, to?, filter?, initialState?}: the events in
// the range that match, folded (at most 1,000,000 events; reads paged).
result<json::object> replay_projection(event_store& store, const json::object& body) {
  auto projector = ops_json::required_projector(body, "projector");
  if (!projector) return std::move(projector).error();
  auto filter = ops_json::optional_filter(body, "filter");
  if (!filter) return std::move(filter).error();
  event_query q;
  for (const char* key : {"from", "to"}) {
    if (const auto* v = body.if_contains(key); v && !v->is_null()) {
      auto t = ops_json::required_time(body, key);
      if (!t) return std::move(t).error();
      (std::string_view(key) == "from" ? q.from : q.to) = *t;
    }
  }
  if (q.from && q.to && *q.to < *q.from) return error::invalid("to", "must not be before from");
  if (filter->has_value()) {
    q.event_types = (*filter)->event_types;
    q.aggregate_types = (*filter)->aggregate_types;
    q.aggregate_ids = (*filter)->aggregate_ids;
  }
  json::value initial;
  if (const auto* v = body.if_contains("initialState")) initial = *v;
  if (auto s = (*projector)->start(std::move(initial)); !s) return std::move(s).error();
  constexpr std::int64_t max_events = 1'000'000;
  std::int64_t applied = 0;
  log_position last{};
  pagination page{max_page_limit, log_position{}};
  while (true) {
    auto r = store.query(q, page);
    if (!r) return std::move(r).error();
    std::vector<event> matching;
    for (auto& e : r->events)
      if (!filter->has_value() || (*filter)->matches(e)) matching.push_back(std::move(e));
    applied += static_cast<std::int64_t>(matching.size());
    if (applied > max_events) return error::invalid("filter", "more than 1,000,000 events match; use a named projection");
    if (auto a = (*projector)->apply(matching); !a) {
      auto e = std::move(a).error();
      if (lua_failure_of(e)) e.field = "projector";
      return e;
    }
    if (!r->events.empty()) last = r->events.back().position;
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  auto st = (*projector)->state();
  if (!st) return std::move(st).error();
  return json::object{{"state", std::move(*st)}, {"eventsApplied", applied}, {"position", last.value}};
}

// POST /v1/replay/batch {aggregateIds (at most 1000), reducer, initialState?, useSnapshot?}:
// batchReplay, the spec's BatchResult plus each aggregate's state.
result<json::object> replay_batch(event_store& store, const json::object& body) {
  const auto* ids = body.if_contains("aggregateIds");
  if (!ids) return error::invalid("aggregateIds", "required: a list of aggregate ids");
  auto list = string_list(*ids, "aggregateIds");
  if (!list) return std::move(list).error();
  if (list->empty()) return error::invalid("aggregateIds", "must not be empty");
  auto check = ops_json::required_projector(body, "reducer");
  if (!check) return std::move(check).error();
  const std::string source(body.at("reducer").get_string());
  json::value initial;
  if (const auto* v = body.if_contains("initialState")) initial = *v;
  bool use_snapshot = true;
  if (const auto* v = body.if_contains("useSnapshot"); v && !v->is_null()) {
    if (!v->is_bool()) return error::invalid("useSnapshot", "must be a boolean");
    use_snapshot = v->get_bool();
  }
  batch_processor batch(store);
  auto r = batch.batch_replay(
      *list,
      [&]() -> std::unique_ptr<state_folder> {
        auto p = lua_projector::create(source);
        return p ? std::unique_ptr<state_folder>(std::move(*p)) : nullptr;
      },
      std::move(initial), use_snapshot);
  if (!r) return std::move(r).error();
  auto out = r->summary.to_json();
  json::array states;
  for (auto& [id, st] : r->states)
    states.push_back(json::object{{"aggregateId", id}, {"state", std::move(st.state)}, {"version", st.version},
                                  {"eventsApplied", st.events_applied}});
  out["states"] = std::move(states);
  return out;
}

}  // namespace

asio::awaitable<reply> handle_replay(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 replay <what>
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  if (ctx.req.method() != http::verb::post) co_return method_not_allowed("POST");
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  if (!body->is_object()) co_return problem_reply(error::invalid("body", "must be a JSON object"));
  const auto& o = body->get_object();
  // Reading one aggregate needs read access to it; anything over the whole log is admin.
  const auto* agg = o.if_contains("aggregateId");
  const std::string aggregate = agg && agg->is_string() ? std::string(agg->get_string()) : std::string();
  const bool one_aggregate = s[2] == "events" || s[2] == "state";
  if (auto ok = ctx.state.access.authorize(ctx.who, one_aggregate ? access_action::read : access_action::admin,
                                           {one_aggregate ? std::string_view(aggregate) : std::string_view("*"), {}});
      !ok)
    co_return problem_reply(ok.error());
  std::function<result<json::object>(event_store&, const json::object&)> fn;
  if (s[2] == "events") fn = replay_events;
  else if (s[2] == "time-range") fn = replay_time_range;
  else if (s[2] == "state") fn = replay_state;
  else if (s[2] == "projection") fn = replay_projection;
  else if (s[2] == "batch") fn = replay_batch;
  else co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  auto r = co_await run_blocking(ctx.state.workers, [&] { return fn(ctx.state.store, o); });
  if (!r) co_return problem_reply(r.error());
  co_return json_reply(http::status::ok, *r);
}

}  // namespace pliers::http_api
