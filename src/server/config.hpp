// Server configuration: defaults, overridden by a TOML file, overridden by PLIERS_*
// environment variables, overridden by command-line flags (applied by the CLI). One table
// (config.cpp) names every setting with its TOML key and environment variable.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "core/result.hpp"
#include "process/retry_policy.hpp"
#include "store/event_store.hpp"

namespace pliers {

struct server_config {
  std::string listen = "127.0.0.1:8080";
  std::string store = "sqlite:./data/events.db";
  std::size_t max_body_bytes = 4 * 1024 * 1024;
  std::size_t max_json_depth = 64;
  std::size_t max_connections = 10000;
  unsigned io_threads = 2;
  unsigned worker_threads = 4;
  std::size_t max_pending_appends = 20000;
  std::size_t read_connections = 4;
  std::string partition_strategy = "monthly";  // postgres: monthly | weekly | daily | none
  std::string json_index = "gin_path_ops";     // postgres: gin | gin_path_ops | none
  std::chrono::milliseconds query_timeout{30000};
  std::chrono::milliseconds connect_timeout{30000};
  bool run_migrations = true;
  std::chrono::seconds idle_timeout{60};
  std::chrono::seconds request_timeout{30};
  std::chrono::seconds shutdown_grace{10};
  std::chrono::milliseconds tail_poll_interval{1000};  // safety-net poll of the log tailer
  std::string log_level = "info";
  std::string ready_file;  // when set, the bound address is written here once listening

  // Processing (issue 5): the plugin chain and the retry engine.
  bool plugins_enabled = true;                      // run the plugin chain on this node
  std::chrono::milliseconds plugin_timeout{5000};   // default per-plugin timeout
  std::size_t plugin_workers = 4;                   // threads for native and async plugins
  int plugin_max_hops = 8;
  bool plugin_record_executions = true;
  int plugin_partitions = 8;
  std::chrono::milliseconds plugin_lease{10000};    // a dead node's partitions wait this long
  std::string plugin_file;                          // JSON array of plugin registrations
  std::vector<std::string> native_plugins;          // shared libraries (include/pliers/plugin_abi.h)
  retry_policy default_retry;
  std::size_t retry_max_concurrent = 8;             // dead-letter entries attempted at once

  // Routing (issue 6): rules and targets (docs/routing.md).
  bool routes_enabled = true;                        // run the router on this node
  int route_partitions = 8;
  std::size_t route_max_concurrent = 32;             // delivery threads
  std::chrono::milliseconds route_lease{10000};      // routing partitions of a dead node wait this long
  std::chrono::milliseconds route_timeout{5000};     // default target timeout
  bool route_record_deliveries = false;              // route.delivered per success
  std::vector<std::string> route_allow_private;      // hosts/addresses exempt from the private-address check

  // Applies one setting by its TOML key ("server.listen"); used by all three sources.
  result<void> set(std::string_view key, std::string_view value);
  // The store options these settings describe.
  store_options to_store_options() const;
};

// The TOML keys and environment variables, for --help and docs.
struct config_key {
  const char* toml_key;
  const char* env_var;
  const char* description;
};
const std::vector<config_key>& config_keys();

result<void> apply_toml_file(server_config& config, const std::string& path);
result<void> apply_environment(server_config& config);

}  // namespace pliers
