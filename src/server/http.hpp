// Internal to src/server: the request context handed to handlers, replies (whole or
// streamed in chunks), and helpers to leave the I/O thread for blocking work.
#pragma once

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url.hpp>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/event_codec.hpp"
#include "security/access.hpp"
#include "server/config.hpp"
#include "bus/log_tailer.hpp"
#include "server/stream_registry.hpp"
#include "store/event_store.hpp"

namespace pliers {
class plugin_chain;
class retry_engine;
class event_router;
class channel_hub;
class projection_manager;
class compaction_scheduler;
class snapshot_policy_service;
struct plugin_view;
}  // namespace pliers

namespace pliers::http_api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

struct reply {
  response head;
  // Set for streamed bodies (chunked): yields the next chunk, nullopt at the end, or an
  // error, after which the connection is closed (the client sees a truncated body).
  std::function<asio::awaitable<result<std::optional<std::string>>>()> next_chunk;
};

struct server_state {
  const server_config& config;
  event_store& store;
  const access_policy& access;
  asio::thread_pool& workers;
  log_tailer& tailer;
  stream_registry& streams;
  const std::atomic<bool>& stopping;  // shutdown has begun: streams end
  std::function<result<scheduled_event>(scheduled_event)> schedule;  // the node's scheduler
  plugin_chain* plugins = nullptr;        // nullptr when plugins.enabled = false
  retry_engine* dead_letters = nullptr;
  event_router* routes = nullptr;         // nullptr when routes.enabled = false
  channel_hub* channels = nullptr;        // the websocket routing target's channels
  projection_manager* projections = nullptr;  // named projections (ops/projections.hpp)
  compaction_scheduler* compaction_schedules = nullptr;  // scheduleCompaction (ops/maintenance.hpp)
  snapshot_policy_service* snapshot_policies = nullptr;  // snapshot policies (ops/maintenance.hpp)
};

struct request_context {
  server_state& state;
  const request& req;
  boost::urls::url_view url;
  std::vector<std::string> segments;  // decoded path segments
  principal who;
  std::string client_id;  // remote address:port
};

// Query parameters shared by GET /v1/events and the streams (type, aggregateType,
// aggregateId, routingKey, from, to) as the JSON of an EventQuery/EventFilter; other
// parameters must be in `extra` (their values are returned there) or are refused.
result<boost::json::object> filter_params(const request_context& ctx,
                                          std::map<std::string, std::string>& extra);

// Runs f() on the worker pool and resumes the coroutine on its own executor.
template <class F>
asio::awaitable<std::invoke_result_t<F>> run_blocking(asio::thread_pool& pool, F f) {
  using R = std::invoke_result_t<F>;
  std::optional<R> out;
  std::exception_ptr failure;
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
      [&](auto handler) {
        asio::post(pool, [&, handler = std::move(handler)]() mutable {
          try {
            out.emplace(f());
          } catch (...) {
            failure = std::current_exception();
          }
          auto ex = asio::get_associated_executor(handler);
          asio::post(ex, std::move(handler));
        });
      },
      asio::use_awaitable);
  if (failure) std::rethrow_exception(failure);
  co_return std::move(*out);
}

// Appends through the store's group commit without holding a thread while it waits.
asio::awaitable<result<append_result>> async_append(event_store& store, append_request request);

reply json_reply(http::status status, const boost::json::value& body);
reply json_text_reply(http::status status, std::string body);
// The problem document for e; `status` overrides the code's usual status (e.g. 431).
reply problem_reply(const error& e, std::optional<http::status> status = std::nullopt);
reply method_not_allowed(const char* allow);
// Parses the request body as JSON with the configured depth limit.
result<boost::json::value> parse_body(const request_context& ctx);

asio::awaitable<reply> handle_health(request_context& ctx);
asio::awaitable<reply> handle_aggregates(request_context& ctx);
asio::awaitable<reply> handle_events(request_context& ctx);
asio::awaitable<reply> handle_event_stream(request_context& ctx);  // SSE
asio::awaitable<reply> handle_streams(request_context& ctx);       // GET/DELETE /v1/streams
asio::awaitable<reply> handle_scheduled(request_context& ctx);     // /v1/scheduled-events
asio::awaitable<reply> handle_plugins(request_context& ctx);       // /v1/plugins
asio::awaitable<reply> handle_dead_letters(request_context& ctx);  // /v1/dead-letters
asio::awaitable<reply> handle_replay(request_context& ctx);        // /v1/replay
asio::awaitable<reply> handle_compaction(request_context& ctx);    // /v1/compaction
asio::awaitable<reply> handle_projections(request_context& ctx);   // /v1/projections
asio::awaitable<reply> handle_snapshot_policies(request_context& ctx);  // /v1/snapshot-policies
asio::awaitable<reply> handle_routes(request_context& ctx);        // /v1/routes
// A plugin registration as POST /v1/plugins takes it (also the plugins.file entries).
result<plugin_view> register_plugin_from_json(plugin_chain& chain, const boost::json::value& body,
                                              std::chrono::milliseconds default_timeout);
// Takes over an upgraded connection for GET /v1/stream.
asio::awaitable<void> run_websocket(server_state& state, beast::tcp_stream stream, request req, std::string client_id);

}  // namespace pliers::http_api
