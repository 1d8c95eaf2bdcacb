// /v1/scheduled-events: schedule a publication, list, get, cancel.
#include <charconv>

#include "core/time_format.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

json::object to_json(const scheduled_event& e) {
  json::object o{{"id", e.id},
                 {"aggregateId", e.request.aggregate_id},
                 {"publishAt", format_rfc3339(e.publish_at)},
                 {"status", e.status},
                 {"createdAt", format_rfc3339(e.created_at)},
                 {"attempts", e.attempts},
                 {"event", pliers::to_json(e.request.events.front())}};
  if (e.request.expected_version) o["expectedVersion"] = *e.request.expected_version;
  if (e.position) o["position"] = e.position->value;
  if (e.last_error) o["lastError"] = *e.last_error;
  return o;
}

asio::awaitable<reply> create(request_context& ctx) {
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  auto* o = body->if_object();
  if (!o) co_return problem_reply(error::invalid("body", "must be {aggregateId, publishAt, event, expectedVersion?}"));
  for (const auto& kv : *o)
    if (kv.key() != "aggregateId" && kv.key() != "publishAt" && kv.key() != "event" && kv.key() != "expectedVersion")
      co_return problem_reply(error::invalid(std::string(kv.key()).substr(0, 100), "unknown member"));
  const auto* aid = o->if_contains("aggregateId");
  if (!aid || !aid->is_string()) co_return problem_reply(error::invalid("aggregateId", "required string"));
  const auto* at = o->if_contains("publishAt");
  auto when = at && at->is_string() ? parse_rfc3339(at->get_string()) : std::nullopt;
  if (!when) co_return problem_reply(error::invalid("publishAt", "required RFC 3339 timestamp"));
  auto* ev = o->if_contains("event");
  if (!ev) co_return problem_reply(error::invalid("event", "required"));
  json::object wrapper{{"events", json::array{std::move(*ev)}}};
  if (auto* v = o->if_contains("expectedVersion")) wrapper["expectedVersion"] = *v;
  auto req = append_request_from_json(json::value(std::move(wrapper)), std::string(aid->get_string()));
  if (!req) {
    auto e = req.error();
    if (e.field.starts_with("events[0]")) e.field = "event" + e.field.substr(9);
    co_return problem_reply(e);
  }
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::append, {req->aggregate_id, req->events[0].type}); !ok)
    co_return problem_reply(ok.error());
  scheduled_event entry;
  entry.request = std::move(*req);
  entry.publish_at = *when;
  auto r = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.schedule(std::move(entry)); });
  if (!r) {
    auto e = r.error();
    if (e.field.starts_with("events[0]")) e.field = "event" + e.field.substr(9);
    co_return problem_reply(e);
  }
  co_return json_reply(http::status::created, to_json(*r));
}

}  // namespace

asio::awaitable<reply> handle_scheduled(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 scheduled-events [id]
  auto& store = ctx.state.store;
  if (s.size() == 2) {
    if (ctx.req.method() == http::verb::post) co_return co_await create(ctx);
    if (ctx.req.method() != http::verb::get) co_return method_not_allowed("GET, POST");
    if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
    std::optional<std::string> status;
    std::size_t limit = 100;
    for (auto p : ctx.url.params()) {
      if (p.key == "status") {
        std::string v = p.value;
        if (v != "pending" && v != "published" && v != "cancelled" && v != "failed")
          co_return problem_reply(error::invalid("status", "must be pending, published, cancelled or failed"));
        status = v;
      } else if (p.key == "limit") {
        auto n = parse_limit(p.value, "limit");
        if (!n) co_return problem_reply(n.error());
        limit = *n;
      } else {
        co_return problem_reply(error::invalid(std::string(p.key).substr(0, 100), "unknown query parameter"));
      }
    }
    auto list = co_await run_blocking(ctx.state.workers, [&] { return store.list_scheduled(status, limit); });
    if (!list) co_return problem_reply(list.error());
    json::array out;
    for (const auto& e : *list) out.push_back(to_json(e));
    co_return json_reply(http::status::ok, json::object{{"scheduledEvents", std::move(out)}});
  }
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
  const std::string& id = s[2];
  if (ctx.req.method() == http::verb::get) {
    auto e = co_await run_blocking(ctx.state.workers, [&] { return store.get_scheduled(id); });
    if (!e) co_return problem_reply(e.error());
    co_return json_reply(http::status::ok, to_json(*e));
  }
  if (ctx.req.method() != http::verb::delete_) co_return method_not_allowed("GET, DELETE");
  auto r = co_await run_blocking(ctx.state.workers, [&] { return store.cancel_scheduled(id); });
  if (!r) co_return problem_reply(r.error());
  reply out;
  out.head.result(http::status::no_content);
  co_return out;
}

}  // namespace pliers::http_api
