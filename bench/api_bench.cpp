// C++ API layer: pliers::open_store("sqlite:PATH") in this process, default store_options
// (durable: synchronous=FULL). Requests are built before the clock starts.
#include <barrier>
#include <thread>

#include "bench.hpp"
#include "store/event_store.hpp"

namespace pliers::bench {

namespace fs = std::filesystem;

namespace {

std::unique_ptr<event_store> open(const fs::path& dir) {
  auto s = open_store("sqlite:" + (dir / "events.db").string());
  if (!s) throw failure("open_store: " + s.error().message);
  return std::move(*s);
}

append_request make_request(const event_shape& shape, const std::string& aggregate_id, int n) {
  append_request req;
  req.aggregate_id = aggregate_id;
  req.events.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    new_event e;
    e.type = shape.type;
    e.aggregate_type = shape.aggregate_type;
    e.metadata = shape.metadata;
    e.payload = shape.payload;
    req.events.push_back(std::move(e));
  }
  return req;
}

std::vector<append_request> make_requests(const event_shape& shape, const std::string& aggregate_id, int appends,
                                          int per_append) {
  std::vector<append_request> reqs;
  reqs.reserve(static_cast<std::size_t>(appends));
  const auto one = make_request(shape, aggregate_id, per_append);
  for (int i = 0; i < appends; ++i) reqs.push_back(one);
  return reqs;
}

std::vector<double> append_all(event_store& store, std::vector<append_request>& reqs) {
  std::vector<double> lat;
  lat.reserve(reqs.size());
  for (auto& req : reqs) {
    const auto t = steady::now();
    auto r = store.append(std::move(req));
    lat.push_back(ms_between(t, steady::now()));
    if (!r) throw failure("append: " + r.error().message);
  }
  return lat;
}

row sequential_writes(const config& cfg, const event_shape& shape, const char* key, const std::string& label,
                      int appends, int per_append) {
  auto dir = scenario_dir(cfg, std::string("api-") + key);
  row r{"C++ API", key, label};
  {
    auto store = open(dir);
    auto reqs = make_requests(shape, "bench-order-1", appends, per_append);
    const auto cpu0 = process_cpu_seconds();
    const auto t0 = steady::now();
    auto lat = append_all(*store, reqs);
    r.seconds = seconds_since(t0);
    r.bench_cpu = process_cpu_seconds() - cpu0;
    r.events = static_cast<std::int64_t>(appends) * per_append;
    r.requests = appends;
    set_percentiles(r, std::move(lat));
  }
  remove_scenario_dir(cfg, dir);
  return r;
}

row concurrent_writes(const config& cfg, const event_shape& shape) {
  auto dir = scenario_dir(cfg, "api-concurrent");
  row r{"C++ API", "write_concurrent",
        "c. " + std::to_string(cfg.clients) + " threads x 1 event per append (append), 1 aggregate each"};
  {
    auto store = open(dir);
    const auto n = static_cast<std::size_t>(cfg.clients);
    std::vector<std::vector<append_request>> reqs;
    for (std::size_t i = 0; i < n; ++i)
      reqs.push_back(make_requests(shape, "bench-order-" + std::to_string(i), cfg.concurrent_appends, 1));
    std::vector<std::vector<double>> lat(n);
    std::vector<std::string> errors(n);
    double cpu0 = 0;
    steady::time_point t0;
    std::barrier start(static_cast<std::ptrdiff_t>(n), [&]() noexcept {
      cpu0 = process_cpu_seconds();
      t0 = steady::now();
    });
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        try {
          lat[i] = append_all(*store, reqs[i]);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    r.seconds = seconds_since(t0);
    r.bench_cpu = process_cpu_seconds() - cpu0;
    for (const auto& e : errors)
      if (!e.empty()) throw failure("concurrent writer: " + e);
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    r.events = static_cast<std::int64_t>(cfg.clients) * cfg.concurrent_appends;
    r.requests = r.events;
    set_percentiles(r, std::move(all));
  }
  remove_scenario_dir(cfg, dir);
  return r;
}

void reads(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  auto dir = scenario_dir(cfg, "api-read");
  {
    auto store = open(dir);
    const int per_append = cfg.batch_size;
    const int appends = (cfg.read_events + per_append - 1) / per_append;
    const std::int64_t total = static_cast<std::int64_t>(appends) * per_append;
    {
      row r{"C++ API", "load", "load: 1 thread x " + std::to_string(per_append) + " events per append (read setup)"};
      auto reqs = make_requests(shape, "bench-big", appends, per_append);
      const auto cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      auto lat = append_all(*store, reqs);
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - cpu0;
      r.events = total;
      r.requests = appends;
      set_percentiles(r, std::move(lat));
      out.push_back(r);
    }
    {
      row r{"C++ API", "read_aggregate", "d. read one aggregate: read_aggregate, pages of 1000"};
      constexpr std::size_t page = 1000;
      std::vector<double> lat;
      std::int64_t n = 0, next = 1;
      const auto cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      while (true) {
        const auto t = steady::now();
        auto events = store->read_aggregate("bench-big", next, std::nullopt, page);
        lat.push_back(ms_between(t, steady::now()));
        if (!events) throw failure("read_aggregate: " + events.error().message);
        n += static_cast<std::int64_t>(events->size());
        if (events->size() < page) break;
        next = events->back().sequence.value + 1;
      }
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - cpu0;
      if (n != total) throw failure("read_aggregate returned " + std::to_string(n) + " events, expected " + std::to_string(total));
      r.events = n;
      r.requests = static_cast<std::int64_t>(lat.size());
      set_percentiles(r, std::move(lat));
      out.push_back(r);
    }
    {
      row r{"C++ API", "read_log", "d. read the global log: read_all, pages of 10000"};
      constexpr std::size_t page = 10000;
      std::vector<double> lat;
      std::int64_t n = 0;
      log_position after{};
      const auto cpu0 = process_cpu_seconds();
      const auto t0 = steady::now();
      while (true) {
        const auto t = steady::now();
        auto events = store->read_all(after, page);
        lat.push_back(ms_between(t, steady::now()));
        if (!events) throw failure("read_all: " + events.error().message);
        n += static_cast<std::int64_t>(events->size());
        if (events->size() < page) break;
        after = events->back().position;
      }
      r.seconds = seconds_since(t0);
      r.bench_cpu = process_cpu_seconds() - cpu0;
      if (n != total) throw failure("read_all returned " + std::to_string(n) + " events, expected " + std::to_string(total));
      r.events = n;
      r.requests = static_cast<std::int64_t>(lat.size());
      set_percentiles(r, std::move(lat));
      out.push_back(r);
    }
  }
  remove_scenario_dir(cfg, dir);
}

}  // namespace

void run_api(const config& cfg, const event_shape& shape, std::vector<row>& out) {
  auto report = [&](row r) {
    progress(r.layer + " " + r.key + ": " + std::to_string(static_cast<long long>(r.events_per_second())) + " events/s");
    out.push_back(std::move(r));
  };
  report(sequential_writes(cfg, shape, "write_1", "a. 1 thread x 1 event per append (append)", cfg.single_appends, 1));
  report(sequential_writes(cfg, shape, "write_batch",
                           "b. 1 thread x " + std::to_string(cfg.batch_size) + " events per append (append)",
                           cfg.batch_appends, cfg.batch_size));
  report(concurrent_writes(cfg, shape));
  const auto before = out.size();
  reads(cfg, shape, out);
  for (auto i = before; i < out.size(); ++i)
    progress(out[i].layer + " " + out[i].key + ": " + std::to_string(static_cast<long long>(out[i].events_per_second())) +
             " events/s");
}

}  // namespace pliers::bench
