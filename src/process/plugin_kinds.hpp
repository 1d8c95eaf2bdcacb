// The plugin kinds besides in-process C++ classes:
// - lua: a sandboxed Lua 5.4 script defining `process(event, context)` (and optionally
//   `on_enable()`, `on_disable()`). It answers a PluginResult table, or true/nil (success),
//   or false (failure "rejected"); `pliers.emit(event)` adds a generated event. One sandbox
//   per concurrent caller, pooled. Definition: {"source", "memoryLimit"?, "instructionLimit"?}.
// - remote: an HTTP endpoint that receives {"event", "context"} as a POST and answers a
//   PluginResult with 2xx; other statuses are failures of type "http_<status>" (retried by
//   policy), no answer within the timeout is "timeout". Definition: {"url", "headers"?}.
// - a native plugin from a shared library with the C ABI of include/pliers/plugin_abi.h.
#pragma once

#include <memory>
#include <string>

#include "process/plugin.hpp"

namespace pliers {

result<std::shared_ptr<event_plugin>> make_lua_plugin(plugin_info info, const boost::json::object& definition,
                                                      std::chrono::milliseconds timeout);
result<std::shared_ptr<event_plugin>> make_remote_plugin(plugin_info info, const boost::json::object& definition,
                                                         std::chrono::milliseconds timeout);
// Loads `path` (dlopen) and creates the plugin with `config`; the library stays loaded.
// `event_types` receives the patterns the library declares (["**"] when it declares none).
result<std::shared_ptr<event_plugin>> load_native_plugin(const std::string& path, const boost::json::object& config,
                                                         std::vector<std::string>* event_types = nullptr);

// The factory plugin_chain uses to rebuild plugins from their definitions.
result<std::shared_ptr<event_plugin>> make_plugin(const std::string& kind, plugin_info info,
                                                  const boost::json::object& definition, std::chrono::milliseconds timeout);

// The {"event", "context"} document a remote or native plugin receives.
std::string plugin_request_json(const event& e, const plugin_context& ctx);

}  // namespace pliers
