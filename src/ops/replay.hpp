// EventReplay (spec "Event Replay & Projection"): reading history back for debugging and
// folding it into state. C++ callers pass functions; the HTTP API and the CLI pass Lua
// (ops/lua_projector.hpp), both through the state_folder seam.
//
// replay_to_state starts from the aggregate's latest snapshot when one exists (its data is
// the state as of its sequence number) and folds only the live events after it; events
// that compaction moved to the archive are never read. State is JSON; a state that is not
// an object is never snapshotted (snapshots hold objects).
//
// Thread-safety: an event_replay holds only a store reference; calls may run concurrently.
// Every call blocks on the store: run it off I/O threads. Reads are paged (`page_size`), so
// memory stays bounded by the page, except replay_events/replay_by_time_range, which
// return at most `limit` events.
#pragma once

#include <boost/json/value.hpp>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>

#include "core/event_filter.hpp"
#include "store/event_store.hpp"

namespace pliers {

// Spec EventReducer over JSON state.
using event_reducer = std::function<boost::json::value(boost::json::value state, const event& e)>;

// Spec EventProjector<T>: an initial state and one handler per event type ("*" catches the
// types without one); events of other types leave the state as it is.
template <class T>
struct event_projector {
  T initial_state;
  std::unordered_map<std::string, std::function<T(T, const event&)>> handlers;
};

// Folds events into a state, keeping the state inside (a Lua state, or a C++ value) between
// calls so it is not copied per event.
class state_folder {
 public:
  virtual ~state_folder() = default;
  virtual result<void> start(boost::json::value initial) = 0;
  virtual result<void> apply(std::span<const event> events) = 0;
  virtual result<boost::json::value> state() = 0;
};

// A state_folder over a C++ reducer.
std::unique_ptr<state_folder> fold_with(event_reducer reducer);

struct replay_state_result {
  boost::json::value state;
  std::int64_t version = 0;                        // the aggregate's version the state is at
  std::optional<std::int64_t> snapshot_sequence;   // when the fold started from a snapshot
  std::int64_t events_applied = 0;
  std::vector<sequence_range> compacted_ranges;    // of the aggregate, at the time of reading
};

class event_replay {
 public:
  explicit event_replay(event_store& store, std::size_t page_size = 5000) : store_(store), page_(page_size) {}

  // Events of one aggregate with from <= sequenceNumber <= to (live events: compacted ranges
  // have holes), at most `limit` (more: invalid_argument naming "limit").
  result<std::vector<event>> replay_events(std::string_view aggregate_id, std::optional<std::int64_t> from_sequence = {},
                                           std::optional<std::int64_t> to_sequence = {}, std::size_t limit = 100000);
  // Events with from <= timestamp <= to that match `filter` (all when null), in position
  // order, at most `limit`.
  result<std::vector<event>> replay_by_time_range(timestamp from, timestamp to, const event_filter* filter = nullptr,
                                                  std::size_t limit = 100000);

  // createProjection over events already in hand.
  template <class T>
  static T create_projection(std::span<const event> events, const event_projector<T>& projector) {
    T state = projector.initial_state;
    const auto any = projector.handlers.find("*");
    for (const auto& e : events) {
      auto h = projector.handlers.find(e.type);
      if (h == projector.handlers.end()) h = any;
      if (h != projector.handlers.end()) state = h->second(std::move(state), e);
    }
    return state;
  }

  // replayToState over JSON state, from the latest snapshot when `use_snapshot`.
  result<replay_state_result> replay_to_state(std::string_view aggregate_id, boost::json::value initial_state,
                                              state_folder& folder, bool use_snapshot = true);
  result<replay_state_result> replay_to_state(std::string_view aggregate_id, boost::json::value initial_state,
                                              const event_reducer& reducer, bool use_snapshot = true);

  // replayToState for any T: folds every live event (no snapshot: T has no JSON form here).
  template <class T>
  result<T> replay_to_state(std::string_view aggregate_id, T initial_state, const std::function<T(T, const event&)>& reducer) {
    T state = std::move(initial_state);
    auto r = for_each_page(aggregate_id, 1, std::nullopt, [&](std::span<const event> page) -> result<void> {
      for (const auto& e : page) state = reducer(std::move(state), e);
      return {};
    });
    if (!r) return std::move(r).error();
    return state;
  }

  // Pages of the aggregate's live events in sequence order; returns the number of events.
  result<std::int64_t> for_each_page(std::string_view aggregate_id, std::int64_t from_sequence,
                                     std::optional<std::int64_t> to_sequence,
                                     const std::function<result<void>(std::span<const event>)>& fn);

 private:
  event_store& store_;
  std::size_t page_;
};

}  // namespace pliers
