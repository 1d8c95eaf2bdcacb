// pliers-bench: write and read throughput of pliers-events over HTTP, through the C++ API,
// and of raw SQLite writing the same rows, printed as a Markdown table; with --only pg, the
// same for the PostgreSQL store against raw libpq (pg_bench.cpp).
//
//   pliers-bench                 full run: 3 runs of every scenario, medians (under a minute on 2 cores)
//   pliers-bench --quick         smoke run (scale 0.05, 1 run, about a second)
//   pliers-bench --scale 0.1 --only http,raw --output results.md
//   pliers-bench --only pg --pg-url postgres://postgres@127.0.0.1:54329/pliers_bench
//
// Every SQLite scenario runs on a fresh SQLite file (WAL, synchronous=FULL) in a temp
// directory; every PostgreSQL scenario in a fresh schema of the --pg-url database.
#include <CLI/CLI.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>

#include "bench.hpp"
#include "core/event.hpp"
#include "core/event_codec.hpp"
#include "core/uuid.hpp"

#ifndef PLIERS_EVENTS_BINARY
#define PLIERS_EVENTS_BINARY ""
#endif

namespace pliers::bench {

namespace json = boost::json;
namespace fs = std::filesystem;

void config::apply_scale() {
  auto scaled = [&](int n, int minimum) {
    return std::max(minimum, static_cast<int>(std::lround(static_cast<double>(n) * scale)));
  };
  single_appends = scaled(single_appends, 20);
  batch_appends = scaled(batch_appends, 5);
  concurrent_appends = scaled(concurrent_appends, 5);
  // Reads need enough events for several pages (read_aggregate pages of 1000).
  read_events = scaled(read_events, 2000);
}

// ---------------------------------------------------------------------------------------

event_shape event_shape::make(int target_bytes) {
  event_shape s;
  s.metadata = {{"sourceSystem", "pliers-bench"}, {"sourceVersion", "1.0.0"}};
  s.payload = {{"orderId", "ord-7f3a9c21"}, {"amount", 129.95}, {"currency", "EUR"}, {"pad", ""}};
  // Measure the event as the API serves it (representative id, time and numbers), then pad.
  auto stored_size = [&] {
    event e;
    e.id = new_uuid_v4();
    e.type = s.type;
    e.time = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
    e.aggregate_id = "bench-aggregate-00";
    e.aggregate_type = s.aggregate_type;
    e.sequence = sequence_number(50000);
    e.position = log_position(50000);
    e.metadata = s.metadata;
    e.payload = s.payload;
    std::string out;
    write_event_json(out, e);
    return out.size();
  };
  const auto base = stored_size();
  if (static_cast<std::size_t>(target_bytes) > base)
    s.payload["pad"] = std::string(static_cast<std::size_t>(target_bytes) - base, 'x');
  s.stored_json_bytes = stored_size();
  s.metadata_text = json::serialize(s.metadata);
  s.payload_text = json::serialize(s.payload);
  s.new_event_json = json::serialize(json::object{
      {"type", s.type}, {"aggregateType", s.aggregate_type}, {"payload", s.payload}, {"metadata", s.metadata}});
  return s;
}

std::string event_shape::append_body(int n) const {
  std::string body = "{\"expectedVersion\":null,\"events\":[";
  body.reserve(body.size() + static_cast<std::size_t>(n) * (new_event_json.size() + 1) + 2);
  for (int i = 0; i < n; ++i) {
    if (i) body += ',';
    body += new_event_json;
  }
  body += "]}";
  return body;
}

// ---------------------------------------------------------------------------------------


void set_percentiles(row& r, std::vector<double> v) {
  if (v.empty()) return;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    auto idx = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, idx == 0 ? 0 : idx - 1)];
  };
  r.p50_ms = at(0.50);
  r.p99_ms = at(0.99);
}

fs::path scenario_dir(const config& cfg, const std::string& name) {
  auto dir = cfg.work_dir / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void remove_scenario_dir(const config& cfg, const fs::path& dir) {
  if (cfg.keep_files) return;
  std::error_code ec;
  fs::remove_all(dir, ec);
}

void progress(const std::string& line) { std::cerr << "pliers-bench: " << line << std::endl; }

// --- output ------------------------------------------------------------------------------

namespace {

std::string fmt(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// 1234567 -> "1,234,567"
std::string grouped(double v) {
  auto n = static_cast<long long>(std::llround(v));
  std::string s = std::to_string(n < 0 ? -n : n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return n < 0 ? "-" + s : s;
}

std::string latency(double ms) { return ms >= 100 ? fmt(ms, 0) : ms >= 10 ? fmt(ms, 1) : fmt(ms, 2); }

const row* find(const std::vector<row>& rows, const std::string& layer, const std::string& key) {
  for (const auto& r : rows)
    if (r.layer == layer && r.key == key) return &r;
  return nullptr;
}

bool is_sqlite_layer(const std::string& layer) {
  return layer == "HTTP" || layer == "C++ API" || layer == "raw SQLite";
}

std::string results_markdown(const config& cfg, const event_shape& shape, const std::vector<row>& all_rows,
                             const std::string& command_line) {
  std::ostringstream md;
  std::vector<row> rows;
  for (const auto& r : all_rows)
    if (is_sqlite_layer(r.layer)) rows.push_back(r);
  char date[64];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  md << "### pliers-bench results\n\n";
  md << "- command: `" << command_line << "`\n";
  md << "- date: " << date << ", scale " << cfg.scale << ", " << sysconf(_SC_NPROCESSORS_ONLN) << " CPUs online\n";
  md << "- each row is the median (by events/s) of " << cfg.repeat
     << " run(s); the runs alternate HTTP, C++ API, raw SQLite (then PostgreSQL)\n";
  md << "- event: " << shape.stored_json_bytes << " bytes as served by the API (payload " << shape.payload_text.size()
     << " bytes, metadata " << shape.metadata_text.size() << " bytes as stored)\n";
  md << "- every SQLite scenario on a fresh SQLite file: WAL, synchronous=FULL\n";
  md << "- latency is per request (per append call, per HTTP request, per read page); "
        "CPU = user+system seconds during the scenario\n";
  if (rows.empty()) return md.str() + pg_results_markdown(cfg, all_rows);
  md << "\n";

  md << "| Layer | Scenario | Events | Requests | Wall s | Events/s | Range of " << cfg.repeat
     << (cfg.repeat == 1 ? " run" : " runs") << " | p50 ms | p99 ms | Server CPU s | Bench CPU s |\n";
  md << "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
  for (const auto& r : rows) {
    std::string range = "-";
    if (r.runs_eps.size() > 1) range = grouped(r.runs_eps.front()) + " - " + grouped(r.runs_eps.back());
    md << "| " << r.layer << " | " << r.scenario << " | " << grouped(static_cast<double>(r.events)) << " | "
       << grouped(static_cast<double>(r.requests)) << " | " << fmt(r.seconds, 3) << " | "
       << grouped(r.events_per_second()) << " | " << range << " | " << latency(r.p50_ms) << " | "
       << latency(r.p99_ms) << " | " << (r.server_cpu ? fmt(*r.server_cpu, 2) : "-") << " | " << fmt(r.bench_cpu, 2)
       << " |\n";
  }

  // Side by side: ours vs raw SQLite writing the same rows.
  struct cmp {
    const char* label;
    const char* key;
    const char* raw_key;
  };
  const cmp comparisons[] = {
      {"a. 1 event per append, 1 writer", "write_1", "write_1"},
      {"b. 100 events per append, 1 writer", "write_batch", "write_batch"},
      {"c. 1 event per append, 64 writers (raw: 1-row txns, 1 writer)", "write_concurrent", "write_1"},
      {"load: 100 events per append (read setup)", "load", "load"},
      {"read one aggregate", "read_aggregate", "read_aggregate"},
      {"read the global log", "read_log", "read_log"},
  };
  md << "\n| Scenario | HTTP events/s | C++ API events/s | raw SQLite events/s | API / raw | HTTP / raw |\n";
  md << "|---|--:|--:|--:|--:|--:|\n";
  for (const auto& c : comparisons) {
    const row* h = find(rows, "HTTP", c.key);
    const row* a = find(rows, "C++ API", c.key);
    const row* w = find(rows, "raw SQLite", c.raw_key);
    if (!h && !a && !w) continue;
    auto rate = [](const row* r) { return r ? grouped(r->events_per_second()) : std::string("-"); };
    auto ratio = [&](const row* r) {
      return r && w && w->events_per_second() > 0 ? fmt(r->events_per_second() / w->events_per_second(), 2) : "-";
    };
    md << "| " << c.label << " | " << rate(h) << " | " << rate(a) << " | " << rate(w) << " | " << ratio(a) << " | "
       << ratio(h) << " |\n";
  }

  // Targets of the issue.
  struct target {
    const char* label;
    const char* layer;
    const char* key;
    double minimum;
  };
  const target targets[] = {
      {"100-event batches, 1 client", "HTTP", "write_batch", 50000},
      {"100-event batches, 1 thread", "C++ API", "write_batch", 50000},
      {"64 concurrent single-event clients", "HTTP", "write_concurrent", 10000},
      {"64 concurrent single-event threads", "C++ API", "write_concurrent", 10000},
      {"read one aggregate (GET, streamed)", "HTTP", "read_aggregate", 300000},
      {"read the global log (POST /v1/events/query, limit 10000)", "HTTP", "read_log", 300000},
      {"read one aggregate (read_aggregate, pages of 1000)", "C++ API", "read_aggregate", 300000},
      {"read the global log (read_all, pages of 10000)", "C++ API", "read_log", 300000},
  };
  md << "\n| Target | Layer | Required events/s | Measured events/s | Result |\n";
  md << "|---|---|--:|--:|---|\n";
  for (const auto& t : targets) {
    const row* r = find(rows, t.layer, t.key);
    if (!r) continue;
    const bool pass = r->events_per_second() >= t.minimum;
    md << "| " << t.label << " | " << t.layer << " | >= " << grouped(t.minimum) << " | "
       << grouped(r->events_per_second()) << " | " << (pass ? "pass" : "**FAIL**") << " |\n";
  }
  if (cfg.scale < 1.0)
    md << "\n(scale " << cfg.scale << ": a smoke run; the targets are judged on a full run, scale 1.)\n";
  return md.str() + pg_results_markdown(cfg, all_rows);
}

// Each (layer, scenario): the run with the median events/s, with the range of all runs.
std::vector<row> combine_runs(const std::vector<row>& all) {
  std::vector<row> out;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& r : all)
    if (std::find(order.begin(), order.end(), std::pair{r.layer, r.key}) == order.end()) order.emplace_back(r.layer, r.key);
  for (const auto& [layer, key] : order) {
    std::vector<const row*> runs;
    for (const auto& r : all)
      if (r.layer == layer && r.key == key) runs.push_back(&r);
    std::sort(runs.begin(), runs.end(),
              [](const row* a, const row* b) { return a->events_per_second() < b->events_per_second(); });
    row median = *runs[(runs.size() - 1) / 2];
    for (const auto* r : runs) median.runs_eps.push_back(r->events_per_second());
    out.push_back(std::move(median));
  }
  return out;
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

}  // namespace

}  // namespace pliers::bench

int main(int argc, char** argv) {
  using namespace pliers::bench;
  namespace fs = std::filesystem;
  CLI::App app{"pliers-bench: throughput of pliers-events over HTTP, the C++ API and raw SQLite"};
  config cfg;
  bool quick = false;
  std::string only = "http,api,raw";
  std::string dir = fs::temp_directory_path().string();
  std::string server, output;
  app.add_option("--scale", cfg.scale, "multiply every count (1 = full run)")
      ->check(CLI::Range(0.001, 100.0))
      ->capture_default_str();
  app.add_flag("--quick", quick, "smoke run: --scale 0.05 --repeat 1 (finishes in a few seconds)");
  app.add_option("--repeat", cfg.repeat, "runs of every scenario; the median (lower median if even) is reported")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--only", only, "layers to run, comma-separated: http, api, raw (SQLite); pg (PostgreSQL, needs --pg-url)")
      ->capture_default_str();
  app.add_option("--pg-url", cfg.pg_url,
                 "PostgreSQL database for --only pg (libpq URI); every scenario creates and drops a schema in it");
  app.add_option("--pg-raw-connections", cfg.pg_raw_connections, "connections of the raw concurrent 1-row INSERTs")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--pg-scenarios", cfg.pg_scenarios,
                 "PostgreSQL groups to run, comma-separated (default all): raw, raw_single, api, api_single, "
                 "api_concurrent, read, http, json, replay");
  app.add_option("--server", server, "pliers-events binary (default: next to pliers-bench)");
  app.add_option("--dir", dir, "where the temp directory with the SQLite files is made")->capture_default_str();
  app.add_option("--output", output, "also write the Markdown results to this file");
  app.add_option("--event-bytes", cfg.event_bytes, "size of one serialized event")->capture_default_str();
  app.add_option("--clients", cfg.clients, "concurrent writers of scenario c")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_flag("--keep", cfg.keep_files, "keep the SQLite files (the directory is printed)");
  CLI11_PARSE(app, argc, argv);

  if (quick && app.count("--scale") == 0) cfg.scale = 0.05;
  if (quick && app.count("--repeat") == 0) cfg.repeat = 1;
  cfg.apply_scale();
  cfg.run_http = only.find("http") != std::string::npos;
  cfg.run_api = only.find("api") != std::string::npos;
  cfg.run_raw = only.find("raw") != std::string::npos;
  cfg.run_pg = only.find("pg") != std::string::npos;
  if (cfg.run_pg && cfg.pg_url.empty()) {
    std::cerr << "pliers-bench: --only pg needs --pg-url postgres://...\n";
    return 2;
  }
  cfg.server = server.empty() ? default_server() : fs::path(server);
  if ((cfg.run_http || cfg.run_pg) && (cfg.server.empty() || !fs::exists(cfg.server))) {
    std::cerr << "pliers-bench: server binary not found ('" << cfg.server.string() << "'); pass --server PATH\n";
    return 2;
  }

  std::string tmpl = (fs::path(dir) / "pliers-bench-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    std::cerr << "pliers-bench: cannot create a temp directory under " << dir << "\n";
    return 2;
  }
  cfg.work_dir = tmpl;

  std::string command_line = "pliers-bench";
  for (int i = 1; i < argc; ++i) command_line += std::string(" ") + argv[i];

  const auto shape = event_shape::make(cfg.event_bytes);
  progress("work directory " + cfg.work_dir.string() + ", scale " + std::to_string(cfg.scale) + ", event " +
           std::to_string(shape.stored_json_bytes) + " bytes");
  std::vector<row> rows;
  int code = 0;
  const auto t0 = steady::now();
  try {
    for (int run = 1; run <= cfg.repeat; ++run) {
      if (cfg.repeat > 1) progress("run " + std::to_string(run) + " of " + std::to_string(cfg.repeat));
      if (cfg.run_http) run_http(cfg, shape, rows);
      if (cfg.run_api) run_api(cfg, shape, rows);
      if (cfg.run_raw) run_raw_sqlite(cfg, shape, rows);
      if (cfg.run_pg) run_pg(cfg, shape, rows);
    }
  } catch (const std::exception& e) {
    std::cerr << "pliers-bench: FAILED: " << e.what() << "\n";
    code = 1;
  }
  progress("finished in " + std::to_string(seconds_since(t0)) + " s");
  if (!cfg.keep_files) {
    std::error_code ec;
    fs::remove_all(cfg.work_dir, ec);
  } else {
    progress("kept files in " + cfg.work_dir.string());
  }

  const auto md = results_markdown(cfg, shape, combine_runs(rows), command_line);
  std::cout << md << std::flush;
  if (!output.empty()) std::ofstream(output) << md;
  return code;
}
