// /v1/routes: routing rules (spec EventRouter): add, list, get, replace, remove, and a dry
// run saying which rules and targets an example event matches and why.
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "process/event_router.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

// An example event for the dry run: `type` and `aggregateType` are enough; the rest gets
// placeholders.
result<event> example_event(json::value body) {
  auto* o = body.if_object();
  if (!o) return error::invalid("body", "must be an event object");
  if (auto* inner = o->if_contains("event"); inner && o->size() == 1) {
    if (!inner->is_object()) return error::invalid("event", "must be an object");
    json::value copy = *inner;
    return example_event(std::move(copy));
  }
  if (!o->contains("id")) (*o)["id"] = new_uuid_v4();
  if (!o->contains("aggregateId")) (*o)["aggregateId"] = "example";
  if (!o->contains("version")) (*o)["version"] = 1;
  if (!o->contains("sequenceNumber")) (*o)["sequenceNumber"] = 1;
  if (!o->contains("position")) (*o)["position"] = 0;
  if (!o->contains("timestamp")) (*o)["timestamp"] = format_rfc3339(default_clock().now());
  if (!o->contains("metadata")) (*o)["metadata"] = json::object{{"sourceSystem", "dry-run"}, {"sourceVersion", "0"}};
  if (!o->contains("payload")) (*o)["payload"] = json::object();
  return event_from_json(body);
}

}  // namespace

asio::awaitable<reply> handle_routes(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 routes [id | dry-run]
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
  auto* router = ctx.state.routes;
  if (!router) co_return problem_reply(error::make(errc::unavailable, "the router is disabled on this node (routes.enabled)"));
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method == http::verb::get) {
      json::array out;
      for (auto& r : router->list()) out.push_back(std::move(r));
      co_return json_reply(http::status::ok, json::object{{"routes", std::move(out)}});
    }
    if (method != http::verb::post) co_return method_not_allowed("GET, POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto added = co_await run_blocking(ctx.state.workers, [&] { return router->add_route(*body); });
    if (!added) co_return problem_reply(added.error());
    co_return json_reply(http::status::created, *added);
  }
  if (s.size() == 3 && s[2] == "dry-run") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto e = example_event(std::move(*body));
    if (!e) co_return problem_reply(e.error());
    // Custom conditions run Lua: off the I/O thread.
    auto explained = co_await run_blocking(ctx.state.workers, [&] { return router->explain(*e); });
    json::array rules, matched;
    for (const auto& x : explained) {
      json::array reasons, targets;
      for (const auto& r : x.reasons) reasons.emplace_back(r);
      for (const auto& t : x.targets) targets.emplace_back(t);
      if (x.matched) matched.emplace_back(x.rule_id);
      rules.push_back(json::object{{"ruleId", x.rule_id},
                                   {"enabled", x.enabled},
                                   {"matched", x.matched},
                                   {"reasons", std::move(reasons)},
                                   {"targets", std::move(targets)}});
    }
    co_return json_reply(http::status::ok, json::object{{"matched", std::move(matched)}, {"rules", std::move(rules)}});
  }
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  const std::string& id = s[2];
  if (method == http::verb::get) {
    auto r = router->get(id);
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, *r);
  }
  if (method == http::verb::put) {
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto updated = co_await run_blocking(ctx.state.workers, [&] { return router->update_route(id, *body); });
    if (!updated) co_return problem_reply(updated.error());
    co_return json_reply(http::status::ok, *updated);
  }
  if (method != http::verb::delete_) co_return method_not_allowed("GET, PUT, DELETE");
  auto removed = co_await run_blocking(ctx.state.workers, [&] { return router->remove_route(id); });
  if (!removed) co_return problem_reply(removed.error());
  reply out;
  out.head.result(http::status::no_content);
  co_return out;
}

}  // namespace pliers::http_api
