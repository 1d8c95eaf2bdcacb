#include "ops/replay.hpp"

#include <algorithm>

namespace pliers {

namespace {

class reducer_folder final : public state_folder {
 public:
  explicit reducer_folder(event_reducer r) : reducer_(std::move(r)) {}
  result<void> start(boost::json::value initial) override {
    state_ = std::move(initial);
    return {};
  }
  result<void> apply(std::span<const event> events) override {
    for (const auto& e : events) state_ = reducer_(std::move(state_), e);
    return {};
  }
  result<boost::json::value> state() override { return state_; }

 private:
  event_reducer reducer_;
  boost::json::value state_;
};

}  // namespace

std::unique_ptr<state_folder> fold_with(event_reducer reducer) { return std::make_unique<reducer_folder>(std::move(reducer)); }

result<std::vector<event>> event_replay::replay_events(std::string_view aggregate_id, std::optional<std::int64_t> from_sequence,
                                                       std::optional<std::int64_t> to_sequence, std::size_t limit) {
  std::vector<event> out;
  auto r = for_each_page(aggregate_id, from_sequence.value_or(1), to_sequence, [&](std::span<const event> page) -> result<void> {
    if (out.size() + page.size() > limit)
      return error::invalid("limit", "more than " + std::to_string(limit) + " events in the range; narrow it");
    out.insert(out.end(), page.begin(), page.end());
    return {};
  });
  if (!r) return std::move(r).error();
  return out;
}

result<std::int64_t> event_replay::for_each_page(std::string_view aggregate_id, std::int64_t from_sequence,
                                                 std::optional<std::int64_t> to_sequence,
                                                 const std::function<result<void>(std::span<const event>)>& fn) {
  std::int64_t next = std::max<std::int64_t>(from_sequence, 1), total = 0;
  while (!to_sequence || next <= *to_sequence) {
    auto page = store_.read_aggregate(aggregate_id, next, to_sequence, page_);
    if (!page) return std::move(page).error();
    if (page->empty()) break;
    total += static_cast<std::int64_t>(page->size());
    if (auto r = fn(*page); !r) return std::move(r).error();
    if (page->size() < page_) break;
    next = page->back().sequence.value + 1;
  }
  return total;
}

result<std::vector<event>> event_replay::replay_by_time_range(timestamp from, timestamp to, const event_filter* filter,
                                                              std::size_t limit) {
  if (to < from) return error::invalid("to", "must not be before from");
  event_query q;
  q.from = from;
  q.to = to;
  if (filter) {
    q.event_types = filter->event_types;
    q.aggregate_types = filter->aggregate_types;
    q.aggregate_ids = filter->aggregate_ids;
  }
  std::vector<event> out;
  pagination page{max_page_limit, log_position{}};
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (auto& e : r->events) {
      if (filter && !filter->matches(e)) continue;
      if (out.size() == limit)
        return error::invalid("limit", "more than " + std::to_string(limit) + " events in the range; narrow it");
      out.push_back(std::move(e));
    }
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  return out;
}

result<replay_state_result> event_replay::replay_to_state(std::string_view aggregate_id, boost::json::value initial_state,
                                                          state_folder& folder, bool use_snapshot) {
  replay_state_result out;
  auto meta = store_.get_aggregate_metadata(aggregate_id);
  if (!meta) return std::move(meta).error();
  out.compacted_ranges = meta->compacted_ranges;
  std::int64_t from = 1;
  if (use_snapshot) {
    auto snap = store_.get_latest_snapshot(aggregate_id);
    if (!snap) return std::move(snap).error();
    if (*snap) {
      initial_state = std::move((*snap)->data);
      out.snapshot_sequence = (*snap)->sequence_number;
      out.version = (*snap)->sequence_number;
      from = (*snap)->sequence_number + 1;
    }
  }
  if (auto r = folder.start(std::move(initial_state)); !r) return std::move(r).error();
  auto n = for_each_page(aggregate_id, from, std::nullopt, [&](std::span<const event> page) -> result<void> {
    out.version = page.back().sequence.value;
    return folder.apply(page);
  });
  if (!n) return std::move(n).error();
  out.events_applied = *n;
  out.version = std::max(out.version, meta->version);  // trailing events may have been compacted away
  auto s = folder.state();
  if (!s) return std::move(s).error();
  out.state = std::move(*s);
  return out;
}

result<replay_state_result> event_replay::replay_to_state(std::string_view aggregate_id, boost::json::value initial_state,
                                                          const event_reducer& reducer, bool use_snapshot) {
  auto folder = fold_with(reducer);
  return replay_to_state(aggregate_id, std::move(initial_state), *folder, use_snapshot);
}

}  // namespace pliers
