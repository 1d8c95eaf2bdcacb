// The spec's Plugin Hook System types: EventPlugin, PluginOptions, PluginResult and
// PluginContext, for plugins of every kind (native C++, Lua, remote HTTP). A plugin sees
// one triggering event and the results of the plugins that ran before it in the chain, and
// answers a result; the events it generates are appended by the chain only when it
// succeeds (process/plugin_chain.hpp).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

#include "core/event.hpp"
#include "core/result.hpp"
#include "process/retry_policy.hpp"
#include "store/event_store.hpp"

namespace pliers {

// A generated event (spec PluginResult.generatedEvents): where it goes and what it is. The
// chain sets its id (derived from the trigger, so reprocessing stores it once), its
// causationId (the trigger) and correlationId (the trigger's).
struct generated_event {
  std::string aggregate_id;
  new_event event;
};

struct plugin_result {
  std::string plugin_id;
  bool success = false;
  std::optional<std::string> error;
  std::string error_type;                 // a processing_error type when !success
  boost::json::object metadata;
  std::vector<generated_event> generated_events;
  std::int64_t execution_time_ms = 0;
  bool async = false;                     // ran off the chain
};

struct plugin_context {
  const event& trigger;
  std::span<const plugin_result> previous_results;
  std::string correlation_id;
  std::string trace_id;
  std::int64_t attempt = 1;               // 2+ when the retry engine runs it again
  std::chrono::steady_clock::time_point deadline;
  const boost::json::object& config;
};

// Static facts about a plugin (spec EventPlugin's id, name, version, priority, config).
struct plugin_info {
  std::string id;
  std::string name;
  std::string version = "1.0.0";
  std::int64_t priority = 0;              // higher runs first
  boost::json::object config;
};

// A plugin of any kind. process may be called from several threads at once; a kind that
// is not thread-safe (Lua) serializes or pools internally. Throwing is a failure of type
// "exception"; returning is the plugin's own verdict.
class event_plugin {
 public:
  virtual ~event_plugin() = default;
  virtual const plugin_info& info() const = 0;
  virtual std::string kind() const = 0;   // native | lua | remote
  virtual plugin_result process(const event& e, const plugin_context& ctx) = 0;
  virtual void on_enable() {}
  virtual void on_disable() {}
  // What recreates the plugin on another node or after a restart (lua: source; remote:
  // url), stored in the plugin.registered event. Native plugins return an empty object.
  virtual boost::json::object definition() const { return {}; }
};

// Spec PluginOptions plus what makes a plugin reproducible.
struct plugin_options {
  std::optional<std::int64_t> priority;   // overrides plugin_info::priority
  bool async = false;
  std::optional<retry_policy> retry;      // absent: the engine's default policy
  std::optional<std::chrono::milliseconds> timeout;  // absent: the engine's default
};

// The options as JSON (spec names) and back; errors name the member under `field`.
result<plugin_options> plugin_options_from_json(const boost::json::value& v, const std::string& field);
boost::json::object to_json(const plugin_options& o);
boost::json::object to_json(const plugin_result& r);
// Reads a PluginResult answered by a Lua or remote plugin: {"success", "error"?,
// "errorType"?, "metadata"?, "generatedEvents"?: [{"aggregateId", "type", "aggregateType",
// "payload", "metadata"?, "version"?}]}. Errors name the member under `field`.
result<plugin_result> plugin_result_from_json(const boost::json::value& v, const std::string& plugin_id,
                                              const std::string& field);

// A plugin result for a failure.
plugin_result failed_result(std::string plugin_id, std::string type, std::string message);

}  // namespace pliers
