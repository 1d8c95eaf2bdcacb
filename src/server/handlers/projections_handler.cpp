// /v1/projections (docs/replay.md): named projections running on the server (ops/
// projections.hpp): register, list (position, head, lag), get, state, rebuild, remove.
#include "ops/projections.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

asio::awaitable<reply> handle_projections(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 projections [name [state|rebuild]]
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {"*", {}}); !ok) co_return problem_reply(ok.error());
  auto* manager = ctx.state.projections;
  if (!manager) co_return problem_reply(error::make(errc::unavailable, "projections are not running on this node"));
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method == http::verb::get) {
      // Copies of every status: off the I/O thread.
      auto out = co_await run_blocking(ctx.state.workers, [&] {
        json::array a;
        for (const auto& p : manager->list()) a.push_back(p.to_json(false));
        return a;
      });
      co_return json_reply(http::status::ok, json::object{{"projections", std::move(out)}});
    }
    if (method != http::verb::post) co_return method_not_allowed("GET, POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto r = co_await run_blocking(ctx.state.workers, [&] { return manager->register_projection(*body); });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::created, r->to_json(false));
  }
  const std::string& name = s.size() >= 3 ? s[2] : std::string();
  if (s.size() == 3) {
    if (method == http::verb::get) {
      auto r = manager->get(name);
      if (!r) co_return problem_reply(r.error());
      co_return json_reply(http::status::ok, r->to_json(false));
    }
    if (method != http::verb::delete_) co_return method_not_allowed("GET, DELETE");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return manager->remove(name); });
    if (!r) co_return problem_reply(r.error());
    reply out;
    out.head.result(http::status::no_content);
    co_return out;
  }
  if (s.size() == 4 && s[3] == "state") {
    if (method != http::verb::get) co_return method_not_allowed("GET");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return manager->get(name); });  // the state may be large
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, r->to_json(true));
  }
  if (s.size() == 4 && s[3] == "rebuild") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return manager->rebuild(name); });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::accepted, r->to_json(false));
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
