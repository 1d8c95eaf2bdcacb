// /v1/plugins: register (Lua or remote), list, get, enable, disable, unregister; and a dry
// run of the chain on an example event.
#include "process/plugin_chain.hpp"
#include "process/plugin_kinds.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

// Body: {"id", "name", "version"?, "priority"?, "kind": "lua"|"remote", "eventTypes",
// "options"?, "config"?, "definition"?: {...}} where the definition's members ("source",
// "memoryLimit", "instructionLimit" for Lua; "url", "headers" for remote) may also be given
// at the top level.
result<std::pair<std::shared_ptr<event_plugin>, std::pair<std::vector<std::string>, plugin_options>>> plugin_from_body(
    const json::value& body, std::chrono::milliseconds default_timeout) {
  const auto* o = body.if_object();
  if (!o) return error::invalid("body", "must be a plugin registration object");
  plugin_info info;
  json::object definition;
  if (const auto* d = o->if_contains("definition"); d && !d->is_null()) {
    if (!d->is_object()) return error::invalid("definition", "must be an object");
    definition = d->get_object();
  }
  std::string kind;
  std::vector<std::string> types;
  plugin_options opts;
  for (const auto& kv : *o) {
    const std::string key(kv.key());
    const auto& v = kv.value();
    if (key == "id" || key == "name" || key == "version" || key == "kind") {
      if (!v.is_string()) return error::invalid(key, "must be a string");
      std::string s(v.get_string());
      if (key == "id") info.id = std::move(s);
      else if (key == "name") info.name = std::move(s);
      else if (key == "version") info.version = std::move(s);
      else kind = std::move(s);
    } else if (key == "priority") {
      if (!v.is_int64()) return error::invalid("priority", "must be an integer");
      info.priority = v.get_int64();
    } else if (key == "eventTypes") {
      auto list = string_list(v, "eventTypes");
      if (!list) return std::move(list).error();
      types = std::move(*list);
    } else if (key == "options") {
      auto parsed = plugin_options_from_json(v, "options");
      if (!parsed) return std::move(parsed).error();
      opts = std::move(*parsed);
    } else if (key == "config") {
      if (!v.is_object()) return error::invalid("config", "must be an object");
      info.config = v.get_object();
    } else if (key == "source" || key == "memoryLimit" || key == "instructionLimit" || key == "url" || key == "headers") {
      definition[key] = v;
    } else if (key != "definition" && key != "enabled") {
      return error::invalid(key.substr(0, 100), "unknown member of a plugin registration");
    }
  }
  if (info.id.empty()) return error::invalid("id", "required");
  if (info.name.empty()) info.name = info.id;
  if (info.version.empty() || info.version.size() > 50) return error::invalid("version", "must be 1 to 50 characters");
  if (kind.empty()) return error::invalid("kind", "required: lua or remote");
  if (types.empty()) return error::invalid("eventTypes", "required: the event types or patterns the plugin runs on");
  auto plugin = make_plugin(kind, std::move(info), definition, opts.timeout.value_or(default_timeout));
  if (!plugin) return std::move(plugin).error();
  return std::make_pair(std::move(*plugin), std::make_pair(std::move(types), std::move(opts)));
}

}  // namespace

result<plugin_view> register_plugin_from_json(plugin_chain& chain, const json::value& body,
                                              std::chrono::milliseconds default_timeout) {
  auto parsed = plugin_from_body(body, default_timeout);
  if (!parsed) return std::move(parsed).error();
  auto view = chain.register_plugin(std::move(parsed->first), std::move(parsed->second.first),
                                    std::move(parsed->second.second));
  if (!view) return view;
  if (const auto* en = body.as_object().if_contains("enabled"); en && en->is_bool() && !en->get_bool())
    return chain.disable(view->info.id);
  return view;
}

asio::awaitable<reply> handle_plugins(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 plugins [id [enable|disable]]
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
  auto* chain = ctx.state.plugins;
  if (!chain) co_return problem_reply(error::make(errc::unavailable, "the plugin chain is disabled on this node (plugins.enabled)"));
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method == http::verb::get) {
      json::array out;
      for (const auto& v : chain->list()) out.push_back(to_json(v));
      co_return json_reply(http::status::ok, json::object{{"plugins", std::move(out)}});
    }
    if (method != http::verb::post) co_return method_not_allowed("GET, POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto timeout = ctx.state.config.plugin_timeout;
    auto view = co_await run_blocking(ctx.state.workers, [&] { return register_plugin_from_json(*chain, *body, timeout); });
    if (!view) co_return problem_reply(view.error());
    co_return json_reply(http::status::created, to_json(*view));
  }
  if (s.size() == 3 && s[2] == "dry-run") {
    // Runs the chain on an example event without storing anything: which plugins ran, in
    // which order, and what they answered.
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto e = event_from_json(*body);
    if (!e) co_return problem_reply(e.error());
    auto results = co_await run_blocking(ctx.state.workers, [&] { return chain->execute(*e).results; });
    json::array out;
    for (const auto& r : results) out.push_back(to_json(r));
    co_return json_reply(http::status::ok, json::object{{"results", std::move(out)}});
  }
  const std::string& id = s.size() >= 3 ? s[2] : std::string();
  if (s.size() == 3) {
    if (method == http::verb::get) {
      auto v = chain->get(id);
      if (!v) co_return problem_reply(v.error());
      co_return json_reply(http::status::ok, to_json(*v));
    }
    if (method != http::verb::delete_) co_return method_not_allowed("GET, DELETE");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return chain->unregister_plugin(id); });
    if (!r) co_return problem_reply(r.error());
    reply out;
    out.head.result(http::status::no_content);
    co_return out;
  }
  if (s.size() == 4 && (s[3] == "enable" || s[3] == "disable")) {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    const bool on = s[3] == "enable";
    auto v = co_await run_blocking(ctx.state.workers, [&] { return on ? chain->enable(id) : chain->disable(id); });
    if (!v) co_return problem_reply(v.error());
    co_return json_reply(http::status::ok, to_json(*v));
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
