#include "server/config.hpp"

#include <charconv>
#include <cstdlib>
#include <toml++/toml.h>

namespace pliers {

const std::vector<config_key>& config_keys() {
  static const std::vector<config_key> keys = {
      {"server.listen", "PLIERS_LISTEN", "HOST:PORT to listen on (port 0 = any free port)"},
      {"store.url", "PLIERS_STORE", "store URL: memory:, sqlite:PATH"},
      {"server.max_body_bytes", "PLIERS_MAX_BODY_BYTES", "largest request body accepted (413 beyond)"},
      {"server.max_json_depth", "PLIERS_MAX_JSON_DEPTH", "deepest JSON nesting accepted"},
      {"server.max_connections", "PLIERS_MAX_CONNECTIONS", "concurrent connections accepted"},
      {"server.io_threads", "PLIERS_IO_THREADS", "network threads"},
      {"server.worker_threads", "PLIERS_WORKER_THREADS", "threads for blocking store reads"},
      {"server.idle_timeout_seconds", "PLIERS_IDLE_TIMEOUT_SECONDS", "keep-alive idle timeout"},
      {"server.request_timeout_seconds", "PLIERS_REQUEST_TIMEOUT_SECONDS", "time to receive one request"},
      {"server.shutdown_grace_seconds", "PLIERS_SHUTDOWN_GRACE_SECONDS", "time in-flight requests get on SIGTERM"},
      {"store.max_pending_appends", "PLIERS_MAX_PENDING_APPENDS", "appends queued for group commit (503 beyond)"},
      {"store.read_connections", "PLIERS_READ_CONNECTIONS", "reader connections (sqlite) / pool size (postgres)"},
      {"store.partition_strategy", "PLIERS_PARTITION_STRATEGY", "postgres: monthly, weekly, daily or none (at creation)"},
      {"store.json_index", "PLIERS_JSON_INDEX", "postgres: gin, gin_path_ops or none (at creation)"},
      {"store.query_timeout_ms", "PLIERS_QUERY_TIMEOUT_MS", "postgres statement timeout"},
      {"store.connect_timeout_ms", "PLIERS_CONNECT_TIMEOUT_MS", "how long to retry connecting at start-up"},
      {"store.run_migrations", "PLIERS_RUN_MIGRATIONS", "apply schema migrations at start-up (true/false)"},
      {"stream.poll_interval_ms", "PLIERS_POLL_INTERVAL_MS", "how often the log tailer polls besides commit wake-ups"},
      {"log.level", "PLIERS_LOG_LEVEL", "trace, debug, info, warn, error"},
      {"plugins.enabled", "PLIERS_PLUGINS_ENABLED", "run the plugin chain on this node (true/false)"},
      {"plugins.default_timeout_ms", "PLIERS_PLUGINS_DEFAULT_TIMEOUT_MS", "timeout of a plugin without its own"},
      {"plugins.max_concurrent", "PLIERS_PLUGINS_MAX_CONCURRENT", "threads running native and async plugins"},
      {"plugins.max_hops", "PLIERS_PLUGINS_MAX_HOPS", "generated-event chain length before a loop is refused"},
      {"plugins.record_executions", "PLIERS_PLUGINS_RECORD_EXECUTIONS", "append plugin.executed for every successful run"},
      {"plugins.partitions", "PLIERS_PLUGINS_PARTITIONS", "partitions of the plugin consumer group (fixed at creation)"},
      {"plugins.lease_ms", "PLIERS_PLUGINS_LEASE_MS", "partition lease of a node: how long a crashed node's share waits"},
      {"plugins.file", "PLIERS_PLUGINS_FILE", "JSON file: an array of plugin registrations applied at start-up"},
      {"plugins.native", "PLIERS_PLUGINS_NATIVE", "comma-separated shared libraries of native plugins"},
      {"routes.enabled", "PLIERS_ROUTES_ENABLED", "run the event router on this node (true/false)"},
      {"routes.partitions", "PLIERS_ROUTES_PARTITIONS", "partitions of the routing consumer group (fixed at creation)"},
      {"routes.max_concurrent_deliveries", "PLIERS_ROUTES_MAX_CONCURRENT_DELIVERIES", "threads delivering to targets"},
      {"routes.default_timeout_ms", "PLIERS_ROUTES_DEFAULT_TIMEOUT_MS", "timeout of a target without its own"},
      {"routes.lease_ms", "PLIERS_ROUTES_LEASE_MS", "routing partition lease: how long a crashed node's share waits"},
      {"routes.record_deliveries", "PLIERS_ROUTES_RECORD_DELIVERIES", "append route.delivered for every successful delivery"},
      {"routes.allow_private_targets", "PLIERS_ROUTES_ALLOW_PRIVATE_TARGETS",
       "comma-separated hosts/addresses targets may reach although private or loopback"},
      {"retry.max_attempts", "PLIERS_RETRY_MAX_ATTEMPTS", "default RetryConfig: attempts in all, the first included"},
      {"retry.backoff_strategy", "PLIERS_RETRY_BACKOFF_STRATEGY", "default RetryConfig: fixed, linear or exponential"},
      {"retry.base_delay_ms", "PLIERS_RETRY_BASE_DELAY_MS", "default RetryConfig: baseDelay"},
      {"retry.max_delay_ms", "PLIERS_RETRY_MAX_DELAY_MS", "default RetryConfig: maxDelay"},
      {"retry.jitter", "PLIERS_RETRY_JITTER", "default RetryConfig: jitter (true/false)"},
      {"retry.max_age_ms", "PLIERS_RETRY_MAX_AGE_MS", "default RetryConfig: give up this long after the first failure"},
      {"retry.max_concurrent", "PLIERS_RETRY_MAX_CONCURRENT", "dead-letter entries retried at once (threads)"},
  };
  return keys;
}

namespace {

// "a, b,,c" -> {"a", "b", "c"}.
std::vector<std::string> comma_list(std::string_view v) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= v.size()) {
    auto comma = v.find(',', start);
    auto item = v.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}


template <class T>
result<void> parse_number(std::string_view key, std::string_view v, T& out, T min, T max) {
  T n{};
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || ptr != v.data() + v.size() || n < min || n > max)
    return error::invalid(std::string(key), "must be an integer from " + std::to_string(min) + " to " +
                                                std::to_string(max) + ", got '" + std::string(v) + "'");
  out = n;
  return {};
}

result<void> parse_seconds(std::string_view key, std::string_view v, std::chrono::seconds& out) {
  long long n = 0;
  if (auto r = parse_number<long long>(key, v, n, 1, 86400); !r) return r;
  out = std::chrono::seconds(n);
  return {};
}

}  // namespace

result<void> server_config::set(std::string_view key, std::string_view v) {
  if (key == "server.listen") {
    if (v.find(':') == std::string_view::npos) return error::invalid("server.listen", "must be HOST:PORT");
    listen = v;
  } else if (key == "store.url") {
    store = v;
  } else if (key == "server.max_body_bytes") {
    return parse_number<std::size_t>(key, v, max_body_bytes, 1024, std::size_t{1} << 30);
  } else if (key == "server.max_json_depth") {
    return parse_number<std::size_t>(key, v, max_json_depth, 2, 10000);
  } else if (key == "server.max_connections") {
    return parse_number<std::size_t>(key, v, max_connections, 1, 1000000);
  } else if (key == "server.io_threads") {
    return parse_number<unsigned>(key, v, io_threads, 1, 256);
  } else if (key == "server.worker_threads") {
    return parse_number<unsigned>(key, v, worker_threads, 1, 256);
  } else if (key == "server.idle_timeout_seconds") {
    return parse_seconds(key, v, idle_timeout);
  } else if (key == "server.request_timeout_seconds") {
    return parse_seconds(key, v, request_timeout);
  } else if (key == "server.shutdown_grace_seconds") {
    return parse_seconds(key, v, shutdown_grace);
  } else if (key == "store.max_pending_appends") {
    return parse_number<std::size_t>(key, v, max_pending_appends, 1, 10000000);
  } else if (key == "store.read_connections") {
    return parse_number<std::size_t>(key, v, read_connections, 1, 256);
  } else if (key == "store.partition_strategy") {
    if (v != "monthly" && v != "weekly" && v != "daily" && v != "none")
      return error::invalid(std::string(key), "must be monthly, weekly, daily or none");
    partition_strategy = v;
  } else if (key == "store.json_index") {
    if (v != "gin" && v != "gin_path_ops" && v != "none")
      return error::invalid(std::string(key), "must be gin, gin_path_ops or none");
    json_index = v;
  } else if (key == "store.query_timeout_ms" || key == "store.connect_timeout_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 1, 3600000); !r) return r;
    (key == "store.query_timeout_ms" ? query_timeout : connect_timeout) = std::chrono::milliseconds(ms);
  } else if (key == "stream.poll_interval_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 10, 3600000); !r) return r;
    tail_poll_interval = std::chrono::milliseconds(ms);
  } else if (key == "store.run_migrations") {
    if (v != "true" && v != "false") return error::invalid(std::string(key), "must be true or false");
    run_migrations = v == "true";
  } else if (key == "plugins.enabled" || key == "plugins.record_executions" || key == "retry.jitter") {
    if (v != "true" && v != "false") return error::invalid(std::string(key), "must be true or false");
    (key == "plugins.enabled" ? plugins_enabled
     : key == "retry.jitter"  ? default_retry.jitter
                              : plugin_record_executions) = v == "true";
  } else if (key == "plugins.default_timeout_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 1, 3600000); !r) return r;
    plugin_timeout = std::chrono::milliseconds(ms);
  } else if (key == "plugins.lease_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 500, 600000); !r) return r;
    plugin_lease = std::chrono::milliseconds(ms);
  } else if (key == "plugins.max_concurrent") {
    return parse_number<std::size_t>(key, v, plugin_workers, 1, 256);
  } else if (key == "plugins.max_hops") {
    return parse_number<int>(key, v, plugin_max_hops, 1, 100);
  } else if (key == "plugins.partitions") {
    return parse_number<int>(key, v, plugin_partitions, 1, 256);
  } else if (key == "plugins.file") {
    plugin_file = v;
  } else if (key == "plugins.native") {
    native_plugins = comma_list(v);
  } else if (key == "routes.enabled" || key == "routes.record_deliveries") {
    if (v != "true" && v != "false") return error::invalid(std::string(key), "must be true or false");
    (key == "routes.enabled" ? routes_enabled : route_record_deliveries) = v == "true";
  } else if (key == "routes.partitions") {
    return parse_number<int>(key, v, route_partitions, 1, 256);
  } else if (key == "routes.max_concurrent_deliveries") {
    return parse_number<std::size_t>(key, v, route_max_concurrent, 1, 1024);
  } else if (key == "routes.default_timeout_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 1, 120000); !r) return r;
    route_timeout = std::chrono::milliseconds(ms);
  } else if (key == "routes.lease_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, 500, 600000); !r) return r;
    route_lease = std::chrono::milliseconds(ms);
  } else if (key == "retry.max_concurrent") {
    return parse_number<std::size_t>(key, v, retry_max_concurrent, 1, 256);
  } else if (key == "routes.allow_private_targets") {
    route_allow_private = comma_list(v);
  } else if (key == "retry.max_attempts") {
    return parse_number<std::int64_t>(key, v, default_retry.max_attempts, 1, 1000);
  } else if (key == "retry.backoff_strategy") {
    if (v == "fixed") default_retry.strategy = backoff_strategy::fixed;
    else if (v == "linear") default_retry.strategy = backoff_strategy::linear;
    else if (v == "exponential") default_retry.strategy = backoff_strategy::exponential;
    else return error::invalid(std::string(key), "must be fixed, linear or exponential");
  } else if (key == "retry.base_delay_ms" || key == "retry.max_delay_ms" || key == "retry.max_age_ms") {
    long long ms = 0;
    if (auto r = parse_number<long long>(key, v, ms, key == "retry.max_age_ms" ? 1 : 0, 7LL * 24 * 3600 * 1000); !r) return r;
    if (key == "retry.base_delay_ms") default_retry.base_delay = std::chrono::milliseconds(ms);
    else if (key == "retry.max_delay_ms") default_retry.max_delay = std::chrono::milliseconds(ms);
    else default_retry.max_age = std::chrono::milliseconds(ms);
  } else if (key == "log.level") {
    if (v != "trace" && v != "debug" && v != "info" && v != "warn" && v != "error" && v != "off")
      return error::invalid("log.level", "must be trace, debug, info, warn, error or off");
    log_level = v;
  } else {
    return error::invalid(std::string(key), "unknown setting");
  }
  return {};
}

store_options server_config::to_store_options() const {
  store_options o;
  o.max_pending_appends = max_pending_appends;
  o.read_connections = read_connections;
  o.partition_strategy = partition_strategy;
  o.json_index = json_index;
  o.query_timeout = query_timeout;
  o.connect_timeout = connect_timeout;
  o.run_migrations = run_migrations;
  return o;
}

result<void> apply_toml_file(server_config& config, const std::string& path) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return error::invalid("config", "cannot read config file '" + path + "': " + std::string(e.description()));
  }
  result<void> status;
  table.for_each([&](const toml::key& section, const toml::node& node) {
    if (!status) return;
    const auto* t = node.as_table();
    if (!t) {
      status = error::invalid(std::string(section.str()), "expected a [section] table");
      return;
    }
    t->for_each([&](const toml::key& name, const toml::node& value) {
      if (!status) return;
      const std::string key = std::string(section.str()) + "." + std::string(name.str());
      std::string text;
      if (value.is_boolean()) text = value.as_boolean()->get() ? "true" : "false";
      else if (auto s = value.value<std::string>()) text = *s;
      else if (value.is_integer()) text = std::to_string(value.as_integer()->get());
      else {
        status = error::invalid(key, "must be a string, an integer or a boolean");
        return;
      }
      status = config.set(key, text);
    });
  });
  return status;
}

result<void> apply_environment(server_config& config) {
  for (const auto& k : config_keys()) {
    if (const char* v = std::getenv(k.env_var)) {
      if (auto r = config.set(k.toml_key, v); !r) {
        auto e = r.error();
        e.field = k.env_var;
        return e;
      }
    }
  }
  return {};
}

}  // namespace pliers
