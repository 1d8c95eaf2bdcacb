// Live streams: WebSocket GET /v1/stream (several subscriptions per connection, the spec's
// WebSocketEventMessage), SSE GET /v1/events/stream, and GET/DELETE /v1/streams.
// A WebSocket subscription is either a filter over the log or a routing channel
// (`{"type":"subscribe","channel":NAME}`: what websocket targets publish on this node).
//
// Every subscription keeps its own position and reads "events after it" from the log
// tailer (memory for recent events, the store for older ones), so history then live has
// no gap and no duplicate, and a slow client only lags: it never holds memory beyond its
// outbox bound, never slows appends or other clients. All coroutines of one WebSocket
// connection run on the connection's executor (its network thread's io_context, one
// thread: a strand); the connection state is shared by them (the
// reader, the writer and one loop per subscription) and lives until the last one ends.
#include <algorithm>
#include <boost/beast/websocket.hpp>
#include <charconv>
#include <deque>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "core/event_filter.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "process/channel_hub.hpp"
#include "server/http.hpp"
#include "server/log.hpp"
#include "server/problem.hpp"

namespace pliers::http_api {

namespace json = boost::json;
namespace websocket = beast::websocket;
using namespace std::chrono_literals;

namespace {

struct stream_options {
  bool include_history = false;
  std::optional<std::int64_t> history_limit;
  std::optional<std::int64_t> from_position;
  std::size_t buffer_size = 1000;
  std::chrono::milliseconds heartbeat{30000};
  bool batch = false;  // several events per message: {"type":"events","data":[...]}
  json::object source;
};

result<stream_options> options_from_json(const json::value& v, const std::string& field) {
  stream_options o;
  if (v.is_null()) return o;
  const auto* obj = v.if_object();
  if (!obj) return error::invalid(field, "must be an object");
  o.source = *obj;
  auto integer = [&](const json::value& x, const std::string& f, std::int64_t min, std::int64_t max) -> result<std::int64_t> {
    std::int64_t n = 0;
    if (x.is_int64()) n = x.get_int64();
    else if (x.is_uint64() && x.get_uint64() <= static_cast<std::uint64_t>(max)) n = static_cast<std::int64_t>(x.get_uint64());
    else return error::invalid(f, "must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
    if (n < min || n > max)
      return error::invalid(f, "must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
    return n;
  };
  for (const auto& kv : *obj) {
    const std::string key(kv.key());
    const std::string f = field + "." + key.substr(0, 100);
    if (kv.value().is_null()) continue;
    if (key == "includeHistory") {
      if (!kv.value().is_bool()) return error::invalid(f, "must be true or false");
      o.include_history = kv.value().get_bool();
    } else if (key == "historyLimit") {
      auto n = integer(kv.value(), f, 0, 100'000'000);
      if (!n) return std::move(n).error();
      o.history_limit = *n;
    } else if (key == "fromPosition") {
      auto n = integer(kv.value(), f, 0, INT64_MAX);
      if (!n) return std::move(n).error();
      o.from_position = *n;
    } else if (key == "bufferSize") {
      auto n = integer(kv.value(), f, 1, 10000);
      if (!n) return std::move(n).error();
      o.buffer_size = static_cast<std::size_t>(*n);
    } else if (key == "batch") {
      if (!kv.value().is_bool()) return error::invalid(f, "must be true or false");
      o.batch = kv.value().get_bool();
    } else if (key == "heartbeatInterval") {
      auto n = integer(kv.value(), f, 100, 3'600'000);
      if (!n) return std::move(n).error();
      o.heartbeat = std::chrono::milliseconds(*n);
    } else {
      return error::invalid(f, "unknown member (includeHistory, historyLimit, fromPosition, bufferSize, heartbeatInterval)");
    }
  }
  return o;
}

// Where a subscription starts: after `fromPosition`; or so that the last `historyLimit`
// matching events come first (found by scanning back from the head in windows); or at the
// beginning (all history); or at the head (live only).
result<log_position> start_position(event_store& store, log_tailer& tailer, const event_filter& filter,
                                    const stream_options& o) {
  const auto head = std::max(store.head(), tailer.head());  // the tailer may lag the last commits
  if (o.from_position) return log_position(std::min(*o.from_position, head.value));
  if (!o.include_history) return head;
  if (!o.history_limit) return log_position(0);
  std::int64_t needed = *o.history_limit, window_end = head.value;
  if (needed == 0) return head;
  constexpr std::int64_t window = 2000;
  while (window_end > 0) {
    const auto window_start = std::max<std::int64_t>(window_end - window, 0);
    auto batch = tailer.read_after(log_position(window_start), static_cast<std::size_t>(window_end - window_start));
    if (!batch) return std::move(batch).error();
    for (auto it = batch->rbegin(); it != batch->rend(); ++it) {
      if (!filter.matches(**it)) continue;
      if (--needed == 0) return log_position((*it)->position.value - 1);
    }
    window_end = window_start;
  }
  return log_position(0);
}

// A WebSocketEventMessage in two halves, so that its data can be written in between
// without a copy: message_head, the data's JSON, message_tail.
void message_head(std::string& out, std::string_view type, std::string_view stream_id) {
  out += "{\"type\":\"";
  out += type;
  out += "\",\"streamId\":";
  append_json_string(out, stream_id);
  out += ",\"data\":";
}

void message_tail(std::string& out, std::string_view time_text = {}) {
  out += ",\"timestamp\":\"";
  if (time_text.empty()) out += format_rfc3339(default_clock().now());
  else out += time_text;
  out += "\"}";
}

std::string message(std::string_view type, std::string_view stream_id, std::string_view data_json,
                    std::string_view time_text = {}) {
  std::string out;
  out.reserve(data_json.size() + 96);
  message_head(out, type, stream_id);
  out += data_json;
  message_tail(out, time_text);
  return out;
}

std::string error_message(std::string_view stream_id, const error& e) {
  json::object d{{"code", to_string(e.code)}, {"message", e.message}};
  if (!e.field.empty()) d["field"] = e.field;
  return message("error", stream_id, json::serialize(d));
}

// A steady_timer used as a wake-up signal: wait() until notify() (same strand) or a deadline.
struct signal {
  explicit signal(asio::any_io_executor ex) : timer(ex) {}
  asio::steady_timer timer;
  bool pending = false;  // notified while nobody waited: the next wait returns at once
  asio::awaitable<void> wait_until(std::chrono::steady_clock::time_point deadline) {
    if (!pending) {
      timer.expires_at(deadline);
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    pending = false;
  }
  void notify() {
    pending = true;
    timer.cancel();
  }
};

// ---------------------------------------------------------------------------------------
// WebSocket

constexpr std::size_t max_streams_per_connection = 100;
constexpr std::size_t outbox_limit = 2048;               // messages waiting to be written
constexpr std::size_t outbox_byte_limit = 8 * 1024 * 1024;  // and their bytes, per connection
constexpr int error_storm_limit = 50;           // client errors per 10 s before we close
constexpr std::size_t inbox_limit = 512;                   // a channel subscription's waiting messages
constexpr std::size_t inbox_byte_limit = 1024 * 1024;      // and their bytes (one message always fits)

struct ws_connection;

// A channel subscription's inbox: filled by the router's delivery threads through the
// channel_hub, drained on the connection's strand into the outbox. Publishers never wait:
// when the inbox is full (the client reads slower than the channel publishes, so the
// outbox is full too) a message is dropped and counted, and the subscriber is told how
// many it missed (a "dropped" message) before the next one it gets.
struct channel_inbox {
  std::mutex mutex;
  std::deque<std::shared_ptr<const channel_message>> queue;  // GUARDED_BY(mutex)
  std::size_t bytes = 0;                                     // GUARDED_BY(mutex)
  std::uint64_t dropped = 0;                                 // GUARDED_BY(mutex): not yet reported
  bool closed = false;                                       // GUARDED_BY(mutex)
  std::function<void()> wake;  // set before subscribing, then read-only: posts a notify to the strand

  void push(const std::shared_ptr<const channel_message>& m) {
    bool was_empty = false;
    {
      std::lock_guard lock(mutex);
      if (closed) return;
      if (!queue.empty() && (queue.size() >= inbox_limit || bytes + m->event_json.size() > inbox_byte_limit)) {
        ++dropped;
        return;
      }
      was_empty = queue.empty();
      bytes += m->event_json.size();
      queue.push_back(m);
    }
    if (was_empty) wake();  // one post per empty -> non-empty transition: posts are bounded too
  }
  // Takes up to `room` messages and the count of dropped ones.
  std::uint64_t take(std::size_t room, std::vector<std::shared_ptr<const channel_message>>& out) {
    std::lock_guard lock(mutex);
    while (room-- > 0 && !queue.empty()) {
      bytes -= queue.front()->event_json.size();
      out.push_back(std::move(queue.front()));
      queue.pop_front();
    }
    return std::exchange(dropped, 0);
  }
  void close() {
    std::lock_guard lock(mutex);
    closed = true;
    queue.clear();
    bytes = 0;
  }
};

struct ws_stream {
  std::shared_ptr<stream_info> info;
  event_filter filter;
  stream_options options;
  log_position position;
  std::unique_ptr<signal> wake;
  std::uint64_t listener = 0;
  std::string request_id;
  bool closed = false;
  // A channel subscription (no filter, no options, no position):
  std::string channel;
  std::shared_ptr<channel_inbox> inbox;
  std::uint64_t hub_token = 0;
};

bool valid_channel_name(std::string_view s) {
  if (s.empty() || s.size() > 100) return false;
  return std::all_of(s.begin(), s.end(),
                     [](unsigned char ch) { return std::isalnum(ch) || ch == '.' || ch == '_' || ch == '-'; });
}

// {"type":"event","streamId":ID,"data":EVENT,"timestamp":T,"channel":NAME,"routeId":RULE}
std::string channel_event_message(std::string_view stream_id, const channel_message& m, std::string_view time_text) {
  std::string out;
  out.reserve(m.event_json.size() + 160);
  out += "{\"type\":\"event\",\"streamId\":";
  append_json_string(out, stream_id);
  out += ",\"data\":";
  out += m.event_json;
  out += ",\"timestamp\":\"";
  out += time_text;
  out += "\",\"channel\":";
  append_json_string(out, m.channel);
  out += ",\"routeId\":";
  append_json_string(out, m.route_id);
  out += '}';
  return out;
}

struct ws_connection : std::enable_shared_from_this<ws_connection> {
  ws_connection(server_state& s, beast::tcp_stream stream, std::string client)
      : state(s), ws(std::move(stream)), client_id(std::move(client)), executor(ws.get_executor()),
        outbox_ready(executor), outbox_space(executor) {}

  server_state& state;
  websocket::stream<beast::tcp_stream> ws;
  std::string client_id;
  asio::any_io_executor executor;
  std::deque<std::string> outbox;
  std::size_t outbox_bytes = 0;
  signal outbox_ready, outbox_space;
  std::optional<websocket::close_reason> close_with;  // the writer sends it, then stops
  bool done = false;
  std::map<std::string, std::shared_ptr<ws_stream>> streams;
  int recent_errors = 0;
  std::chrono::steady_clock::time_point error_window = std::chrono::steady_clock::now();

  void send(std::string msg) {
    outbox_bytes += msg.size();
    outbox.push_back(std::move(msg));
    outbox_ready.notify();
  }
  bool outbox_full() const { return outbox.size() >= outbox_limit || outbox_bytes >= outbox_byte_limit; }

  void close(websocket::close_code code, std::string reason) {
    if (!close_with) close_with = websocket::close_reason(code, reason);
    outbox_ready.notify();
  }

  asio::awaitable<void> writer() {
    auto self = shared_from_this();
    bool corked = false;
    auto cork = [&](bool on) {
      if (on == corked) return;
      int v = on ? 1 : 0;
      ::setsockopt(beast::get_lowest_layer(ws).socket().native_handle(), IPPROTO_TCP, TCP_CORK, &v, sizeof v);
      corked = on;
    };
    while (true) {
      while (!outbox.empty()) {
        if (outbox.size() > 1) cork(true);
        std::string msg = std::move(outbox.front());
        outbox.pop_front();
        outbox_bytes -= msg.size();
        outbox_space.notify();
        ws.text(true);
        auto [ec, n] = co_await ws.async_write(asio::buffer(msg), asio::as_tuple(asio::use_awaitable));
        if (ec) {
          finish();
          co_return;
        }
      }
      cork(false);
      if (close_with) {
        (void)co_await ws.async_close(*close_with, asio::as_tuple(asio::use_awaitable));
        finish();
        co_return;
      }
      if (done) co_return;
      co_await outbox_ready.wait_until(std::chrono::steady_clock::time_point::max());
    }
  }

  // Ends every stream of the connection (idempotent).
  void finish() {
    if (done) return;
    done = true;
    for (auto& [id, s] : streams) end_stream(*s);
    streams.clear();
    outbox_ready.notify();
    outbox_space.notify();
  }

  void end_stream(ws_stream& s) {
    if (s.closed) return;
    s.closed = true;
    if (s.inbox) {
      state.channels->unsubscribe(s.channel, s.hub_token);
      s.inbox->close();
    } else {
      state.tailer.remove_listener(s.listener);
    }
    state.streams.remove(s.info->id);
    s.wake->notify();
  }

  asio::awaitable<void> run_stream(std::shared_ptr<ws_stream> s) {
    auto self = shared_from_this();
    auto start = co_await run_blocking(state.workers, [&] { return start_position(state.store, state.tailer, s->filter, s->options); });
    if (!start) {
      send(error_message(s->info->id, start.error()));
      streams.erase(s->info->id);
      end_stream(*s);
      co_return;
    }
    s->position = *start;
    s->info->position = start->value;
    json::object confirmed{{"filter", s->filter.source},
                           {"options", s->options.source},
                           {"startPosition", start->value},
                           {"headPosition", state.tailer.head().value}};
    if (!s->request_id.empty()) confirmed["requestId"] = s->request_id;
    send(message("subscription_confirmed", s->info->id, json::serialize(confirmed)));
    auto next_heartbeat = std::chrono::steady_clock::now() + s->options.heartbeat;
    while (!s->closed && !done) {
      // Backpressure before reading: a connection that does not read holds at most its
      // outbox (bounded in messages and bytes), never a batch per stream on top of it.
      while (outbox_full() && !done && !s->closed)
        co_await outbox_space.wait_until(std::chrono::steady_clock::time_point::max());
      if (s->closed || done) break;
      const std::size_t room = s->options.batch ? s->options.buffer_size
                                                : std::min(s->options.buffer_size, outbox_limit - outbox.size());
      auto batch = co_await run_blocking(state.workers, [&, after = s->position, room] {
        return state.tailer.read_next(after, room);
      });
      if (s->closed || done) break;
      if (!batch) {
        send(error_message(s->info->id, batch.error()));
        co_await s->wake->wait_until(std::chrono::steady_clock::now() + 1s);
        continue;
      }
      if (batch->empty()) {
        if (std::chrono::steady_clock::now() >= next_heartbeat) {
          send(message("heartbeat", s->info->id,
                       json::serialize(json::object{{"headPosition", state.tailer.head().value},
                                                    {"position", s->position.value}})));
          next_heartbeat = std::chrono::steady_clock::now() + s->options.heartbeat;
        }
        co_await s->wake->wait_until(next_heartbeat);
        continue;
      }
      // Each event's JSON is made once by the tailer and copied into every subscriber's
      // message; a batch message is written in place.
      std::string batch_message;
      const auto now = default_clock().now();
      const std::string now_text = format_rfc3339(now);
      std::size_t matched = 0;
      for (const auto& e : *batch) {
        if (s->filter.matches(*e)) {
          if (!s->options.batch) {
            send(message("event", s->info->id, e->json(), now_text));
          } else {
            if (!matched) {
              batch_message.reserve(batch->size() * (e->json().size() + 1) + 128);
              message_head(batch_message, "events", s->info->id);
              batch_message += '[';
            } else {
              batch_message += ',';
            }
            batch_message += e->json();
          }
          ++matched;
        }
        s->position = e->position;
      }
      if (s->options.batch && matched) {
        batch_message += ']';
        message_tail(batch_message, now_text);
        send(std::move(batch_message));
      }
      if (matched) {
        s->info->events_delivered += matched;
        s->info->last_event_at = to_micros(now);
      }
      s->info->position = s->position.value;
      next_heartbeat = std::chrono::steady_clock::now() + s->options.heartbeat;
    }
  }

  // A channel subscription: moves what the inbox holds into the outbox as "event" messages,
  // as far as the outbox has room (the inbox fills, then drops, while it has none).
  asio::awaitable<void> run_channel(std::shared_ptr<ws_stream> s) {
    auto self = shared_from_this();
    json::object confirmed{{"channel", s->channel}, {"headPosition", state.tailer.head().value}};
    if (!s->request_id.empty()) confirmed["requestId"] = s->request_id;
    send(message("subscription_confirmed", s->info->id, json::serialize(confirmed)));
    std::vector<std::shared_ptr<const channel_message>> batch;
    while (!s->closed && !done) {
      while (outbox_full() && !done && !s->closed)
        co_await outbox_space.wait_until(std::chrono::steady_clock::time_point::max());
      if (s->closed || done) break;
      batch.clear();
      const std::size_t room = outbox.size() < outbox_limit ? outbox_limit - outbox.size() : 1;
      const auto dropped = s->inbox->take(room, batch);
      if (batch.empty() && dropped == 0) {
        co_await s->wake->wait_until(std::chrono::steady_clock::time_point::max());
        continue;
      }
      const auto now = default_clock().now();
      const std::string now_text = format_rfc3339(now);
      if (dropped)
        send(message("dropped", s->info->id,
                     json::serialize(json::object{{"channel", s->channel}, {"dropped", dropped}}), now_text));
      for (const auto& m : batch) send(channel_event_message(s->info->id, *m, now_text));
      if (!batch.empty()) {
        s->info->events_delivered += batch.size();
        s->info->last_event_at = to_micros(now);
      }
    }
  }

  // {"type":"subscribe","channel":NAME,"requestId"?}
  void subscribe_channel(const json::object& o) {
    for (const auto& kv : o)
      if (kv.key() != "type" && kv.key() != "channel" && kv.key() != "requestId")
        return client_error(error::invalid(std::string(kv.key()).substr(0, 100),
                                           "a channel subscription takes only type, channel and requestId"));
    const auto& cv = o.at("channel");
    if (!cv.is_string() || !valid_channel_name(cv.get_string()))
      return client_error(error::invalid("channel", "must be 1 to 100 letters, digits, '.', '_', '-'"));
    if (!state.channels)
      return client_error(error::make(errc::unavailable, "channels are not served on this node"), "");
    if (auto ok = state.access.authorize(principal{}, access_action::read, {}); !ok) return client_error(ok.error());
    if (streams.size() >= max_streams_per_connection)
      return client_error(error::invalid("streamId", "at most " + std::to_string(max_streams_per_connection) +
                                                         " streams per connection"));
    std::string request_id;
    if (const auto* rid = o.if_contains("requestId")) {
      if (!rid->is_string() || rid->get_string().size() > 100)
        return client_error(error::invalid("requestId", "must be a string of at most 100 characters"));
      request_id = std::string(rid->get_string());
    }
    const std::string id = new_uuid_v4();
    auto s = std::make_shared<ws_stream>();
    s->channel = std::string(cv.get_string());
    s->info = std::make_shared<stream_info>();
    s->info->id = id;
    s->info->client_id = client_id;
    s->info->kind = "websocket";
    s->info->connected_at = default_clock().now();
    s->info->filter = json::object{{"channel", s->channel}};
    s->wake = std::make_unique<signal>(executor);
    s->request_id = std::move(request_id);
    std::weak_ptr<ws_stream> weak = s;
    auto ex = executor;
    s->inbox = std::make_shared<channel_inbox>();
    s->inbox->wake = [weak, ex] {
      asio::post(ex, [weak] {
        if (auto st = weak.lock()) st->wake->notify();
      });
    };
    s->hub_token = state.channels->subscribe(
        s->channel, [inbox = s->inbox](const std::shared_ptr<const channel_message>& m) { inbox->push(m); });
    std::weak_ptr<ws_connection> conn = shared_from_this();
    s->info->close = [conn, weak, ex] {
      asio::post(ex, [conn, weak] {
        auto c = conn.lock();
        auto st = weak.lock();
        if (!c || !st || st->closed) return;
        c->send(error_message(st->info->id, error::make(errc::unavailable, "stream closed by an operator")));
        c->end_stream(*st);
        c->streams.erase(st->info->id);
      });
    };
    streams[id] = s;
    state.streams.add(s->info);
    asio::co_spawn(executor, run_channel(s), asio::detached);
  }

  void client_error(const error& e, std::string_view stream_id = "") {
    send(error_message(stream_id, e));
    auto now = std::chrono::steady_clock::now();
    if (now - error_window > 10s) error_window = now, recent_errors = 0;
    if (++recent_errors > error_storm_limit)
      close(websocket::close_code::policy_error, "too many invalid messages");
  }

  void on_message(std::string_view text) {
    boost::system::error_code ec;
    json::parse_options po;
    po.max_depth = state.config.max_json_depth;
    auto v = json::parse(json::string_view(text.data(), text.size()), ec, {}, po);
    if (ec || !v.is_object()) {
      client_error(error::invalid("message", ec ? "malformed JSON: " + ec.message() : "must be a JSON object"));
      return;
    }
    const auto& o = v.get_object();
    const auto* type = o.if_contains("type");
    if (!type || !type->is_string()) {
      client_error(error::invalid("type", "required: subscribe or unsubscribe"));
      return;
    }
    if (type->get_string() == "unsubscribe") {
      const auto* id = o.if_contains("streamId");
      if (!id || !id->is_string() || !streams.count(std::string(id->get_string()))) {
        client_error(error::invalid("streamId", "no such stream on this connection"));
        return;
      }
      auto it = streams.find(std::string(id->get_string()));
      end_stream(*it->second);
      send(message("unsubscribed", it->first, "{}"));
      streams.erase(it);
      return;
    }
    if (type->get_string() != "subscribe") {
      client_error(error::invalid("type", "unknown message type '" + std::string(type->get_string()).substr(0, 50) +
                                              "' (subscribe, unsubscribe)"));
      return;
    }
    if (o.contains("channel")) return subscribe_channel(o);
    for (const auto& kv : o)
      if (kv.key() != "type" && kv.key() != "filter" && kv.key() != "options" && kv.key() != "requestId") {
        client_error(error::invalid(std::string(kv.key()).substr(0, 100), "unknown member"));
        return;
      }
    const auto* fv = o.if_contains("filter");
    auto filter = event_filter::from_json(fv ? *fv : json::value(), "filter");
    if (!filter) return client_error(filter.error());
    const auto* ov = o.if_contains("options");
    auto opts = options_from_json(ov ? *ov : json::value(), "options");
    if (!opts) return client_error(opts.error());
    if (auto ok = state.access.authorize(principal{}, access_action::read, {}); !ok) return client_error(ok.error());
    if (streams.size() >= max_streams_per_connection)
      return client_error(error::invalid("streamId", "at most " + std::to_string(max_streams_per_connection) +
                                                         " streams per connection"));
    // A client may tag its subscribe with a requestId; the confirmation echoes it, so
    // several subscribes in flight can be told apart.
    std::string request_id;
    if (const auto* rid = o.if_contains("requestId")) {
      if (!rid->is_string() || rid->get_string().size() > 100)
        return client_error(error::invalid("requestId", "must be a string of at most 100 characters"));
      request_id = std::string(rid->get_string());
    }
    const std::string id = new_uuid_v4();
    auto s = std::make_shared<ws_stream>();
    s->info = std::make_shared<stream_info>();
    s->info->id = id;
    s->info->client_id = client_id;
    s->info->kind = "websocket";
    s->info->connected_at = default_clock().now();
    s->info->filter = filter->source;
    s->filter = std::move(*filter);
    s->options = std::move(*opts);
    s->wake = std::make_unique<signal>(executor);
    s->request_id = std::move(request_id);
    std::weak_ptr<ws_stream> weak = s;
    auto ex = executor;
    s->listener = state.tailer.add_listener([weak, ex](log_position) {
      asio::post(ex, [weak] {
        if (auto st = weak.lock()) st->wake->notify();
      });
    });
    std::weak_ptr<ws_connection> conn = shared_from_this();
    s->info->close = [conn, weak, ex] {
      asio::post(ex, [conn, weak] {
        auto c = conn.lock();
        auto st = weak.lock();
        if (!c || !st || st->closed) return;
        c->send(error_message(st->info->id, error::make(errc::unavailable, "stream closed by an operator")));
        c->end_stream(*st);
        c->streams.erase(st->info->id);
      });
    };
    streams[id] = s;
    state.streams.add(s->info);
    asio::co_spawn(executor, run_stream(s), asio::detached);
  }

  asio::awaitable<void> reader() {
    beast::flat_buffer buffer;
    while (!done) {
      auto [ec, n] = co_await ws.async_read(buffer, asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (ec == websocket::error::message_too_big) close(websocket::close_code::too_big, "message too big");
        break;
      }
      if (!ws.got_text()) {
        client_error(error::invalid("message", "binary frames are not accepted; send JSON text"));
      } else {
        auto data = buffer.cdata();
        on_message(std::string_view(static_cast<const char*>(data.data()), data.size()));
      }
      buffer.consume(buffer.size());
    }
    if (!close_with) finish();
    else outbox_ready.notify();
  }
};

}  // namespace

asio::awaitable<void> run_websocket(server_state& state, beast::tcp_stream stream, request req, std::string client_id) {
  beast::get_lowest_layer(stream).expires_never();
  auto conn = std::make_shared<ws_connection>(state, std::move(stream), std::move(client_id));
  conn->ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  conn->ws.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "pliers-events"); }));
  conn->ws.read_message_max(64 * 1024);
  auto [ec] = co_await conn->ws.async_accept(req, asio::as_tuple(asio::use_awaitable));
  if (ec) co_return;
  std::weak_ptr<ws_connection> weak = conn;
  auto ex = conn->executor;
  const auto hook = state.streams.add_connection([weak, ex] {
    asio::post(ex, [weak] {
      if (auto c = weak.lock()) c->close(websocket::close_code::going_away, "server shutting down");
    });
  });
  asio::co_spawn(conn->executor, conn->writer(), asio::detached);
  co_await conn->reader();
  state.streams.remove_connection(hook);
}

// ---------------------------------------------------------------------------------------
// SSE: GET /v1/events/stream?type=&aggregateType=&aggregateId=&routingKey=&from=&to=
//      &fromPosition=&includeHistory=&historyLimit=&heartbeatInterval=   (Last-Event-ID resumes)

asio::awaitable<reply> handle_event_stream(request_context& ctx) {
  if (ctx.req.method() != http::verb::get) co_return method_not_allowed("GET");
  std::map<std::string, std::string> extra{{"fromPosition", ""}, {"includeHistory", ""}, {"historyLimit", ""},
                                           {"heartbeatInterval", ""}};
  auto filter_json = filter_params(ctx, extra);
  if (!filter_json) co_return problem_reply(filter_json.error());
  auto filter = event_filter::from_json(*filter_json, "filter");
  if (!filter) co_return problem_reply(filter.error());
  json::object opts_json;
  for (const auto& [k, v] : extra) {
    if (v.empty()) continue;
    if (k == "includeHistory") {
      if (v != "true" && v != "false") co_return problem_reply(error::invalid(k, "must be true or false"));
      opts_json[k] = v == "true";
      continue;
    }
    std::int64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || p != v.data() + v.size()) co_return problem_reply(error::invalid(k, "must be an integer"));
    opts_json[k] = n;
  }
  auto last_id = ctx.req["Last-Event-ID"];
  if (!last_id.empty()) {
    std::int64_t n = 0;
    auto [p, ec] = std::from_chars(last_id.data(), last_id.data() + last_id.size(), n);
    if (ec != std::errc{} || p != last_id.data() + last_id.size() || n < 0)
      co_return problem_reply(error::invalid("Last-Event-ID", "must be a position (an integer)"));
    opts_json["fromPosition"] = n;
  }
  if (!opts_json.contains("heartbeatInterval")) opts_json["heartbeatInterval"] = 15000;
  auto opts = options_from_json(opts_json, "options");
  if (!opts) co_return problem_reply(opts.error());
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {}); !ok) co_return problem_reply(ok.error());
  auto& state = ctx.state;
  auto start = co_await run_blocking(state.workers, [&] { return start_position(state.store, state.tailer, *filter, *opts); });
  if (!start) co_return problem_reply(start.error());

  struct sse_state {
    event_filter filter;
    stream_options options;
    log_position position;
    std::unique_ptr<signal> wake;
    std::uint64_t listener = 0;
    std::shared_ptr<stream_info> info;
    std::chrono::steady_clock::time_point next_heartbeat;
    bool started = false, closed = false;
    server_state* state = nullptr;
    ~sse_state() {
      if (state) {
        state->tailer.remove_listener(listener);
        state->streams.remove(info->id);
      }
    }
  };
  auto executor = co_await asio::this_coro::executor;
  auto st = std::make_shared<sse_state>();
  st->filter = std::move(*filter);
  st->options = std::move(*opts);
  st->position = *start;
  st->wake = std::make_unique<signal>(executor);
  st->info = std::make_shared<stream_info>();
  st->info->id = new_uuid_v4();
  st->info->client_id = ctx.client_id;
  st->info->kind = "sse";
  st->info->connected_at = default_clock().now();
  st->info->filter = st->filter.source;
  st->info->position = start->value;
  std::weak_ptr<sse_state> weak = st;
  st->listener = state.tailer.add_listener([weak, executor](log_position) {
    asio::post(executor, [weak] {
      if (auto s = weak.lock()) s->wake->notify();
    });
  });
  st->info->close = [weak, executor] {
    asio::post(executor, [weak] {
      if (auto s = weak.lock()) s->closed = true, s->wake->notify();
    });
  };
  st->state = &state;
  state.streams.add(st->info);
  st->next_heartbeat = std::chrono::steady_clock::now() + st->options.heartbeat;

  reply r;
  r.head.result(http::status::ok);
  r.head.set(http::field::content_type, "text/event-stream");
  r.head.set(http::field::cache_control, "no-cache");
  r.head.set("X-Accel-Buffering", "no");
  r.next_chunk = [st, &state]() -> asio::awaitable<result<std::optional<std::string>>> {
    if (!st->started) {
      st->started = true;
      co_return std::optional<std::string>(": stream " + st->info->id + "\nretry: 2000\n\n");
    }
    while (true) {
      if (st->closed || state.stopping) co_return std::optional<std::string>();
      auto batch = co_await run_blocking(state.workers, [&, after = st->position] {
        return state.tailer.read_next(after, st->options.buffer_size);
      });
      if (!batch) co_return std::move(batch).error();
      if (!batch->empty()) {
        std::string out;
        for (const auto& e : *batch) {
          if (st->filter.matches(*e)) {
            out += "id: " + std::to_string(e->position.value) + "\nevent: event\ndata: ";
            out += e->json();
            out += "\n\n";
            ++st->info->events_delivered;
            st->info->last_event_at = to_micros(default_clock().now());
          }
          st->position = e->position;
        }
        st->info->position = st->position.value;
        if (!out.empty()) {
          st->next_heartbeat = std::chrono::steady_clock::now() + st->options.heartbeat;
          co_return std::optional<std::string>(std::move(out));
        }
        continue;
      }
      if (std::chrono::steady_clock::now() >= st->next_heartbeat) {
        st->next_heartbeat = std::chrono::steady_clock::now() + st->options.heartbeat;
        co_return std::optional<std::string>(": heartbeat " + std::to_string(state.tailer.head().value) + "\n\n");
      }
      co_await st->wake->wait_until(std::min(st->next_heartbeat, std::chrono::steady_clock::now() + 1s));
    }
  };
  co_return r;
}

// GET /v1/streams, DELETE /v1/streams/{id}
asio::awaitable<reply> handle_streams(request_context& ctx) {
  const auto& s = ctx.segments;
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
  if (s.size() == 2) {
    if (ctx.req.method() != http::verb::get) co_return method_not_allowed("GET");
    json::array out;
    for (const auto& info : ctx.state.streams.list()) out.push_back(to_json(*info));
    co_return json_reply(http::status::ok, json::object{{"streams", std::move(out)}});
  }
  if (s.size() != 3) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  if (ctx.req.method() != http::verb::delete_) co_return method_not_allowed("DELETE");
  if (!ctx.state.streams.close(s[2])) co_return problem_reply(error::make(errc::not_found, "no stream '" + s[2] + "'"));
  reply r;
  r.head.result(http::status::no_content);
  co_return r;
}

}  // namespace pliers::http_api
