// /v1/events: one event by id, queries by query string (GET) or by body (POST .../query).
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

// GET /v1/events?type=&aggregateType=&aggregateId=&routingKey=&from=&to=&limit=&cursor=
result<std::pair<event_query, pagination>> query_from_params(const request_context& ctx) {
  std::map<std::string, std::string> extra{{"limit", ""}, {"cursor", ""}};
  auto filter = filter_params(ctx, extra);
  if (!filter) return std::move(filter).error();
  if (filter->contains("routingKeys")) {
    // EventQuery has no routing keys: express them as a metadata condition.
    json::array conds;
    for (const auto& k : filter->at("routingKeys").as_array())
      conds.push_back(json::object{{"path", "$.routingKey"}, {"operator", "equals"}, {"value", k}});
    if (conds.size() > 1)
      return error::invalid("routingKey", "GET /v1/events takes one routingKey (the stream endpoints take several)");
    (*filter)["metadataQuery"] = std::move(conds);
    filter->erase("routingKeys");
  }
  auto q = event_query_from_json(*filter, "");
  if (!q) return std::move(q).error();
  pagination page;
  if (!extra["limit"].empty()) {
    auto n = parse_limit(extra["limit"], "limit");
    if (!n) return std::move(n).error();
    page.limit = *n;
  }
  if (!extra["cursor"].empty()) {
    auto c = decode_cursor(extra["cursor"]);
    if (!c) return std::move(c).error();
    page.after = *c;
  }
  return std::pair{std::move(*q), page};
}

// POST /v1/events: publish one event {NewEvent + aggregateId, expectedVersion?, routingKey?}.
asio::awaitable<reply> publish_one(request_context& ctx) {
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  auto* o = body->if_object();
  if (!o) co_return problem_reply(error::invalid("body", "must be an event object with aggregateId"));
  const auto* aid = o->if_contains("aggregateId");
  if (!aid || !aid->is_string()) co_return problem_reply(error::invalid("aggregateId", "required string"));
  std::string aggregate_id(aid->get_string());
  json::object wrapper;
  if (auto* ev = o->if_contains("expectedVersion")) wrapper["expectedVersion"] = *ev, o->erase("expectedVersion");
  std::optional<std::string> routing_key;
  if (auto* rk = o->if_contains("routingKey")) {
    if (!rk->is_string() || rk->get_string().empty() || rk->get_string().size() > 255)
      co_return problem_reply(error::invalid("routingKey", "must be a string of 1 to 255 characters"));
    routing_key = std::string(rk->get_string());
    o->erase("routingKey");
  }
  wrapper["events"] = json::array{std::move(*body)};
  auto req = append_request_from_json(json::value(std::move(wrapper)), aggregate_id);
  if (!req) {
    auto e = req.error();
    if (e.field.starts_with("events[0].")) e.field = e.field.substr(10);
    co_return problem_reply(e);
  }
  if (routing_key) req->events[0].metadata["routingKey"] = *routing_key;
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::append, {aggregate_id, req->events[0].type}); !ok)
    co_return problem_reply(ok.error());
  auto r = co_await async_append(ctx.state.store, std::move(*req));
  if (!r) co_return problem_reply(r.error());
  std::string out;
  write_append_result_json(out, *r);
  co_return json_text_reply(r->idempotent_replay ? http::status::ok : http::status::created, std::move(out));
}

// POST /v1/events/batch: {"events": [NewEvent + aggregateId (+ expectedVersion)]},
// committed all together or not at all (publishBatch); each event is its own append, in
// order, so several events of one aggregate follow each other.
asio::awaitable<reply> publish_batch(request_context& ctx) {
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  auto* o = body->if_object();
  if (!o || o->size() != 1 || !o->contains("events") || !o->at("events").is_array())
    co_return problem_reply(error::invalid("events", "the body must be {\"events\": [event, ...]}"));
  auto& events = o->at("events").as_array();
  if (events.empty()) co_return problem_reply(error::invalid("events", "must contain at least one event"));
  std::vector<append_request> requests;
  requests.reserve(events.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    const std::string field = "events[" + std::to_string(i) + "]";
    auto* e = events[i].if_object();
    if (!e) co_return problem_reply(error::invalid(field, "must be an object"));
    const auto* aid = e->if_contains("aggregateId");
    if (!aid || !aid->is_string()) co_return problem_reply(error::invalid(field + ".aggregateId", "required string"));
    std::string aggregate_id(aid->get_string());
    json::object wrapper;
    if (auto* ev = e->if_contains("expectedVersion")) wrapper["expectedVersion"] = *ev, e->erase("expectedVersion");
    wrapper["events"] = json::array{std::move(events[i])};
    auto req = append_request_from_json(json::value(std::move(wrapper)), aggregate_id);
    if (!req) {
      auto err = req.error();
      err.field = err.field.starts_with("events[0]") ? field + err.field.substr(9) : field + "." + err.field;
      co_return problem_reply(err);
    }
    if (auto ok = ctx.state.access.authorize(ctx.who, access_action::append, {aggregate_id, req->events[0].type}); !ok)
      co_return problem_reply(ok.error());
    requests.push_back(std::move(*req));
  }
  std::optional<result<std::vector<append_result>>> out;
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
      [&](auto handler) {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        ctx.state.store.append_group_async(std::move(requests), [&out, h](result<std::vector<append_result>> r) {
          out.emplace(std::move(r));
          auto ex = asio::get_associated_executor(*h);
          asio::post(ex, std::move(*h));
        });
      },
      asio::use_awaitable);
  if (!*out) {
    // "appends[i].events[0].x" names the i-th event of the body.
    auto err = out->error();
    if (err.field.starts_with("appends[")) {
      auto close = err.field.find(']');
      auto rest = err.field.substr(close + 1);
      if (rest.starts_with(".events[0]")) rest = rest.substr(10);
      err.field = "events[" + err.field.substr(8, close - 8) + "]" + rest;
    }
    co_return problem_reply(err);
  }
  json::array results;
  for (const auto& r : **out)
    for (const auto& e : r.events)
      results.push_back(json::object{{"id", e.id},
                                     {"aggregateId", r.aggregate_id},
                                     {"sequenceNumber", e.sequence.value},
                                     {"position", e.position.value},
                                     {"timestamp", format_rfc3339(e.time)}});
  co_return json_reply(http::status::created, json::object{{"events", std::move(results)}});
}

}  // namespace

result<json::object> filter_params(const request_context& ctx, std::map<std::string, std::string>& extra) {
  json::object f;
  auto add = [&](const char* key, const std::string& value) {
    auto& slot = f[key];
    if (!slot.is_array()) slot = json::array();
    slot.as_array().emplace_back(value);
    return slot.as_array().size();
  };
  std::size_t total = 0;
  for (auto p : ctx.url.params()) {
    const std::string key = p.key;
    const std::string value = p.has_value ? std::string(p.value) : std::string();
    if (key == "type") total += add("eventTypes", value);
    else if (key == "aggregateType") total += add("aggregateTypes", value);
    else if (key == "aggregateId") total += add("aggregateIds", value);
    else if (key == "routingKey") total += add("routingKeys", value);
    else if (key == "from" || key == "to") {
      if (!parse_rfc3339(value)) return error::invalid(key, "not an RFC 3339 timestamp: '" + value.substr(0, 64) + "'");
      auto& range = f["timestampRange"];
      if (!range.is_object()) range = json::object();
      range.as_object()[key] = value;
    } else if (auto it = extra.find(key); it != extra.end()) {
      it->second = value;
    } else {
      return error::invalid(key.substr(0, 100), "unknown query parameter");
    }
    if (total > 1000) return error::invalid(key, "more than 1000 filter values");
  }
  // Name the parameter, not the JSON member, in errors about type patterns.
  if (const auto* types = f.if_contains("eventTypes"))
    for (const auto& t : types->as_array())
      if (auto pat = type_pattern::parse(t.as_string(), "type"); !pat) return std::move(pat).error();
  return f;
}

namespace {

asio::awaitable<reply> run_query(request_context& ctx, event_query q, pagination page) {
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {}); !ok) co_return problem_reply(ok.error());
  auto r = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.store.query_json(q, page); });
  if (!r) co_return problem_reply(r.error());
  std::string out;
  out.reserve(r->events.json.size() + 128);
  write_query_result_json(out, *r);
  co_return json_text_reply(http::status::ok, std::move(out));
}

}  // namespace

asio::awaitable<reply> handle_events(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 events [query | {id}]
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method == http::verb::post) co_return co_await publish_one(ctx);
    if (method != http::verb::get) co_return method_not_allowed("GET, POST");
    auto qp = query_from_params(ctx);
    if (!qp) co_return problem_reply(qp.error());
    co_return co_await run_query(ctx, std::move(qp->first), qp->second);
  }
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  if (s[2] == "stream") co_return co_await handle_event_stream(ctx);
  if (s[2] == "batch") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    co_return co_await publish_batch(ctx);
  }
  if (s[2] == "query") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    const auto* o = body->if_object();
    if (!o) co_return problem_reply(error::invalid("body", "must be an object {query, pagination}"));
    for (const auto& kv : *o)
      if (kv.key() != "query" && kv.key() != "pagination")
        co_return problem_reply(error::invalid(std::string(kv.key()).substr(0, 100), "unknown member"));
    const auto* qv = o->if_contains("query");
    auto q = event_query_from_json(qv ? *qv : json::value(), "query");
    if (!q) co_return problem_reply(q.error());
    const auto* pv = o->if_contains("pagination");
    auto page = pagination_from_json(pv ? *pv : json::value(), "pagination");
    if (!page) co_return problem_reply(page.error());
    co_return co_await run_query(ctx, std::move(*q), *page);
  }
  if (method != http::verb::get) co_return method_not_allowed("GET");
  const std::string& id = s[2];
  if (!is_uuid(id)) co_return problem_reply(error::invalid("id", "not a UUID: '" + id.substr(0, 64) + "'"));
  auto e = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.store.get_event(canonical_uuid(id)); });
  if (!e) co_return problem_reply(e.error());
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {e->aggregate_id, e->type}); !ok)
    co_return problem_reply(ok.error());
  std::string out;
  write_event_json(out, *e);
  co_return json_text_reply(http::status::ok, std::move(out));
}

}  // namespace pliers::http_api
