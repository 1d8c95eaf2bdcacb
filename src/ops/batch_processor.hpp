// BatchProcessor (spec "Batch Processing"): batchPublish in batches of batchSize,
// batchReplay over many aggregates, batchCompact of the aggregates matching criteria.
// Each reports the spec's BatchResult (totals, processing time, one error per failed
// unit); a failing unit (an append, an aggregate) never stops the others.
//
// Thread-safety: stateless apart from the store reference; calls may run concurrently.
// Every call blocks on the store: run it off I/O threads.
#pragma once

#include <functional>
#include <memory>

#include "ops/compaction.hpp"

namespace pliers {

// One failure of a batch (spec ProcessingError, reduced to what a batch knows).
struct batch_error {
  std::string type;      // the error code's name: conflict, invalid_argument, ...
  std::string message;
  std::string aggregate_id;
  boost::json::object to_json() const;
};

// Spec BatchResult. For batchReplay/batchCompact the units counted are aggregates'
// events (totalEvents = events read / live before compaction).
struct batch_result {
  std::int64_t total_events = 0;
  std::int64_t successful_events = 0;
  std::int64_t failed_events = 0;
  std::int64_t processing_time_ms = 0;
  std::vector<batch_error> errors;
  boost::json::object to_json() const;
};

// Spec BatchReplayResult: a BatchResult plus the state of every aggregate replayed.
struct batch_replay_result {
  batch_result summary;
  std::vector<std::pair<std::string, replay_state_result>> states;  // in the order asked, failures left out
};

// Spec CompactionCriteria: which aggregates batchCompact takes (all given conditions hold).
struct compaction_criteria {
  std::vector<std::string> aggregate_ids;    // these (empty: look them up by type)
  std::vector<std::string> aggregate_types;  // aggregates of these types (required without aggregate_ids)
  std::int64_t min_events = 0;               // with at least this many live events
  std::optional<timestamp> last_event_before;  // whose last event is older than this
  std::size_t max_aggregates = 10000;          // more candidates: invalid_argument
};

struct batch_compaction_result {
  batch_result summary;
  compaction_result compaction;  // the sum over the aggregates compacted
};

class batch_processor {
 public:
  explicit batch_processor(event_store& store) : store_(store) {}

  // Appends `events` (each with its aggregate id; no version check) in batches of at most
  // `batch_size` events: within a batch, consecutive events of one aggregate are one append
  // and the batch's appends go to the store's group commit together. batch_size 1..10000.
  result<batch_result> batch_publish(std::vector<std::pair<std::string, new_event>> events, std::size_t batch_size = 500);

  // replayToState of each aggregate, with a fresh folder from `make_folder` per aggregate.
  result<batch_replay_result> batch_replay(const std::vector<std::string>& aggregate_ids,
                                           const std::function<std::unique_ptr<state_folder>()>& make_folder,
                                           boost::json::value initial_state = {}, bool use_snapshot = true);

  // Compacts every aggregate matching `criteria` with `strategy`, `batch_size` aggregates at
  // a time (the candidates are listed first). `make_folder` may be empty unless the strategy
  // needs a reducer.
  result<batch_compaction_result> batch_compact(const compaction_criteria& criteria, const compaction_strategy& strategy,
                                                const std::function<std::unique_ptr<state_folder>()>& make_folder = {},
                                                std::size_t batch_size = 100, event_compaction::options opts = {});

  // The aggregates matching `criteria`, sorted (used by batch_compact and the scheduler).
  result<std::vector<std::string>> matching_aggregates(const compaction_criteria& criteria);

 private:
  event_store& store_;
};

}  // namespace pliers
