// /v1/events: one event by id, queries by query string (GET) or by body (POST .../query).
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

// GET /v1/events?type=&aggregateType=&aggregateId=&from=&to=&limit=&cursor=
// Same names as the stream endpoint; type/aggregateType/aggregateId repeat.
result<std::pair<event_query, pagination>> query_from_params(const request_context& ctx) {
  event_query q;
  pagination page;
  for (auto p : ctx.url.params()) {
    const std::string key = p.key;
    const std::string value = p.has_value ? std::string(p.value) : std::string();
    if (key == "type") {
      auto pat = type_pattern::parse(value, "type");
      if (!pat) return std::move(pat).error();
      q.event_types.push_back(std::move(*pat));
    } else if (key == "aggregateType") {
      q.aggregate_types.push_back(value);
    } else if (key == "aggregateId") {
      q.aggregate_ids.push_back(value);
    } else if (key == "from" || key == "to") {
      auto t = parse_rfc3339(value);
      if (!t) return error::invalid(key, "not an RFC 3339 timestamp: '" + value.substr(0, 64) + "'");
      (key == "from" ? q.from : q.to) = *t;
    } else if (key == "limit") {
      auto n = parse_limit(value, "limit");
      if (!n) return std::move(n).error();
      page.limit = *n;
    } else if (key == "cursor") {
      auto c = decode_cursor(value);
      if (!c) return std::move(c).error();
      page.after = *c;
    } else {
      return error::invalid(key.substr(0, 100), "unknown query parameter");
    }
    if (q.aggregate_ids.size() + q.aggregate_types.size() + q.event_types.size() > 1000)
      return error::invalid(key, "more than 1000 filter values");
  }
  return std::pair{std::move(q), page};
}

asio::awaitable<reply> run_query(request_context& ctx, event_query q, pagination page) {
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {}); !ok) co_return problem_reply(ok.error());
  auto r = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.store.query(q, page); });
  if (!r) co_return problem_reply(r.error());
  std::string out;
  out.reserve(r->events.size() * 512 + 64);
  write_query_result_json(out, *r);
  co_return json_text_reply(http::status::ok, std::move(out));
}

}  // namespace

asio::awaitable<reply> handle_events(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 events [query | {id}]
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method != http::verb::get) co_return method_not_allowed("GET");
    auto qp = query_from_params(ctx);
    if (!qp) co_return problem_reply(qp.error());
    co_return co_await run_query(ctx, std::move(qp->first), qp->second);
  }
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
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
