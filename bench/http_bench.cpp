// HTTP layer: the real pliers-events binary, spawned per scenario on a fresh SQLite file
// (or, for the PostgreSQL section, on a fresh schema: see pg_bench.cpp), driven by
// keep-alive pliers::http_client connections (one client per thread).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <barrier>
#include <cstring>
#include <boost/json.hpp>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>

#include "bench.hpp"
#include "bench_server.hpp"
#include "server/http_client.hpp"

extern char** environ;

namespace pliers::bench {

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {


std::unique_ptr<http_client> connect(const std::string& url) {
  auto c = http_client::connect(url, std::chrono::seconds(120));
  if (!c) throw failure("cannot connect to " + url + ": " + c.error().message);
  return std::move(*c);
}

// Posts `appends` times the same body; returns per-request latencies (ms).
std::vector<double> post_appends(http_client& client, const std::string& target, const std::string& body, int appends) {
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(appends));
  for (int i = 0; i < appends; ++i) {
    const auto t = steady::now();
    auto r = client.post(target, body);
    lat.push_back(ms_between(t, steady::now()));
    if (!r) throw failure("append failed: " + r.error().message);
    if (r->status != 201) throw failure("append: HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 500));
  }
  return lat;
}

}  // namespace

// Scenarios a and b: one client, `appends` appends of `per_append` events to one aggregate.
row http_sequential_writes(const config& cfg, const event_shape& shape, const std::string& layer,
                           const std::string& store_url, const char* key, const std::string& label, int appends,
                           int per_append, const std::function<void(bool)>& probe) {
  auto dir = scenario_dir(cfg, std::string("http-") + key);
  row r{layer, key, label};
  {
    server_process server(cfg.server, dir, store_url);
    auto client = connect(server.url());
    const std::string body = shape.append_body(per_append);
    const std::string target = "/v1/aggregates/bench-order-1/events";
    if (probe) probe(true);
    const auto cpu0 = server.cpu_seconds();
    const auto bench_cpu0 = process_cpu_seconds();
    const auto t0 = steady::now();
    auto lat = post_appends(*client, target, body, appends);
    r.seconds = seconds_since(t0);
    if (probe) probe(false);
    r.bench_cpu = process_cpu_seconds() - bench_cpu0;
    if (auto cpu1 = server.cpu_seconds(); cpu0 && cpu1) r.server_cpu = *cpu1 - *cpu0;
    r.events = static_cast<std::int64_t>(appends) * per_append;
    r.requests = appends;
    set_percentiles(r, std::move(lat));
    client.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  return r;
}

// Scenario c: `clients` threads, each its own keep-alive connection and its own aggregate.
row http_concurrent_writes(const config& cfg, const event_shape& shape, const std::string& layer,
                           const std::string& store_url, const std::function<void(bool)>& probe) {
  auto dir = scenario_dir(cfg, "http-concurrent");
  row r{layer, "write_concurrent",
        "c. " + std::to_string(cfg.clients) + " clients x 1 event per append, 1 aggregate each"};
  {
    server_process server(cfg.server, dir, store_url);
    const std::string body = shape.append_body(1);
    const auto n = static_cast<std::size_t>(cfg.clients);
    std::vector<std::unique_ptr<http_client>> clients;
    for (std::size_t i = 0; i < n; ++i) clients.push_back(connect(server.url()));
    std::vector<std::vector<double>> lat(n);
    std::vector<std::string> errors(n);
    std::optional<double> cpu0;
    double bench_cpu0 = 0;
    steady::time_point t0;
    // All threads start together; the clock starts when the last one is ready.
    std::barrier start(static_cast<std::ptrdiff_t>(n), [&]() noexcept {
      cpu0 = server.cpu_seconds();
      bench_cpu0 = process_cpu_seconds();
      t0 = steady::now();
    });
    if (probe) probe(true);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        const std::string target = "/v1/aggregates/bench-order-" + std::to_string(i) + "/events";
        start.arrive_and_wait();
        try {
          lat[i] = post_appends(*clients[i], target, body, cfg.concurrent_appends);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    r.seconds = seconds_since(t0);
    if (probe) probe(false);
    r.bench_cpu = process_cpu_seconds() - bench_cpu0;
    if (auto cpu1 = server.cpu_seconds(); cpu0 && cpu1) r.server_cpu = *cpu1 - *cpu0;
    for (const auto& e : errors)
      if (!e.empty()) throw failure("concurrent writer: " + e);
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    r.events = static_cast<std::int64_t>(cfg.clients) * cfg.concurrent_appends;
    r.requests = r.events;
    set_percentiles(r, std::move(all));
    clients.clear();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
  return r;
}

namespace {

std::size_t count_events(const std::string& body, const char* what) {
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || !v.is_object() || !v.as_object().contains("events") || !v.as_object().at("events").is_array())
    throw failure(std::string(what) + ": the response is not {\"events\":[...]}");
  return v.as_object().at("events").as_array().size();
}

// Scenario d: load `read_events` events into one aggregate (100 per append), then read it
// back with one GET (streamed), then read the global log by paging POST /v1/events/query.
void reads(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  auto dir = scenario_dir(cfg, "http-read");
  {
    server_process server(cfg.server, dir);
    auto client = connect(server.url());
    const int per_append = cfg.batch_size;
    const int appends = (cfg.read_events + per_append - 1) / per_append;
    const std::int64_t total = static_cast<std::int64_t>(appends) * per_append;
    {
      row r{"HTTP", "load", "load: 1 client x " + std::to_string(per_append) + " events per append (read setup)"};
      const auto cpu0 = server.cpu_seconds();
      const auto bench_cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      auto lat = post_appends(*client, "/v1/aggregates/bench-big/events", shape.append_body(per_append), appends);
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - bench_cpu0;
      if (auto cpu1 = server.cpu_seconds(); cpu0 && cpu1) r.server_cpu = *cpu1 - *cpu0;
      r.events = total;
      r.requests = appends;
      set_percentiles(r, std::move(lat));
      out.push_back(r);
      progress("HTTP load: " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
    }
    {
      row r{"HTTP", "read_aggregate", "d. read one aggregate: GET /v1/aggregates/{id}/events (chunked)"};
      const auto cpu0 = server.cpu_seconds();
      const auto bench_cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      auto res = client->get("/v1/aggregates/bench-big/events");
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - bench_cpu0;
      if (auto cpu1 = server.cpu_seconds(); cpu0 && cpu1) r.server_cpu = *cpu1 - *cpu0;
      if (!res) throw failure("GET aggregate: " + res.error().message);
      if (res->status != 200) throw failure("GET aggregate: HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 500));
      // Counted after the clock stopped: the client's JSON parsing is not the server's cost.
      const auto n = count_events(res->body, "GET aggregate");
      if (static_cast<std::int64_t>(n) != total)
        throw failure("GET aggregate returned " + std::to_string(n) + " events, expected " + std::to_string(total));
      r.events = total;
      r.requests = 1;
      r.p50_ms = r.p99_ms = r.seconds * 1000;
      out.push_back(r);
      progress("HTTP read aggregate: " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s, " +
               std::to_string(res->body.size() / 1024 / 1024) + " MiB");
    }
    {
      row r{"HTTP", "read_log", "d. read the global log: POST /v1/events/query, limit 10000 per page"};
      std::vector<std::string> bodies;
      std::vector<double> lat;
      std::string cursor;
      const auto cpu0 = server.cpu_seconds();
      const auto bench_cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      while (true) {
        std::string req = "{\"query\":{},\"pagination\":{\"limit\":10000";
        if (!cursor.empty()) req += ",\"cursor\":\"" + cursor + "\"";
        req += "}}";
        const auto t = steady::now();
        auto res = client->post("/v1/events/query", req);
        lat.push_back(ms_between(t, steady::now()));
        if (!res) throw failure("query: " + res.error().message);
        if (res->status != 200) throw failure("query: HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 500));
        // The cursor is the last member (write_query_result_json); found without parsing.
        const std::string_view b = res->body;
        const auto tail = b.substr(b.size() > 300 ? b.size() - 300 : 0);
        const auto more = tail.find("\"hasMore\":true") != std::string_view::npos;
        cursor.clear();
        if (more) {
          auto at = tail.rfind("\"cursor\":\"");
          if (at == std::string_view::npos) throw failure("query: hasMore without a cursor");
          auto start = at + 10;
          cursor = std::string(tail.substr(start, tail.find('"', start) - start));
        }
        bodies.push_back(std::move(res->body));
        if (!more) break;
        if (bodies.size() > 10000) throw failure("query: paging does not end");
      }
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - bench_cpu0;
      if (auto cpu1 = server.cpu_seconds(); cpu0 && cpu1) r.server_cpu = *cpu1 - *cpu0;
      std::int64_t n = 0;
      for (const auto& b : bodies) n += static_cast<std::int64_t>(count_events(b, "query"));
      if (n != total) throw failure("query paging returned " + std::to_string(n) + " events, expected " + std::to_string(total));
      r.events = n;
      r.requests = static_cast<std::int64_t>(bodies.size());
      set_percentiles(r, std::move(lat));
      out.push_back(r);
      progress("HTTP read log: " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
    }
    client.reset();
    server.stop();
  }
  remove_scenario_dir(cfg, dir);
}

}  // namespace

void run_http(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  progress("HTTP: server " + cfg.server.string());
  auto report = [&](row r) {
    progress(r.layer + " " + r.key + ": " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
    out.push_back(std::move(r));
  };
  report(http_sequential_writes(cfg, shape, "HTTP", "", "write_1", "a. 1 client x 1 event per append",
                                cfg.single_appends, 1));
  report(http_sequential_writes(cfg, shape, "HTTP", "", "write_batch",
                                "b. 1 client x " + std::to_string(cfg.batch_size) + " events per append",
                                cfg.batch_appends, cfg.batch_size));
  report(http_concurrent_writes(cfg, shape, "HTTP", ""));
  reads(cfg, shape, out);
}

}  // namespace pliers::bench
