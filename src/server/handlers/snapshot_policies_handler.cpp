// /v1/snapshot-policies (docs/replay.md): "snapshot every N events of an aggregate type,
// keep the last K" (ops/maintenance.hpp snapshot_policy_service): list, set, remove.
#include "ops/maintenance.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

asio::awaitable<reply> handle_snapshot_policies(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 snapshot-policies [aggregateType]
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {"*", {}}); !ok) co_return problem_reply(ok.error());
  auto* service = ctx.state.snapshot_policies;
  if (!service) co_return problem_reply(error::make(errc::unavailable, "snapshot policies are not running on this node"));
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method == http::verb::get) {
      auto r = co_await run_blocking(ctx.state.workers, [&] { return service->list(); });
      if (!r) co_return problem_reply(r.error());
      co_return json_reply(http::status::ok, *r);
    }
    if (method != http::verb::post) co_return method_not_allowed("GET, POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto r = co_await run_blocking(ctx.state.workers, [&] { return service->set(*body); });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::created, *r);
  }
  if (s.size() == 3) {
    if (method != http::verb::delete_) co_return method_not_allowed("DELETE");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return service->remove(s[2]); });
    if (!r) co_return problem_reply(r.error());
    reply out;
    out.head.result(http::status::no_content);
    co_return out;
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
