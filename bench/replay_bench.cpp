// pliers-replay-bench: replay and projection throughput on the embedded SQLite store
// (docs/benchmarks.md, "Replay and projections").
//   1. replayToState of one aggregate with --aggregate-events events through a Lua reducer,
//      without a snapshot, then with a snapshot 1,000 events before the head;
//   2. a projection rebuild over --log-events events (1,000 aggregates, 4 event types)
//      through a Lua projector that keeps counts and totals per type and per aggregate type:
//      pages read from the store by a reader thread, folded by the Lua thread.
// Run: build/<preset>/pliers-replay-bench [--log-events N] [--aggregate-events N] [--dir D]
#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <ctime>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/event_codec.hpp"
#include "ops/lua_projector.hpp"
#include "ops/replay.hpp"
#include "store/event_store.hpp"

using namespace pliers;
namespace json = boost::json;
using clk = std::chrono::steady_clock;

namespace {

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// CPU time of the calling thread: on a shared machine wall time includes waiting for a core;
// the rebuild's two threads' CPU times say what it costs (and bound its quiet wall time).
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

void fill(event_store& store, const std::string& aggregate, int count, int aggregates) {
  const char* types[] = {"order.placed", "order.paid", "order.shipped", "order.note_added"};
  std::vector<append_request> batch;
  int written = 0;
  while (written < count) {
    std::vector<append_request> reqs;
    for (int a = 0; a < aggregates && written < count; ++a) {
      append_request r{aggregates == 1 ? aggregate : aggregate + "-" + std::to_string(a), std::nullopt, {}};
      for (int i = 0; i < 10 && written < count; ++i, ++written) {
        new_event e;
        e.type = types[written % 4];
        e.aggregate_type = "order";
        e.metadata = {{"sourceSystem", "bench"}, {"sourceVersion", "1"}, {"userId", "u-" + std::to_string(written % 97)}};
        e.payload = {{"amount", written % 1000}, {"sku", "SKU-" + std::to_string(written % 5000)},
                     {"note", "a typical short text field of the order"}, {"qty", 1 + written % 7}};
        r.events.push_back(std::move(e));
      }
      reqs.push_back(std::move(r));
      if (reqs.size() >= 100) {
        for (auto& rq : reqs)
          if (auto x = store.append(std::move(rq)); !x) throw std::runtime_error(x.error().message);
        reqs.clear();
      }
    }
    for (auto& rq : reqs)
      if (auto x = store.append(std::move(rq)); !x) throw std::runtime_error(x.error().message);
  }
}

constexpr const char* reducer_lua = R"lua(
initial_state = {count = 0, total = 0, shipped = 0}
function reduce(s, e)
  s.count = s.count + 1
  s.total = s.total + (e.payload.amount or 0)
  if e.type == "order.shipped" then s.shipped = s.shipped + 1 end
  return s
end
)lua";

constexpr const char* projector_lua = R"lua(
initial_state = {byType = {}, byAggregate = {}, events = 0}
local function bump(s, e)
  s.events = s.events + 1
  local t = s.byType[e.type]
  if not t then t = {count = 0, amount = 0}; s.byType[e.type] = t end
  t.count = t.count + 1
  t.amount = t.amount + e.payload.amount
  s.byAggregate[e.aggregateId] = (s.byAggregate[e.aggregateId] or 0) + 1
end
handlers = {
  ["order.placed"] = function(s, e) bump(s, e) end,
  ["*"] = function(s, e) bump(s, e) end,
}
)lua";

// What lua_projector::apply did before events were pushed into Lua directly: each event
// serialized and parsed into a boost::json object, then converted to Lua tables.
result<void> apply_via_json(lua_projector& p, std::span<const event> events) {
  json::value arg(json::array_kind);
  for (std::size_t i = 0; i < events.size(); i += 256) {
    auto& arr = arg.get_array();
    arr.clear();
    for (std::size_t j = i; j < std::min(events.size(), i + 256); ++j) arr.emplace_back(event_to_json(events[j]));
    auto r = p.sandbox().call("__pliers_apply", std::span<const json::value>(&arg, 1));
    if (!r) return std::move(r).error();
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pliers-replay-bench"};
  int log_events = 1'000'000, aggregate_events = 100'000;
  std::string dir = std::filesystem::temp_directory_path().string();
  app.add_option("--log-events", log_events);
  app.add_option("--aggregate-events", aggregate_events);
  app.add_option("--dir", dir);
  std::string keep;
  app.add_option("--keep", keep, "directory holding the filled store: reused when present (for profiling the rebuild)");
  bool rebuild_only = false;
  app.add_flag("--rebuild-only", rebuild_only, "with --keep: only the projection rebuild");
  bool json_path = false;
  app.add_flag("--json-path", json_path,
               "rebuild through the former path (event_to_json, then JSON -> Lua), for a before/after on the same machine");
  CLI11_PARSE(app, argc, argv);
  auto work = keep.empty() ? std::filesystem::path(dir) / ("pliers-replay-bench-" + std::to_string(::getpid()))
                           : std::filesystem::path(keep);
  const bool reuse = !keep.empty() && std::filesystem::exists(work / "events.db");
  std::filesystem::create_directories(work);
  store_options o;
  o.unsafe_no_fsync = true;  // the fill only; reads do not depend on it
  auto store = open_store("sqlite:" + (work / "events.db").string(), o).value();
  if (reuse) std::printf("reusing %s (log head %lld)\n", work.c_str(), static_cast<long long>(store->head().value));
  if (!(reuse && rebuild_only)) {
  auto t0 = clk::now();
  if (!reuse) fill(*store, "big-order", aggregate_events, 1);
  std::printf("fill: %d events in one aggregate in %.1f s\n", aggregate_events, seconds_since(t0));
  event_replay replay(*store);
  for (int with_snapshot = 0; with_snapshot < 2; ++with_snapshot) {
    if (with_snapshot) {
      // A snapshot 1,000 events before the head, holding the true state there.
      auto p = lua_projector::create(reducer_lua).value();
      (void)p->start(json::value());
      std::int64_t at = aggregate_events - 1000;
      (void)replay.for_each_page("big-order", 1, at, [&](std::span<const event> pg) { return p->apply(pg); });
      (void)store->create_snapshot("big-order", at, p->state().value().as_object());
    }
    double best = 1e9;
    replay_state_result last;
    for (int run = 0; run < 3; ++run) {
      auto p = lua_projector::create(reducer_lua).value();
      auto t = clk::now();
      auto r = replay.replay_to_state("big-order", json::value(), *p, true);
      best = std::min(best, seconds_since(t));
      if (!r) {
        std::fprintf(stderr, "replay failed: %s\n", r.error().message.c_str());
        return 1;
      }
      last = *r;
    }
    std::printf("replayToState %d events, %s: %.2f ms (best of 3), %lld events applied, state %s\n", aggregate_events,
                with_snapshot ? "snapshot at head-1000" : "no snapshot", best * 1000,
                static_cast<long long>(last.events_applied), json::serialize(last.state).c_str());
  }

  if (!reuse) {
  t0 = clk::now();
  fill(*store, "order", log_events - aggregate_events, 1000);
  std::printf("fill: %d more events over 1000 aggregates in %.1f s (log head %lld)\n", log_events - aggregate_events,
              seconds_since(t0), static_cast<long long>(store->head().value));
  }
  }

  for (int run = 0; run < 3; ++run) {
    auto p = lua_projector::create(projector_lua).value();
    (void)p->start(json::value());
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<event>> pages;
    bool done = false;
    auto t = clk::now();
    double reader_cpu = 0;
    const double lua_cpu0 = thread_cpu_seconds();
    std::thread reader([&] {
      const double cpu0 = thread_cpu_seconds();
      log_position after{};
      while (true) {
        auto page = store->read_all(after, 2000);
        if (!page || page->empty()) break;
        after = page->back().position;
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return pages.size() < 8; });
        pages.push_back(std::move(*page));
        cv.notify_all();
      }
      std::lock_guard lock(m);
      reader_cpu = thread_cpu_seconds() - cpu0;
      done = true;
      cv.notify_all();
    });
    std::int64_t n = 0;
    while (true) {
      std::vector<event> page;
      {
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return !pages.empty() || done; });
        if (pages.empty()) break;
        page = std::move(pages.front());
        pages.pop_front();
        cv.notify_all();
      }
      auto r = json_path ? apply_via_json(*p, page) : p->apply(page);
      if (!r) {
        std::fprintf(stderr, "projection failed: %s\n", r.error().message.c_str());
        return 1;
      }
      n += static_cast<std::int64_t>(page.size());
    }
    reader.join();
    const double s = seconds_since(t);
    const double lua_cpu = thread_cpu_seconds() - lua_cpu0;
    auto st = p->state().value();
    std::printf("projection rebuild (Lua projector, SQLite): %lld events in %.2f s = %.0f events/s (state.events=%s); "
                "CPU s: reader %.2f, Lua %.2f -> %.0f events/s on two free cores\n",
                static_cast<long long>(n), s, static_cast<double>(n) / s, json::serialize(st.at("events")).c_str(), reader_cpu,
                lua_cpu, static_cast<double>(n) / std::max(reader_cpu, lua_cpu));
  }
  if (keep.empty()) std::filesystem::remove_all(work);
  return 0;
}
