#include "store/memory/memory_store.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <mutex>

#include "core/clock.hpp"
#include "core/event_codec.hpp"
#include "store/compaction_support.hpp"
#include "store/dead_letter_codec.hpp"
#include "store/scheduled_codec.hpp"

namespace pliers {

memory_store::memory_store(const store_options& options)
    : clock_(options.time_source ? *options.time_source : default_clock()) {}

std::optional<append_lookup::stored_event> memory_store::find_event(std::string_view id) {
  // Compacted events keep their ids here, like PostgreSQL's event_ids: a retry of a
  // compacted append is still recognised.
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end()) return std::nullopt;
  const auto& e = log_[it->second];
  return stored_event{e.aggregate_id, e.sequence, e.position, e.time};
}

std::optional<append_lookup::aggregate_state> memory_store::find_aggregate(std::string_view aggregate_id) {
  auto it = aggregates_.find(std::string(aggregate_id));
  if (it == aggregates_.end()) return std::nullopt;
  return aggregate_state{it->second.type, it->second.version};
}

void memory_store::submit_group(std::vector<append_request> requests, group_callback done) {
  std::unique_lock lock(mutex_);
  last_time_ = std::max(last_time_, clock_.now());
  auto plans = plan_group(std::move(requests), *this, log_position(static_cast<std::int64_t>(log_.size())), last_time_);
  if (!plans) {
    lock.unlock();
    done(std::move(plans).error());
    return;
  }
  std::vector<append_result> results;
  bool wrote = false;
  for (auto& plan : *plans) {
    if (!plan.replay) {
      wrote = true;
      auto& agg = aggregates_[plan.events.front().aggregate_id];
      if (plan.creates_aggregate) {
        agg.type = plan.aggregate_type;
        agg.first_time = plan.events.front().time;
      }
      agg.version = plan.events.back().sequence.value;
      agg.last_time = plan.events.back().time;
      for (auto& e : plan.events) {
        by_id_.emplace(e.id, log_.size());
        agg.events.emplace(e.sequence.value, log_.size());
        log_.push_back(std::move(e));
        live_.push_back(1);
      }
    }
    results.push_back(std::move(plan.result));
  }
  lock.unlock();
  if (wrote) notify_committed();
  done(std::move(results));
}

result<std::vector<event>> memory_store::read_aggregate(std::string_view aggregate_id, std::int64_t from_version,
                                                        std::optional<std::int64_t> to_version, std::size_t limit) {
  std::shared_lock lock(mutex_);
  std::vector<event> out;
  auto it = aggregates_.find(std::string(aggregate_id));
  if (it == aggregates_.end()) return out;
  const auto& idx = it->second.events;
  const auto last = to_version.value_or(INT64_MAX);
  for (auto i = idx.lower_bound(from_version); i != idx.end() && i->first <= last && out.size() < limit; ++i)
    out.push_back(log_[i->second]);
  return out;
}

result<query_result> memory_store::query(const event_query& q, const pagination& page) {
  std::shared_lock lock(mutex_);
  query_result r;
  // Without a total, only the events after the cursor are looked at, up to one past the page.
  std::size_t i = 0;
  if (!page.count_total)
    i = static_cast<std::size_t>(std::partition_point(log_.begin(), log_.end(), [&](const event& e) {
                                   return e.position <= page.after;
                                 }) - log_.begin());
  for (; i < log_.size(); ++i) {
    const auto& e = log_[i];
    if (!live_[i] || !q.matches(e)) continue;
    if (page.count_total) ++r.total_count;
    if (e.position <= page.after) continue;
    if (r.events.size() < page.limit) {
      r.events.push_back(e);
    } else {
      r.has_more = true;
      if (!page.count_total) break;
    }
  }
  if (r.has_more) r.cursor = encode_cursor(r.events.back().position);
  return r;
}

result<std::vector<event>> memory_store::read_all(log_position after, std::size_t limit) {
  std::shared_lock lock(mutex_);
  std::vector<event> out;
  for (auto i = static_cast<std::size_t>(std::max<std::int64_t>(after.value, 0)); i < log_.size() && out.size() < limit; ++i)
    if (live_[i]) out.push_back(log_[i]);
  return out;
}

result<event> memory_store::get_event(std::string_view id) {
  std::shared_lock lock(mutex_);
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end() || !live_[it->second]) return error::make(errc::not_found, "no event with id " + std::string(id));
  return log_[it->second];
}

result<aggregate_metadata> memory_store::get_aggregate_metadata(std::string_view aggregate_id) {
  std::shared_lock lock(mutex_);
  auto it = aggregates_.find(std::string(aggregate_id));
  if (it == aggregates_.end())
    return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
  aggregate_metadata m;
  m.aggregate_id = it->first;
  m.aggregate_type = it->second.type;
  m.version = it->second.version;
  m.event_count = static_cast<std::int64_t>(it->second.events.size());
  m.first_event_time = it->second.first_time;
  m.last_event_time = it->second.last_time;
  for (const auto& [cid, r] : it->second.compacted) m.compacted_ranges.push_back(r);
  m.compacted_ranges = merge_ranges(std::move(m.compacted_ranges));
  if (auto s = snapshots_.find(it->first); s != snapshots_.end() && !s->second.empty()) {
    m.snapshot_version = s->second.rbegin()->first;
    m.snapshot_time = s->second.rbegin()->second.created_at;
  }
  return m;
}

result<void> memory_store::create_snapshot(std::string_view aggregate_id, std::int64_t sequence,
                                           boost::json::object data) {
  std::unique_lock lock(mutex_);
  auto it = aggregates_.find(std::string(aggregate_id));
  if (it == aggregates_.end())
    return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
  auto version = it->second.version;
  if (sequence < 1 || sequence > version)
    return error::invalid("sequenceNumber", "must be between 1 and the aggregate's version " + std::to_string(version));
  snapshot s{it->first, it->second.type, sequence, std::move(data), std::max(last_time_, clock_.now())};
  snapshots_[it->first][sequence] = std::move(s);
  return {};
}

result<std::optional<snapshot>> memory_store::get_latest_snapshot(std::string_view aggregate_id) {
  std::shared_lock lock(mutex_);
  auto it = snapshots_.find(std::string(aggregate_id));
  if (it == snapshots_.end() || it->second.empty()) return std::optional<snapshot>();
  return std::optional<snapshot>(it->second.rbegin()->second);
}

result<scheduled_event> memory_store::schedule(scheduled_event entry) {
  std::unique_lock lock(mutex_);
  if (auto ok = prepare_scheduled(entry, clock_.now()); !ok) return std::move(ok).error();
  if (scheduled_.count(entry.id)) return error::make(errc::conflict, "scheduled entry " + entry.id + " exists");
  scheduled_[entry.id] = entry;
  return entry;
}

result<std::vector<scheduled_event>> memory_store::list_scheduled(std::optional<std::string> status, std::size_t limit) {
  std::shared_lock lock(mutex_);
  std::vector<scheduled_event> out;
  for (const auto& [id, e] : scheduled_)
    if ((!status || e.status == *status) && out.size() < limit) out.push_back(e);
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.publish_at < b.publish_at; });
  return out;
}

result<scheduled_event> memory_store::get_scheduled(std::string_view id) {
  std::shared_lock lock(mutex_);
  auto it = scheduled_.find(std::string(id));
  if (it == scheduled_.end()) return error::make(errc::not_found, "no scheduled event " + std::string(id));
  return it->second;
}

result<void> memory_store::cancel_scheduled(std::string_view id) {
  std::unique_lock lock(mutex_);
  auto it = scheduled_.find(std::string(id));
  if (it == scheduled_.end()) return error::make(errc::not_found, "no scheduled event " + std::string(id));
  if (it->second.status != "pending")
    return error::make(errc::conflict, "scheduled event " + std::string(id) + " is " + it->second.status);
  it->second.status = "cancelled";
  return {};
}

result<std::vector<scheduled_event>> memory_store::claim_due(timestamp now, std::size_t max, std::chrono::seconds lease) {
  std::unique_lock lock(mutex_);
  std::vector<scheduled_event> out;
  for (auto& [id, e] : scheduled_) {
    if (out.size() >= max) break;
    if (e.status != "pending" || e.publish_at > now) continue;
    auto c = claimed_until_.find(id);
    if (c != claimed_until_.end() && c->second > now) continue;
    claimed_until_[id] = now + lease;
    ++e.attempts;
    out.push_back(e);
  }
  return out;
}

result<void> memory_store::finish_scheduled(std::string_view id, std::string status, std::optional<log_position> position,
                                            std::optional<std::string> err) {
  std::unique_lock lock(mutex_);
  auto it = scheduled_.find(std::string(id));
  if (it == scheduled_.end()) return error::make(errc::not_found, "no scheduled event " + std::string(id));
  it->second.status = std::move(status);
  it->second.position = position;
  it->second.last_error = std::move(err);
  claimed_until_.erase(it->first);
  return {};
}

result<event_store::group_view> memory_store::group_sync(std::string_view name, std::string_view member, int partitions,
                                                        log_position start, timestamp now, std::chrono::milliseconds ttl) {
  std::unique_lock lock(mutex_);
  auto& g = groups_[std::string(name)];
  if (g.partitions.empty())
    for (int p = 0; p < partitions; ++p) g.partitions.push_back({p, std::nullopt, timestamp{}, start});
  g.heartbeats[std::string(member)] = now;
  group_view view;
  for (const auto& [m, seen] : g.heartbeats)
    if (seen + ttl >= now) view.members.push_back(m);
  view.partitions = g.partitions;
  return view;
}

result<bool> memory_store::group_claim(std::string_view name, int partition, std::string_view member, timestamp now,
                                       std::chrono::milliseconds ttl) {
  std::unique_lock lock(mutex_);
  auto it = groups_.find(name);
  if (it == groups_.end() || partition < 0 || partition >= static_cast<int>(it->second.partitions.size()))
    return error::make(errc::not_found, "no such group partition");
  auto& p = it->second.partitions[static_cast<std::size_t>(partition)];
  if (p.owner && *p.owner != member && p.lease_until >= now) return false;
  p.owner = std::string(member);
  p.lease_until = now + ttl;
  return true;
}

result<bool> memory_store::group_checkpoint(std::string_view name, int partition, std::string_view member,
                                            log_position position) {
  std::unique_lock lock(mutex_);
  auto it = groups_.find(name);
  if (it == groups_.end() || partition < 0 || partition >= static_cast<int>(it->second.partitions.size()))
    return error::make(errc::not_found, "no such group partition");
  auto& p = it->second.partitions[static_cast<std::size_t>(partition)];
  if (p.owner != std::optional<std::string>(std::string(member))) return false;
  p.checkpoint = std::max(p.checkpoint, position);
  return true;
}

result<void> memory_store::group_release(std::string_view name, int partition, std::string_view member) {
  std::unique_lock lock(mutex_);
  auto it = groups_.find(name);
  if (it == groups_.end() || partition < 0 || partition >= static_cast<int>(it->second.partitions.size())) return {};
  auto& p = it->second.partitions[static_cast<std::size_t>(partition)];
  if (p.owner == std::optional<std::string>(std::string(member))) p.owner.reset();
  return {};
}

result<void> memory_store::group_leave(std::string_view name, std::string_view member) {
  std::unique_lock lock(mutex_);
  auto it = groups_.find(name);
  if (it == groups_.end()) return {};
  it->second.heartbeats.erase(std::string(member));
  for (auto& p : it->second.partitions)
    if (p.owner == std::optional<std::string>(std::string(member))) p.owner.reset();
  return {};
}

namespace {

// dlq_claim_due's rule: a due retry, or a retry whose claimant's lease ran out.
bool dlq_claimable(const dead_letter& d, timestamp now) {
  if (d.status == "pending_retry") return d.next_retry_at && *d.next_retry_at <= now;
  return d.status == "retrying" && d.lease_until <= now;
}

error dlq_not_found(std::string_view id) {
  return error::make(errc::not_found, "no dead-letter entry " + std::string(id));
}

}  // namespace

result<dead_letter> memory_store::dlq_add(dead_letter entry) {
  if (auto ok = prepare_dead_letter(entry); !ok) return std::move(ok).error();
  std::unique_lock lock(mutex_);
  auto key = std::make_pair(entry.consumer, entry.original_event.id);
  if (auto it = dlq_by_key_.find(key); it != dlq_by_key_.end()) return dead_letters_.at(it->second);
  if (dlq_by_id_.count(entry.id)) return error::make(errc::conflict, "dead-letter entry " + entry.id + " exists");
  entry.seq = ++dlq_last_seq_;
  dlq_by_id_.emplace(entry.id, entry.seq);
  dlq_by_key_.emplace(std::move(key), entry.seq);
  dead_letters_.emplace(entry.seq, entry);
  return entry;
}

result<dead_letter> memory_store::dlq_get(std::string_view id) {
  std::shared_lock lock(mutex_);
  auto it = dlq_by_id_.find(id);
  if (it == dlq_by_id_.end()) return dlq_not_found(id);
  return dead_letters_.at(it->second);
}

result<dead_letter_page> memory_store::dlq_list(const dead_letter_filter& filter, std::size_t limit,
                                                std::optional<std::int64_t> after_seq) {
  auto matcher = dead_letter_matcher::make(filter);
  if (!matcher) return std::move(matcher).error();
  limit = std::min(limit, max_page_limit);
  std::shared_lock lock(mutex_);
  dead_letter_page page;
  for (const auto& [seq, d] : dead_letters_) {
    if (!matcher->matches(d)) continue;
    ++page.total_count;
    if (after_seq && seq <= *after_seq) continue;
    if (page.entries.size() < limit) page.entries.push_back(d);
    else page.has_more = true;
  }
  if (page.has_more) page.next_after = page.entries.empty() ? after_seq.value_or(0) : page.entries.back().seq;
  return page;
}

result<std::vector<dead_letter>> memory_store::dlq_claim_due(timestamp now, std::size_t max,
                                                             std::chrono::milliseconds lease) {
  std::unique_lock lock(mutex_);
  std::vector<dead_letter> out;
  for (auto& [seq, d] : dead_letters_) {
    if (out.size() >= max) break;
    if (!dlq_claimable(d, now)) continue;
    d.status = "retrying";
    d.lease_until = now + lease;
    out.push_back(d);
  }
  return out;
}

result<dead_letter> memory_store::dlq_claim(std::string_view id, timestamp now, std::chrono::milliseconds lease) {
  std::unique_lock lock(mutex_);
  auto it = dlq_by_id_.find(id);
  if (it == dlq_by_id_.end()) return dlq_not_found(id);
  auto& d = dead_letters_.at(it->second);
  if (d.status == "resolved") return error::make(errc::conflict, "dead-letter entry " + d.id + " is resolved");
  if (d.status == "retrying" && d.lease_until > now)
    return error::make(errc::conflict, "dead-letter entry " + d.id + " is being retried");
  d.status = "retrying";
  d.lease_until = now + lease;
  return d;
}

result<void> memory_store::dlq_update(const dead_letter& entry) {
  if (auto ok = check_dead_letter_update(entry); !ok) return ok;
  std::unique_lock lock(mutex_);
  auto it = dlq_by_id_.find(entry.id);
  if (it == dlq_by_id_.end()) return dlq_not_found(entry.id);
  apply_dead_letter_update(dead_letters_.at(it->second), entry);
  return {};
}

std::int64_t memory_store::stored_bytes(const aggregate& a, std::string_view id) const {
  std::int64_t bytes = 0;
  for (const auto& [seq, i] : a.events) bytes += static_cast<std::int64_t>(encoded_size(log_[i]));
  if (auto s = snapshots_.find(std::string(id)); s != snapshots_.end())
    for (const auto& [seq, snap] : s->second) bytes += static_cast<std::int64_t>(boost::json::serialize(snap.data).size());
  return bytes;
}

result<compaction_outcome> memory_store::do_apply_compaction(const compaction_change& change) {
  std::unique_lock lock(mutex_);
  auto it = aggregates_.find(change.aggregate_id);
  if (it == aggregates_.end()) return error::make(errc::not_found, "no aggregate '" + change.aggregate_id + "'");
  auto& agg = it->second;
  if (auto ok = check_compaction(change, agg.version); !ok) return std::move(ok).error();
  for (auto seq : change.remove)
    if (!agg.events.count(seq))
      return error::make(errc::conflict, "event " + std::to_string(seq) + " of '" + change.aggregate_id + "' is not live");
  for (const auto& r : change.rewrite)
    if (!agg.events.count(r.sequence))
      return error::make(errc::conflict, "event " + std::to_string(r.sequence) + " of '" + change.aggregate_id + "' is not live");
  compaction_outcome out;
  out.events_before = static_cast<std::int64_t>(agg.events.size());
  out.bytes_before = stored_bytes(agg, change.aggregate_id);
  const auto now = std::max(last_time_, clock_.now());
  for (auto seq : change.remove) {
    auto i = agg.events.at(seq);
    archive_[log_[i].position.value] = archived_event{log_[i], change.compaction_id, now};
    live_[i] = 0;
    agg.events.erase(seq);
  }
  for (const auto& r : change.rewrite) {
    auto i = agg.events.at(r.sequence);
    archive_[log_[i].position.value] = archived_event{log_[i], change.compaction_id, now};
    log_[i].payload = r.payload;
    log_[i].metadata = r.metadata;
  }
  auto& snaps = snapshots_[change.aggregate_id];
  if (change.snapshot) {
    snaps[change.snapshot->first] = snapshot{change.aggregate_id, agg.type, change.snapshot->first, change.snapshot->second, now};
    out.snapshots_created = 1;
  }
  while (change.keep_snapshots > 0 && static_cast<std::int64_t>(snaps.size()) > change.keep_snapshots) snaps.erase(snaps.begin());
  out.ranges = compaction_ranges(change);
  for (const auto& r : out.ranges) agg.compacted.emplace_back(change.compaction_id, r);
  out.events_after = static_cast<std::int64_t>(agg.events.size());
  out.bytes_after = stored_bytes(agg, change.aggregate_id);
  return out;
}

result<std::vector<archived_event>> memory_store::list_archived(std::string_view aggregate_id,
                                                                std::optional<std::string> compaction_id,
                                                                log_position after, std::size_t limit) {
  std::shared_lock lock(mutex_);
  std::vector<archived_event> out;
  for (auto i = archive_.upper_bound(after.value); i != archive_.end() && out.size() < limit; ++i)
    if (i->second.original.aggregate_id == aggregate_id && (!compaction_id || i->second.compaction_id == *compaction_id))
      out.push_back(i->second);
  return out;
}

result<std::int64_t> memory_store::do_restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id) {
  std::unique_lock lock(mutex_);
  auto it = aggregates_.find(std::string(aggregate_id));
  if (it == aggregates_.end()) return error::make(errc::not_found, "no aggregate '" + std::string(aggregate_id) + "'");
  std::int64_t restored = 0;
  for (auto a = archive_.begin(); a != archive_.end();) {
    if (a->second.original.aggregate_id != aggregate_id || (compaction_id && a->second.compaction_id != *compaction_id)) {
      ++a;
      continue;
    }
    const auto i = static_cast<std::size_t>(a->first - 1);
    log_[i] = std::move(a->second.original);
    live_[i] = 1;
    it->second.events[log_[i].sequence.value] = i;
    ++restored;
    a = archive_.erase(a);
  }
  std::erase_if(it->second.compacted, [&](const auto& c) { return !compaction_id || c.first == *compaction_id; });
  return restored;
}

log_position memory_store::head() {
  std::shared_lock lock(mutex_);
  return log_position(static_cast<std::int64_t>(log_.size()));
}

}  // namespace pliers
