#include "ops/maintenance.hpp"

#include <boost/json.hpp>
#include <set>

#include "core/event_codec.hpp"
#include "ops/lua_projector.hpp"

#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "process/lifecycle_log.hpp"

namespace pliers {

namespace json = boost::json;

// ---------------------------------------------------------------------------------------
// snapshot_policies

result<void> snapshot_policies::set(snapshot_policy p) {
  if (p.aggregate_type.empty()) return error::invalid("aggregateType", "required");
  if (p.every_events < 1) return error::invalid("everyEvents", "must be at least 1");
  if (p.keep_last < 0) return error::invalid("keepLast", "must not be negative");
  if (!p.make_folder) return error::invalid("reducer", "required: the state a snapshot holds is folded by it");
  policies_[p.aggregate_type] = std::move(p);
  return {};
}

result<std::int64_t> snapshot_policies::on_events(std::span<const event> events) {
  std::int64_t written = 0;
  std::optional<error> first_error;
  event_replay replay(store_);
  for (const auto& e : events) {
    auto it = policies_.find(e.aggregate_type);
    if (it == policies_.end() || e.sequence.value % it->second.every_events != 0) continue;
    const auto& p = it->second;
    const std::int64_t at = e.sequence.value;
    auto fail = [&](error err) {
      if (!first_error) first_error = std::move(err);
    };
    // The state as of `at`: from the newest snapshot at or below it.
    json::value state;
    std::int64_t from = 1;
    auto snap = store_.get_latest_snapshot(e.aggregate_id);
    if (!snap) {
      fail(snap.error());
      continue;
    }
    // Taken already, or a newer one exists (a re-run, or the events fed again): writing an
    // older snapshot now would bring back one the pruning removed.
    if (*snap && (*snap)->sequence_number >= at) continue;
    if (*snap) {
      state = (*snap)->data;
      from = (*snap)->sequence_number + 1;
    }
    auto folder = p.make_folder();
    if (auto s = folder->start(std::move(state)); !s) {
      fail(s.error());
      continue;
    }
    auto n = replay.for_each_page(e.aggregate_id, from, at, [&](std::span<const event> page) { return folder->apply(page); });
    if (!n) {
      fail(n.error());
      continue;
    }
    auto st = folder->state();
    if (!st) {
      fail(st.error());
      continue;
    }
    if (!st->is_object()) {
      fail(error::invalid("reducer", "the state must be an object to be snapshotted"));
      continue;
    }
    compaction_change change;
    change.compaction_id = new_uuid_v4();
    change.aggregate_id = e.aggregate_id;
    change.strategy = "snapshot_policy";
    change.upto = at;
    change.snapshot = std::make_pair(at, std::move(st->get_object()));
    change.keep_snapshots = p.keep_last;
    auto r = store_.apply_compaction(change);
    if (!r) {
      fail(r.error());
      continue;
    }
    ++written;
  }
  if (first_error) return *first_error;
  return written;
}

// ---------------------------------------------------------------------------------------
// compaction_schedule

namespace {

constexpr const char* schedule_type = "pliers-compaction-schedule";

result<std::vector<std::string>> strings_of(const json::object& o, const char* key, const std::string& field) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::vector<std::string>();
  return string_list(*v, field + "." + key);
}

}  // namespace

json::object compaction_schedule::to_json() const {
  json::object c{{"aggregateIds", json::value_from(criteria.aggregate_ids)},
                 {"aggregateTypes", json::value_from(criteria.aggregate_types)},
                 {"minEvents", criteria.min_events}};
  json::object o{{"id", id}, {"criteria", std::move(c)}, {"strategy", strategy.to_json()}, {"intervalMs", interval.count()}};
  if (!reducer_source.empty()) o["reducer"] = reducer_source;
  return o;
}

result<compaction_schedule> compaction_schedule::from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o) return error::invalid("body", "must be an object {\"id\", \"criteria\", \"strategy\", \"intervalMs\", \"reducer\"?}");
  compaction_schedule s;
  const auto* id = o->if_contains("id");
  if (!id || !id->is_string() || id->get_string().empty() || id->get_string().size() > 100)
    return error::invalid("id", "required: 1 to 100 characters");
  s.id = std::string(id->get_string());
  for (char ch : s.id)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' && ch != '.')
      return error::invalid("id", "may hold only letters, digits, '-', '_' and '.'");
  const auto* c = o->if_contains("criteria");
  if (!c || !c->is_object()) return error::invalid("criteria", "required: {\"aggregateIds\" or \"aggregateTypes\", \"minEvents\"?}");
  auto ids = strings_of(c->get_object(), "aggregateIds", "criteria");
  if (!ids) return std::move(ids).error();
  auto types = strings_of(c->get_object(), "aggregateTypes", "criteria");
  if (!types) return std::move(types).error();
  s.criteria.aggregate_ids = std::move(*ids);
  s.criteria.aggregate_types = std::move(*types);
  if (s.criteria.aggregate_ids.empty() && s.criteria.aggregate_types.empty())
    return error::invalid("criteria", "name aggregateIds or aggregateTypes");
  if (const auto* m = c->get_object().if_contains("minEvents"); m && !m->is_null()) {
    if (!m->is_int64() || m->get_int64() < 0) return error::invalid("criteria.minEvents", "must be an integer >= 0");
    s.criteria.min_events = m->get_int64();
  }
  const auto* st = o->if_contains("strategy");
  if (!st) return error::invalid("strategy", "required");
  auto strategy = compaction_strategy::from_json(*st, "strategy");
  if (!strategy) return std::move(strategy).error();
  s.strategy = std::move(*strategy);
  if (const auto* r = o->if_contains("reducer"); r && !r->is_null()) {
    if (!r->is_string()) return error::invalid("reducer", "must be Lua source");
    s.reducer_source = std::string(r->get_string());
    auto compiled = lua_projector::create(s.reducer_source);
    if (!compiled) {
      auto e = std::move(compiled).error();
      e.field = "reducer";
      return e;
    }
  }
  if (s.strategy.type == "snapshot" && s.reducer_source.empty())
    return error::invalid("reducer", "required by the snapshot strategy");
  const auto* iv = o->if_contains("intervalMs");
  if (!iv || !iv->is_int64() || iv->get_int64() < 1000)
    return error::invalid("intervalMs", "required: an integer of at least 1000");
  s.interval = std::chrono::milliseconds(iv->get_int64());
  return s;
}

// ---------------------------------------------------------------------------------------
// compaction_scheduler

result<void> compaction_scheduler::schedule(const compaction_schedule& s) {
  auto check = compaction_schedule::from_json(s.to_json());
  if (!check) return std::move(check).error();
  lifecycle_log log(store_, schedule_type);
  std::lock_guard lock(log.mutex());
  auto r = log.append(s.id, "compaction.scheduled", s.to_json());
  if (!r) return std::move(r).error();
  return {};
}

result<void> compaction_scheduler::cancel(std::string_view id) {
  lifecycle_log log(store_, schedule_type);
  auto meta = store_.get_aggregate_metadata(log.aggregate_of(id));
  if (!meta) return std::move(meta).error();
  std::lock_guard lock(log.mutex());
  auto r = log.append(id, "compaction.cancelled", json::object{{"id", id}});
  if (!r) return std::move(r).error();
  return {};
}

json::object compaction_schedule_state::to_json() const {
  auto o = schedule.to_json();
  o["lastRun"] = format_rfc3339(last_run);
  o["nextRun"] = format_rfc3339(next_run);
  o["lastResult"] = last_result;
  return o;
}

result<std::vector<compaction_schedule_state>> compaction_scheduler::list() {
  std::vector<compaction_schedule_state> out;
  // The schedules: aggregates of type pliers-compaction-schedule.
  std::set<std::string> aggregates;
  event_query q;
  q.aggregate_types.push_back(schedule_type);
  q.event_types.push_back(type_pattern::parse("compaction.scheduled").value());
  pagination page{max_page_limit, log_position{}};
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (const auto& e : r->events) aggregates.insert(e.aggregate_id);
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  for (const auto& agg : aggregates) {
    auto history = store_.read_aggregate(agg, 1, std::nullopt, 100000);
    if (!history) return std::move(history).error();
    std::optional<compaction_schedule_state> st;
    for (const auto& e : *history) {
      if (e.type == "compaction.scheduled") {
        auto s = compaction_schedule::from_json(e.payload);
        if (s) st = compaction_schedule_state{std::move(*s), 0, e.time, {}, nullptr};
        else st.reset();
      } else if (e.type == "compaction.cancelled") {
        st.reset();
      } else if (st && e.type == "compaction.run_started") {
        st->last_run = e.time;
      } else if (st && e.type == "compaction.run_completed") {
        st->last_result = e.payload;
      }
      if (st) st->version = e.sequence.value;
    }
    if (!st) continue;
    st->next_run = st->last_run + st->schedule.interval;
    out.push_back(std::move(*st));
  }
  return out;
}

result<std::vector<std::pair<std::string, batch_compaction_result>>> compaction_scheduler::tick() {
  std::vector<std::pair<std::string, batch_compaction_result>> out;
  auto schedules = list();
  if (!schedules) return std::move(schedules).error();
  lifecycle_log log(store_, schedule_type);
  for (auto& st : *schedules) {
    if (clock_.now() < st.next_run) continue;
    const auto* def = &st.schedule;
    const auto agg = log.aggregate_of(def->id);
    const std::int64_t version = st.version;
    // The claim: only the node whose append lands on `version` runs this occurrence.
    append_request claim{agg, version, {}};
    new_event started;
    started.type = "compaction.run_started";
    started.aggregate_type = schedule_type;
    started.metadata = engine_event_metadata();
    started.payload = {{"id", def->id}, {"node", node_}};
    claim.events.push_back(std::move(started));
    auto claimed = store_.append(std::move(claim));
    if (!claimed) {
      if (claimed.error().code == errc::conflict) continue;  // another node has it
      return std::move(claimed).error();
    }
    std::function<std::unique_ptr<state_folder>()> make_folder;
    if (!def->reducer_source.empty()) {
      const auto source = def->reducer_source;
      make_folder = [source]() -> std::unique_ptr<state_folder> {
        auto p = lua_projector::create(source);
        return p ? std::unique_ptr<state_folder>(std::move(*p)) : nullptr;
      };
    }
    batch_processor batch(store_);
    event_compaction::options opts;
    opts.actor = "schedule:" + def->id + "@" + node_;
    auto r = batch.batch_compact(def->criteria, def->strategy, make_folder, 100, opts);
    new_event done;
    done.type = "compaction.run_completed";
    done.aggregate_type = schedule_type;
    done.metadata = engine_event_metadata();
    if (r) {
      done.payload = r->compaction.to_json();
      done.payload["batch"] = r->summary.to_json();
    } else {
      done.payload = {{"error", r.error().message}};
    }
    done.payload["id"] = def->id;
    done.payload["node"] = node_;
    (void)store_.append(append_request{agg, std::nullopt, {std::move(done)}});
    if (!r) return std::move(r).error();
    out.emplace_back(def->id, std::move(*r));
  }
  return out;
}

void compaction_scheduler::start(std::chrono::milliseconds period) {
  thread_ = std::thread([this, period] {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      (void)tick();  // a failed tick is retried on the next period
      lock.lock();
      cv_.wait_for(lock, period, [&] { return stopping_; });
    }
  });
}

void compaction_scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

// ---------------------------------------------------------------------------------------
// snapshot_policy_service

namespace {
constexpr const char* policy_type = "pliers-snapshot-policy";
constexpr const char* policy_group = "snapshot-policies";
}  // namespace

result<json::object> snapshot_policy_service::set(const json::value& body) {
  const auto* o = body.if_object();
  if (!o) return error::invalid("body", "must be an object {aggregateType, everyEvents, keepLast?, reducer}");
  for (const auto& kv : *o)
    if (kv.key() != "aggregateType" && kv.key() != "everyEvents" && kv.key() != "keepLast" && kv.key() != "reducer")
      return error::invalid(std::string(kv.key()).substr(0, 100), "unknown member of a snapshot policy");
  const auto* t = o->if_contains("aggregateType");
  if (!t || !t->is_string() || t->get_string().empty() || t->get_string().size() > max_aggregate_type_length)
    return error::invalid("aggregateType", "required: 1 to 50 characters");
  const auto* n = o->if_contains("everyEvents");
  if (!n || !n->is_int64() || n->get_int64() < 1) return error::invalid("everyEvents", "required: an integer >= 1");
  std::int64_t keep = 0;
  if (const auto* k = o->if_contains("keepLast"); k && !k->is_null()) {
    if (!k->is_int64() || k->get_int64() < 0) return error::invalid("keepLast", "must be an integer >= 0");
    keep = k->get_int64();
  }
  const auto* r = o->if_contains("reducer");
  if (!r || !r->is_string()) return error::invalid("reducer", "required: Lua source defining `handlers` or `reduce`");
  if (auto p = lua_projector::create(std::string_view(r->get_string())); !p) {
    auto e = std::move(p).error();
    e.field = "reducer";
    return e;
  }
  json::object def{{"aggregateType", t->get_string()}, {"everyEvents", n->get_int64()}, {"keepLast", keep}, {"reducer", r->get_string()}};
  lifecycle_log log(store_, policy_type);
  {
    std::lock_guard lock(log.mutex());
    auto a = log.append(t->get_string(), "snapshot_policy.set", def);
    if (!a) return std::move(a).error();
    std::lock_guard own(mutex_);
    if (defs_.empty()) follow_after_ = std::max(follow_after_, a->events.back().position.value - 1);
  }
  std::lock_guard lock(mutex_);
  defs_[std::string(t->get_string())] = def;
  ++defs_version_;
  return def;
}

result<void> snapshot_policy_service::remove(std::string_view aggregate_type) {
  {
    std::lock_guard lock(mutex_);
    if (!defs_.count(aggregate_type))
      return error::make(errc::not_found, "no snapshot policy for '" + std::string(aggregate_type) + "'");
  }
  lifecycle_log log(store_, policy_type);
  {
    std::lock_guard lock(log.mutex());
    auto a = log.append(aggregate_type, "snapshot_policy.removed", json::object{{"aggregateType", aggregate_type}});
    if (!a) return std::move(a).error();
  }
  std::lock_guard lock(mutex_);
  defs_.erase(defs_.find(aggregate_type));
  ++defs_version_;
  return {};
}

result<void> snapshot_policy_service::reload() {
  lifecycle_log log(store_, policy_type);
  std::map<std::string, json::object, std::less<>> defs;
  std::int64_t follow_after = 0;
  auto r = log.replay({"snapshot_policy.set", "snapshot_policy.removed"}, [&](const event& e) {
    const auto* t = e.payload.if_contains("aggregateType");
    if (!t || !t->is_string()) return;
    if (e.type == "snapshot_policy.set") {
      if (defs.empty()) follow_after = e.position.value - 1;
      defs[std::string(t->get_string())] = e.payload;
    } else {
      defs.erase(std::string(t->get_string()));
    }
  });
  if (!r) return r;
  std::lock_guard lock(mutex_);
  follow_after_ = std::max(follow_after_, follow_after);
  if (defs != defs_) {
    defs_ = std::move(defs);
    ++defs_version_;
  }
  return {};
}

result<json::object> snapshot_policy_service::list() {
  const std::int64_t head = store_.head().value;
  std::lock_guard lock(mutex_);
  json::array policies;
  for (const auto& [type, def] : defs_) policies.push_back(def);
  json::object out{{"policies", std::move(policies)},
                   {"position", position_},
                   {"head", head},
                   {"lag", std::max<std::int64_t>(0, head - position_)},
                   {"owner", owner_}};
  out["lastError"] = last_error_ ? json::value(*last_error_) : json::value(nullptr);
  return out;
}

result<void> snapshot_policy_service::start() {
  if (auto r = reload(); !r) return r;
  thread_ = std::thread([this] { run(); });
  return {};
}

void snapshot_policy_service::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  thread_.join();
  (void)store_.group_release(policy_group, 0, opts_.member);
}

void snapshot_policy_service::run() {
  auto policies = std::make_unique<snapshot_policies>(store_);
  std::uint64_t built = ~std::uint64_t{0};
  auto last_reload = std::chrono::steady_clock::now();
  while (true) {
    bool busy = false;
    if (std::chrono::steady_clock::now() - last_reload > opts_.idle_poll * 10) {
      (void)reload();  // other nodes' changes; retried next round on failure
      last_reload = std::chrono::steady_clock::now();
    }
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      if (built != defs_version_) {
        policies = std::make_unique<snapshot_policies>(store_);
        for (const auto& [type, def] : defs_) {
          const std::string source(def.at("reducer").as_string());
          (void)policies->set({.aggregate_type = type,
                              .every_events = def.at("everyEvents").as_int64(),
                              .keep_last = def.at("keepLast").as_int64(),
                              .make_folder = [source]() -> std::unique_ptr<state_folder> {
                                auto p = lua_projector::create(source);
                                if (p) return std::unique_ptr<state_folder>(std::move(*p));
                                return fold_with([](json::value s, const event&) { return s; });
                              }});
        }
        built = defs_version_;
      }
    }
    std::int64_t follow_after;
    {
      // With no policy nothing touches the store (no lease, no reads of every append).
      std::unique_lock lock(mutex_);
      if (defs_.empty()) {
        owner_ = false;
        cv_.wait_for(lock, opts_.idle_poll, [&] { return stopping_; });
        if (stopping_) return;
        continue;
      }
      follow_after = follow_after_;
    }
    const auto now = default_clock().now();
    auto view = store_.group_sync(policy_group, opts_.member, 1, log_position(follow_after), now, opts_.lease);
    auto claimed = view ? store_.group_claim(policy_group, 0, opts_.member, now, opts_.lease) : result<bool>(false);
    const bool owner = claimed && *claimed;
    if (owner && view && !view->partitions.empty()) {
      // The partition's checkpoint (re-read: another node may have advanced it).
      auto fresh = store_.group_sync(policy_group, opts_.member, 1, log_position(follow_after), now, opts_.lease);
      const log_position after(std::max(
          fresh && !fresh->partitions.empty() ? fresh->partitions[0].checkpoint.value : std::int64_t{0}, follow_after));
      auto page = store_.read_all(after, opts_.page_size);
      bool stale = false;  // a policy registered while the page was read: rebuild first
      {
        std::lock_guard lock(mutex_);
        stale = built != defs_version_;
      }
      if (stale) {
        busy = true;
      } else if (page && !page->empty()) {
        auto n = policies->on_events(*page);
        auto kept = store_.group_checkpoint(policy_group, 0, opts_.member, page->back().position);
        if (kept && *kept) {
          std::lock_guard lock(mutex_);
          position_ = page->back().position.value;
          if (!n) last_error_ = n.error().message;
        }
        busy = page->size() == opts_.page_size;
      } else if (page) {
        std::lock_guard lock(mutex_);
        position_ = after.value;
      }
    }
    std::unique_lock lock(mutex_);
    owner_ = owner;
    if (!owner && view && !view->partitions.empty()) position_ = view->partitions[0].checkpoint.value;
    if (stopping_) return;
    if (!busy) cv_.wait_for(lock, opts_.idle_poll, [&] { return stopping_; });
  }
}

}  // namespace pliers
