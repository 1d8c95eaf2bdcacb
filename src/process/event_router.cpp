#include "process/event_router.hpp"

#include <re2/re2.h>
#include <re2/set.h>

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
// A prefilter (one RE2::Set pass, ~0.2 us) pays for itself from this many contains or
// regex conditions on one field; fewer are evaluated one by one.
constexpr std::size_t min_prefilter_rules = 8;
// RE2 memory budget of one prefilter set (program and DFA cache): 1,000 literals need
// well under 1 MiB; a set that runs out makes its rules be tested one by one.
constexpr std::int64_t prefilter_max_mem = 32 << 20;

// Where a condition's value comes from: the event's type or aggregate type, or a path in
// its metadata or payload.
enum class field_base : std::uint8_t { type, aggregate_type, metadata, payload };

struct compiled_condition {
  std::string type, op, field;
  // The router evaluates every non-custom condition itself on the field's value, resolved
  // once per event for all the rules that test that field (route_match_scratch): `field_key`
  // names the field ("type", "aggregateType", "payload.a.b"...). The operator is evaluated by
  // core/event_filter's condition_op_holds, as condition::matches does (which resolves the
  // field anew for each condition); tests/unit/event_router_test.cpp compares the two. `leaf` is kept only for a field the
  // router cannot resolve itself (none today: a path must start with a key).
  std::string field_key;  // empty: custom, or evaluated by `leaf`
  field_base base = field_base::type;
  std::optional<json_path> path;  // metadata / payload
  condition_op o = condition_op::equals;
  json::value value;              // null for exists without a value
  std::shared_ptr<const RE2> re;  // regex
  std::optional<condition> leaf;
  std::string lua;        // custom
  std::uint64_t uid = 0;  // custom: the key of its compiled function in each thread's sandbox
};

// Sets up the router's own evaluation of a parsed leaf {field: leaf_field, operator,
// value?}; leaves c.field_key empty when it cannot (then `leaf` evaluates it).
void compile_fast(compiled_condition& c, const std::string& leaf_field, const json::object& leaf) {
  auto o = condition_op_from(c.op);
  if (!o) return;
  if (leaf_field == "type") {
    c.base = field_base::type;
  } else if (leaf_field == "aggregateType") {
    c.base = field_base::aggregate_type;
  } else {
    // As core/event_filter parses "payload.<rest>" / "metadata[...]": the path "$<rest>".
    const bool meta = leaf_field.starts_with("metadata");
    const std::string_view rest = std::string_view(leaf_field).substr(meta ? 8 : 7);
    auto p = json_path::parse(rest.empty() ? "$" : "$" + std::string(rest));
    if (!p || p->steps().empty()) return;  // the whole object: not a value here
    c.base = meta ? field_base::metadata : field_base::payload;
    c.path = std::move(*p);
  }
  if (const auto* v = leaf.if_contains("value")) c.value = *v;
  if (*o == condition_op::regex) {
    c.re = compile_condition_regex(std::string_view(c.value.get_string()));
    if (!c.re) return;
  }
  c.o = *o;
  c.field_key = leaf_field;
}

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

// Lookups by std::string_view without making a std::string.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using string_map = std::unordered_map<std::string, V, string_hash, std::equal_to<>>;

// An immutable snapshot of the enabled rules, indexed; shared by the threads matching.
struct route_rule_set {
  static constexpr std::uint32_t no_slot = ~std::uint32_t{0};
  // Every distinct field the conditions test; an event resolves each at most once.
  struct field_slot {
    field_base base = field_base::type;
    const json_path* path = nullptr;  // metadata / payload: owned by a rule of `entries`
  };
  std::vector<field_slot> slots;
  // A rule and the slot of each of its conditions (no_slot: custom, or evaluated by `leaf`).
  struct entry {
    std::shared_ptr<routing_rule> rule;
    std::vector<std::uint32_t> slots;
  };
  std::vector<entry> entries;  // every rule, disabled ones included (explain)
  string_map<std::vector<std::uint32_t>> by_type;
  // Rules indexed by a string equality on one field: the event's value there picks them.
  struct field_index {
    std::uint32_t slot = 0;
    string_map<std::vector<std::uint32_t>> by_value;
  };
  std::vector<field_index> by_field;
  // Unindexed rules with a `contains` (string value) or `regex` condition, grouped by the
  // field it tests and the operator: one pass of an RE2::Set over the field's string tells
  // which of them can hold; only those rules are then evaluated. Sets are built on first
  // use (a rule change rebuilds the snapshot; loading N rules must not compile N sets).
  struct prefilter {
    std::uint32_t slot = 0;
    bool literal = false;           // contains: QuoteMeta'd values, Latin-1 (bytes, as find)
    std::unique_ptr<RE2::Set> set;  // regex: the patterns, core/event_filter's options
    std::vector<std::vector<std::uint32_t>> by_pattern;  // the rules of each pattern index
    std::vector<std::uint32_t> rules;                    // all of them
  };
  mutable std::once_flag prefilters_built;
  mutable std::vector<prefilter> prefilters;   // written once, under prefilters_built
  mutable std::vector<std::uint32_t> unfiltered;  // likewise: unindexed rules tested on every event
  std::vector<std::uint32_t> unindexed;        // the prefiltered ones and the others
  // Fills prefilters and unfiltered from unindexed. REQUIRES: called once (prefilters_built).
  void build_prefilters() const;
};

// Per-event values of the rule set's field slots, resolved when first asked; and the
// scratch space of one matching thread.
struct route_match_scratch {
  const route_rule_set* rs = nullptr;
  const event* e = nullptr;
  std::vector<const json::value*> values;
  std::vector<std::uint8_t> resolved;
  json::value type, aggregate_type;  // the event's, as JSON, when a condition needs them
  std::vector<int> set_hits;  // RE2::Set::Match's output

  void reset(const route_rule_set& r, const event& ev) {
    rs = &r;
    e = &ev;
    values.assign(r.slots.size(), nullptr);
    resolved.assign(r.slots.size(), 0);
  }
  const json::value* get(std::uint32_t slot) {
    if (resolved[slot]) return values[slot];
    resolved[slot] = 1;
    const auto& fs = rs->slots[slot];
    switch (fs.base) {
      case field_base::type: type = e->type; return values[slot] = &type;
      case field_base::aggregate_type: aggregate_type = e->aggregate_type; return values[slot] = &aggregate_type;
      case field_base::metadata: return values[slot] = fs.path->resolve(e->metadata);
      case field_base::payload: return values[slot] = fs.path->resolve(e->payload);
    }
    return nullptr;
  }
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
      set_(std::make_shared<route_rule_set>()) {
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
        compile_fast(c, leaf_field, leaf);
        if (c.field_key.empty()) c.leaf = std::move(*parsed);
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
          // A type is a string: the other members can never be equal to it.
          for (const auto& x : leaf["value"].get_array())
            if (x.is_string()) r->type_keys.push_back(std::string(x.get_string()));
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
  auto rs = std::make_shared<route_rule_set>();
  // Field keys are views of the rules' conditions, which the snapshot keeps alive.
  std::unordered_map<std::string_view, std::uint32_t> slot_of;
  for (const auto& [id, r] : rules_) {
    const auto index = static_cast<std::uint32_t>(rs->entries.size());
    route_rule_set::entry en{r, {}};
    for (const auto& c : r->conditions) {
      if (c.field_key.empty()) {
        en.slots.push_back(route_rule_set::no_slot);
        continue;
      }
      auto [it, fresh] = slot_of.try_emplace(c.field_key, static_cast<std::uint32_t>(rs->slots.size()));
      if (fresh) rs->slots.push_back({c.base, c.path ? &*c.path : nullptr});
      en.slots.push_back(it->second);
    }
    rs->entries.push_back(std::move(en));
    if (!r->enabled) continue;
    if (!r->type_keys.empty()) {
      for (const auto& k : r->type_keys) rs->by_type[k].push_back(index);
    } else if (auto slot = slot_of.find(r->index_field); !r->index_field.empty() && slot != slot_of.end()) {
      // The field is resolved as the indexing condition resolves it.
      auto it = std::find_if(rs->by_field.begin(), rs->by_field.end(),
                             [&](const route_rule_set::field_index& fi) { return fi.slot == slot->second; });
      if (it == rs->by_field.end()) {
        rs->by_field.push_back({slot->second, {}});
        it = std::prev(rs->by_field.end());
      }
      for (const auto& v : r->index_values) it->by_value[v].push_back(index);
    } else {
      rs->unindexed.push_back(index);
    }
  }
  set_ = std::move(rs);
}

void route_rule_set::build_prefilters() const {
  // Each unindexed rule's first contains (string value) or regex condition on a field;
  // grouped by (field, operator) in order of first use.
  struct member {
    std::uint32_t rule;
    std::string_view value;
  };
  struct group {
    std::uint32_t slot;
    bool literal;
    std::vector<member> members;
  };
  std::vector<group> groups;
  for (auto index : unindexed) {
    const auto& en = entries[index];
    const auto& conds = en.rule->conditions;
    std::size_t i = 0;
    for (; i < conds.size(); ++i)
      if (en.slots[i] != no_slot &&
          ((conds[i].o == condition_op::contains && conds[i].value.is_string()) || conds[i].o == condition_op::regex))
        break;
    if (i == conds.size()) {
      unfiltered.push_back(index);
      continue;
    }
    const bool literal = conds[i].o == condition_op::contains;
    auto g = std::find_if(groups.begin(), groups.end(),
                          [&](const group& x) { return x.slot == en.slots[i] && x.literal == literal; });
    if (g == groups.end()) g = groups.insert(groups.end(), {en.slots[i], literal, {}});
    g->members.push_back({index, conds[i].value.get_string()});
  }
  for (auto& g : groups) {
    if (g.members.size() < min_prefilter_rules) {
      for (const auto& m : g.members) unfiltered.push_back(m.rule);
      continue;
    }
    // contains is a byte substring search (std::string_view::find): a quoted literal in
    // Latin-1, where every byte is a character. regex: the condition's own options.
    RE2::Options options;
    options.set_log_errors(false);
    if (g.literal) options.set_encoding(RE2::Options::EncodingLatin1);
    options.set_max_mem(prefilter_max_mem);
    prefilter pf;
    pf.slot = g.slot;
    pf.literal = g.literal;
    pf.set = std::make_unique<RE2::Set>(options, RE2::UNANCHORED);
    std::unordered_map<std::string, int> pattern_index;
    for (const auto& m : g.members) {
      std::string pattern =
          g.literal ? RE2::QuoteMeta(re2::StringPiece(m.value.data(), m.value.size())) : std::string(m.value);
      auto it = pattern_index.find(pattern);
      if (it == pattern_index.end()) {
        const int n = pf.set->Add(pattern, nullptr);
        if (n < 0) {  // not expressible in the set: tested on every event
          unfiltered.push_back(m.rule);
          continue;
        }
        it = pattern_index.emplace(std::move(pattern), n).first;
        pf.by_pattern.resize(static_cast<std::size_t>(n) + 1);
      }
      pf.by_pattern[static_cast<std::size_t>(it->second)].push_back(m.rule);
      pf.rules.push_back(m.rule);
    }
    if (pf.rules.empty()) continue;
    if (!pf.set->Compile()) {  // over the memory budget: tested on every event
      unfiltered.insert(unfiltered.end(), pf.rules.begin(), pf.rules.end());
      continue;
    }
    prefilters.push_back(std::move(pf));
  }
}

std::shared_ptr<const route_rule_set> event_router::snapshot() const {
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
  // Only the lifecycle events after the last load, found through the type index. Positions
  // are visible in commit order (docs/storage.md), so every event up to the head read
  // first is seen by the query and the next load starts there even when nothing was found.
  // Our own appends come back once too; apply_lifecycle skips what was applied already.
  std::lock_guard serial(load_mutex_);
  event_query q;
  for (const char* t : {"route.added", "route.updated", "route.removed"}) {
    auto p = type_pattern::parse(t);
    if (!p) return std::move(p).error();
    q.event_types.push_back(std::move(*p));
  }
  q.aggregate_types.push_back(lifecycle_type);
  const log_position head = store_.head();
  pagination page{max_page_limit, loaded_through_, /*count_total=*/false};
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (const auto& e : r->events) apply_lifecycle(e);
    if (!r->events.empty()) loaded_through_ = std::max(loaded_through_, r->events.back().position);
    if (!r->has_more) loaded_through_ = std::max(loaded_through_, head);
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  return {};
}

log_position event_router::loaded_through() const {
  std::lock_guard serial(load_mutex_);
  return loaded_through_;
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

bool by_priority(const std::shared_ptr<routing_rule>& a, const std::shared_ptr<routing_rule>& b) {
  return a->priority != b->priority ? a->priority > b->priority : a->id < b->id;
}

bool holds(const compiled_condition& c, std::uint32_t slot, route_match_scratch& s, lazy_json& j, std::string* why) {
  if (slot != route_rule_set::no_slot) return condition_op_holds(c.o, s.get(slot), c.value, c.re.get());
  if (c.leaf) return c.leaf->matches(*s.e);
  auto r = run_custom(c, j.get());
  if (!r) {
    if (why) *why = r.error().message.substr(0, 300);
    return false;
  }
  return *r;
}

bool rule_matches(std::uint32_t index, route_match_scratch& s, lazy_json& j) {
  const auto& en = s.rs->entries[index];
  const auto& conds = en.rule->conditions;
  for (std::size_t i = 0; i < conds.size(); ++i)
    if (!holds(conds[i], en.slots[i], s, j, nullptr)) return false;
  return true;
}

}  // namespace

void event_router::match(const route_rule_set& rs, const event& e, route_match_scratch& s,
                         std::vector<std::shared_ptr<routing_rule>>& out) const {
  out.clear();
  std::call_once(rs.prefilters_built, [&] { rs.build_prefilters(); });
  s.reset(rs, e);
  lazy_json j{e, std::nullopt};
  auto test = [&](std::uint32_t index) {
    if (rule_matches(index, s, j)) out.push_back(rs.entries[index].rule);
  };
  if (auto it = rs.by_type.find(e.type); it != rs.by_type.end())
    for (auto index : it->second) test(index);
  for (const auto& fi : rs.by_field) {
    const auto* v = s.get(fi.slot);
    if (!v || !v->is_string()) continue;  // a string equality cannot hold
    if (auto it = fi.by_value.find(std::string_view(v->get_string())); it != fi.by_value.end())
      for (auto index : it->second) test(index);
  }
  for (const auto& pf : rs.prefilters) {
    const auto* v = s.get(pf.slot);
    if (!v) continue;  // contains and regex are false on a missing field
    if (!v->is_string()) {
      // regex is false; contains holds for an array with an equal element: evaluate them.
      if (pf.literal)
        for (auto index : pf.rules) test(index);
      continue;
    }
    const re2::StringPiece text(v->get_string().data(), v->get_string().size());
    s.set_hits.clear();
    RE2::Set::ErrorInfo info{RE2::Set::kNoError};
    if (pf.set->Match(text, &s.set_hits, &info)) {
      for (int h : s.set_hits)
        for (auto index : pf.by_pattern[static_cast<std::size_t>(h)]) test(index);
    } else if (info.kind != RE2::Set::kNoError) {  // the set could not tell (out of memory): test them all
      for (auto index : pf.rules) test(index);
    }
  }
  for (auto index : rs.unfiltered) test(index);
  if (out.size() > 1) {
    std::sort(out.begin(), out.end(), by_priority);
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
}

std::vector<json::object> event_router::routes_for_event(const event& e) const {
  std::vector<std::shared_ptr<routing_rule>> hits;
  route_match_scratch scratch;
  if (!is_lifecycle(e)) match(*snapshot(), e, scratch, hits);
  std::vector<json::object> out;
  for (const auto& r : hits) out.push_back(public_json(*r));
  return out;
}

std::vector<route_explanation> event_router::explain(const event& e) const {
  auto rs = snapshot();
  std::vector<std::uint32_t> order(rs->entries.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::uint32_t a, std::uint32_t b) { return by_priority(rs->entries[a].rule, rs->entries[b].rule); });
  std::vector<route_explanation> out;
  route_match_scratch scratch;
  scratch.reset(*rs, e);
  lazy_json j{e, std::nullopt};
  for (auto index : order) {
    const auto& en = rs->entries[index];
    const auto& r = en.rule;
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
      const bool ok = holds(c, en.slots[i], scratch, j, &err);
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
  route_match_scratch scratch;
  const auto now = clock_.now();
  const auto now_us = to_micros(now);
  for (const event* e : events) {
    if (is_lifecycle(*e)) continue;
    match(*rs, *e, scratch, hits);
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
