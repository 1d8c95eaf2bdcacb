#include "ops/compaction.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <map>
#include <set>

#include "core/event_codec.hpp"
#include "core/type_pattern.hpp"
#include "core/uuid.hpp"
#include "process/lua_sandbox.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

result<std::vector<std::string>> strings_at(const json::object& o, const char* key, const std::string& field) {
  std::vector<std::string> out;
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return out;
  return string_list(*v, field + "." + key);
}

result<std::int64_t> int_at(const json::object& o, const char* key, const std::string& field) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::int64_t{0};
  if (!v->is_int64() || v->get_int64() < 0) return error::invalid(field + "." + key, "must be a non-negative integer");
  return v->get_int64();
}

result<std::vector<type_pattern>> patterns(const std::vector<std::string>& types, const std::string& field) {
  std::vector<type_pattern> out;
  for (const auto& t : types) {
    auto p = type_pattern::parse(t);
    if (!p) {
      auto e = std::move(p).error();
      e.field = field;
      return e;
    }
    out.push_back(std::move(*p));
  }
  return out;
}

bool any_match(const std::vector<type_pattern>& ps, std::string_view type) {
  return std::any_of(ps.begin(), ps.end(), [&](const auto& p) { return p.matches(type); });
}

}  // namespace

result<compaction_strategy> compaction_strategy::from_json(const json::value& v, const std::string& field) {
  if (!v.is_object()) return error::invalid(field, "must be an object {\"type\", \"config\"}");
  const auto& o = v.get_object();
  compaction_strategy s;
  const auto* t = o.if_contains("type");
  if (!t || !t->is_string()) return error::invalid(field + ".type", "is required: snapshot, eliminate_intermediates, merge_similar or custom");
  s.type = std::string(t->get_string());
  if (s.type != "snapshot" && s.type != "eliminate_intermediates" && s.type != "merge_similar" && s.type != "custom")
    return error::invalid(field + ".type", "must be snapshot, eliminate_intermediates, merge_similar or custom");
  json::object empty;
  const json::object* c = &empty;
  if (const auto* cv = o.if_contains("config"); cv && !cv->is_null()) {
    if (!cv->is_object()) return error::invalid(field + ".config", "must be an object");
    c = &cv->get_object();
  }
  const auto cf = field + ".config";
  auto freq = int_at(*c, "snapshotFrequency", cf);
  if (!freq) return std::move(freq).error();
  s.snapshot_frequency = *freq;
  auto keep = int_at(*c, "keepSnapshots", cf);
  if (!keep) return std::move(keep).error();
  s.keep_snapshots = *keep;
  auto el = strings_at(*c, "eliminateTypes", cf);
  if (!el) return std::move(el).error();
  s.eliminate_types = std::move(*el);
  if (const auto* kl = c->if_contains("keepLast"); kl && !kl->is_null()) {
    if (!kl->is_bool()) return error::invalid(cf + ".keepLast", "must be a boolean");
    s.keep_last = kl->get_bool();
  }
  auto mt = strings_at(*c, "mergeTypes", cf);
  if (!mt) return std::move(mt).error();
  s.merge_types = std::move(*mt);
  auto mw = int_at(*c, "mergeWindow", cf);
  if (!mw) return std::move(mw).error();
  s.merge_window_ms = *mw;
  if (const auto* fn = c->if_contains("customFunction"); fn && !fn->is_null()) {
    if (!fn->is_string()) return error::invalid(cf + ".customFunction", "must be Lua source");
    s.custom_function = std::string(fn->get_string());
  }
  if (s.type == "eliminate_intermediates" && s.eliminate_types.empty())
    return error::invalid(cf + ".eliminateTypes", "is required by eliminate_intermediates");
  if (s.type == "merge_similar" && s.merge_types.empty())
    return error::invalid(cf + ".mergeTypes", "is required by merge_similar");
  if (s.type == "custom" && s.custom_function.empty())
    return error::invalid(cf + ".customFunction", "is required by custom");
  if (auto p = patterns(s.eliminate_types, cf + ".eliminateTypes"); !p) return std::move(p).error();
  if (auto p = patterns(s.merge_types, cf + ".mergeTypes"); !p) return std::move(p).error();
  return s;
}

json::object compaction_strategy::to_json() const {
  json::object c;
  if (snapshot_frequency) c["snapshotFrequency"] = snapshot_frequency;
  if (keep_snapshots) c["keepSnapshots"] = keep_snapshots;
  if (!eliminate_types.empty()) c["eliminateTypes"] = json::value_from(eliminate_types);
  if (type == "eliminate_intermediates") c["keepLast"] = keep_last;
  if (!merge_types.empty()) c["mergeTypes"] = json::value_from(merge_types);
  if (merge_window_ms) c["mergeWindow"] = merge_window_ms;
  if (!custom_function.empty()) c["customFunction"] = custom_function;
  return {{"type", type}, {"config", std::move(c)}};
}

void compaction_result::add(const compaction_result& o) {
  original_event_count += o.original_event_count;
  compacted_event_count += o.compacted_event_count;
  space_saved += o.space_saved;
  snapshots_created += o.snapshots_created;
  events_eliminated += o.events_eliminated;
  compaction_ids.insert(compaction_ids.end(), o.compaction_ids.begin(), o.compaction_ids.end());
  aggregates_compacted += o.aggregates_compacted;
}

json::object compaction_result::to_json() const {
  json::object o{{"originalEventCount", original_event_count}, {"compactedEventCount", compacted_event_count},
                 {"spaceSaved", space_saved},                 {"snapshotsCreated", snapshots_created},
                 {"eventsEliminated", events_eliminated},     {"compactionTime", compaction_time_ms},
                 {"aggregatesCompacted", aggregates_compacted}};
  o["compactionIds"] = json::value_from(compaction_ids);
  json::array r;
  for (const auto& x : ranges) r.push_back(json::object{{"from", x.from}, {"to", x.to}});
  o["compactedRanges"] = std::move(r);
  return o;
}

json::object compose_patches(const json::object& a, const json::object& b) {
  json::object out = a;
  for (const auto& [k, v] : b) {
    auto* prev = out.if_contains(k);
    if (v.is_object() && prev && prev->is_object()) out[k] = compose_patches(prev->get_object(), v.get_object());
    else out[k] = v;
  }
  return out;
}

json::value apply_merge_patch(json::value target, const json::value& patch) {
  if (!patch.is_object()) return patch;
  if (!target.is_object()) target = json::object();
  auto& t = target.get_object();
  for (const auto& [k, v] : patch.get_object()) {
    if (v.is_null()) t.erase(k);
    else {
      auto* cur = t.if_contains(k);
      t[k] = apply_merge_patch(cur ? *cur : json::value(), v);
    }
  }
  return target;
}

result<compaction_result> event_compaction::compact_aggregate(std::string_view aggregate_id, const compaction_strategy& strategy,
                                                              state_folder* folder) {
  return compact(aggregate_id, strategy, folder, std::nullopt, std::nullopt);
}

result<compaction_result> event_compaction::compact_time_window(timestamp from, timestamp to, const compaction_strategy& strategy,
                                                                state_folder* folder, std::size_t max_aggregates) {
  if (to < from) return error::invalid("to", "must not be before from");
  const auto started = std::chrono::steady_clock::now();
  std::set<std::string> ids;
  event_query q;
  q.from = from;
  q.to = to;
  pagination page{max_page_limit, log_position{}};
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (const auto& e : r->events) {
      if (e.aggregate_id == opts_.audit_aggregate) continue;
      ids.insert(e.aggregate_id);
      if (ids.size() > max_aggregates)
        return error::invalid("to", "more than " + std::to_string(max_aggregates) + " aggregates in the window");
    }
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  compaction_result total;
  for (const auto& id : ids) {
    auto r = compact(id, strategy, folder, from, to);
    if (!r) return std::move(r).error();
    total.add(*r);
  }
  total.compaction_time_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  return total;
}

result<compaction_result> event_compaction::compact(std::string_view aggregate_id, const compaction_strategy& s,
                                                    state_folder* folder, std::optional<timestamp> from,
                                                    std::optional<timestamp> to) {
  const auto started = std::chrono::steady_clock::now();
  if (s.type == "snapshot" && !folder)
    return error::invalid("reducer", "the snapshot strategy needs a reducer to compute the state");
  auto meta = store_.get_aggregate_metadata(aggregate_id);
  if (!meta) return std::move(meta).error();
  const std::int64_t upto = meta->version;
  std::vector<event> live;
  auto read = replay_.for_each_page(aggregate_id, 1, upto, [&](std::span<const event> page) -> result<void> {
    live.insert(live.end(), page.begin(), page.end());
    return {};
  });
  if (!read) return std::move(read).error();
  auto in_window = [&](const event& e) { return (!from || e.time >= *from) && (!to || e.time <= *to); };

  compaction_change change;
  change.compaction_id = new_uuid_v4();
  change.aggregate_id = std::string(aggregate_id);
  change.strategy = s.type;
  change.upto = upto;
  change.keep_snapshots = s.keep_snapshots;
  std::int64_t snapshot_at = upto;

  if (s.type == "snapshot") {
    std::int64_t target = s.snapshot_frequency > 0 ? (upto / s.snapshot_frequency) * s.snapshot_frequency : upto;
    if (from || to) {
      target = 0;
      for (const auto& e : live)
        if (in_window(e)) target = e.sequence.value;
    }
    snapshot_at = target;
    for (const auto& e : live)
      if (e.sequence.value <= target && in_window(e)) change.remove.push_back(e.sequence.value);
  } else if (s.type == "eliminate_intermediates") {
    auto ps = patterns(s.eliminate_types, "eliminateTypes");
    if (!ps) return std::move(ps).error();
    std::map<std::string, std::int64_t> last_of_type;
    for (const auto& e : live)
      if (in_window(e) && any_match(*ps, e.type)) last_of_type[e.type] = e.sequence.value;
    for (const auto& e : live)
      if (in_window(e) && any_match(*ps, e.type) && !(s.keep_last && last_of_type[e.type] == e.sequence.value))
        change.remove.push_back(e.sequence.value);
  } else if (s.type == "merge_similar") {
    auto ps = patterns(s.merge_types, "mergeTypes");
    if (!ps) return std::move(ps).error();
    const auto window = std::chrono::milliseconds(s.merge_window_ms);
    std::size_t i = 0;
    while (i < live.size()) {
      const auto& first = live[i];
      std::size_t j = i + 1;
      if (in_window(first) && any_match(*ps, first.type))
        while (j < live.size() && live[j].type == first.type && in_window(live[j]) && live[j].time - first.time <= window) ++j;
      if (j - i > 1) {
        json::object merged = live[i].payload;
        for (std::size_t k = i; k + 1 < j; ++k) {
          change.remove.push_back(live[k].sequence.value);
          merged = compose_patches(merged, live[k + 1].payload);
        }
        auto md = live[j - 1].metadata;
        md["compaction"] = json::object{{"mergedFrom", live[i].sequence.value},
                                        {"mergedTo", live[j - 1].sequence.value},
                                        {"mergedCount", static_cast<std::int64_t>(j - i)},
                                        {"compactionId", change.compaction_id}};
        change.rewrite.push_back({live[j - 1].sequence.value, std::move(merged), std::move(md)});
      }
      i = j;
    }
  } else {  // custom
    auto sb = lua_sandbox::create(s.custom_function, "customFunction");
    if (!sb) {
      auto e = std::move(sb).error();
      e.field = "customFunction";
      return e;
    }
    json::value arg(json::array_kind);
    std::set<std::int64_t> candidates;
    for (const auto& e : live)
      if (in_window(e)) {
        arg.get_array().push_back(event_to_json(e));
        candidates.insert(e.sequence.value);
      }
    auto out = (*sb)->call("compact", std::span<const json::value>(&arg, 1));
    if (!out) return std::move(out).error();
    const json::array* remove = nullptr;
    if (out->is_array()) remove = &out->get_array();
    else if (out->is_object()) {
      if (auto* r = out->get_object().if_contains("remove"); r && r->is_array()) remove = &r->get_array();
      if (auto* rw = out->get_object().if_contains("rewrite"); rw && rw->is_array())
        for (const auto& x : rw->get_array()) {
          const auto* o = x.if_object();
          const auto* sq = o ? o->if_contains("sequenceNumber") : nullptr;
          const auto* pl = o ? o->if_contains("payload") : nullptr;
          if (!sq || !sq->is_int64() || !pl || !pl->is_object() || !candidates.count(sq->get_int64()))
            return error::invalid("customFunction", "rewrite entries must be {sequenceNumber, payload} of events passed in");
          auto it = std::find_if(live.begin(), live.end(), [&](const event& e) { return e.sequence.value == sq->get_int64(); });
          auto md = it->metadata;
          md["compaction"] = json::object{{"rewritten", true}, {"compactionId", change.compaction_id}};
          change.rewrite.push_back({sq->get_int64(), pl->get_object(), std::move(md)});
        }
    } else if (!out->is_null())
      return error::invalid("customFunction", "compact(events) must return sequence numbers or {remove, rewrite}");
    if (remove)
      for (const auto& x : *remove) {
        if (!x.is_int64() || !candidates.count(x.get_int64()))
          return error::invalid("customFunction", "compact(events) returned a sequence number it was not given");
        change.remove.push_back(x.get_int64());
      }
    std::sort(change.remove.begin(), change.remove.end());
    change.remove.erase(std::unique(change.remove.begin(), change.remove.end()), change.remove.end());
    for (const auto& rw : change.rewrite)
      if (std::binary_search(change.remove.begin(), change.remove.end(), rw.sequence))
        return error::invalid("customFunction", "an event cannot be both removed and rewritten");
  }

  compaction_result result;
  if (change.remove.empty() && change.rewrite.empty()) {
    result.original_event_count = result.compacted_event_count = meta->event_count;
    return result;
  }

  // The state as of snapshot_at, folded over the original live events (starting from the
  // latest snapshot at or below it).
  if (folder && snapshot_at > 0) {
    auto snap = store_.get_latest_snapshot(aggregate_id);
    if (!snap) return std::move(snap).error();
    json::value initial;
    std::int64_t base = 0;
    if (*snap && (*snap)->sequence_number <= snapshot_at) {
      initial = (*snap)->data;
      base = (*snap)->sequence_number;
    }
    if (*snap && (*snap)->sequence_number > snapshot_at && s.type != "snapshot")
      return error::make(errc::conflict, "the aggregate has a snapshot newer than the events to compact");
    if (auto r = folder->start(std::move(initial)); !r) return std::move(r).error();
    auto b = std::upper_bound(live.begin(), live.end(), base, [](std::int64_t v, const event& e) { return v < e.sequence.value; });
    auto en = std::upper_bound(live.begin(), live.end(), snapshot_at, [](std::int64_t v, const event& e) { return v < e.sequence.value; });
    if (!(*snap && (*snap)->sequence_number > snapshot_at)) {
      if (auto r = folder->apply(std::span<const event>(&*b, static_cast<std::size_t>(en - b))); !r) return std::move(r).error();
      auto st = folder->state();
      if (!st) return std::move(st).error();
      if (!st->is_object()) return error::invalid("reducer", "the state must be a JSON object to be snapshotted");
      change.snapshot = std::make_pair(snapshot_at, std::move(st->get_object()));
    }
  }

  auto applied = store_.apply_compaction(change);
  if (!applied) return std::move(applied).error();
  result.original_event_count = applied->events_before;
  result.compacted_event_count = applied->events_after;
  result.space_saved = applied->bytes_before - applied->bytes_after;
  result.snapshots_created = applied->snapshots_created;
  result.events_eliminated = applied->events_before - applied->events_after;
  result.compaction_ids.push_back(change.compaction_id);
  result.aggregates_compacted = 1;
  result.ranges = applied->ranges;
  result.compaction_time_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();

  // The audit trail is itself an event.
  new_event audit;
  audit.type = "compaction.completed";
  audit.aggregate_type = "pliers.compaction";
  audit.metadata = {{"sourceSystem", "pliers-events"}, {"sourceVersion", "1"}, {"actor", opts_.actor}};
  audit.payload = result.to_json();
  audit.payload["compactionId"] = change.compaction_id;
  audit.payload["aggregateId"] = change.aggregate_id;
  audit.payload["strategy"] = s.to_json();
  audit.payload["upto"] = upto;
  audit.payload["actor"] = opts_.actor;
  if (from) audit.payload["windowFrom"] = to_micros(*from);
  if (to) audit.payload["windowTo"] = to_micros(*to);
  auto logged = store_.append(append_request{opts_.audit_aggregate, std::nullopt, {std::move(audit)}});
  if (!logged) {
    auto e = std::move(logged).error();
    e.message = "compaction " + change.compaction_id + " applied but its audit event was not stored: " + e.message;
    return e;
  }
  return result;
}

}  // namespace pliers
