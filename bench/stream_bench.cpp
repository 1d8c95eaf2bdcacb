// pliers-stream-bench: live distribution over WebSocket GET /v1/stream against the real
// pliers-events binary (spawned with posix_spawn on a fresh SQLite file per scenario, as in
// http_bench.cpp). See docs/benchmarks-streaming.md.
//
//   latency  append acknowledged (201 received by the writer) -> event received by one
//            WebSocket subscriber, at paced offered loads (default 1,000 and 10,000 events/s,
//            1 event per append, writer threads on keep-alive HTTP connections)
//   fanout   N subscribers (default 100, no filter) each receive every event while a writer
//            appends 100-event batches: deliveries/s, server and client CPU
//   idle     M idle WebSocket connections (default 1,000) with one subscription each: server
//            VmRSS before and after; then one append reaches all of them
//   wakeup   pairs of appends separated by quiet pauses: does the second event of a pair
//            arrive at once, or only when something else wakes the stream?
//   stalled  (only with --only stalled) one connection with 100 history subscriptions that
//            never reads: the server memory it pins
//
// Every time is this process's steady clock: writers record when each append's 201
// arrived (per event position), the WebSocket readers when each event arrived.
//
//   pliers-stream-bench                      all scenarios (about 40 s on 2 cores)
//   pliers-stream-bench --quick              smoke run (a few seconds)
//   pliers-stream-bench --only fanout --subscribers 50 --output /tmp/stream.md
//   pliers-stream-bench --only fanout --server PATCHED --batch
//                                            fan-out subscribers ask for {"batch":true}, an
//                                            experimental option the committed server refuses
//
// The client checks what it measures: every subscriber must receive every event, in
// position order with no gap (otherwise the run fails or reports out-of-order deliveries).
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/event.hpp"
#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "server/http_client.hpp"
#include "bench_server.hpp"

#ifndef PLIERS_EVENTS_BINARY
#define PLIERS_EVENTS_BINARY ""
#endif

extern char** environ;

namespace pliers::stream_bench {

namespace fs = std::filesystem;
namespace json = boost::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

using bench::failure;
using bench::server_process;
using bench::status_kb;

void progress(const std::string& line) { std::cerr << "pliers-stream-bench: " << line << std::endl; }

// Nanoseconds on the steady clock since the program started (0 = "not yet").
const steady::time_point program_start = steady::now();
inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - program_start).count() + 1;
}
inline double ns_to_ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

// --- process measurements ------------------------------------------------------------------

double thread_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

std::size_t open_fds(int pid) {
  std::error_code ec;
  std::size_t n = 0;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// --- the server ----------------------------------------------------------------------------


// --- the event -----------------------------------------------------------------------------

// The event every scenario appends: `bytes` when served (write_event_json), as in
// pliers-bench (bench/pliers_bench.cpp event_shape::make).
struct event_shape {
  std::string new_event_json;
  std::size_t stored_json_bytes = 0;

  static event_shape make(int target_bytes) {
    event_shape s;
    json::object metadata{{"sourceSystem", "pliers-bench"}, {"sourceVersion", "1.0.0"}};
    json::object payload{{"orderId", "ord-7f3a9c21"}, {"amount", 129.95}, {"currency", "EUR"}, {"pad", ""}};
    auto stored_size = [&] {
      event e;
      e.id = new_uuid_v4();
      e.type = "OrderPlaced";
      e.time = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
      e.aggregate_id = "bench-aggregate-00";
      e.aggregate_type = "Order";
      e.sequence = sequence_number(50000);
      e.position = log_position(50000);
      e.metadata = metadata;
      e.payload = payload;
      std::string out;
      write_event_json(out, e);
      return out.size();
    };
    const auto base = stored_size();
    if (static_cast<std::size_t>(target_bytes) > base)
      payload["pad"] = std::string(static_cast<std::size_t>(target_bytes) - base, 'x');
    s.stored_json_bytes = stored_size();
    s.new_event_json = json::serialize(
        json::object{{"type", "OrderPlaced"}, {"aggregateType", "Order"}, {"payload", payload}, {"metadata", metadata}});
    return s;
  }
  std::string append_body(int n) const {
    std::string body = "{\"expectedVersion\":null,\"events\":[";
    for (int i = 0; i < n; ++i) {
      if (i) body += ',';
      body += new_event_json;
    }
    body += "]}";
    return body;
  }
};

// The integer after `key` at or after `from` in `text` (-1 if absent).
std::int64_t int_after(std::string_view text, std::string_view key, std::size_t from = 0) {
  auto at = text.find(key, from);
  if (at == std::string_view::npos) return -1;
  const char* p = text.data() + at + key.size();
  std::int64_t v = -1;
  auto [end, ec] = std::from_chars(p, text.data() + text.size(), v);
  (void)end;
  return ec == std::errc{} ? v : -1;
}

// Positions of the events of a 201 append response, in order (they are consecutive).
std::pair<std::int64_t, std::int64_t> appended_positions(std::string_view body) {
  std::int64_t first = int_after(body, "\"position\":");
  if (first < 0) throw failure("no position in the append response: " + std::string(body.substr(0, 300)));
  const std::int64_t last = int_after(body, "\"position\":", body.rfind("\"position\":"));
  return {first, last};
}

std::unique_ptr<http_client> connect_http(const std::string& url) {
  auto c = http_client::connect(url, 60s);
  if (!c) throw failure("cannot connect to " + url + ": " + c.error().message);
  return std::move(*c);
}

// --- an asynchronous WebSocket client pool ---------------------------------------------------

// One subscriber: one connection with one subscription. Its members are touched only by
// its own coroutine (on its strand) until the pool has stopped.
struct subscriber {
  explicit subscriber(asio::io_context& ioc, std::size_t index_) : ws(asio::make_strand(ioc)), index(index_) {}
  websocket::stream<beast::tcp_stream> ws;
  std::size_t index;
  std::string stream_id;
  std::int64_t received = 0;       // event messages
  std::int64_t last_position = 0;  // of the last event message
  std::int64_t out_of_order = 0;   // event whose position was not last_position + 1
  std::int64_t other_messages = 0; // heartbeats and the like
  std::int64_t bytes = 0;          // event message bytes
  std::int64_t batches = 0;        // "events" messages (--batch)
  std::int64_t done_ns = 0;        // when it had received `expected` events
  std::vector<std::int64_t> arrival_ns;  // by position (if the scenario wants it)
};

// Events-only fast path: the message type and the position without parsing the JSON.
// {"type":"event","streamId":"...","data":{"id":...,"position":P,...},"timestamp":"..."}
bool is_event(std::string_view m) { return m.starts_with("{\"type\":\"event\""); }
std::int64_t event_position(std::string_view m) {
  auto data = m.find("\"data\":{");
  return data == std::string_view::npos ? -1 : int_after(m, ",\"position\":", data);
}

class ws_pool {
 public:
  // on_event(subscriber&, position, now_ns) runs on the subscriber's strand.
  using event_fn = std::function<void(subscriber&, std::int64_t, std::int64_t)>;

  ws_pool(unsigned threads, tcp::endpoint ep, std::string host) : ep_(ep), host_(std::move(host)), work_(ioc_.get_executor()) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { ioc_.run(); });
  }
  ~ws_pool() { shutdown(); }

  void on_event(event_fn f) { on_event_ = std::move(f); }
  void expect(std::int64_t events_per_subscriber) {
    expected_ = events_per_subscriber;
    remaining_.store(static_cast<std::int64_t>(subs_.size()));
  }

  // Opens n connections (at most `parallel` handshakes at a time), each subscribing with
  // `subscribe_json`; returns when all are confirmed. Throws on any failure.
  void open(std::size_t n, const std::string& subscribe_json, std::size_t parallel = 100) {
    const auto first = subs_.size();
    for (std::size_t i = 0; i < n; ++i) subs_.push_back(std::make_unique<subscriber>(ioc_, first + i));
    std::size_t next = first;
    while (next < subs_.size()) {
      const auto wave_end = std::min(subs_.size(), next + parallel);
      const auto want = confirmed_.load() + static_cast<std::int64_t>(wave_end - next);
      for (; next < wave_end; ++next) {
        auto* s = subs_[next].get();
        ++running_;
        asio::co_spawn(s->ws.get_executor(), run(*s, subscribe_json), [this](std::exception_ptr e) {
          if (e) {
            try {
              std::rethrow_exception(e);
            } catch (const std::exception& x) {
              record_error(x.what());
            }
          }
          --running_;
        });
      }
      const auto deadline = steady::now() + 30s;
      while (confirmed_.load() < want) {
        if (auto e = first_error(); !e.empty()) throw failure("WebSocket subscriber: " + e);
        if (steady::now() > deadline) throw failure("subscriptions were not confirmed within 30 s");
        std::this_thread::sleep_for(1ms);
      }
    }
  }

  // Waits until every subscriber had `expected` events; false on timeout.
  bool wait_all(std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    while (remaining_.load(std::memory_order_acquire) > 0) {
      if (auto e = first_error(); !e.empty()) throw failure("WebSocket subscriber: " + e);
      if (steady::now() > deadline) return false;
      std::this_thread::sleep_for(200us);
    }
    return true;
  }

  // Closes every connection, waits for the readers, stops the threads.
  void shutdown() {
    if (threads_.empty()) return;
    for (auto& s : subs_)
      asio::post(s->ws.get_executor(), [s = s.get()] {
        beast::error_code ec;
        beast::get_lowest_layer(s->ws).socket().shutdown(tcp::socket::shutdown_both, ec);
        beast::get_lowest_layer(s->ws).close();
      });
    const auto deadline = steady::now() + 10s;
    while (running_.load() > 0 && steady::now() < deadline) std::this_thread::sleep_for(1ms);
    work_.reset();
    ioc_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  std::vector<std::unique_ptr<subscriber>>& subs() { return subs_; }
  std::string first_error() {
    std::lock_guard lock(mutex_);
    return error_;
  }

 private:
  void record_error(const std::string& e) {
    std::lock_guard lock(mutex_);
    if (error_.empty()) error_ = e;
  }

  asio::awaitable<void> run(subscriber& s, std::string subscribe_json) {
    auto& tcp_layer = beast::get_lowest_layer(s.ws);
    tcp_layer.expires_after(30s);
    co_await tcp_layer.async_connect(ep_, asio::use_awaitable);
    tcp_layer.socket().set_option(tcp::no_delay(true));
    co_await s.ws.async_handshake(host_, "/v1/stream", asio::use_awaitable);
    tcp_layer.expires_never();
    s.ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
    s.ws.read_message_max(16 * 1024 * 1024);
    s.ws.text(true);
    co_await s.ws.async_write(asio::buffer(subscribe_json), asio::use_awaitable);
    beast::flat_buffer buffer;
    bool confirmed = false;
    while (true) {
      auto [ec, n] = co_await s.ws.async_read(buffer, asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (!confirmed) throw failure("connection ended before subscription_confirmed: " + ec.message());
        break;  // closed by shutdown() or by the server
      }
      const auto now = now_ns();
      auto d = buffer.cdata();
      std::string_view m(static_cast<const char*>(d.data()), d.size());
      auto one_event = [&](std::int64_t pos) {
        if (pos != s.last_position + 1 && s.received > 0) ++s.out_of_order;
        s.last_position = pos;
        ++s.received;
        if (on_event_) on_event_(s, pos, now);
        if (s.received == expected_) {
          s.done_ns = now;
          remaining_.fetch_sub(1, std::memory_order_acq_rel);
        }
      };
      if (is_event(m)) {
        s.bytes += static_cast<std::int64_t>(m.size());
        one_event(event_position(m));
      } else if (m.starts_with("{\"type\":\"events\"")) {
        // Opt-in batches (--batch, an experimental server option): {"type":"events","data":[e,...]}
        s.bytes += static_cast<std::int64_t>(m.size());
        ++s.batches;
        for (auto at = m.find(",\"position\":", m.find("\"data\":[")); at != std::string_view::npos;
             at = m.find(",\"position\":", at + 12))
          one_event(int_after(m, ",\"position\":", at));
      } else if (!confirmed && m.starts_with("{\"type\":\"subscription_confirmed\"")) {
        auto v = json::parse(m);
        s.stream_id = std::string(v.at("streamId").as_string());
        confirmed = true;
        ++confirmed_;
      } else if (m.starts_with("{\"type\":\"error\"")) {
        record_error("server sent an error: " + std::string(m.substr(0, 400)));
      } else {
        ++s.other_messages;
      }
      buffer.consume(buffer.size());
    }
  }

  asio::io_context ioc_;
  tcp::endpoint ep_;
  std::string host_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::vector<std::unique_ptr<subscriber>> subs_;
  event_fn on_event_;
  std::int64_t expected_ = -1;
  std::atomic<std::int64_t> remaining_{0};
  std::atomic<std::int64_t> confirmed_{0};
  std::atomic<int> running_{0};
  std::mutex mutex_;
  std::string error_;
};

const std::string subscribe_all = R"({"type":"subscribe","filter":{},"options":{"includeHistory":false}})";

// --- statistics ----------------------------------------------------------------------------

struct dist {
  std::size_t n = 0;
  double min = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
  std::size_t negative = 0;
};
dist distribution(std::vector<double> v) {
  dist d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    auto idx = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, idx == 0 ? 0 : idx - 1)];
  };
  d.n = v.size();
  d.min = v.front();
  d.max = v.back();
  d.p50 = at(0.5);
  d.p90 = at(0.9);
  d.p99 = at(0.99);
  d.p999 = at(0.999);
  double sum = 0;
  for (double x : v) {
    sum += x;
    if (x < 0) ++d.negative;
  }
  d.mean = sum / static_cast<double>(v.size());
  return d;
}

std::string fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}
std::string grouped(double v) {
  auto s = std::to_string(static_cast<long long>(std::llround(v)));
  std::string out;
  int n = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (n && n % 3 == 0 && *it != '-') out.insert(out.begin(), ',');
    out.insert(out.begin(), *it);
    ++n;
  }
  return out;
}
std::string ms(double v) { return std::fabs(v) >= 100 ? fmt(v, 0) : std::fabs(v) >= 10 ? fmt(v, 1) : fmt(v, 2); }

// --- configuration -------------------------------------------------------------------------

struct config {
  fs::path server;
  fs::path work_dir;
  bool keep = false;
  bool run_latency = true, run_fanout = true, run_idle = true, run_wakeup = true, run_stalled = false;
  int event_bytes = 400;
  std::vector<int> rates{1000, 10000};
  double latency_seconds = 5;
  double warmup_seconds = 0.5;
  int writers = 0;  // 0: 1 up to 1,000 events/s, else one per 400 events/s
  int subscribers = 100;
  int fanout_batch = 100;
  int fanout_events = 10000;
  int fanout_paced_eps = 500;      // second fan-out run: the writer paced at this rate (0: skip)
  double fanout_paced_seconds = 4;
  int idle_connections = 1000;
  double idle_settle_seconds = 2;
  int idle_preload = 70000;  // second idle run: a server whose ring of recent events is full
  int wakeup_bursts = 300;          // wake-up check: pairs of appends ...
  int wakeup_subscribers = 20;
  int wakeup_pause_ms = 30;         // ... each followed by this much quiet
  unsigned client_threads = 2;
  int stalled_events = 100000, stalled_streams = 100, stalled_buffer = 1000;
  bool batch = false;
};

fs::path scenario_dir(const config& cfg, const std::string& name) {
  auto dir = cfg.work_dir / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}
void remove_scenario_dir(const config& cfg, const fs::path& dir) {
  if (cfg.keep) return;
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// --- scenario: latency ------------------------------------------------------------------------

struct latency_row {
  int offered = 0;
  int writers = 0;
  std::int64_t events = 0;      // measured (after warm-up)
  double achieved_eps = 0;      // acks per second in the measured window
  std::int64_t late_sends = 0;  // appends sent more than 1 ms after their slot
  dist ack_to_ws;               // ack -> WebSocket arrival
  dist send_to_ws;              // append sent -> WebSocket arrival
  dist append_rtt;              // append sent -> 201
  double seconds = 0, server_cpu = 0, client_cpu = 0;
  std::int64_t out_of_order = 0;
};

latency_row run_latency(const config& cfg, const event_shape& shape, int rate) {
  latency_row r;
  r.offered = rate;
  r.writers = cfg.writers > 0 ? cfg.writers : (rate <= 1000 ? 1 : (rate + 199) / 200);
  const double total_seconds = cfg.warmup_seconds + cfg.latency_seconds;
  const auto per_writer = static_cast<std::int64_t>(std::ceil(rate * total_seconds / r.writers));
  const auto capacity = static_cast<std::size_t>(per_writer * r.writers + 16);
  auto dir = scenario_dir(cfg, "latency-" + std::to_string(rate));
  {
    server_process server(cfg.server, dir);
    // Per position: when the append was sent, when its 201 arrived, when the event arrived.
    std::vector<std::atomic<std::int64_t>> sent(capacity), acked(capacity), arrived(capacity);
    ws_pool pool(1, server.endpoint(), server.hostport());
    pool.open(1, subscribe_all);
    pool.on_event([&](subscriber&, std::int64_t pos, std::int64_t now) {
      if (pos > 0 && static_cast<std::size_t>(pos) < capacity) arrived[static_cast<std::size_t>(pos)].store(now, std::memory_order_relaxed);
    });
    pool.expect(per_writer * r.writers);

    std::vector<std::unique_ptr<http_client>> clients;
    for (int w = 0; w < r.writers; ++w) clients.push_back(connect_http(server.url()));
    const std::string body = shape.append_body(1);
    std::vector<std::string> errors(static_cast<std::size_t>(r.writers));
    std::atomic<std::int64_t> late{0};
    const double cpu0 = server.cpu_seconds().value_or(0.0), self0 = bench::process_cpu_seconds();
    const auto t0 = steady::now() + 20ms;
    const auto period = std::chrono::duration<double>(1.0 / rate);
    std::vector<std::thread> threads;
    for (int w = 0; w < r.writers; ++w) {
      threads.emplace_back([&, w] {
        try {
          auto& client = *clients[static_cast<std::size_t>(w)];
          const std::string target = "/v1/aggregates/lat-" + std::to_string(w) + "/events";
          for (std::int64_t i = 0; i < per_writer; ++i) {
            // Open loop: append i of writer w has its slot; a late writer sends at once.
            const auto slot = t0 + std::chrono::duration_cast<steady::duration>(period * static_cast<double>(i * r.writers + w));
            std::this_thread::sleep_until(slot);
            const auto s = now_ns();
            if (steady::now() - slot > 1ms) late.fetch_add(1, std::memory_order_relaxed);
            auto res = client.post(target, body);
            const auto a = now_ns();
            if (!res) throw failure("append failed: " + res.error().message);
            if (res->status != 201) throw failure("append: HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300));
            const auto pos = appended_positions(res->body).first;
            if (pos <= 0 || static_cast<std::size_t>(pos) >= capacity) throw failure("unexpected position " + std::to_string(pos));
            sent[static_cast<std::size_t>(pos)].store(s, std::memory_order_relaxed);
            acked[static_cast<std::size_t>(pos)].store(a, std::memory_order_relaxed);
          }
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(w)] = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
      if (!e.empty()) throw failure("latency writer: " + e);
    if (!pool.wait_all(20s)) throw failure("the subscriber did not receive every event within 20 s");
    r.seconds = std::chrono::duration<double>(steady::now() - t0).count();
    r.server_cpu = server.cpu_seconds().value_or(0.0) - cpu0;
    r.client_cpu = bench::process_cpu_seconds() - self0;
    r.late_sends = late.load();
    pool.shutdown();
    r.out_of_order = pool.subs()[0]->out_of_order;

    // The measured window: events acknowledged after the warm-up.
    const auto warm_end = std::chrono::duration_cast<std::chrono::nanoseconds>(t0 - program_start).count() +
                          static_cast<std::int64_t>(cfg.warmup_seconds * 1e9);
    std::vector<double> a2w, s2w, rtt;
    std::int64_t first_ack = INT64_MAX, last_ack = 0;
    for (std::size_t p = 1; p < capacity; ++p) {
      const auto a = acked[p].load(), s = sent[p].load(), w = arrived[p].load();
      if (a == 0) continue;
      if (w == 0) throw failure("event at position " + std::to_string(p) + " was acknowledged but never arrived");
      if (a < warm_end) continue;
      a2w.push_back(ns_to_ms(w - a));
      s2w.push_back(ns_to_ms(w - s));
      rtt.push_back(ns_to_ms(a - s));
      first_ack = std::min(first_ack, a);
      last_ack = std::max(last_ack, a);
    }
    r.events = static_cast<std::int64_t>(a2w.size());
    r.achieved_eps = last_ack > first_ack ? static_cast<double>(r.events - 1) / (ns_to_ms(last_ack - first_ack) / 1000) : 0;
    r.ack_to_ws = distribution(std::move(a2w));
    r.send_to_ws = distribution(std::move(s2w));
    r.append_rtt = distribution(std::move(rtt));
    clients.clear();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  progress("latency at " + std::to_string(rate) + " events/s: ack->ws p50 " + ms(r.ack_to_ws.p50) + " ms, p99 " +
           ms(r.ack_to_ws.p99) + " ms (" + std::to_string(r.events) + " events, achieved " + grouped(r.achieved_eps) + "/s)");
  return r;
}

// --- scenario: fan-out -----------------------------------------------------------------------

struct fanout_row {
  int subscribers = 0;
  int batch = 0;
  std::int64_t events = 0;
  int offered_eps = 0;  // 0 = as fast as the writer can
  double writer_seconds = 0;   // first append sent -> last 201
  double baseline_append_ms = 0;  // mean per append before anyone subscribed
  double append_ms = 0;           // mean per append during the run
  double seconds = 0;          // first append sent -> last delivery to the last subscriber
  double deliveries_per_s = 0;
  double server_cpu = 0, client_cpu = 0, writer_cpu = 0;
  double first_done_s = 0;     // the fastest subscriber had everything after ... s
  std::int64_t out_of_order = 0;
  double mean_message_bytes = 0;
  dist lag;                    // ack -> arrival, every delivery (paced runs)
};

fanout_row run_fanout(const config& cfg, const event_shape& shape, int offered_eps, std::int64_t events) {
  fanout_row r;
  r.subscribers = cfg.subscribers;
  r.batch = cfg.fanout_batch;
  r.offered_eps = offered_eps;
  const auto appends = (events + r.batch - 1) / r.batch;
  r.events = appends * r.batch;
  const auto capacity = static_cast<std::size_t>(r.events + 16);
  auto dir = scenario_dir(cfg, offered_eps ? "fanout-paced" : "fanout");
  {
    server_process server(cfg.server, dir);
    auto client = connect_http(server.url());
    const std::string body = shape.append_body(r.batch);
    // The same appends with nobody subscribed, for comparison (positions 1..baseline).
    const int baseline_appends = 20;
    {
      const auto b0 = steady::now();
      for (int i = 0; i < baseline_appends; ++i)
        if (auto res = client->post("/v1/aggregates/fan-0/events", body); !res || res->status != 201)
          throw failure("fan-out: baseline append failed");
      r.baseline_append_ms = std::chrono::duration<double, std::milli>(steady::now() - b0).count() / baseline_appends;
    }
    const std::int64_t offset = static_cast<std::int64_t>(baseline_appends) * r.batch;
    ws_pool pool(cfg.client_threads, server.endpoint(), server.hostport());
    pool.open(static_cast<std::size_t>(cfg.subscribers),
              cfg.batch ? R"({"type":"subscribe","filter":{},"options":{"includeHistory":false,"batch":true}})" : subscribe_all);
    const bool keep_arrivals = offered_eps > 0;
    if (keep_arrivals)
      for (auto& s : pool.subs()) s->arrival_ns.assign(capacity, 0);
    pool.on_event([&](subscriber& s, std::int64_t pos, std::int64_t now) {
      if (keep_arrivals && pos > offset && static_cast<std::size_t>(pos - offset) < capacity)
        s.arrival_ns[static_cast<std::size_t>(pos - offset)] = now;
    });
    pool.expect(r.events);
    std::vector<std::int64_t> acked(capacity, 0);
    std::string error;
    const double cpu0 = server.cpu_seconds().value_or(0.0), self0 = bench::process_cpu_seconds();
    const auto t0 = steady::now();
    const auto t0_ns = now_ns();
    std::int64_t writer_end = 0, append_ns = 0;
    std::thread writer([&] {
      const double tc0 = thread_cpu_seconds();
      try {
        for (std::int64_t i = 0; i < appends; ++i) {
          if (offered_eps > 0)
            std::this_thread::sleep_until(t0 + std::chrono::duration_cast<steady::duration>(
                                                   std::chrono::duration<double>(static_cast<double>(i * r.batch) / offered_eps)));
          const auto sent = now_ns();
          auto res = client->post("/v1/aggregates/fan-1/events", body);
          const auto a = now_ns();
          append_ns += a - sent;
          if (!res) throw failure("append failed: " + res.error().message);
          if (res->status != 201) throw failure("append: HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300));
          auto [first, last] = appended_positions(res->body);
          for (auto p = first - offset; p <= last - offset; ++p)
            if (p > 0 && static_cast<std::size_t>(p) < capacity) acked[static_cast<std::size_t>(p)] = a;
        }
      } catch (const std::exception& e) {
        error = e.what();
      }
      writer_end = now_ns();
      r.writer_cpu = thread_cpu_seconds() - tc0;
    });
    writer.join();
    if (!error.empty()) throw failure("fan-out writer: " + error);
    if (!pool.wait_all(90s)) {
      std::int64_t min_received = INT64_MAX;
      for (auto& s : pool.subs()) min_received = std::min(min_received, s->received);
      throw failure("fan-out: not every subscriber received all " + std::to_string(r.events) +
                    " events within 90 s (slowest: " + std::to_string(min_received) + ")");
    }
    r.server_cpu = server.cpu_seconds().value_or(0.0) - cpu0;
    r.client_cpu = bench::process_cpu_seconds() - self0;
    pool.shutdown();
    std::int64_t last_done = 0, first_done = INT64_MAX, bytes = 0, messages = 0, batches = 0;
    std::vector<double> lag;
    for (auto& s : pool.subs()) {
      last_done = std::max(last_done, s->done_ns);
      first_done = std::min(first_done, s->done_ns);
      r.out_of_order += s->out_of_order;
      bytes += s->bytes;
      messages += s->received;
      if (keep_arrivals)
        for (std::size_t p = 1; p < capacity; ++p)
          if (acked[p] && s->arrival_ns[p]) lag.push_back(ns_to_ms(s->arrival_ns[p] - acked[p]));
    }
    r.writer_seconds = ns_to_ms(writer_end - t0_ns) / 1000;
    r.append_ms = ns_to_ms(append_ns) / static_cast<double>(appends);
    r.seconds = ns_to_ms(last_done - t0_ns) / 1000;
    r.first_done_s = ns_to_ms(first_done - t0_ns) / 1000;
    r.deliveries_per_s = static_cast<double>(r.events) * r.subscribers / r.seconds;
    for (auto& s : pool.subs()) batches += s->batches;
    r.mean_message_bytes = messages ? static_cast<double>(bytes) / static_cast<double>(batches ? batches : messages) : 0;
    if (keep_arrivals) r.lag = distribution(std::move(lag));
    client.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  progress("fan-out" + std::string(offered_eps ? " paced " + std::to_string(offered_eps) + " events/s" : "") + ": " +
           grouped(r.deliveries_per_s) + " deliveries/s over " + fmt(r.seconds, 2) + " s (server CPU " +
           fmt(r.server_cpu, 2) + " s, client CPU " + fmt(r.client_cpu, 2) + " s)");
  return r;
}

// --- scenario: idle connections --------------------------------------------------------------

struct idle_row {
  int connections = 0;
  int preloaded = 1;  // events stored before the "before" measurement
  long rss_before_kb = 0, rss_after_kb = 0, rss_settled_kb = 0, hwm_kb = 0;
  long threads = 0;
  std::size_t fds_before = 0, fds_after = 0;
  double connect_seconds = 0;
  std::size_t listed_streams = 0;
  long client_rss_kb = 0;
  dist broadcast;  // one append: ack -> arrival at each connection
  double broadcast_last_ms = 0;
};

idle_row run_idle(const config& cfg, const event_shape& shape, int preload) {
  idle_row r;
  r.connections = cfg.idle_connections;
  auto dir = scenario_dir(cfg, "idle");
  {
    server_process server(cfg.server, dir);
    auto client = connect_http(server.url());
    // One append first, so the "before" number includes a warmed-up store; with
    // --idle-preload, that many more events (1,000 per append), which fill the log tailer's
    // ring of recent events (65,536) as a long-running server's would be.
    if (auto res = client->post("/v1/aggregates/idle-0/events", shape.append_body(1)); !res || res->status != 201)
      throw failure("idle: warm-up append failed");
    for (int i = 0; i < preload / 1000; ++i)
      if (auto res = client->post("/v1/aggregates/idle-p" + std::to_string(i % 10) + "/events", shape.append_body(1000));
          !res || res->status != 201)
        throw failure("idle: preload append failed");
    r.preloaded = preload / 1000 * 1000 + 1;
    std::this_thread::sleep_for(300ms);
    r.rss_before_kb = server.rss_kb();
    r.fds_before = open_fds(server.pid());
    ws_pool pool(cfg.client_threads, server.endpoint(), server.hostport());
    const auto t0 = steady::now();
    pool.open(static_cast<std::size_t>(cfg.idle_connections), subscribe_all, 100);
    r.connect_seconds = std::chrono::duration<double>(steady::now() - t0).count();
    std::this_thread::sleep_for(200ms);
    r.rss_after_kb = server.rss_kb();
    std::this_thread::sleep_for(std::chrono::duration<double>(cfg.idle_settle_seconds));
    r.rss_settled_kb = server.rss_kb();
    r.hwm_kb = server.hwm_kb();
    r.threads = server.threads();
    r.fds_after = open_fds(server.pid());
    r.client_rss_kb = status_kb("self", "VmRSS");
    if (auto res = client->get("/v1/streams"); res && res->status == 200)
      r.listed_streams = json::parse(res->body).at("streams").as_array().size();
    else
      throw failure("GET /v1/streams failed");

    // One event to all of them.
    std::vector<std::int64_t> arrival(static_cast<std::size_t>(cfg.idle_connections), 0);
    std::int64_t target_pos = 0;
    pool.on_event([&](subscriber& s, std::int64_t, std::int64_t now) { arrival[s.index] = now; });
    pool.expect(1);
    auto res = client->post("/v1/aggregates/idle-1/events", shape.append_body(1));
    const auto acked = now_ns();
    if (!res || res->status != 201) throw failure("idle: broadcast append failed");
    target_pos = appended_positions(res->body).first;
    if (!pool.wait_all(20s)) throw failure("idle: not every connection received the event within 20 s");
    pool.shutdown();
    std::vector<double> lat;
    for (auto& s : pool.subs()) {
      if (s->last_position != target_pos) throw failure("idle: a connection received the wrong event");
      lat.push_back(ns_to_ms(arrival[s->index] - acked));
    }
    r.broadcast = distribution(std::move(lat));
    r.broadcast_last_ms = r.broadcast.max;
    client.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  progress("idle: " + std::to_string(r.connections) + " connections, server VmRSS " + std::to_string(r.rss_before_kb / 1024) +
           " -> " + std::to_string(r.rss_settled_kb / 1024) + " MiB");
  return r;
}

// --- scenario: wake-ups after a quiet period -------------------------------------------------

// Pairs of single-event appends, A and B, on two connections, B sent 0-990 us after A (a
// different offset every pair), each pair followed by a quiet pause; several subscribers.
// B must arrive about as fast as A. If a subscriber's wake-up for B is lost (B committed
// while the stream was between reading "nothing new" and waiting), B waits for the next
// pair's A, one pause later, or for the stream's heartbeat.
struct wakeup_row {
  int bursts = 0;
  int pause_ms = 0;
  int subscribers = 0;
  dist first, second;            // ack -> WS of A and of B, every subscriber
  std::int64_t late = 0;            // deliveries more than pause/2 later than the event's median delivery
  std::int64_t stalled_events = 0;  // events whose median delivery was later than pause/2
  std::vector<double> late_examples;  // ms
};

wakeup_row run_wakeup(const config& cfg, const event_shape& shape) {
  wakeup_row r;
  r.bursts = cfg.wakeup_bursts;
  r.pause_ms = cfg.wakeup_pause_ms;
  r.subscribers = cfg.wakeup_subscribers;
  const auto capacity = static_cast<std::size_t>(2 * r.bursts + 16);
  auto dir = scenario_dir(cfg, "wakeup");
  {
    server_process server(cfg.server, dir);
    std::vector<std::int64_t> acked(capacity, 0);
    std::vector<char> is_second(capacity, 0);
    ws_pool pool(cfg.client_threads, server.endpoint(), server.hostport());
    pool.open(static_cast<std::size_t>(r.subscribers), subscribe_all);
    for (auto& sub : pool.subs()) sub->arrival_ns.assign(capacity, 0);
    pool.on_event([&](subscriber& sub, std::int64_t pos, std::int64_t now) {
      if (pos > 0 && static_cast<std::size_t>(pos) < capacity) sub.arrival_ns[static_cast<std::size_t>(pos)] = now;
    });
    pool.expect(2 * r.bursts);
    auto client_a = connect_http(server.url());
    auto client_b = connect_http(server.url());
    const std::string body = shape.append_body(1);
    std::mutex acked_mutex;
    auto append = [&](http_client& c, const char* target, bool second) {
      auto res = c.post(target, body);
      const auto a = now_ns();
      if (!res || res->status != 201) throw failure("wake-up: append failed");
      const auto pos = appended_positions(res->body).first;
      if (pos <= 0 || static_cast<std::size_t>(pos) >= capacity) throw failure("wake-up: unexpected position");
      std::lock_guard lock(acked_mutex);
      acked[static_cast<std::size_t>(pos)] = a;
      is_second[static_cast<std::size_t>(pos)] = second ? 1 : 0;
    };
    auto spin_until = [](steady::time_point t) {
      while (steady::now() < t) {
      }
    };
    std::atomic<std::int64_t> b_slot_ns{0};  // when B of the current pair is to be sent
    std::atomic<int> b_pair{-1}, b_done{-1};
    std::string b_error;
    std::thread b_writer([&] {
      try {
        for (int i = 0; i < r.bursts; ++i) {
          while (b_pair.load() < i) std::this_thread::yield();
          spin_until(program_start + std::chrono::nanoseconds(b_slot_ns.load()));
          append(*client_b, "/v1/aggregates/wake-b/events", true);
          b_done.store(i);
        }
      } catch (const std::exception& e) {
        b_error = e.what();
        b_done.store(r.bursts);
      }
    });
    for (int i = 0; i < r.bursts && b_error.empty(); ++i) {
      const auto t_a = steady::now() + 500us;
      b_slot_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(t_a - program_start).count() +
                      10'000 * ((i * 37) % 100));
      b_pair.store(i);
      spin_until(t_a);
      append(*client_a, "/v1/aggregates/wake-a/events", false);
      while (b_done.load() < i) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(r.pause_ms));
    }
    b_writer.join();
    if (!b_error.empty()) throw failure(b_error);
    if (!pool.wait_all(60s)) throw failure("wake-up: not every event arrived within 60 s");
    pool.shutdown();
    // A delivery that is late while the same event reached the other subscribers in time
    // is a lost wake-up of that stream; an event late for everyone is a server-wide stall.
    std::vector<double> a, b;
    for (std::size_t p = 1; p < capacity; ++p) {
      if (!acked[p]) continue;
      std::vector<double> per_sub;
      for (auto& sub : pool.subs()) per_sub.push_back(ns_to_ms(sub->arrival_ns[p] - acked[p]));
      auto sorted = per_sub;
      std::sort(sorted.begin(), sorted.end());
      const double median = sorted[sorted.size() / 2];
      if (median > r.pause_ms / 2.0) ++r.stalled_events;
      for (double l : per_sub) {
        (is_second[p] ? b : a).push_back(l);
        if (l - median > r.pause_ms / 2.0) {
          ++r.late;
          if (r.late_examples.size() < 10) r.late_examples.push_back(l);
        }
      }
    }
    r.first = distribution(std::move(a));
    r.second = distribution(std::move(b));
    client_a.reset();
    client_b.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  progress("wake-up: " + std::to_string(r.late) + " lost wake-ups, " + std::to_string(r.stalled_events) + " stalled events, of " +
           std::to_string(2 * r.bursts * r.subscribers) + "; max A " + ms(r.first.max) + " ms, max B " + ms(r.second.max) + " ms");
  return r;
}

// --- scenario: a connection that never reads (opt-in: --only stalled) ------------------------

// Loads `stalled_events` events, then one WebSocket connection subscribes `stalled_streams`
// times to all history with bufferSize `stalled_buffer` and never reads (small receive
// buffer). Reports the server's VmRSS over a few seconds: what one such client can pin.
struct stalled_row {
  int streams = 0, buffer = 0;
  std::int64_t events = 0;
  long rss_loaded_kb = 0;
  std::vector<long> rss_kb;  // once a second
};

stalled_row run_stalled(const config& cfg, const event_shape& shape) {
  stalled_row r;
  r.streams = cfg.stalled_streams;
  r.buffer = cfg.stalled_buffer;
  auto dir = scenario_dir(cfg, "stalled");
  {
    server_process server(cfg.server, dir);
    auto client = connect_http(server.url());
    const std::string body = shape.append_body(1000);
    for (int i = 0; i < cfg.stalled_events / 1000; ++i)
      if (auto res = client->post("/v1/aggregates/stalled-" + std::to_string(i % 10) + "/events", body); !res || res->status != 201)
        throw failure("stalled: load append failed");
    r.events = cfg.stalled_events / 1000 * 1000;
    r.rss_loaded_kb = server.rss_kb();
    asio::io_context ioc;
    websocket::stream<tcp::socket> ws(ioc);
    ws.next_layer().open(tcp::v4());
    ws.next_layer().set_option(asio::socket_base::receive_buffer_size(4096));
    ws.next_layer().connect(server.endpoint());
    ws.handshake(server.hostport(), "/v1/stream");
    ws.text(true);
    const std::string sub = R"({"type":"subscribe","filter":{},"options":{"includeHistory":true,"bufferSize":)" +
                            std::to_string(r.buffer) + "}}";
    for (int i = 0; i < r.streams; ++i) ws.write(asio::buffer(sub));
    for (int t = 0; t < 6; ++t) {
      std::this_thread::sleep_for(1s);
      r.rss_kb.push_back(server.rss_kb());
    }
    beast::error_code ec;
    ws.next_layer().close(ec);
    client.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  progress("stalled: " + std::to_string(r.streams) + " streams x bufferSize " + std::to_string(r.buffer) +
           ": server VmRSS " + std::to_string(r.rss_loaded_kb / 1024) + " -> " + std::to_string(r.rss_kb.back() / 1024) + " MiB");
  return r;
}

// --- output --------------------------------------------------------------------------------

std::string mib(long kb) { return fmt(static_cast<double>(kb) / 1024.0, 1); }

std::string results_markdown(const config& cfg, const event_shape& shape, const std::vector<latency_row>& lat,
                             const std::vector<fanout_row>& fan, const std::vector<idle_row>& idle,
                             const std::optional<wakeup_row>& wake, const std::optional<stalled_row>& stalled) {
  std::ostringstream o;
  o << "Events: " << shape.stored_json_bytes << " bytes each as served (write_event_json), 1 per append in the latency runs.\n\n";
  if (!lat.empty()) {
    o << "### Latency: append acknowledged -> event at a WebSocket subscriber\n\n";
    o << "One subscriber (no filter, live only). Writers: keep-alive HTTP connections, 1 event per append, open-loop "
         "pacing; the first "
      << fmt(cfg.warmup_seconds, 1) << " s are warm-up and not counted.\n\n";
    o << "| Offered events/s | Writers | Events measured | Achieved events/s | Late sends | ack->WS p50 ms | p90 | p99 | "
         "p99.9 | max | min | arrived before ack | send->WS p50 | send->WS p99 | append p50 | append p99 | Server CPU s | "
         "Client CPU s | Wall s |\n";
    o << "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for (const auto& r : lat)
      o << "| " << grouped(r.offered) << " | " << r.writers << " | " << grouped(static_cast<double>(r.events)) << " | "
        << grouped(r.achieved_eps) << " | " << r.late_sends << " | " << ms(r.ack_to_ws.p50) << " | " << ms(r.ack_to_ws.p90)
        << " | " << ms(r.ack_to_ws.p99) << " | " << ms(r.ack_to_ws.p999) << " | " << ms(r.ack_to_ws.max) << " | "
        << ms(r.ack_to_ws.min) << " | " << r.ack_to_ws.negative << " | " << ms(r.send_to_ws.p50) << " | "
        << ms(r.send_to_ws.p99) << " | " << ms(r.append_rtt.p50) << " | " << ms(r.append_rtt.p99) << " | "
        << fmt(r.server_cpu, 2) << " | " << fmt(r.client_cpu, 2) << " | " << fmt(r.seconds, 2) << " |\n";
    for (const auto& r : lat)
      if (r.out_of_order) o << "\n**Out of order deliveries at " << r.offered << "/s: " << r.out_of_order << "**\n";
    o << "\n";
  }
  if (!fan.empty()) {
    o << "### Fan-out: every subscriber receives every event\n\n";
    o << "One writer, " << cfg.fanout_batch << "-event appends on one keep-alive connection; subscribers: " << cfg.client_threads
      << " client I/O threads (Boost.Beast, C++20 coroutines). Clock: first append sent -> the last subscriber has "
         "every event. CPU: utime+stime over that interval (server: /proc/PID/stat; client: getrusage of this process, "
         "writer thread included).\n\n";
    o << "| Writer | Subscribers | Events | Deliveries | Writer done s | First subscriber done s | Last subscriber done s "
         "| Deliveries/s | Server CPU s (share of wall) | Client CPU s (share) | of which writer thread | Mean message bytes "
         "| ack->WS p50 ms | p99 | max | ms per append: no subscribers / during fan-out |\n";
    o << "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for (const auto& r : fan) {
      const auto deliveries = static_cast<double>(r.events) * r.subscribers;
      auto share = [&](double cpu) { return fmt(cpu, 2) + " (" + fmt(100 * cpu / r.seconds, 0) + "% of 1 core)"; };
      o << "| " << (r.offered_eps ? "paced " + grouped(r.offered_eps) + " events/s" : std::string("as fast as it can"))
        << (cfg.batch ? " (subscribers: batch=true)" : "") << " | "
        << r.subscribers << " | " << grouped(static_cast<double>(r.events)) << " | " << grouped(deliveries) << " | "
        << fmt(r.writer_seconds, 2) << " | " << fmt(r.first_done_s, 2) << " | " << fmt(r.seconds, 2) << " | "
        << grouped(r.deliveries_per_s) << " | " << share(r.server_cpu) << " | " << share(r.client_cpu) << " | "
        << fmt(r.writer_cpu, 2) << " | " << fmt(r.mean_message_bytes, 0) << " | "
        << (r.lag.n ? ms(r.lag.p50) : "-") << " | " << (r.lag.n ? ms(r.lag.p99) : "-") << " | "
        << (r.lag.n ? ms(r.lag.max) : "-") << " | " << ms(r.baseline_append_ms) << " / "
        << ms(r.append_ms) << " |\n";
    }
    for (const auto& r : fan)
      if (r.out_of_order) o << "\n**Out of order deliveries: " << r.out_of_order << "**\n";
    o << "\n";
  }
  if (!idle.empty()) {
    o << "### Idle connections\n\n";
    o << "| Events stored first | Connections (1 subscription each) | Server VmRSS before | just after | after " << fmt(cfg.idle_settle_seconds, 0)
      << " s idle | VmHWM | per connection | Server threads | Server fds before / after | Listed by GET /v1/streams | "
         "Connect+subscribe s | Client VmRSS | one append -> all: p50 ms | p99 | last |\n";
    o << "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for (const auto& r : idle)
      o << "| " << grouped(r.preloaded) << " | " << grouped(r.connections) << " | " << mib(r.rss_before_kb) << " MiB | "
        << mib(r.rss_after_kb) << " MiB | " << mib(r.rss_settled_kb) << " MiB | " << mib(r.hwm_kb) << " MiB | "
      << fmt(static_cast<double>(r.rss_settled_kb - r.rss_before_kb) / r.connections, 1) << " KiB | " << r.threads << " | "
      << r.fds_before << " / " << r.fds_after << " | " << r.listed_streams << " | " << fmt(r.connect_seconds, 2) << " | "
      << mib(r.client_rss_kb) << " MiB | " << ms(r.broadcast.p50) << " | " << ms(r.broadcast.p99) << " | "
      << ms(r.broadcast_last_ms) << " |\n";
    o << "\n";
  }
  if (wake) {
    const auto& r = *wake;
    o << "### Wake-up after a quiet period\n\n";
    o << r.bursts << " pairs of single-event appends A and B on two connections (B sent 0-990 us after A), each pair "
         "followed by " << r.pause_ms << " ms without appends; " << r.subscribers << " subscribers.\n\n";
    o << "| Event | Deliveries | ack->WS p50 ms | p99 | p99.9 | max |\n|---|--:|--:|--:|--:|--:|\n";
    o << "| A | " << r.first.n << " | " << ms(r.first.p50) << " | " << ms(r.first.p99) << " | " << ms(r.first.p999) << " | "
      << ms(r.first.max) << " |\n";
    o << "| B | " << r.second.n << " | " << ms(r.second.p50) << " | " << ms(r.second.p99) << " | " << ms(r.second.p999)
      << " | " << ms(r.second.max) << " |\n\n";
    o << "Lost wake-ups (a delivery more than " << r.pause_ms / 2
      << " ms later than the same event's median delivery): " << r.late;
    for (std::size_t i = 0; i < r.late_examples.size(); ++i) o << (i ? ", " : " (") << ms(r.late_examples[i]) << " ms";
    if (!r.late_examples.empty()) o << ")";
    o << ". Events late for most subscribers (median > " << r.pause_ms / 2 << " ms, a server-wide stall): " << r.stalled_events
      << ".\n\n";
  }
  if (stalled) {
    const auto& r = *stalled;
    o << "### One connection that never reads\n\n" << grouped(static_cast<double>(r.events))
      << " events stored; one connection subscribes " << r.streams << " times (all history, bufferSize " << r.buffer
      << ") and never reads.\n\n| Server VmRSS after loading |";
    for (std::size_t i = 0; i < r.rss_kb.size(); ++i) o << " +" << i + 1 << " s |";
    o << "\n|--:|";
    for (std::size_t i = 0; i < r.rss_kb.size(); ++i) o << "--:|";
    o << "\n| " << mib(r.rss_loaded_kb) << " MiB |";
    for (long kb : r.rss_kb) o << " " << mib(kb) << " MiB |";
    o << "\n\n";
  }
  if (!lat.empty() || !fan.empty() || !idle.empty()) o << "### Targets\n\n| Target | Required | Measured | Result |\n|---|--:|--:|---|\n";
  for (const auto& r : lat)
    if (r.offered == 1000)
      o << "| ack->WS p99 at 1,000 events/s (SQLite) | < 10 ms | " << ms(r.ack_to_ws.p99) << " ms | "
        << (r.ack_to_ws.p99 < 10 ? "pass" : "**FAIL**") << " |\n";
  for (const auto& r : fan)
    if (!r.offered_eps)
      o << "| fan-out to " << r.subscribers << " subscribers | >= 500,000 deliveries/s | " << grouped(r.deliveries_per_s)
        << " | " << (r.deliveries_per_s >= 500000 ? "pass" : "**FAIL**") << " |\n";
  for (const auto& i : idle)
    o << "| " << grouped(i.connections) << " idle connections, server memory (" << grouped(i.preloaded)
      << " events stored) | < 100 MB | " << fmt(static_cast<double>(std::max(i.rss_settled_kb, i.hwm_kb)) * 1024 / 1e6, 1)
      << " MB (VmHWM) | " << (static_cast<double>(std::max(i.rss_settled_kb, i.hwm_kb)) * 1024 < 100e6 ? "pass" : "**FAIL**")
      << " |\n";
  return o.str();
}

fs::path default_server() {
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto next_to_me = self.parent_path() / "pliers-events";
    if (fs::exists(next_to_me)) return next_to_me;
  }
  return PLIERS_EVENTS_BINARY;
}

// 1,000 connections need more than the usual 1,024 descriptors, on both sides; the server
// inherits this limit through posix_spawn.
void raise_fd_limit(std::size_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur >= wanted) return;
  rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, static_cast<rlim_t>(wanted));
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < wanted)
    progress("warning: open-files limit is " + std::to_string(rl.rlim_cur) + " (hard limit), below " + std::to_string(wanted));
}

}  // namespace pliers::stream_bench

int main(int argc, char** argv) {
  using namespace pliers::stream_bench;
  CLI::App app{"pliers-stream-bench: WebSocket live distribution of pliers-events (latency, fan-out, idle memory)"};
  config cfg;
  bool quick = false;
  std::string only = "latency,fanout,idle,wakeup";
  std::string dir = fs::temp_directory_path().string();
  std::string server, output;
  app.add_flag("--quick", quick, "smoke run: short latency runs, 10 subscribers, 100 idle connections");
  app.add_option("--only", only, "scenarios, comma-separated: latency, fanout, idle, wakeup; stalled (not in the default set: pins GBs of server memory)")->capture_default_str();
  app.add_option("--server", server, "pliers-events binary (default: next to pliers-stream-bench)");
  app.add_option("--dir", dir, "where the temp directory with the SQLite files is made")->capture_default_str();
  app.add_option("--output", output, "also write the Markdown results to this file");
  app.add_option("--rates", cfg.rates, "offered loads of the latency runs, events/s")->delimiter(',')->capture_default_str();
  app.add_option("--seconds", cfg.latency_seconds, "measured seconds of each latency run")->capture_default_str();
  app.add_option("--writers", cfg.writers, "writer threads of the latency runs (0: 1 up to 1,000/s, else 1 per 200/s)")
      ->capture_default_str();
  app.add_option("--subscribers", cfg.subscribers, "fan-out subscribers")->capture_default_str();
  app.add_option("--fanout-events", cfg.fanout_events, "events appended in the fan-out run")->capture_default_str();
  app.add_option("--fanout-batch", cfg.fanout_batch, "events per append in the fan-out runs")->capture_default_str();
  app.add_option("--fanout-paced", cfg.fanout_paced_eps, "events/s of the paced fan-out run (0: skip it)")->capture_default_str();
  app.add_option("--idle", cfg.idle_connections, "idle WebSocket connections")->capture_default_str();
  app.add_option("--wakeup-bursts", cfg.wakeup_bursts, "pairs of appends of the wake-up check")->capture_default_str();
  app.add_option("--wakeup-pause", cfg.wakeup_pause_ms, "quiet ms after each pair of the wake-up check")->capture_default_str();
  app.add_option("--wakeup-subscribers", cfg.wakeup_subscribers, "subscribers of the wake-up check")->capture_default_str();
  app.add_option("--idle-preload", cfg.idle_preload,
                 "idle, second run: events appended before measuring (70000 fills the tailer's ring of 65,536 as on a busy server; 0: skip)")
      ->capture_default_str();
  app.add_option("--client-threads", cfg.client_threads, "I/O threads of the WebSocket client pool")->capture_default_str();
  app.add_option("--event-bytes", cfg.event_bytes, "size of one served event")->capture_default_str();
  app.add_flag("--keep", cfg.keep, "keep the SQLite files and server logs");
  app.add_option("--stalled-streams", cfg.stalled_streams, "stalled: subscriptions of the non-reading connection")
      ->capture_default_str();
  app.add_option("--stalled-buffer", cfg.stalled_buffer, "stalled: their bufferSize")->capture_default_str();
  app.add_option("--stalled-events", cfg.stalled_events, "stalled: events stored first")->capture_default_str();
  bool batch = false;
  app.add_flag("--batch", batch,
               "fan-out subscribers ask for {\"batch\":true} (an experimental option that this server may not have)");
  CLI11_PARSE(app, argc, argv);
  cfg.batch = batch;
  if (quick) {
    if (!app.count("--seconds")) cfg.latency_seconds = 1;
    if (!app.count("--subscribers")) cfg.subscribers = 10;
    if (!app.count("--fanout-events")) cfg.fanout_events = 2000;
    cfg.fanout_paced_seconds = 1;
    if (!app.count("--idle")) cfg.idle_connections = 100;
    if (!app.count("--idle-preload")) cfg.idle_preload = 0;
    cfg.idle_settle_seconds = 0.5;
    if (!app.count("--wakeup-bursts")) cfg.wakeup_bursts = 50;
    cfg.wakeup_subscribers = 5;
  }
  cfg.run_latency = only.find("latency") != std::string::npos;
  cfg.run_fanout = only.find("fanout") != std::string::npos;
  cfg.run_idle = only.find("idle") != std::string::npos;
  cfg.run_wakeup = only.find("wakeup") != std::string::npos;
  cfg.run_stalled = only.find("stalled") != std::string::npos;
  cfg.server = server.empty() ? default_server() : fs::path(server);
  if (cfg.server.empty() || !fs::exists(cfg.server)) {
    std::cerr << "pliers-stream-bench: server binary not found ('" << cfg.server.string() << "'); pass --server PATH\n";
    return 2;
  }
  raise_fd_limit(static_cast<std::size_t>(cfg.idle_connections) * 2 + 512);
  std::string tmpl = (fs::path(dir) / "pliers-stream-bench-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    std::cerr << "pliers-stream-bench: cannot create a temp directory under " << dir << "\n";
    return 2;
  }
  cfg.work_dir = tmpl;
  signal(SIGPIPE, SIG_IGN);

  std::string command_line = "pliers-stream-bench";
  for (int i = 1; i < argc; ++i) command_line += std::string(" ") + argv[i];
  const auto shape = event_shape::make(cfg.event_bytes);
  const auto started = steady::now();
  std::string load_before;
  {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    load_before = a + " " + b + " " + c;
  }
  std::vector<latency_row> lat;
  std::vector<fanout_row> fan;
  std::vector<idle_row> idle;
  std::optional<wakeup_row> wake;
  std::optional<stalled_row> stalled;
  int rc = 0;
  try {
    if (cfg.run_latency)
      for (int rate : cfg.rates) lat.push_back(run_latency(cfg, shape, rate));
    if (cfg.run_fanout) {
      fan.push_back(run_fanout(cfg, shape, 0, cfg.fanout_events));
      if (cfg.fanout_paced_eps > 0)
        fan.push_back(run_fanout(cfg, shape, cfg.fanout_paced_eps,
                                 static_cast<std::int64_t>(cfg.fanout_paced_eps * cfg.fanout_paced_seconds)));
    }
    if (cfg.run_idle) {
      idle.push_back(run_idle(cfg, shape, 0));
      if (cfg.idle_preload > 0) idle.push_back(run_idle(cfg, shape, cfg.idle_preload));
    }
    if (cfg.run_wakeup) wake = run_wakeup(cfg, shape);
    if (cfg.run_stalled) stalled = run_stalled(cfg, shape);
  } catch (const std::exception& e) {
    std::cerr << "pliers-stream-bench: FAILED: " << e.what() << "\n";
    rc = 1;
  }
  if (!cfg.keep) {
    std::error_code ec;
    fs::remove_all(cfg.work_dir, ec);
  } else {
    progress("files kept in " + cfg.work_dir.string());
  }
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::ostringstream doc;
  auto loadavg = [] {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    return a + " " + b + " " + c;
  };
  doc << "`" << command_line << "` (" << date << ", wall "
      << fmt(std::chrono::duration<double>(steady::now() - started).count(), 1) << " s; load average before: " << load_before
      << ", after: " << loadavg() << ")\n\n"
      << results_markdown(cfg, shape, lat, fan, idle, wake, stalled);
  std::cout << doc.str();
  if (!output.empty()) {
    std::ofstream out(output);
    out << doc.str();
  }
  return rc;
}
