#include "server/server.hpp"

#include <boost/beast/websocket.hpp>

#include <atomic>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "bus/event_bus.hpp"
#include "bus/scheduler.hpp"
#include "ops/maintenance.hpp"
#include "ops/projections.hpp"
#include "process/plugin_chain.hpp"
#include "process/plugin_kinds.hpp"
#include "process/plugin_processor.hpp"
#include "process/retry_engine.hpp"
#include "process/channel_hub.hpp"
#include "process/event_router.hpp"
#include "process/route_processor.hpp"
#include "process/route_targets.hpp"
#include "server/http.hpp"
#include "server/log.hpp"
#include "server/problem.hpp"

namespace pliers {

namespace http_api {

reply json_text_reply(http::status status, std::string body) {
  reply r;
  r.head.result(status);
  r.head.set(http::field::content_type, status >= http::status::bad_request ? "application/problem+json"
                                                                             : "application/json");
  r.head.body() = std::move(body);
  return r;
}

reply json_reply(http::status status, const boost::json::value& body) {
  return json_text_reply(status, boost::json::serialize(body));
}

reply problem_reply(const error& e, std::optional<http::status> status) {
  auto body = problem_json(e);
  if (status) body["status"] = static_cast<unsigned>(*status);
  auto r = json_reply(status.value_or(static_cast<http::status>(http_status(e))), body);
  r.head.set(http::field::content_type, "application/problem+json");
  return r;
}

reply method_not_allowed(const char* allow) {
  auto r = problem_reply(error::make(errc::invalid_argument, "method not allowed here; allowed: " + std::string(allow)));
  r.head.result(http::status::method_not_allowed);
  r.head.body() = boost::json::serialize(boost::json::object{
      {"type", "https://pliers.dev/problems/method-not-allowed"},
      {"title", "Method not allowed"},
      {"status", 405},
      {"detail", "allowed: " + std::string(allow)}});
  r.head.set(http::field::allow, allow);
  return r;
}

result<boost::json::value> parse_body(const request_context& ctx) {
  // JSON is expected; curl's default form type is tolerated (the body is still parsed as
  // JSON), anything else is refused so that a misdirected upload fails loudly.
  auto ct = ctx.req[http::field::content_type];
  if (!ct.empty() && ct.find("json") == std::string_view::npos &&
      !ct.starts_with("application/x-www-form-urlencoded"))
    return error::invalid("Content-Type", "must be application/json, got '" + std::string(ct.substr(0, 100)) + "'");
  if (ctx.req.body().empty()) return error::invalid("body", "a JSON body is required");
  return parse_json(ctx.req.body(), json_limits{ctx.state.config.max_json_depth});
}

asio::awaitable<result<append_result>> async_append(event_store& store, append_request req) {
  std::optional<result<append_result>> out;
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
      [&](auto handler) {
        // append_callback is a std::function (copyable); the handler is move-only.
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        store.append_async(std::move(req), [&out, h](result<append_result> r) {
          out.emplace(std::move(r));
          auto ex = asio::get_associated_executor(*h);
          asio::post(ex, std::move(*h));
        });
      },
      asio::use_awaitable);
  co_return std::move(*out);
}

}  // namespace http_api

using namespace http_api;
using tcp = asio::ip::tcp;

struct http_server::impl {
  server_config cfg;
  event_store& store;
  // One io_context per network thread, each run by that thread alone: a connection lives
  // on one of them (round robin) and all its handlers run on that thread, with no strand
  // and no hand-off to another thread between reading a request and answering it (with
  // one shared context, its two threads woke each other several times per request).
  // `ioc` is the first; it also runs the acceptor, signals and shutdown.
  asio::io_context ioc;
  std::vector<std::unique_ptr<asio::io_context>> more_iocs;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> more_iocs_work;
  std::size_t next_ioc = 0;  // used by the accept loop only
  asio::thread_pool workers;
  tcp::acceptor acceptor{ioc};
  std::optional<asio::signal_set> signals;
  log_tailer tailer;
  scheduler fire_scheduled;
  stream_registry streams;
  retry_engine retries;
  plugin_chain chain;
  std::unique_ptr<plugin_processor> processor;
  channel_hub channels;
  std::unique_ptr<event_router> router;
  std::unique_ptr<route_processor> routing;
  std::unique_ptr<projection_manager> projections;
  std::unique_ptr<compaction_scheduler> schedules;
  std::unique_ptr<snapshot_policy_service> snapshot_policies;
  server_state state;
  std::atomic<bool> stopping{false};
  std::atomic<std::size_t> connections{0};

  // Live sessions, so that shutdown can close the idle ones. An entry is touched only on
  // its session's thread (shutdown posts to its executor), so the stream pointer is valid
  // when used.
  struct session_entry {
    asio::any_io_executor executor;
    beast::tcp_stream* stream;
    bool* busy;
  };
  std::mutex sessions_mutex;
  std::unordered_map<std::uint64_t, session_entry> sessions;  // GUARDED_BY(sessions_mutex)
  std::uint64_t next_session = 0;                             // GUARDED_BY(sessions_mutex)

  impl(server_config c, event_store& s)
      : cfg(std::move(c)), store(s), ioc(1), workers(cfg.worker_threads),
        tailer(store, log_tailer::options{.poll_interval = cfg.tail_poll_interval}),
        fire_scheduled(store, default_clock(), scheduler::options{}),
        retries(store, default_clock(), retry_engine::options{.max_concurrent = cfg.retry_max_concurrent, .default_policy = cfg.default_retry}),
        chain(store, default_clock(), retries, make_plugin,
              plugin_chain::options{.default_timeout = cfg.plugin_timeout,
                                    .max_hops = cfg.plugin_max_hops,
                                    .record_executions = cfg.plugin_record_executions,
                                    .native_workers = cfg.plugin_workers}),
        state{cfg, store, default_access_policy(), workers, tailer, streams, stopping,
              [this](scheduled_event e) { return fire_scheduled.schedule(std::move(e)); }} {
    for (unsigned i = 1; i < cfg.io_threads; ++i) {
      more_iocs.push_back(std::make_unique<asio::io_context>(1));
      more_iocs_work.push_back(asio::make_work_guard(*more_iocs.back()));
    }
    state.dead_letters = &retries;
    if (cfg.plugins_enabled) state.plugins = &chain;
    state.channels = &channels;
    if (cfg.routes_enabled) {
      router = std::make_unique<event_router>(
          store, default_clock(), retries,
          make_route_target_factory({.allow_private = cfg.route_allow_private,
                                     .default_timeout = cfg.route_timeout,
                                     .plugins = cfg.plugins_enabled ? &chain : nullptr,
                                     .channels = &channels}),
          event_router::options{.max_concurrent_deliveries = cfg.route_max_concurrent,
                                .record_deliveries = cfg.route_record_deliveries});
      state.routes = router.get();
    }
  }

  // The retry engine's thread calls into the chain and the router: it stops first.
  ~impl() {
    snapshot_policies.reset();
    schedules.reset();
    projections.reset();
    routing.reset();
    processor.reset();
    retries.stop();
  }

  // Loads the routing rules from the log and starts the routing consumer.
  result<void> start_routing(const std::string& member) {
    if (!router) return {};
    if (auto ok = router->load(); !ok) return ok;
    routing = std::make_unique<route_processor>(
        store, tailer, default_clock(), *router, member,
        route_processor::options{.partitions = cfg.route_partitions,
                                 .lease = cfg.route_lease,
                                 .on_error = [](const std::string& what) { log::warn("routes", {{"error", what}}); }});
    return {};
  }

  static std::string member_name() {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    return std::string(host) + ":" + std::to_string(getpid());
  }

  // Loads the plugin registry (the log, native libraries, plugins.file) and starts the
  // plugin consumer and the retry engine.
  result<void> start_processing() {
    if (cfg.default_retry.max_delay < cfg.default_retry.base_delay)
      return error::invalid("retry.max_delay_ms", "must not be less than retry.base_delay_ms");
    if (!cfg.plugins_enabled) {
      if (auto ok = start_routing(member_name()); !ok) return ok;
      retries.start();
      return {};
    }
    if (auto ok = chain.load(); !ok) return ok;
    for (const auto& path : cfg.native_plugins) {
      std::vector<std::string> types;
      auto plugin = load_native_plugin(path, {}, &types);
      if (!plugin) {
        auto e = std::move(plugin).error();
        e.field = "plugins.native";
        e.message = path + ": " + e.message;
        return e;
      }
      if (chain.get((*plugin)->info().id)) continue;  // registered before; the log has it
      auto r = chain.register_plugin(*plugin, std::move(types), {});
      if (!r) return std::move(r).error();
    }
    if (!cfg.plugin_file.empty()) {
      std::ifstream in(cfg.plugin_file);
      if (!in) return error::invalid("plugins.file", "cannot read '" + cfg.plugin_file + "'");
      std::stringstream text;
      text << in.rdbuf();
      auto doc = parse_json(text.str());
      if (!doc || !doc->is_array())
        return error::invalid("plugins.file", cfg.plugin_file + ": must be a JSON array of plugin registrations");
      for (std::size_t i = 0; i < doc->as_array().size(); ++i) {
        const auto& item = doc->as_array()[i];
        const auto* id = item.is_object() ? item.as_object().if_contains("id") : nullptr;
        if (id && id->is_string() && chain.get(std::string(id->get_string()))) continue;  // already registered
        auto r = register_plugin_from_json(chain, item, cfg.plugin_timeout);
        if (!r) {
          auto e = std::move(r).error();
          e.message = cfg.plugin_file + " [" + std::to_string(i) + "]." + e.field + ": " + e.message;
          e.field = "plugins.file";
          return e;
        }
      }
    }
    processor = std::make_unique<plugin_processor>(
        store, tailer, default_clock(), chain, member_name(),
        plugin_processor::options{.partitions = cfg.plugin_partitions,
                                  .lease = cfg.plugin_lease,
                                  .on_error = [](const std::string& what) { log::warn("plugins", {{"error", what}}); }});
    if (auto ok = start_routing(member_name()); !ok) return ok;
    retries.start();
    return {};
  }

  asio::awaitable<void> accept_loop() {
    while (!stopping) {
      auto& home = next_ioc == 0 ? ioc : *more_iocs[next_ioc - 1];
      next_ioc = (next_ioc + 1) % (more_iocs.size() + 1);
      auto [ec, socket] = co_await acceptor.async_accept(home, asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (stopping || ec == asio::error::operation_aborted) break;
        log::warn("accept failed", {{"error", ec.message()}});
        asio::steady_timer t(ioc, std::chrono::milliseconds(50));  // e.g. out of file descriptors
        co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
        continue;
      }
      if (connections.load() >= cfg.max_connections) {
        boost::system::error_code ignored;
        socket.close(ignored);
        log::warn("connection refused: max_connections reached", {{"max_connections", cfg.max_connections}});
        continue;
      }
      boost::system::error_code nodelay_ec;  // small replies and chunks must not wait for Nagle
      socket.set_option(tcp::no_delay(true), nodelay_ec);
      auto ex = socket.get_executor();
      asio::co_spawn(ex, session(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<reply> dispatch(request_context& ctx) {
    const auto& s = ctx.segments;
    if (s.size() == 1 && s[0] == "health") co_return co_await handle_health(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "aggregates") co_return co_await handle_aggregates(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "events") co_return co_await handle_events(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "streams") co_return co_await handle_streams(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "scheduled-events") co_return co_await handle_scheduled(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "plugins") co_return co_await handle_plugins(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "dead-letters") co_return co_await handle_dead_letters(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "replay") co_return co_await handle_replay(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "compaction") co_return co_await handle_compaction(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "projections") co_return co_await handle_projections(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "snapshot-policies") co_return co_await handle_snapshot_policies(ctx);
    if (s.size() >= 2 && s[0] == "v1" && s[1] == "routes") co_return co_await handle_routes(ctx);
    if (s.size() == 2 && s[0] == "v1" && s[1] == "stream")
      co_return problem_reply(error::invalid("Upgrade", "GET /v1/stream is a WebSocket endpoint: send an Upgrade request"));
    co_return problem_reply(error::make(errc::not_found, "no resource at " + std::string(ctx.url.path())));
  }

  asio::awaitable<reply> handle(const request& req, const std::string& client_id) {
    auto parsed = boost::urls::parse_origin_form(req.target());
    if (!parsed) co_return problem_reply(error::invalid("target", "malformed request target"));
    request_context ctx{state, req, *parsed, {}, {}, client_id};
    for (auto seg : parsed->segments()) ctx.segments.push_back(std::string(seg));
    if (!ctx.segments.empty() && ctx.segments.back().empty()) ctx.segments.pop_back();  // trailing '/'
    try {
      co_return co_await dispatch(ctx);
    } catch (const std::exception& e) {
      log::error("request failed", {{"target", std::string(req.target())}, {"error", e.what()}});
      co_return problem_reply(error::make(errc::internal, "internal error"));
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer(64 * 1024);  // holds a full header (parser limit 16 KiB) plus body data
    bool busy = false;
    std::uint64_t id;
    {
      std::lock_guard lock(sessions_mutex);
      id = next_session++;
      sessions.emplace(id, session_entry{stream.get_executor(), &stream, &busy});
    }
    ++connections;
    try {
      co_await serve_connection(stream, buffer, busy);
    } catch (const std::exception& e) {
      log::debug("connection ended", {{"error", e.what()}});
    }
    {
      std::lock_guard lock(sessions_mutex);
      sessions.erase(id);
    }
    --connections;
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.close();
  }

  // Writes a reply; false when the connection must close.
  asio::awaitable<bool> write_reply(beast::tcp_stream& stream, reply& r, bool keep_alive) {
    r.head.keep_alive(keep_alive);
    r.head.set(http::field::server, "pliers-events");
    stream.expires_after(cfg.request_timeout);
    if (!r.next_chunk) {
      r.head.prepare_payload();
      auto [ec, n] = co_await http::async_write(stream, r.head, asio::as_tuple(asio::use_awaitable));
      co_return !ec && keep_alive;
    }
    http::response<http::empty_body> head{http::response_header<>(std::move(r.head.base()))};
    head.chunked(true);
    http::response_serializer<http::empty_body> sr{head};
    if (auto [ec, n] = co_await http::async_write_header(stream, sr, asio::as_tuple(asio::use_awaitable)); ec)
      co_return false;
    while (true) {
      auto chunk = co_await r.next_chunk();
      if (!chunk) {
        log::warn("streamed response failed", {{"error", chunk.error().message}});
        co_return false;
      }
      stream.expires_after(cfg.request_timeout);
      if (!*chunk) break;
      if (chunk->value().empty()) continue;
      auto [ec, n] = co_await asio::async_write(stream, http::make_chunk(asio::buffer(chunk->value())),
                                                asio::as_tuple(asio::use_awaitable));
      if (ec) co_return false;
    }
    auto [ec, n] = co_await asio::async_write(stream, http::make_chunk_last(), asio::as_tuple(asio::use_awaitable));
    co_return !ec && keep_alive;
  }

  static constexpr std::size_t idle_buffer_bytes = 16 * 1024;

  asio::awaitable<void> serve_connection(beast::tcp_stream& stream, beast::flat_buffer& buffer, bool& busy) {
    while (!stopping) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(16 * 1024);
      parser.body_limit(cfg.max_body_bytes);
      busy = false;
      stream.expires_after(cfg.idle_timeout);
      auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
      if (hec) {
        if (hec == http::error::end_of_stream || hec == asio::error::operation_aborted ||
            hec == beast::error::timeout || hec == asio::error::connection_reset || hec == asio::error::eof)
          co_return;
        co_await reject(stream, hec);
        co_return;
      }
      busy = true;
      stream.expires_after(cfg.request_timeout);
      // Beast reads max(512, free capacity) bytes at a time: without room made for the
      // body first, a 40 KB append arrives in 80 reads, each a recvmsg, an epoll_wait and a
      // timer re-arm. Room for the whole body (up to the buffer's limit) reads it in one.
      if (auto n = parser.content_length(); n && *n > buffer.capacity() - buffer.size())
        buffer.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size() + *n, buffer.max_size())));
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
      if (bec) {
        if (bec == beast::error::timeout || bec == asio::error::connection_reset || bec == asio::error::eof ||
            bec == http::error::partial_message)
          co_return;
        co_await reject(stream, bec);
        co_return;
      }
      auto req = parser.release();
      boost::system::error_code rec;
      auto remote = stream.socket().remote_endpoint(rec);
      std::string client_id = rec ? "unknown" : remote.address().to_string() + ":" + std::to_string(remote.port());
      if (beast::websocket::is_upgrade(req) && req.target() == "/v1/stream") {
        co_await run_websocket(state, std::move(stream), std::move(req), std::move(client_id));
        co_return;
      }
      const bool keep_alive = req.keep_alive() && !stopping;
      auto r = co_await handle(req, client_id);
      if (!co_await write_reply(stream, r, keep_alive)) co_return;
      // An idle keep-alive connection does not keep a large request's read room.
      if (buffer.capacity() > idle_buffer_bytes) buffer.shrink_to_fit();
    }
  }

  // Answers a request that could not be read, then the connection closes.
  asio::awaitable<void> reject(beast::tcp_stream& stream, boost::system::error_code ec) {
    error e = error::invalid("request", "malformed HTTP request: " + ec.message());
    http::status status = http::status::bad_request;
    if (ec == http::error::body_limit) {
      e = error::make(errc::payload_too_large, "request body larger than " + std::to_string(cfg.max_body_bytes) + " bytes");
      status = http::status::payload_too_large;
    } else if (ec == http::error::header_limit) {
      e = error::invalid("headers", "request headers larger than 16 KiB");
      status = http::status::request_header_fields_too_large;
    }
    auto r = problem_reply(e, status);
    co_await write_reply(stream, r, false);
  }

  void begin_shutdown() {
    if (stopping.exchange(true)) return;
    log::info("shutting down", {{"grace_seconds", cfg.shutdown_grace.count()}});
    streams.close_connections();  // WebSocket clients get a going-away close
    asio::post(ioc, [this] {
      boost::system::error_code ignored;
      acceptor.close(ignored);
      if (signals) signals->cancel(ignored);
      std::lock_guard lock(sessions_mutex);
      for (auto& [id, entry] : sessions) {
        asio::post(entry.executor, [this, sid = id] {
          std::lock_guard inner(sessions_mutex);
          auto it = sessions.find(sid);
          if (it != sessions.end() && !*it->second.busy) it->second.stream->cancel();
        });
      }
    });
    asio::co_spawn(ioc, wait_for_drain(), asio::detached);
  }

  asio::awaitable<void> wait_for_drain() {
    auto deadline = std::chrono::steady_clock::now() + cfg.shutdown_grace;
    asio::steady_timer t(ioc);
    while (connections.load() > 0 && std::chrono::steady_clock::now() < deadline) {
      t.expires_after(std::chrono::milliseconds(20));
      co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (connections.load() > 0) log::warn("shutdown grace expired", {{"open_connections", connections.load()}});
    stop_all();
  }

  void stop_all() {
    for (auto& c : more_iocs) c->stop();
    ioc.stop();
  }
};

http_server::http_server(server_config config, event_store& store)
    : impl_(std::make_unique<impl>(std::move(config), store)) {}

http_server::~http_server() {
  if (impl_) {
    impl_->stop_all();
    impl_->workers.join();
  }
}

result<std::string> http_server::start(bool handle_signals) {
  auto& p = *impl_;
  const auto& listen = p.cfg.listen;
  auto colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  unsigned short port = 0;
  try {
    port = static_cast<unsigned short>(std::stoul(listen.substr(colon + 1)));
  } catch (...) {
    return error::invalid("listen", "bad port in '" + listen + "'");
  }
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) return error::invalid("listen", "bad address '" + host + "': " + ec.message());
  tcp::endpoint ep(addr, port);
  p.acceptor.open(ep.protocol(), ec);
  if (!ec) p.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) p.acceptor.bind(ep, ec);
  if (!ec) p.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return error::make(errc::unavailable, "cannot listen on " + listen + ": " + ec.message());
  auto bound = p.acceptor.local_endpoint();
  std::string where = (bound.address().is_v6() ? "[" + bound.address().to_string() + "]" : bound.address().to_string()) +
                      ":" + std::to_string(bound.port());
  if (handle_signals) {
    p.signals.emplace(p.ioc, SIGINT, SIGTERM);
    p.signals->async_wait([this](const boost::system::error_code& e, int sig) {
      if (!e) {
        log::info("signal received", {{"signal", sig}});
        impl_->begin_shutdown();
      }
    });
  }
  if (auto ok = p.start_processing(); !ok) return std::move(ok).error();
  projection_manager::options popts;
  popts.member = impl::member_name();
  p.projections = std::make_unique<projection_manager>(p.store, popts);
  if (auto ok = p.projections->start(); !ok) return std::move(ok).error();
  p.state.projections = p.projections.get();
  // Every node ticks; a run is claimed in the store, so one node does each occurrence.
  p.schedules = std::make_unique<compaction_scheduler>(p.store, default_clock(), impl::member_name());
  p.schedules->start(std::chrono::seconds(10));
  p.state.compaction_schedules = p.schedules.get();
  snapshot_policy_service::options sopts;
  sopts.member = impl::member_name();
  p.snapshot_policies = std::make_unique<snapshot_policy_service>(p.store, sopts);
  if (auto ok = p.snapshot_policies->start(); !ok) return std::move(ok).error();
  p.state.snapshot_policies = p.snapshot_policies.get();
  asio::co_spawn(p.ioc, p.accept_loop(), asio::detached);
  return where;
}

void http_server::run() {
  auto& p = *impl_;
  std::vector<std::thread> threads;
  for (auto& c : p.more_iocs) threads.emplace_back([&c] { c->run(); });
  p.ioc.run();
  p.stop_all();
  for (auto& t : threads) t.join();
  p.workers.join();
}

void http_server::stop() { impl_->begin_shutdown(); }

}  // namespace pliers
