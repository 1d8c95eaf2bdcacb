// GET /health: liveness plus the store's head position, so an operator sees at once that
// the store answers.
#include "server/http.hpp"

namespace pliers::http_api {

asio::awaitable<reply> handle_health(request_context& ctx) {
  if (ctx.req.method() != http::verb::get && ctx.req.method() != http::verb::head) co_return method_not_allowed("GET");
  auto head = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.store.head(); });
  co_return json_reply(http::status::ok, boost::json::object{{"status", "ok"}, {"headPosition", head.value}});
}

}  // namespace pliers::http_api
