// pliers-bench: shared pieces of the benchmark tool (configuration, the event used by every
// scenario, measurement helpers, result rows). See docs/benchmarks.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <boost/json/object.hpp>

namespace pliers::bench {

// Counts of one run; `scale` multiplies every count (minimums keep each scenario meaningful).
struct config {
  double scale = 1.0;
  std::filesystem::path server;     // pliers-events binary
  std::filesystem::path work_dir;   // a fresh temp directory under --dir, removed at the end
  bool keep_files = false;
  bool run_http = true, run_api = true, run_raw = true;
  bool run_pg = false;              // --only pg: the PostgreSQL section (pg_bench.cpp)
  std::string pg_url;               // --pg-url: a database the benchmark may create schemas in
  int pg_raw_connections = 16;      // raw PostgreSQL: connections of the concurrent 1-row INSERTs
  std::string pg_scenarios;         // --pg-scenarios: groups of the PostgreSQL section to run ("" = all)
  int event_bytes = 400;            // target size of one serialized (stored) event
  int clients = 64;                 // scenario c: concurrent writers
  int batch_size = 100;             // scenario b: events per append
  int repeat = 3;                   // whole runs; each row reports the median run

  // Scaled counts (full run = scale 1).
  int single_appends = 3000;        // a: 1 client x 1 event per append
  int batch_appends = 300;          // b: 1 client x batch_size events per append
  int concurrent_appends = 300;     // c: appends per client
  int read_events = 100000;         // d: events in the aggregate that is read back

  void apply_scale();
};

// The one event every scenario writes: ~event_bytes when stored and serialized as the API
// returns it (write_event_json), payload padded to reach that size.
struct event_shape {
  std::string type = "OrderPlaced";
  std::string aggregate_type = "Order";
  boost::json::object metadata;
  boost::json::object payload;
  std::string new_event_json;   // {"type","aggregateType","payload","metadata"}: one element of an append body
  std::string metadata_text;    // serialized as the store writes the columns
  std::string payload_text;
  std::size_t stored_json_bytes = 0;  // size of the event as served by the API

  static event_shape make(int target_bytes);
  // {"expectedVersion":null,"events":[E x n]}
  std::string append_body(int n) const;
};

// One line of the results table.
struct row {
  row(std::string layer_, std::string key_, std::string scenario_)
      : layer(std::move(layer_)), key(std::move(key_)), scenario(std::move(scenario_)) {}
  std::string layer;     // "HTTP", "C++ API", "raw SQLite"; PostgreSQL: "PG HTTP", "PG C++ API", "raw PG"
  std::string key;       // scenario key: write_1, write_batch, write_concurrent, load, read_aggregate, read_log
  std::string scenario;  // human label
  std::int64_t events = 0;
  std::int64_t requests = 0;
  double seconds = 0;
  double p50_ms = 0, p99_ms = 0;
  std::optional<double> server_cpu;  // CPU seconds of the server process (HTTP only)
  double bench_cpu = 0;              // CPU seconds of this process during the scenario
  std::vector<double> runs_eps;      // events/s of every run (set when runs are combined)
  // PostgreSQL rows only.
  std::optional<double> pg_cpu;           // CPU seconds of the PostgreSQL server processes (local server)
  std::optional<std::int64_t> pg_xids;    // transaction ids assigned (= write transactions)
  std::optional<double> pg_wal_bytes;     // WAL written (pg_current_wal_lsn difference)
  std::vector<std::pair<std::string, double>> steps_ms;  // mean ms per request of each statement
  double events_per_second() const { return seconds > 0 ? static_cast<double>(events) / seconds : 0; }
};

class failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// --- measurement helpers ---------------------------------------------------------------
using steady = std::chrono::steady_clock;
inline double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}
inline double ms_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
double process_cpu_seconds();                       // this process (getrusage)
std::optional<double> process_cpu_seconds(int pid); // another process (/proc/PID/stat)
// Fills p50/p99 of row from per-request latencies (milliseconds).
void set_percentiles(row& r, std::vector<double> latencies_ms);

// A fresh directory for one scenario's store under cfg.work_dir.
std::filesystem::path scenario_dir(const config& cfg, const std::string& name);
void remove_scenario_dir(const config& cfg, const std::filesystem::path& dir);

void progress(const std::string& line);  // to stderr

// --- the three layers ---------------------------------------------------------------------
void run_http(const config& cfg, const event_shape& shape, std::vector<row>& out);
// HTTP scenarios a/b (one client) and c (cfg.clients clients) against a server on
// `store_url` ("" = a fresh SQLite file in the scenario directory), as rows of `layer`.
// `probe` (if set) is called with true just before the clock starts and false just after
// it stops.
row http_sequential_writes(const config& cfg, const event_shape& shape, const std::string& layer,
                           const std::string& store_url, const char* key, const std::string& label, int appends,
                           int per_append, const std::function<void(bool)>& probe = {});
row http_concurrent_writes(const config& cfg, const event_shape& shape, const std::string& layer,
                           const std::string& store_url, const std::function<void(bool)>& probe = {});
void run_api(const config& cfg, const event_shape& shape, std::vector<row>& out);
void run_raw_sqlite(const config& cfg, const event_shape& shape, std::vector<row>& out);

// --- PostgreSQL (pg_bench.cpp) --------------------------------------------------------------
// One run of the PostgreSQL section: raw libpq, C++ API, HTTP, JSON index kinds, statements.
void run_pg(const config& cfg, const event_shape& shape, std::vector<row>& out);
// The PostgreSQL section of the results (empty when no PostgreSQL rows).
std::string pg_results_markdown(const config& cfg, const std::vector<row>& rows);

}  // namespace pliers::bench
