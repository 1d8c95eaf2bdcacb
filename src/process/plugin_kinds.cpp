#include "process/plugin_kinds.hpp"

#include <dlfcn.h>

#include <mutex>

#include <boost/json.hpp>

#include "core/event_codec.hpp"
#include "pliers/plugin_abi.h"
#include "process/http_post.hpp"
#include "process/lua_sandbox.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

constexpr std::size_t max_source_bytes = 1 << 20;

json::object context_json(const plugin_context& ctx) {
  json::array prev;
  for (const auto& r : ctx.previous_results) prev.push_back(to_json(r));
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(ctx.deadline - std::chrono::steady_clock::now());
  return {{"previousResults", std::move(prev)},
          {"correlationId", ctx.correlation_id},
          {"traceId", ctx.trace_id},
          {"attempt", ctx.attempt},
          {"config", ctx.config},
          {"deadlineMs", std::max<std::int64_t>(left.count(), 0)}};
}

result<std::int64_t> optional_positive(const json::object& d, const char* name, std::int64_t fallback, std::int64_t max) {
  const auto* v = d.if_contains(name);
  if (!v || v->is_null()) return fallback;
  if (!v->is_int64() || v->get_int64() <= 0 || v->get_int64() > max)
    return error::invalid(std::string("definition.") + name, "must be a positive integer, at most " + std::to_string(max));
  return v->get_int64();
}

// A PluginResult answered as JSON, or the failure that the answer is malformed.
plugin_result decode_answer(const json::value& v, const std::string& plugin_id) {
  auto r = plugin_result_from_json(v, plugin_id, "result");
  if (!r) return failed_result(plugin_id, "invalid_result", r.error().field + ": " + r.error().message);
  return std::move(*r);
}

class lua_plugin final : public event_plugin {
 public:
  lua_plugin(plugin_info info, json::object definition, std::string source, lua_limits limits)
      : info_(std::move(info)), definition_(std::move(definition)), source_(std::move(source)), limits_(limits) {}

  const plugin_info& info() const override { return info_; }
  std::string kind() const override { return "lua"; }
  json::object definition() const override { return definition_; }

  // Compiles a sandbox now, so that a script that does not compile or lacks process() is
  // refused at registration.
  result<void> check_compiles();

  plugin_result process(const event& e, const plugin_context& ctx) override;
  void on_enable() override { call_hook("on_enable"); }
  void on_disable() override { call_hook("on_disable"); }

  struct slot {
    std::unique_ptr<lua_sandbox> sandbox;
    json::array emitted;
  };

 private:
  result<std::unique_ptr<slot>> acquire();
  void release(std::unique_ptr<slot> s);
  void call_hook(const char* name);

  plugin_info info_;
  json::object definition_;
  std::string source_;
  lua_limits limits_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<slot>> idle_;  // GUARDED_BY(mutex_)
};

result<std::unique_ptr<lua_plugin::slot>> lua_plugin::acquire() {
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      auto s = std::move(idle_.back());
      idle_.pop_back();
      return s;
    }
  }
  auto sb = lua_sandbox::create(source_, "plugin:" + info_.id, limits_);
  if (!sb) return std::move(sb).error();
  if (!(*sb)->has_function("process"))
    return error::invalid("definition.source", "the script must define a function process(event, context)");
  auto s = std::make_unique<slot>();
  s->sandbox = std::move(*sb);
  auto* raw = s.get();
  s->sandbox->set_function("emit", [raw](std::span<const json::value> args) -> result<json::value> {
    if (args.size() != 1 || !args[0].is_object())
      return error::invalid("emit", "pliers.emit takes one event table {aggregateId, type, aggregateType, payload}");
    if (raw->emitted.size() >= 1000) return error::invalid("emit", "at most 1000 generated events per call");
    raw->emitted.push_back(args[0]);
    return json::value(nullptr);
  });
  return s;
}

void lua_plugin::release(std::unique_ptr<slot> s) {
  s->emitted.clear();
  std::lock_guard lock(mutex_);
  if (idle_.size() < 16) idle_.push_back(std::move(s));
}

void lua_plugin::call_hook(const char* name) {
  auto s = acquire();
  if (!s) return;
  if ((*s)->sandbox->has_function(name)) (void)(*s)->sandbox->call(name, {});
  release(std::move(*s));
}

plugin_result lua_plugin::process(const event& e, const plugin_context& ctx) {
  auto s = acquire();
  if (!s) return failed_result(info_.id, "lua_error", s.error().message);
  const json::value context = context_json(ctx);
  auto out = (*s)->sandbox->call_with_event("process", e, {&context, 1});
  plugin_result r;
  if (!out) {
    r = failed_result(info_.id, lua_error_type(out.error()), out.error().message);
  } else {
    r = decode_answer(*out, info_.id);
    if (r.success && !(*s)->emitted.empty()) {
      auto extra = decode_answer(json::object{{"generatedEvents", std::move((*s)->emitted)}}, info_.id);
      if (!extra.success) r = std::move(extra);
      else
        for (auto& g : extra.generated_events) r.generated_events.push_back(std::move(g));
    }
  }
  release(std::move(*s));
  return r;
}

class remote_plugin final : public event_plugin {
 public:
  remote_plugin(plugin_info info, json::object definition, std::string url, std::vector<std::string> headers,
                std::chrono::milliseconds timeout)
      : info_(std::move(info)), definition_(std::move(definition)), url_(std::move(url)), headers_(std::move(headers)),
        timeout_(timeout) {}
  const plugin_info& info() const override { return info_; }
  std::string kind() const override { return "remote"; }
  json::object definition() const override { return definition_; }

  plugin_result process(const event& e, const plugin_context& ctx) override {
    http_post_options o;
    o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(ctx.deadline - std::chrono::steady_clock::now());
    if (o.timeout.count() <= 0) return failed_result(info_.id, "timeout", "no time left before the deadline");
    o.headers = headers_;
    o.headers.push_back("X-Pliers-Plugin: " + info_.id);
    o.headers.push_back("X-Pliers-Event-Id: " + e.id);
    auto res = http_post(url_, plugin_request_json(e, ctx), o);
    if (!res) {
      const auto& err = res.error();
      return failed_result(info_.id, err.code == errc::timeout ? "timeout" : "connection_error", err.message);
    }
    if (res->status < 200 || res->status > 299)
      return failed_result(info_.id, "http_" + std::to_string(res->status),
                           "the endpoint answered " + std::to_string(res->status) + ": " + res->body.substr(0, 200));
    auto parsed = parse_json(res->body);
    if (!parsed) return failed_result(info_.id, "invalid_result", "the answer is not JSON: " + parsed.error().message);
    return decode_answer(*parsed, info_.id);
  }

 private:
  plugin_info info_;
  json::object definition_;
  std::string url_;
  std::vector<std::string> headers_;
  std::chrono::milliseconds timeout_;
};

void respond_into(void* out, const char* data, size_t length) {
  static_cast<std::string*>(out)->assign(data, length);
}

class native_library_plugin final : public event_plugin {
 public:
  native_library_plugin(void* library, const pliers_plugin_v1* abi, void* instance, plugin_info info)
      : library_(library), abi_(abi), instance_(instance), info_(std::move(info)) {}
  ~native_library_plugin() override {
    if (abi_->destroy) abi_->destroy(instance_);
    // The library stays loaded: a call abandoned at its deadline may still run its code.
    (void)library_;
  }
  const plugin_info& info() const override { return info_; }
  std::string kind() const override { return "native"; }
  plugin_result process(const event& e, const plugin_context& ctx) override {
    std::string ev;
    write_event_json(ev, e);
    const std::string cx = json::serialize(context_json(ctx));
    std::string answer;
    const int rc = abi_->process(instance_, ev.data(), ev.size(), cx.data(), cx.size(), respond_into, &answer);
    if (answer.empty())
      return failed_result(info_.id, "plugin_error", "the plugin returned " + std::to_string(rc) + " without a result");
    auto parsed = parse_json(answer);
    if (!parsed) return failed_result(info_.id, "invalid_result", "the result is not JSON: " + parsed.error().message);
    return decode_answer(*parsed, info_.id);
  }
  void on_enable() override {
    if (abi_->on_enable) abi_->on_enable(instance_);
  }
  void on_disable() override {
    if (abi_->on_disable) abi_->on_disable(instance_);
  }

 private:
  void* library_;
  const pliers_plugin_v1* abi_;
  void* instance_;
  plugin_info info_;
};

}  // namespace

std::string plugin_request_json(const event& e, const plugin_context& ctx) {
  std::string out = "{\"event\":";
  write_event_json(out, e);
  out += ",\"context\":";
  out += json::serialize(context_json(ctx));
  out += '}';
  return out;
}

result<std::shared_ptr<event_plugin>> make_lua_plugin(plugin_info info, const json::object& definition,
                                                      std::chrono::milliseconds timeout) {
  for (const auto& kv : definition)
    if (kv.key() != "source" && kv.key() != "memoryLimit" && kv.key() != "instructionLimit")
      return error::invalid("definition." + std::string(kv.key()), "unknown member of a Lua plugin definition");
  const auto* src = definition.if_contains("source");
  if (!src || !src->is_string() || src->get_string().empty())
    return error::invalid("definition.source", "required: the Lua source of the plugin");
  if (src->get_string().size() > max_source_bytes)
    return error::invalid("definition.source", "larger than " + std::to_string(max_source_bytes) + " bytes");
  lua_limits limits;
  limits.timeout = timeout;
  auto mem = optional_positive(definition, "memoryLimit", static_cast<std::int64_t>(limits.memory_bytes), 1LL << 30);
  if (!mem) return std::move(mem).error();
  limits.memory_bytes = static_cast<std::size_t>(*mem);
  auto ins = optional_positive(definition, "instructionLimit", static_cast<std::int64_t>(limits.instructions), 1LL << 40);
  if (!ins) return std::move(ins).error();
  limits.instructions = static_cast<std::uint64_t>(*ins);
  auto p = std::make_shared<lua_plugin>(std::move(info), definition, std::string(src->get_string()), limits);
  // Compile now, so a script that does not compile is refused at registration.
  if (auto ok = p->check_compiles(); !ok) return std::move(ok).error();
  return std::shared_ptr<event_plugin>(std::move(p));
}

result<void> lua_plugin::check_compiles() {
  auto s = acquire();
  if (!s) {
    auto e = std::move(s).error();
    if (e.field.empty() || e.field == "source") e.field = "definition.source";
    return e;
  }
  release(std::move(*s));
  return {};
}

result<std::shared_ptr<event_plugin>> make_remote_plugin(plugin_info info, const json::object& definition,
                                                         std::chrono::milliseconds timeout) {
  for (const auto& kv : definition)
    if (kv.key() != "url" && kv.key() != "headers")
      return error::invalid("definition." + std::string(kv.key()), "unknown member of a remote plugin definition");
  const auto* url = definition.if_contains("url");
  if (!url || !url->is_string()) return error::invalid("definition.url", "required: the http(s) URL of the plugin");
  const std::string u(url->get_string());
  if (u.rfind("http://", 0) != 0 && u.rfind("https://", 0) != 0)
    return error::invalid("definition.url", "must be an http:// or https:// URL");
  if (u.size() > 2048) return error::invalid("definition.url", "longer than 2048 characters");
  std::vector<std::string> headers;
  if (const auto* h = definition.if_contains("headers"); h && !h->is_null()) {
    if (!h->is_object()) return error::invalid("definition.headers", "must be an object of header names to values");
    for (const auto& kv : h->get_object()) {
      const std::string name(kv.key());
      if (!kv.value().is_string()) return error::invalid("definition.headers." + name, "must be a string");
      const std::string value(kv.value().get_string());
      auto bad = [](const std::string& s) { return s.find_first_of("\r\n") != std::string::npos; };
      if (name.empty() || bad(name) || bad(value) || name.find(':') != std::string::npos)
        return error::invalid("definition.headers." + name, "not a valid header");
      headers.push_back(name + ": " + value);
    }
  }
  return std::shared_ptr<event_plugin>(
      std::make_shared<remote_plugin>(std::move(info), definition, u, std::move(headers), timeout));
}

result<std::shared_ptr<event_plugin>> load_native_plugin(const std::string& path, const json::object& config,
                                                         std::vector<std::string>* event_types) {
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) return error::invalid("path", std::string("cannot load: ") + dlerror());
  using entry_fn = const pliers_plugin_v1* (*)();
  auto entry = reinterpret_cast<entry_fn>(dlsym(lib, "pliers_plugin_entry_v1"));
  if (!entry) {
    dlclose(lib);
    return error::invalid("path", path + " does not export pliers_plugin_entry_v1");
  }
  const pliers_plugin_v1* abi = entry();
  if (!abi || abi->abi_version != PLIERS_PLUGIN_ABI_VERSION || !abi->id || !abi->process || !abi->create) {
    dlclose(lib);
    return error::invalid("path", path + ": plugin ABI version " + std::to_string(abi ? abi->abi_version : 0) +
                                      " is not " + std::to_string(PLIERS_PLUGIN_ABI_VERSION) + ", or the descriptor is incomplete");
  }
  const std::string cfg = json::serialize(config);
  void* instance = abi->create(cfg.data(), cfg.size());
  if (!instance) {
    dlclose(lib);
    return error::invalid("config", std::string("plugin ") + abi->id + " refused its config");
  }
  if (event_types) {
    event_types->clear();
    const std::string list = abi->event_types ? abi->event_types : "";
    std::size_t start = 0;
    while (start < list.size()) {
      auto comma = list.find(',', start);
      auto item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!item.empty()) event_types->push_back(item);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (event_types->empty()) event_types->push_back("**");
  }
  plugin_info info;
  info.id = abi->id;
  info.name = abi->name ? abi->name : abi->id;
  info.version = abi->version ? abi->version : "1.0.0";
  info.priority = abi->priority;
  info.config = config;
  return std::shared_ptr<event_plugin>(std::make_shared<native_library_plugin>(lib, abi, instance, std::move(info)));
}

result<std::shared_ptr<event_plugin>> make_plugin(const std::string& kind, plugin_info info, const json::object& definition,
                                                  std::chrono::milliseconds timeout) {
  if (kind == "lua") return make_lua_plugin(std::move(info), definition, timeout);
  if (kind == "remote") return make_remote_plugin(std::move(info), definition, timeout);
  return error::invalid("kind", "must be lua or remote (native plugins are registered by the embedding process or "
                                "loaded from the config), not '" + kind.substr(0, 40) + "'");
}

}  // namespace pliers
