#include "process/event_router.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <unordered_map>

#include "core/event_codec.hpp"
#include "core/event_filter.hpp"
#include "core/uuid.hpp"
#include "process/lua_sandbox.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

constexpr const char* lifecycle_type = "route";
constexpr std::size_t max_conditions = 64, max_targets = 16;

struct compiled_condition {
  std::string type, op, field;
  std::optional<condition> leaf;  // every type but custom
  std::string lua;                // custom
  std::uint64_t uid = 0;          // custom: the key of its compiled function in each thread's sandbox
};

std::atomic<std::uint64_t> next_condition_uid{1};

std::int64_t ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
}

result<void> check_id(std::string_view id, const std::string& field) {
  if (id.empty() || id.size() > 100) return error::invalid(field, "must be 1 to 100 characters");
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return error::invalid(field, "may contain only letters, digits, '.', '_' and '-'");
  return {};
}

lua_limits condition_limits() {
  lua_limits l;
  l.memory_bytes = 8 << 20;
  l.instructions = 1'000'000;
  l.timeout = std::chrono::milliseconds(100);
  return l;
}

// One sandbox per thread for custom conditions, with the expressions it has compiled. A
// thread that has compiled many (rules come and go) starts afresh.
struct condition_sandbox {
  std::unique_ptr<lua_sandbox> sandbox;
  std::unordered_map<std::uint64_t, lua_sandbox::function_ref> functions;
};

result<bool> run_custom(const compiled_condition& c, const json::value& event_json) {
  thread_local condition_sandbox tl;
  if (!tl.sandbox || tl.functions.size() > 10000) {
    tl.functions.clear();
    auto sb = lua_sandbox::create("", "conditions", condition_limits());
    if (!sb) return std::move(sb).error();
    tl.sandbox = std::move(*sb);
  }
  auto it = tl.functions.find(c.uid);
  if (it == tl.functions.end()) {
    auto fn = tl.sandbox->compile_expression(c.lua, {"event"}, "customFunction");
    if (!fn) return std::move(fn).error();
    it = tl.functions.emplace(c.uid, *fn).first;
  }
  const json::value args[] = {event_json};
  return tl.sandbox->test(it->second, args);
}

// Secrets are stored in the rule but never shown.
void redact(json::object& config) {
  for (auto& kv : config) {
    std::string key(kv.key());
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (key == "secret" || key == "password" || key == "token" || key == "authorization") kv.value() = "***";
    if (key == "headers" && kv.value().is_object()) redact(kv.value().get_object());
  }
}

}  // namespace

struct routing_rule {
  std::string id, name, description;
  bool enabled = true;
  std::int64_t priority = 0;
  std::uint64_t order = 0;
  std::vector<compiled_condition> conditions;
  struct target_slot {
    std::string type;
    std::shared_ptr<route_target> target;
    retry_policy policy;
    bool enabled = true;
    // While the peer is down (timeouts, refused connections): deliveries are deferred.
    std::atomic<std::int64_t> down_until_us{0}, down_ms{0};
  };
  std::vector<std::unique_ptr<target_slot>> targets;
  std::optional<std::int64_t> rate_max, rate_window_ms;
  std::mutex rate_mutex;
  std::int64_t tat_us = 0;  // GUARDED_BY(rate_mutex): GCRA theoretical arrival time
  std::vector<std::string> type_keys;  // empty: tested on every event (unless field-indexed)
  // Else, a string equality (equals / in) on aggregate_type, payload or metadata indexes it:
  // `index_field` ("aggregateType", "payload.<path>", "metadata.<path>") and its values.
  std::string index_field;
  std::vector<std::string> index_values;
  json::object source;                 // as stored (secrets included)
};

struct event_router::rule_set {
  std::unordered_map<std::string, std::vector<std::shared_ptr<routing_rule>>> by_type;
  // Rules indexed by a string equality on one field: the event's value there picks them.
  struct field_index {
    std::string field;
    std::optional<json_path> path;  // payload./metadata. fields
    bool in_metadata = false;
    std::unordered_map<std::string, std::vector<std::shared_ptr<routing_rule>>> by_value;
  };
  std::vector<field_index> by_field;
  std::vector<std::shared_ptr<routing_rule>> unindexed;
  std::vector<std::shared_ptr<routing_rule>> all;
};

// Threads delivering; a batch waits for its own jobs.
class event_router::delivery_pool {
 public:
  explicit delivery_pool(std::size_t n) {
    for (std::size_t i = 0; i < std::max<std::size_t>(n, 1); ++i) threads_.emplace_back([this] { work(); });
  }
  ~delivery_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs every task and returns when all have.
  void run_all(std::vector<std::function<void()>>& tasks) {
    if (tasks.empty()) return;
    if (tasks.size() == 1) {
      tasks[0]();
      return;
    }
    struct latch {
      std::mutex m;
      std::condition_variable cv;
      std::size_t left;
    } l{{}, {}, tasks.size()};
    {
      std::lock_guard lock(mutex_);
      for (auto& t : tasks)
        queue_.push_back([&l, &t] {
          t();
          std::lock_guard lk(l.m);
          if (--l.left == 0) l.cv.notify_all();
        });
    }
    cv_.notify_all();
    std::unique_lock lk(l.m);
    l.cv.wait(lk, [&] { return l.left == 0; });
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    while (true) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      auto fn = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mutex_)
  bool stopping_ = false;                    // GUARDED_BY(mutex_)
  std::vector<std::thread> threads_;
};

json::object to_json(const route_result& r) {
  json::object o{{"ruleId", r.rule_id},
                 {"targetIndex", r.target_index},
                 {"targetType", r.target_type},
                 {"success", r.success},
                 {"deliveryTime", r.delivery_time_ms}};
  if (r.error) o["error"] = *r.error;
  if (!r.error_type.empty()) o["errorType"] = r.error_type;
  return o;
}

event_router::event_router(event_store& store, const clock& clk, retry_engine& retries, route_target_factory make,
                           options opts)
    : store_(store), clock_(clk), retries_(retries), make_(std::move(make)), opts_(opts), log_(store, lifecycle_type),
      pool_(std::make_unique<delivery_pool>(opts.max_concurrent_deliveries)),
      set_(std::make_shared<rule_set>()) {
  retries_.register_consumer("route", [this](const dead_letter& d, std::int64_t attempt) { return retry(d, attempt); });
}

event_router::~event_router() = default;

result<std::shared_ptr<routing_rule>> event_router::compile(const json::value& v, std::optional<std::string_view> id) const {
  const auto* o = v.if_object();
  if (!o) return error::invalid("body", "must be a RoutingRule object");
  auto r = std::make_shared<routing_rule>();
  json::object src;
  for (const auto& kv : *o) {
    const std::string key(kv.key());
    if (key != "id" && key != "name" && key != "description" && key != "conditions" && key != "targets" &&
        key != "enabled" && key != "priority" && key != "rateLimit")
      return error::invalid(key.substr(0, 100), "unknown member of a RoutingRule");
  }
  if (const auto* idv = o->if_contains("id")) {
    if (!idv->is_string()) return error::invalid("id", "must be a string");
    r->id = std::string(idv->get_string());
    if (id && *id != r->id) return error::invalid("id", "differs from the id in the path");
  } else if (id) {
    r->id = std::string(*id);
  } else {
    return error::invalid("id", "required");
  }
  if (auto ok = check_id(r->id, "id"); !ok) return std::move(ok).error();
  src["id"] = r->id;
  if (const auto* n = o->if_contains("name"); n && !n->is_null()) {
    if (!n->is_string() || n->get_string().empty() || n->get_string().size() > 200)
      return error::invalid("name", "must be a string of 1 to 200 characters");
    r->name = std::string(n->get_string());
  } else {
    r->name = r->id;
  }
  src["name"] = r->name;
  if (const auto* d = o->if_contains("description"); d && !d->is_null()) {
    if (!d->is_string() || d->get_string().size() > 2000) return error::invalid("description", "must be a string of at most 2000 characters");
    r->description = std::string(d->get_string());
    src["description"] = r->description;
  }
  if (const auto* en = o->if_contains("enabled"); en && !en->is_null()) {
    if (!en->is_bool()) return error::invalid("enabled", "must be true or false");
    r->enabled = en->get_bool();
  }
  src["enabled"] = r->enabled;
  if (const auto* p = o->if_contains("priority"); p && !p->is_null()) {
    if (!p->is_int64()) return error::invalid("priority", "must be an integer");
    r->priority = p->get_int64();
  }
  src["priority"] = r->priority;
  if (const auto* rl = o->if_contains("rateLimit"); rl && !rl->is_null()) {
    const auto* ro = rl->if_object();
    if (!ro) return error::invalid("rateLimit", "must be an object {maxEvents, timeWindow}");
    for (const auto& kv : *ro)
      if (kv.key() != "maxEvents" && kv.key() != "timeWindow")
        return error::invalid("rateLimit." + std::string(kv.key()).substr(0, 100), "unknown member");
    const auto* me = ro->if_contains("maxEvents");
    const auto* tw = ro->if_contains("timeWindow");
    if (!me || !me->is_int64() || me->get_int64() < 1 || me->get_int64() > 1'000'000)
      return error::invalid("rateLimit.maxEvents", "required, an integer from 1 to 1000000");
    if (!tw || !tw->is_int64() || tw->get_int64() < 1 || tw->get_int64() > 86'400'000)
      return error::invalid("rateLimit.timeWindow", "required, milliseconds from 1 to 86400000");
    r->rate_max = me->get_int64();
    r->rate_window_ms = tw->get_int64();
    src["rateLimit"] = json::object{{"maxEvents", *r->rate_max}, {"timeWindow", *r->rate_window_ms}};
  }
  // Conditions.
  json::array conds;
  if (const auto* cs = o->if_contains("conditions"); cs && !cs->is_null()) {
    if (!cs->is_array()) return error::invalid("conditions", "must be an array of RoutingCondition");
    if (cs->get_array().size() > max_conditions) return error::invalid("conditions", "at most 64 conditions");
    for (std::size_t i = 0; i < cs->get_array().size(); ++i) {
      const std::string f = "conditions[" + std::to_string(i) + "]";
      const auto* co = cs->get_array()[i].if_object();
      if (!co) return error::invalid(f, "must be an object {type, operator, field?, value, customFunction?}");
      for (const auto& kv : *co)
        if (kv.key() != "type" && kv.key() != "operator" && kv.key() != "field" && kv.key() != "value" &&
            kv.key() != "customFunction")
          return error::invalid(f + "." + std::string(kv.key()).substr(0, 100), "unknown member of a RoutingCondition");
      compiled_condition c;
      const auto* t = co->if_contains("type");
      if (!t || !t->is_string()) return error::invalid(f + ".type", "required: event_type, aggregate_type, metadata, payload or custom");
      c.type = std::string(t->get_string());
      if (const auto* op = co->if_contains("operator"); op && !op->is_null()) {
        if (!op->is_string()) return error::invalid(f + ".operator", "must be a string");
        c.op = std::string(op->get_string());
      }
      if (const auto* fl = co->if_contains("field"); fl && !fl->is_null()) {
        if (!fl->is_string() || fl->get_string().empty()) return error::invalid(f + ".field", "must be a non-empty string");
        c.field = std::string(fl->get_string());
      }
      if (c.type == "custom") {
        const auto* fn = co->if_contains("customFunction");
        if (!fn || !fn->is_string() || fn->get_string().empty() || fn->get_string().size() > 10000)
          return error::invalid(f + ".customFunction", "required for custom: a Lua expression of `event` (at most 10000 characters)");
        c.lua = std::string(fn->get_string());
        auto sb = lua_sandbox::create("", "check", condition_limits());
        if (!sb) return std::move(sb).error();
        auto compiled = (*sb)->compile_expression(c.lua, {"event"}, "customFunction");
        if (!compiled) return error::invalid(f + ".customFunction", compiled.error().message);
        c.uid = next_condition_uid++;
      } else {
        std::string leaf_field;
        if (c.type == "event_type") leaf_field = "type";
        else if (c.type == "aggregate_type") leaf_field = "aggregateType";
        else if (c.type == "metadata" || c.type == "payload") {
          if (c.field.empty()) return error::invalid(f + ".field", "required for " + c.type + " conditions: a path (a.b, items[0].sku)");
          std::string path = c.field;
          if (path.starts_with("$.")) path = path.substr(2);
          else if (path.starts_with("$")) path = path.substr(1);
          leaf_field = c.type + (path.starts_with("[") ? "" : ".") + path;
        } else {
          return error::invalid(f + ".type", "unknown condition type '" + c.type.substr(0, 50) +
                                                 "' (event_type, aggregate_type, metadata, payload, custom)");
        }
        if (c.op.empty()) return error::invalid(f + ".operator", "required: equals, contains, regex, in or not_in");
        json::object leaf{{"field", leaf_field}, {"operator", c.op}};
        if (const auto* val = co->if_contains("value")) leaf["value"] = *val;
        auto parsed = condition::from_json(leaf, f);
        if (!parsed) {
          auto e = std::move(parsed).error();
          if (e.field == f + ".field") e.field = f + (c.field.empty() ? ".type" : ".field");
          return e;
        }
        c.leaf = std::move(*parsed);
        if (c.type != "event_type" && r->index_field.empty() && (c.op == "equals" || c.op == "in")) {
          std::vector<std::string> values;
          const auto& wanted = leaf["value"];
          if (c.op == "equals" && wanted.is_string()) values.emplace_back(wanted.get_string());
          if (c.op == "in" && wanted.is_array())
            for (const auto& x : wanted.get_array()) {
              if (!x.is_string()) {
                values.clear();
                break;
              }
              values.emplace_back(x.get_string());
            }
          if (!values.empty() && (c.op == "equals" || values.size() == wanted.get_array().size())) {
            r->index_field = leaf_field;
            r->index_values = std::move(values);
          }
        }
        if (c.type == "event_type" && c.op == "equals" && leaf["value"].is_string()) {
          r->type_keys.push_back(std::string(leaf["value"].get_string()));
        } else if (c.type == "event_type" && c.op == "in" && r->type_keys.empty()) {
          for (const auto& x : leaf["value"].get_array())
            if (x.is_string()) r->type_keys.push_back(std::string(x.get_string()));
            else r->type_keys.clear();
        }
      }
      conds.push_back(cs->get_array()[i]);
      r->conditions.push_back(std::move(c));
    }
  }
  // Several pinning conditions: they must all hold, any one is a correct index key set.
  src["conditions"] = std::move(conds);
  // Targets.
  const auto* ts = o->if_contains("targets");
  if (!ts || !ts->is_array() || ts->get_array().empty())
    return error::invalid("targets", "required: a non-empty array of RoutingTarget");
  if (ts->get_array().size() > max_targets) return error::invalid("targets", "at most 16 targets");
  json::array targets;
  for (std::size_t i = 0; i < ts->get_array().size(); ++i) {
    const std::string f = "targets[" + std::to_string(i) + "]";
    const auto* to = ts->get_array()[i].if_object();
    if (!to) return error::invalid(f, "must be an object {type, config, retryConfig?}");
    for (const auto& kv : *to)
      if (kv.key() != "type" && kv.key() != "config" && kv.key() != "retryConfig" && kv.key() != "enabled")
        return error::invalid(f + "." + std::string(kv.key()).substr(0, 100), "unknown member of a RoutingTarget");
    auto slot = std::make_unique<routing_rule::target_slot>();
    const auto* t = to->if_contains("type");
    if (!t || !t->is_string()) return error::invalid(f + ".type", "required: webhook, queue, plugin, websocket or email");
    slot->type = std::string(t->get_string());
    json::object config;
    if (const auto* c = to->if_contains("config"); c && !c->is_null()) {
      if (!c->is_object()) return error::invalid(f + ".config", "must be an object");
      config = c->get_object();
    }
    if (!make_) return error::make(errc::unavailable, "no routing targets on this node");
    auto built = make_(slot->type, config, f);
    if (!built) return std::move(built).error();
    slot->target = std::move(*built);
    slot->policy = retries_.default_policy();
    json::object tj{{"type", slot->type}, {"config", config}};
    if (const auto* rc = to->if_contains("retryConfig"); rc && !rc->is_null()) {
      auto p = retry_policy::from_json(*rc, f + ".retryConfig", retries_.default_policy());
      if (!p) return std::move(p).error();
      slot->policy = std::move(*p);
      tj["retryConfig"] = slot->policy.to_json();
    }
    if (const auto* en = to->if_contains("enabled"); en && !en->is_null()) {
      if (!en->is_bool()) return error::invalid(f + ".enabled", "must be true or false");
      slot->enabled = en->get_bool();
    }
    tj["enabled"] = slot->enabled;
    targets.push_back(std::move(tj));
    r->targets.push_back(std::move(slot));
  }
  src["targets"] = std::move(targets);
  r->source = std::move(src);
  return r;
}

namespace {

json::object public_json(const routing_rule& r) {
  json::object o = r.source;
  for (auto& t : o["targets"].get_array())
    if (auto* c = t.get_object().if_contains("config"); c && c->is_object()) redact(c->get_object());
  return o;
}

}  // namespace

void event_router::rebuild() {
  auto rs = std::make_shared<rule_set>();
  for (const auto& [id, r] : rules_) {
    rs->all.push_back(r);
    if (!r->enabled) continue;
    if (!r->type_keys.empty()) {
      for (const auto& k : r->type_keys) rs->by_type[k].push_back(r);
    } else if (!r->index_field.empty()) {
      auto it = std::find_if(rs->by_field.begin(), rs->by_field.end(),
                             [&](const rule_set::field_index& fi) { return fi.field == r->index_field; });
      if (it == rs->by_field.end()) {
        rule_set::field_index fi;
        fi.field = r->index_field;
        if (fi.field != "aggregateType") {
          fi.in_metadata = fi.field.starts_with("metadata");
          auto path = json_path::parse(fi.field.substr(fi.field.find('.') + 1));
          if (!path) {  // cannot index it: tested on every event
            rs->unindexed.push_back(r);
            continue;
          }
          fi.path = std::move(*path);
        }
        rs->by_field.push_back(std::move(fi));
        it = std::prev(rs->by_field.end());
      }
      for (const auto& v : r->index_values) it->by_value[v].push_back(r);
    } else {
      rs->unindexed.push_back(r);
    }
  }
  set_ = std::move(rs);
}

std::shared_ptr<const event_router::rule_set> event_router::snapshot() const {
  std::shared_lock lock(mutex_);
  return set_;
}

result<json::object> event_router::add_route(const json::value& rule) {
  auto r = compile(rule, std::nullopt);
  if (!r) return std::move(r).error();
  std::lock_guard serial(log_.mutex());
  {
    std::unique_lock lock(mutex_);
    if (rules_.count((*r)->id)) return error::make(errc::conflict, "route '" + (*r)->id + "' already exists");
  }
  auto stored = log_.append((*r)->id, "route.added", {{"routeId", (*r)->id}, {"rule", (*r)->source}});
  if (!stored) return std::move(stored).error();
  {
    std::unique_lock lock(mutex_);
    if (rules_.empty()) first_rule_position_ = stored->events.front().position.value;
    rules_[(*r)->id] = *r;
    rebuild();
  }
  changed();
  return public_json(**r);
}

bool event_router::empty() const {
  std::shared_lock lock(mutex_);
  return rules_.empty();
}

log_position event_router::first_rule_position() const {
  std::shared_lock lock(mutex_);
  return log_position(first_rule_position_);
}

void event_router::set_on_change(std::function<void()> f) {
  std::lock_guard lock(on_change_mutex_);
  on_change_ = std::move(f);
}

void event_router::changed() {
  std::function<void()> f;
  {
    std::lock_guard lock(on_change_mutex_);
    f = on_change_;
  }
  if (f) f();
}

result<json::object> event_router::update_route(std::string_view id, const json::value& rule) {
  auto r = compile(rule, id);
  if (!r) return std::move(r).error();
  std::lock_guard serial(log_.mutex());
  {
    std::shared_lock lock(mutex_);
    if (!rules_.count(id)) return error::make(errc::not_found, "no route '" + std::string(id) + "'");
  }
  auto stored = log_.append(id, "route.updated", {{"routeId", id}, {"rule", (*r)->source}});
  if (!stored) return std::move(stored).error();
  std::unique_lock lock(mutex_);
  rules_[std::string(id)] = *r;
  rebuild();
  return public_json(**r);
}

result<void> event_router::remove_route(std::string_view id) {
  std::lock_guard serial(log_.mutex());
  {
    std::shared_lock lock(mutex_);
    if (!rules_.count(id)) return error::make(errc::not_found, "no route '" + std::string(id) + "'");
  }
  auto stored = log_.append(id, "route.removed", {{"routeId", id}});
  if (!stored) return std::move(stored).error();
  std::unique_lock lock(mutex_);
  rules_.erase(std::string(id));
  rebuild();
  return {};
}

std::vector<json::object> event_router::list() const {
  std::vector<json::object> out;
  std::shared_lock lock(mutex_);
  for (const auto& [id, r] : rules_) out.push_back(public_json(*r));
  return out;
}

result<json::object> event_router::get(std::string_view id) const {
  std::shared_lock lock(mutex_);
  auto it = rules_.find(id);
  if (it == rules_.end()) return error::make(errc::not_found, "no route '" + std::string(id) + "'");
  return public_json(*it->second);
}

void event_router::disable_target(const std::string& rule_id, std::size_t index, const std::string& why) {
  std::lock_guard serial(log_.mutex());
  json::object src;
  {
    std::shared_lock lock(mutex_);
    auto it = rules_.find(rule_id);
    if (it == rules_.end() || index >= it->second->targets.size() || !it->second->targets[index]->enabled) return;
    src = it->second->source;
  }
  src["targets"].get_array()[index].get_object()["enabled"] = false;
  auto r = compile(src, rule_id);
  if (!r) return;
  auto stored = log_.append(rule_id, "route.updated",
                            {{"routeId", rule_id}, {"rule", (*r)->source}, {"reason", why}, {"targetIndex", index}});
  if (!stored) return;
  std::unique_lock lock(mutex_);
  rules_[rule_id] = *r;
  rebuild();
}

void event_router::apply_lifecycle(const event& e) {
  if (!is_lifecycle(e)) return;
  const auto* rid = e.payload.if_contains("routeId");
  if (!rid || !rid->is_string()) return;
  const std::string id(rid->get_string());
  std::lock_guard serial(log_.mutex());
  if (!log_.should_apply(id, e)) return;
  if (e.type == "route.added" || e.type == "route.updated") {
    const auto* rule = e.payload.if_contains("rule");
    if (!rule) return;
    auto r = compile(*rule, id);
    if (!r) return;  // a target kind this node does not have: it routes nothing for this rule
    {
      std::unique_lock lock(mutex_);
      if (rules_.empty()) first_rule_position_ = e.position.value;
      rules_[id] = *r;
      rebuild();
    }
    changed();
  } else if (e.type == "route.removed") {
    std::unique_lock lock(mutex_);
    rules_.erase(id);
    rebuild();
  }
}

result<void> event_router::load() {
  return log_.replay({"route.added", "route.updated", "route.removed"}, [this](const event& e) { apply_lifecycle(e); });
}

namespace {

// The event as JSON for custom conditions, made once per event when first needed.
struct lazy_json {
  const event& e;
  std::optional<json::value> v;
  const json::value& get() {
    if (!v) v = event_to_json(e);
    return *v;
  }
};

bool holds(const compiled_condition& c, const event& e, lazy_json& j, std::string* why) {
  if (c.leaf) return c.leaf->matches(e);
  auto r = run_custom(c, j.get());
  if (!r) {
    if (why) *why = r.error().message.substr(0, 300);
    return false;
  }
  return *r;
}

bool rule_matches(const routing_rule& r, const event& e, lazy_json& j) {
  for (const auto& c : r.conditions)
    if (!holds(c, e, j, nullptr)) return false;
  return true;
}

bool by_priority(const std::shared_ptr<routing_rule>& a, const std::shared_ptr<routing_rule>& b) {
  return a->priority != b->priority ? a->priority > b->priority : a->id < b->id;
}

}  // namespace

void event_router::match(const rule_set& rs, const event& e, std::vector<std::shared_ptr<routing_rule>>& out) const {
  out.clear();
  lazy_json j{e, std::nullopt};
  if (auto it = rs.by_type.find(e.type); it != rs.by_type.end())
    for (const auto& r : it->second)
      if (rule_matches(*r, e, j)) out.push_back(r);
  for (const auto& fi : rs.by_field) {
    std::string_view value;
    if (!fi.path) {
      value = e.aggregate_type;
    } else {
      const auto* v = fi.path->resolve(fi.in_metadata ? e.metadata : e.payload);
      if (!v || !v->is_string()) continue;  // a string equality cannot hold
      value = v->get_string();
    }
    if (auto it = fi.by_value.find(std::string(value)); it != fi.by_value.end())
      for (const auto& r : it->second)
        if (rule_matches(*r, e, j)) out.push_back(r);
  }
  for (const auto& r : rs.unindexed)
    if (rule_matches(*r, e, j)) out.push_back(r);
  if (out.size() > 1) {
    std::sort(out.begin(), out.end(), by_priority);
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
}

std::vector<json::object> event_router::routes_for_event(const event& e) const {
  std::vector<std::shared_ptr<routing_rule>> hits;
  if (!is_lifecycle(e)) match(*snapshot(), e, hits);
  std::vector<json::object> out;
  for (const auto& r : hits) out.push_back(public_json(*r));
  return out;
}

std::vector<route_explanation> event_router::explain(const event& e) const {
  auto rs = snapshot();
  auto all = rs->all;
  std::sort(all.begin(), all.end(), by_priority);
  std::vector<route_explanation> out;
  lazy_json j{e, std::nullopt};
  for (const auto& r : all) {
    route_explanation x;
    x.rule_id = r->id;
    x.enabled = r->enabled;
    x.matched = r->enabled && !is_lifecycle(e);
    if (is_lifecycle(e)) x.reasons.push_back("events of aggregateType 'route' are never routed");
    if (!r->enabled) x.reasons.push_back("the rule is disabled");
    if (r->conditions.empty()) x.reasons.push_back("no conditions: matches every event");
    for (std::size_t i = 0; i < r->conditions.size(); ++i) {
      const auto& c = r->conditions[i];
      std::string err;
      const bool ok = holds(c, e, j, &err);
      std::string what = "conditions[" + std::to_string(i) + "] (" + c.type + (c.op.empty() ? "" : " " + c.op) +
                         (c.field.empty() ? "" : " " + c.field) + "): " + (ok ? "true" : "false");
      if (!err.empty()) what += " (" + err + ")";
      x.reasons.push_back(std::move(what));
      if (!ok) x.matched = false;
    }
    for (std::size_t i = 0; i < r->targets.size(); ++i)
      x.targets.push_back(std::to_string(i) + ": " + r->targets[i]->type + (r->targets[i]->enabled ? "" : " (disabled)"));
    out.push_back(std::move(x));
  }
  return out;
}

delivery_outcome event_router::deliver_one(routing_rule& rule, std::size_t index, const event& e, std::int64_t attempt) {
  auto& slot = *rule.targets[index];
  const auto t0 = std::chrono::steady_clock::now();
  delivery_context ctx{rule.id, index, attempt, t0 + slot.target->timeout()};
  delivery_outcome out;
  try {
    out = slot.target->deliver(e, ctx);
  } catch (const std::exception& ex) {
    out.success = false;
    out.error = {"exception", ex.what(), std::nullopt, {}};
  }
  if (out.success) {
    slot.down_ms = 0;
    slot.down_until_us = 0;
  } else if (out.error.type == "timeout" || out.error.type == "connection_error") {
    auto next = std::clamp<std::int64_t>(slot.down_ms.load() * 2, opts_.down_initial.count(), opts_.down_max.count());
    slot.down_ms = next;
    slot.down_until_us = to_micros(clock_.now()) + next * 1000;
  }
  return out;
}

result<std::vector<route_result>> event_router::run(std::span<const event* const> events, bool want_results) {
  auto rs = snapshot();
  struct delivery_job {
    const event* e;
    std::shared_ptr<routing_rule> rule;
    std::size_t index;
    delivery_outcome out;
    std::int64_t ms = 0;
    bool deferred = false;
    std::optional<timestamp> slot;
  };
  std::vector<delivery_job> jobs;
  std::vector<std::shared_ptr<routing_rule>> hits;
  const auto now = clock_.now();
  const auto now_us = to_micros(now);
  for (const event* e : events) {
    if (is_lifecycle(*e)) continue;
    match(*rs, *e, hits);
    for (const auto& r : hits) {
      ++matched_;
      std::optional<timestamp> slot;
      if (r->rate_max) {
        // GCRA: one event in each window / maxEvents, bursts up to maxEvents.
        const std::int64_t interval = *r->rate_window_ms * 1000 / *r->rate_max;
        const std::int64_t tolerance = *r->rate_window_ms * 1000 - interval;
        std::lock_guard lock(r->rate_mutex);
        const std::int64_t tat = std::max(r->tat_us, now_us);
        const std::int64_t at = std::max(now_us, tat - tolerance);
        r->tat_us = tat + interval;
        if (at > now_us) slot = from_micros(at);
      }
      for (std::size_t i = 0; i < r->targets.size(); ++i)
        if (r->targets[i]->enabled) jobs.push_back({e, r, i, {}, 0, false, slot});
    }
  }
  std::vector<std::function<void()>> tasks;
  for (auto& j : jobs) {
    auto& slot = *j.rule->targets[j.index];
    if (j.slot) {
      j.deferred = true;
      j.out.error = {"rate_limited", "over the rule's rateLimit: delivery delayed", std::nullopt, {}};
      j.out.not_before = j.slot;
    } else if (slot.down_until_us.load() > now_us) {
      j.deferred = true;
      j.out.error = {"target_down", "the target failed recently (timeout or connection error): delivery deferred",
                     std::nullopt, {}};
      j.out.not_before = from_micros(slot.down_until_us.load());
    } else {
      tasks.push_back([this, &j] {
        const auto t0 = std::chrono::steady_clock::now();
        j.out = deliver_one(*j.rule, j.index, *j.e, 1);
        j.ms = ms_since(t0);
      });
    }
  }
  pool_->run_all(tasks);
  std::vector<append_request> records;
  std::vector<route_result> results;
  for (auto& j : jobs) {
    const auto& slot = *j.rule->targets[j.index];
    if (j.out.success) {
      ++delivered_;
      if (opts_.record_deliveries) {
        append_request req;
        req.aggregate_id = log_.aggregate_of(j.rule->id);
        new_event ne;
        ne.type = "route.delivered";
        ne.aggregate_type = lifecycle_type;
        ne.metadata = engine_event_metadata();
        ne.id = uuid_v5("pliers/route.delivered/" + j.rule->id + "/" + std::to_string(j.index) + "/" + j.e->id);
        ne.causation_id = j.e->id;
        ne.payload = {{"routeId", j.rule->id}, {"eventId", j.e->id},        {"targetIndex", j.index},
                      {"targetType", slot.type}, {"deliveryTime", j.ms}, {"detail", j.out.detail}};
        req.events.push_back(std::move(ne));
        records.push_back(std::move(req));
      }
    } else {
      if (!j.deferred) ++failed_;
      retry_policy policy = slot.policy;
      if (j.out.error.type == "rate_limited" || j.out.error.type == "target_down") ++policy.max_attempts;  // not a real attempt
      if (j.out.gone || j.out.error.type == "forbidden_address") policy.non_retryable.push_back(j.out.error.type);
      // A rate-limited delivery is due exactly at its slot; the others no sooner than asked.
      if (j.out.not_before && j.out.error.type == "rate_limited") set_retry_at(j.out.error, *j.out.not_before);
      else if (j.out.not_before) set_retry_not_before(j.out.error, *j.out.not_before);
      auto filed = retries_.record_failure(*j.e, "route:" + j.rule->id + ":" + std::to_string(j.index), j.out.error,
                                           policy, j.ms);
      if (!filed) return std::move(filed).error();
      if (j.out.gone) disable_target(j.rule->id, j.index, j.out.error.message);
    }
    if (want_results) {
      route_result rr{j.rule->id, j.index, slot.type, j.out.success, std::nullopt, {}, j.ms};
      if (!j.out.success) {
        rr.error = j.out.error.message;
        rr.error_type = j.out.error.type;
      }
      results.push_back(std::move(rr));
    }
  }
  if (!records.empty()) {
    auto ok = store_.append_group(records);
    if (!ok) return std::move(ok).error();
  }
  return results;
}

result<std::vector<route_result>> event_router::route_event(const event& e) {
  const event* one[] = {&e};
  return run(one, true);
}

result<void> event_router::process_batch(std::span<const event* const> events) {
  auto r = run(events, false);
  if (!r) return std::move(r).error();
  return {};
}

retry_engine::attempt_outcome event_router::retry(const dead_letter& d, std::int64_t attempt) {
  // "route:<rule>:<index>"; rule ids have no ':'.
  const auto first = d.consumer.find(':'), last = d.consumer.rfind(':');
  if (first == std::string::npos || last == first) return {false, {"bad_consumer", "malformed consumer " + d.consumer, std::nullopt, {}}};
  const std::string id = d.consumer.substr(first + 1, last - first - 1);
  const std::size_t index = std::strtoul(d.consumer.c_str() + last + 1, nullptr, 10);
  std::shared_ptr<routing_rule> rule;
  {
    std::shared_lock lock(mutex_);
    auto it = rules_.find(id);
    if (it != rules_.end()) rule = it->second;
  }
  if (!rule) return {false, {"route_not_found", "route '" + id + "' does not exist", std::nullopt, {}}};
  if (index >= rule->targets.size())
    return {false, {"target_not_found", "route '" + id + "' has no target " + std::to_string(index), std::nullopt, {}}};
  if (!rule->enabled) return {false, {"route_disabled", "route '" + id + "' is disabled", std::nullopt, {}}};
  if (!rule->targets[index]->enabled)
    return {false, {"target_disabled", "target " + std::to_string(index) + " of route '" + id + "' is disabled", std::nullopt, {}}};
  auto out = deliver_one(*rule, index, d.original_event, attempt);
  if (out.success) {
    ++delivered_;
    return {true, {}};
  }
  ++failed_;
  if (out.gone) disable_target(id, index, out.error.message);
  if (out.not_before) set_retry_not_before(out.error, *out.not_before);
  return {false, out.error};
}

}  // namespace pliers
