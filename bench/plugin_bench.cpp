// pliers-plugin-bench: throughput of the plugin chain (issue 5). The log is filled first
// (SQLite, durable), then a plugin consumer (process/plugin_processor.hpp) runs the chain
// from the beginning and the clock measures until every event is processed and its
// effects (plugin.executed events) are stored. Chains:
//   native + Lua           the issue's target: >= 20,000 events/s
//   native + Lua, no plugin.executed records
//   native + Lua + remote  the remote plugin is an HTTP endpoint on loopback in this process
// Besides events/s it prints the CPU time of the whole process per event while the clock
// ran (getrusage), which moves much less than events/s on a shared machine.
// Run: build/release/pliers-plugin-bench [--events N]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <filesystem>
#include <iostream>
#include <thread>

#include "bus/event_bus.hpp"
#include "core/uuid.hpp"
#include "process/plugin_chain.hpp"
#include "process/plugin_kinds.hpp"
#include "process/plugin_processor.hpp"
#include "loopback_endpoint.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace pliers;
using namespace std::chrono_literals;

namespace {

// A native plugin doing a little real work: sums the payload's numbers.
class summing_plugin final : public event_plugin {
 public:
  summing_plugin() {
    info_.id = "native-sum";
    info_.name = "sum";
    info_.priority = 30;
  }
  const plugin_info& info() const override { return info_; }
  std::string kind() const override { return "native"; }
  plugin_result process(const event& e, const plugin_context&) override {
    std::int64_t sum = 0;
    for (const auto& kv : e.payload)
      if (kv.value().is_int64()) sum += kv.value().get_int64();
    plugin_result r;
    r.success = true;
    r.metadata["sum"] = sum;
    return r;
  }

 private:
  plugin_info info_;
};

const char* lua_source = R"(
function process(event, context)
  local total = 0
  for _, line in ipairs(event.payload.lines) do total = total + line.qty * line.price end
  return {success = true, metadata = {total = total, customer = event.payload.customer}}
end
)";

// CPU time (user + system) of the whole process so far, in seconds.
double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

struct outcome {
  double seconds = 0;
  double cpu = 0;  // CPU seconds of every thread while the clock ran
  std::uint64_t processed = 0;
  std::uint64_t failures = 0;
};

outcome run_chain(const fs::path& dir, int events, bool lua, bool remote, bool record, const std::string& remote_url) {
  auto st = open_store("sqlite:" + (dir / "events.db").string());
  if (!st) throw std::runtime_error(st.error().message);
  auto& store = **st;
  retry_engine retries(store, default_clock(), {});
  plugin_chain chain(store, default_clock(), retries, make_plugin, plugin_chain::options{.record_executions = record});
  auto ok = chain.register_plugin(std::make_shared<summing_plugin>(), {"order.*"}, {});
  if (!ok) throw std::runtime_error(ok.error().message);
  if (lua) {
    plugin_info info{"lua-total", "total", "1.0.0", 20, {}};
    auto p = make_lua_plugin(info, {{"source", lua_source}}, 5s);
    if (!p) throw std::runtime_error(p.error().message);
    if (auto r = chain.register_plugin(*p, {"order.*"}, {}); !r) throw std::runtime_error(r.error().message);
  }
  if (remote) {
    plugin_info info{"remote-ack", "ack", "1.0.0", 10, {}};
    auto p = make_remote_plugin(info, {{"url", remote_url}}, 5s);
    if (!p) throw std::runtime_error(p.error().message);
    if (auto r = chain.register_plugin(*p, {"order.*"}, {}); !r) throw std::runtime_error(r.error().message);
  }
  // Fill the log after the registrations (a Lua or remote plugin runs on the events stored
  // after it was registered): orders with a few lines each, 100 per append, 1,000 aggregates.
  for (int i = 0; i < events; i += 100) {
    std::vector<append_request> group;
    for (int j = i; j < std::min(events, i + 100); ++j) {
      new_event ne;
      ne.type = "order.placed";
      ne.aggregate_type = "order";
      ne.metadata = {{"sourceSystem", "bench"}, {"sourceVersion", "1"}};
      json::array lines;
      for (int k = 0; k < 3; ++k) lines.push_back(json::object{{"sku", "SKU-" + std::to_string(k)}, {"qty", k + 1}, {"price", 250}});
      ne.payload = {{"customer", "c-" + std::to_string(j % 97)}, {"lines", std::move(lines)}, {"n", j}};
      group.push_back({"order-" + std::to_string(j % 1000), std::nullopt, {std::move(ne)}});
    }
    auto stored = store.append_group(std::move(group));
    if (!stored) throw std::runtime_error(stored.error().message);
  }
  log_tailer tailer(store, log_tailer::options{});
  plugin_processor::options po;
  po.start = subscription_start::beginning();
  const auto n = static_cast<std::uint64_t>(events);
  const auto plugins = chain.list().size();
  // Done when every plugin ran on every event and, with records, every plugin.executed is
  // stored (the log's head: the events, the registrations, one record per plugin run).
  const auto expected_head = static_cast<std::int64_t>(n + plugins + (record ? n * plugins : 0));
  auto all_ran = [&] {
    for (const auto& v : chain.list())
      if (v.executions < n) return false;
    return true;
  };
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds();
  plugin_processor proc(store, tailer, default_clock(), chain, "bench", po);
  while (!all_ran() || store.head().value < expected_head) std::this_thread::sleep_for(1ms);
  outcome o;
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  o.cpu = cpu_seconds() - cpu0;
  o.processed = n;
  for (const auto& v : chain.list()) o.failures += v.failures;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pliers-plugin-bench: plugin chain throughput (docs/benchmarks.md)"};
  int events = 100000;
  bool with_remote = true;
  std::string dir = fs::temp_directory_path().string();
  app.add_option("--events", events, "events in the log")->capture_default_str();
  app.add_option("--dir", dir, "where the temporary SQLite files go")->capture_default_str();
  app.add_flag("!--no-remote", with_remote, "skip the chain with the remote plugin");
  int only = 0;
  app.add_option("--only", only, "run only scenario N (1-based)");
  CLI11_PARSE(app, argc, argv);
  pliers::bench::loopback_endpoint endpoint;
  struct scenario {
    const char* name;
    bool lua, remote, record;
    int events;
  };
  std::vector<scenario> scenarios = {{"native + Lua", true, false, true, events},
                                     {"native + Lua, no plugin.executed", true, false, false, events},
                                     {"native only", false, false, true, events}};
  if (with_remote) scenarios.push_back({"native + Lua + remote (loopback HTTP)", true, true, true, std::max(events / 5, 1000)});
  std::cout << "| chain | events | seconds | events/s | CPU µs/event | failures |\n|---|---:|---:|---:|---:|---:|\n";
  if (only > 0 && only <= static_cast<int>(scenarios.size())) scenarios = {scenarios[static_cast<std::size_t>(only - 1)]};
  for (const auto& s : scenarios) {
    const fs::path work = fs::path(dir) / ("pliers-plugin-bench-" + new_uuid_v4().substr(0, 8));
    fs::create_directories(work);
    auto o = run_chain(work, s.events, s.lua, s.remote, s.record, endpoint.url());
    fs::remove_all(work);
    std::cout << "| " << s.name << " | " << o.processed << " | " << o.seconds << " | "
              << static_cast<long long>(static_cast<double>(o.processed) / o.seconds) << " | "
              << static_cast<long long>(o.cpu * 1e6 / static_cast<double>(o.processed)) << " | " << o.failures << " |"
              << std::endl;
  }
  return 0;
}
