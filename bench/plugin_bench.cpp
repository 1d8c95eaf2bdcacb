// pliers-plugin-bench: throughput of the plugin chain (issue 5). The log is filled first
// (SQLite, durable), then a plugin consumer (process/plugin_processor.hpp) runs the chain
// from the beginning and the clock measures until every event is processed and its
// effects (plugin.executed events) are stored. Chains:
//   native + Lua           the issue's target: >= 20,000 events/s
//   native + Lua, no plugin.executed records
//   native + Lua + remote  the remote plugin is an HTTP endpoint on loopback in this process
// Run: build/release/pliers-plugin-bench [--events N]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

// A minimal HTTP/1.1 keep-alive endpoint answering every POST with the same PluginResult.
class loopback_endpoint {
 public:
  loopback_endpoint() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 64) != 0)
      throw std::runtime_error("endpoint: bind/listen failed");
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~loopback_endpoint() {
    stopping_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/plugin"; }

 private:
  void accept_loop() {
    while (!stopping_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) break;
      std::thread([c] { serve(c); }).detach();
    }
  }
  static void serve(int c) {
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static const std::string body = R"({"success":true,"metadata":{"remote":true}})";
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string buf;
    char chunk[65536];
    while (true) {
      auto header_end = buf.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::size_t length = 0;
        auto cl = buf.find("Content-Length:");
        if (cl == std::string::npos) cl = buf.find("content-length:");
        if (cl != std::string::npos && cl < header_end) length = std::stoul(buf.substr(cl + 15));
        if (buf.size() >= header_end + 4 + length) {
          buf.erase(0, header_end + 4 + length);
          if (write(c, answer.data(), answer.size()) < 0) break;
          continue;
        }
      }
      auto n = read(c, chunk, sizeof chunk);
      if (n <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(n));
    }
    close(c);
  }
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

struct outcome {
  double seconds = 0;
  std::uint64_t processed = 0;
  std::uint64_t failures = 0;
};

outcome run_chain(const fs::path& dir, int events, bool lua, bool remote, bool record, const std::string& remote_url) {
  auto st = open_store("sqlite:" + (dir / "events.db").string());
  if (!st) throw std::runtime_error(st.error().message);
  auto& store = **st;
  // Fill the log: orders with a few lines each, 100 per append, 1,000 aggregates.
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
    auto ok = store.append_group(std::move(group));
    if (!ok) throw std::runtime_error(ok.error().message);
  }
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
  log_tailer tailer(store, log_tailer::options{});
  event_bus bus(store, tailer, 1);
  plugin_processor::options po;
  po.start = subscription_start::beginning();
  const auto t0 = std::chrono::steady_clock::now();
  plugin_processor proc(store, tailer, bus, default_clock(), chain, "bench", po);
  // Lifecycle events (plugin.registered) are in the log too but are not processed.
  while (proc.processed() < static_cast<std::uint64_t>(events)) std::this_thread::sleep_for(2ms);
  outcome o;
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  o.processed = proc.processed();
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
  CLI11_PARSE(app, argc, argv);
  loopback_endpoint endpoint;
  struct scenario {
    const char* name;
    bool lua, remote, record;
    int events;
  };
  std::vector<scenario> scenarios = {{"native + Lua", true, false, true, events},
                                     {"native + Lua, no plugin.executed", true, false, false, events},
                                     {"native only", false, false, true, events}};
  if (with_remote) scenarios.push_back({"native + Lua + remote (loopback HTTP)", true, true, true, std::max(events / 5, 1000)});
  std::cout << "| chain | events | seconds | events/s | failures |\n|---|---:|---:|---:|---:|\n";
  for (const auto& s : scenarios) {
    const fs::path work = fs::path(dir) / ("pliers-plugin-bench-" + new_uuid_v4().substr(0, 8));
    fs::create_directories(work);
    auto o = run_chain(work, s.events, s.lua, s.remote, s.record, endpoint.url());
    fs::remove_all(work);
    std::cout << "| " << s.name << " | " << o.processed << " | " << o.seconds << " | "
              << static_cast<long long>(static_cast<double>(o.processed) / o.seconds) << " | " << o.failures << " |"
              << std::endl;
  }
  return 0;
}
