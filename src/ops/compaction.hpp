// EventCompaction (spec "Event Compaction Strategy"): shrinking the live log of an aggregate
// without losing history. The plan is computed here from the aggregate's live events up to
// its current version (`upto`); the store applies it atomically (event_store::
// apply_compaction): removed events and the originals of merged ones move to the archive
// (listable, restorable), the rewritten sequence ranges are recorded and reported in the
// aggregate's metadata (compactedRanges), versions and positions never change, and new
// appends continue the sequence. Appends racing a compaction are above `upto` and are never
// touched; a second compaction racing on the same events fails with conflict and changes
// nothing. Each compaction appends one audit event (type "compaction.completed", aggregate
// "pliers-compaction-log") saying what, when, how and by whom.
//
// Strategies:
//   snapshot                 needs a reducer: the state as of the target (the version, or
//                            the last multiple of snapshotFrequency) becomes a snapshot and
//                            every live event at or below it moves to the archive;
//                            keepSnapshots > 0 keeps only the newest K snapshots.
//   eliminate_intermediates  events whose type matches eliminateTypes (type patterns) are
//                            archived; keepLast keeps the last event of each such type.
//   merge_similar            runs of consecutive events of one type in mergeTypes, within
//                            mergeWindow ms of the run's first event, become one: the last
//                            event of the run, with the payloads composed as JSON merge
//                            patches (later keys win, null kept as a deletion) and
//                            metadata.compaction = {mergedFrom, mergedTo, mergedCount}.
//   custom                   customFunction is Lua defining compact(events) (the live events
//                            up to the target, as JSON) returning the sequence numbers to
//                            archive, or {remove = {...}, rewrite = {{sequenceNumber=, payload=}}}.
// With a reducer, every strategy also snapshots the state as of `upto`, so replayToState
// (snapshot + remaining events) equals the state of the original log for any reducer.
// Without one, eliminate/merge preserve state only for reducers that treat those types as
// last-writer-wins / merge-patch updates (tests/unit/compaction_property_test.cpp).
//
// Thread-safety: stateless apart from the store reference; calls may run concurrently.
#pragma once

#include <boost/json/object.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "ops/replay.hpp"

namespace pliers {

struct compaction_strategy {
  std::string type;  // snapshot | eliminate_intermediates | merge_similar | custom
  std::int64_t snapshot_frequency = 0;
  std::int64_t keep_snapshots = 0;
  std::vector<std::string> eliminate_types;
  bool keep_last = false;
  std::vector<std::string> merge_types;
  std::int64_t merge_window_ms = 0;
  std::string custom_function;

  // {"type", "config": {...}} with the spec's names; errors name the field under `field`.
  static result<compaction_strategy> from_json(const boost::json::value& v, const std::string& field);
  boost::json::object to_json() const;
};

// Spec CompactionResult, plus what identifies it.
struct compaction_result {
  std::int64_t original_event_count = 0;
  std::int64_t compacted_event_count = 0;
  std::int64_t space_saved = 0;  // bytes, measured by the store (may be negative)
  std::int64_t snapshots_created = 0;
  std::int64_t events_eliminated = 0;
  std::int64_t compaction_time_ms = 0;
  std::vector<std::string> compaction_ids;
  std::int64_t aggregates_compacted = 0;
  std::vector<sequence_range> ranges;  // single-aggregate compactions only
  void add(const compaction_result& other);
  boost::json::object to_json() const;
};

// The merge-patch composition merge_similar uses (exposed for tests): applying
// compose(a, b) equals applying a then b, for patches whose nested objects land on objects.
boost::json::object compose_patches(const boost::json::object& a, const boost::json::object& b);
// RFC 7386 merge patch of `target` by `patch`.
boost::json::value apply_merge_patch(boost::json::value target, const boost::json::value& patch);

class event_compaction {
 public:
  struct options {
    std::string actor = "system";  // recorded in the audit event
    std::string audit_aggregate = "pliers-compaction-log";
  };
  explicit event_compaction(event_store& store) : event_compaction(store, options{}) {}
  event_compaction(event_store& store, options o) : store_(store), replay_(store), opts_(std::move(o)) {}

  // `folder` (a reducer) is required by `snapshot` and optional otherwise; see above.
  // A compaction that would change nothing returns zeros and writes nothing.
  result<compaction_result> compact_aggregate(std::string_view aggregate_id, const compaction_strategy& strategy,
                                              state_folder* folder = nullptr);
  // Compacts, in every aggregate with events in [from, to], only its events in that window
  // (a snapshot strategy snapshots at the last event in the window). At most
  // `max_aggregates` aggregates (invalid_argument beyond).
  result<compaction_result> compact_time_window(timestamp from, timestamp to, const compaction_strategy& strategy,
                                                state_folder* folder = nullptr, std::size_t max_aggregates = 10000);

 private:
  result<compaction_result> compact(std::string_view aggregate_id, const compaction_strategy& strategy, state_folder* folder,
                                    std::optional<timestamp> from, std::optional<timestamp> to);
  event_store& store_;
  event_replay replay_;
  options opts_;
};

}  // namespace pliers
