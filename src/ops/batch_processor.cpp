#include "ops/batch_processor.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <condition_variable>
#include <mutex>
#include <set>

namespace pliers {

namespace json = boost::json;
using steady = std::chrono::steady_clock;

namespace {

std::int64_t ms_since(steady::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t).count();
}

batch_error error_of(const error& e, std::string aggregate_id) {
  return {to_string(e.code), (e.field.empty() ? "" : e.field + ": ") + e.message, std::move(aggregate_id)};
}

}  // namespace

json::object batch_error::to_json() const {
  return {{"type", type}, {"message", message}, {"aggregateId", aggregate_id}};
}

json::object batch_result::to_json() const {
  json::array errs;
  for (const auto& e : errors) errs.push_back(e.to_json());
  return {{"totalEvents", total_events},         {"successfulEvents", successful_events},
          {"failedEvents", failed_events},       {"processingTime", processing_time_ms},
          {"errors", std::move(errs)}};
}

result<batch_result> batch_processor::batch_publish(std::vector<std::pair<std::string, new_event>> events,
                                                    std::size_t batch_size) {
  if (batch_size < 1 || batch_size > 10000) return error::invalid("batchSize", "must be from 1 to 10000");
  const auto t0 = steady::now();
  batch_result out;
  out.total_events = static_cast<std::int64_t>(events.size());
  for (std::size_t first = 0; first < events.size(); first += batch_size) {
    const std::size_t last = std::min(events.size(), first + batch_size);
    std::vector<append_request> reqs;
    for (std::size_t i = first; i < last; ++i) {
      if (reqs.empty() || reqs.back().aggregate_id != events[i].first)
        reqs.push_back(append_request{events[i].first, std::nullopt, {}});
      reqs.back().events.push_back(std::move(events[i].second));
    }
    // Every append of the batch is queued before waiting: they share group commits, and
    // each is checked on its own, so one failing append does not fail its neighbours.
    std::mutex m;
    std::condition_variable cv;
    std::size_t pending = reqs.size();
    std::vector<std::optional<error>> failures(reqs.size());
    std::vector<std::int64_t> sizes;
    for (const auto& r : reqs) sizes.push_back(static_cast<std::int64_t>(r.events.size()));
    std::vector<std::string> ids;
    for (const auto& r : reqs) ids.push_back(r.aggregate_id);
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      store_.append_async(std::move(reqs[i]), [&, i](result<append_result> r) {
        std::lock_guard lock(m);
        if (!r) failures[i] = r.error();
        if (--pending == 0) cv.notify_all();
      });
    }
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return pending == 0; });
    for (std::size_t i = 0; i < failures.size(); ++i) {
      if (failures[i]) {
        out.failed_events += sizes[i];
        out.errors.push_back(error_of(*failures[i], ids[i]));
      } else {
        out.successful_events += sizes[i];
      }
    }
  }
  out.processing_time_ms = ms_since(t0);
  return out;
}

result<batch_replay_result> batch_processor::batch_replay(const std::vector<std::string>& aggregate_ids,
                                                          const std::function<std::unique_ptr<state_folder>()>& make_folder,
                                                          json::value initial_state, bool use_snapshot) {
  if (!make_folder) return error::invalid("reducer", "required");
  const auto t0 = steady::now();
  batch_replay_result out;
  event_replay replay(store_);
  for (const auto& id : aggregate_ids) {
    auto folder = make_folder();
    auto r = replay.replay_to_state(id, initial_state, *folder, use_snapshot);
    if (!r) {
      out.summary.errors.push_back(error_of(r.error(), id));
      continue;
    }
    out.summary.total_events += r->events_applied;
    out.summary.successful_events += r->events_applied;
    out.states.emplace_back(id, std::move(*r));
  }
  // An aggregate that failed counts its live events as failed.
  for (const auto& e : out.summary.errors) {
    auto m = store_.get_aggregate_metadata(e.aggregate_id);
    const std::int64_t n = m ? m->event_count : 0;
    out.summary.failed_events += n;
    out.summary.total_events += n;
  }
  out.summary.processing_time_ms = ms_since(t0);
  return out;
}

result<std::vector<std::string>> batch_processor::matching_aggregates(const compaction_criteria& c) {
  std::set<std::string> candidates(c.aggregate_ids.begin(), c.aggregate_ids.end());
  if (c.aggregate_ids.empty()) {
    if (c.aggregate_types.empty()) return error::invalid("criteria", "name aggregateIds or aggregateTypes");
    event_query q;
    q.aggregate_types = c.aggregate_types;
    pagination page{max_page_limit, log_position{}};
    while (true) {
      auto r = store_.query(q, page);
      if (!r) return std::move(r).error();
      for (const auto& e : r->events) {
        candidates.insert(e.aggregate_id);
        if (candidates.size() > c.max_aggregates)
          return error::invalid("criteria", "more than " + std::to_string(c.max_aggregates) + " aggregates match; narrow it");
      }
      if (!r->has_more || r->events.empty()) break;
      page.after = r->events.back().position;
    }
  }
  std::vector<std::string> out;
  for (const auto& id : candidates) {
    auto m = store_.get_aggregate_metadata(id);
    if (!m) {
      if (m.error().code == errc::not_found) continue;
      return std::move(m).error();
    }
    if (!c.aggregate_types.empty() &&
        std::find(c.aggregate_types.begin(), c.aggregate_types.end(), m->aggregate_type) == c.aggregate_types.end())
      continue;
    if (m->event_count < c.min_events) continue;
    if (c.last_event_before && !(m->last_event_time < *c.last_event_before)) continue;
    out.push_back(id);
  }
  return out;
}

result<batch_compaction_result> batch_processor::batch_compact(const compaction_criteria& criteria,
                                                               const compaction_strategy& strategy,
                                                               const std::function<std::unique_ptr<state_folder>()>& make_folder,
                                                               std::size_t batch_size, event_compaction::options opts) {
  if (batch_size < 1 || batch_size > 10000) return error::invalid("batchSize", "must be from 1 to 10000");
  if (strategy.type == "snapshot" && !make_folder) return error::invalid("reducer", "required by the snapshot strategy");
  const auto t0 = steady::now();
  auto ids = matching_aggregates(criteria);
  if (!ids) return std::move(ids).error();
  batch_compaction_result out;
  event_compaction compaction(store_, opts);
  for (std::size_t first = 0; first < ids->size(); first += batch_size) {
    const std::size_t last = std::min(ids->size(), first + batch_size);
    for (std::size_t i = first; i < last; ++i) {
      const auto& id = (*ids)[i];
      auto folder = make_folder ? make_folder() : nullptr;
      auto r = compaction.compact_aggregate(id, strategy, folder.get());
      if (!r) {
        auto m = store_.get_aggregate_metadata(id);
        const std::int64_t n = m ? m->event_count : 0;
        out.summary.total_events += n;
        out.summary.failed_events += n;
        out.summary.errors.push_back(error_of(r.error(), id));
        continue;
      }
      out.summary.total_events += r->original_event_count;
      out.summary.successful_events += r->original_event_count;
      out.compaction.add(*r);
    }
  }
  out.summary.processing_time_ms = ms_since(t0);
  out.compaction.compaction_time_ms = out.summary.processing_time_ms;
  return out;
}

}  // namespace pliers
