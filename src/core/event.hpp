// The event model of the spec's "Event Schema System", plus `position`, the event's place
// in the global log (DESIGN "The log"). Plain value types; no I/O.
#pragma once

#include <boost/json/object.hpp>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"

namespace pliers {

// A strong integer: positions and versions must not be mixed up with each other or with
// counts. Explicit to make, `.value` to read.
template <class Tag>
struct strong_int {
  std::int64_t value = 0;
  constexpr strong_int() = default;
  constexpr explicit strong_int(std::int64_t v) : value(v) {}
  constexpr auto operator<=>(const strong_int&) const = default;
};

// Place in the global log: 1, 2, 3 ... gap-free in commit order. 0 = before the first event.
using log_position = strong_int<struct log_position_tag>;
// Place of an event within its aggregate: 1, 2, 3 ... gap-free. An aggregate's version is
// its last sequence number; 0 = the aggregate does not exist.
using sequence_number = strong_int<struct sequence_number_tag>;

// Column limits from the spec's events table.
inline constexpr std::size_t max_type_length = 100;
inline constexpr std::size_t max_aggregate_type_length = 50;
inline constexpr std::size_t max_aggregate_id_length = 255;

// A stored event (spec BaseEvent + position).
struct event {
  std::string id;              // UUID, lowercase
  std::string type;
  std::int32_t version = 1;    // schema version of the payload
  timestamp time{};            // server-assigned, microseconds, UTC
  std::string aggregate_id;
  std::string aggregate_type;
  sequence_number sequence{};
  log_position position{};
  std::optional<std::string> causation_id;
  std::optional<std::string> correlation_id;
  boost::json::object metadata;  // always has sourceSystem and sourceVersion
  boost::json::object payload;
};

// An event proposed for appending (DESIGN "NewEvent"). The store assigns sequence,
// position and timestamp; id is generated when absent.
struct new_event {
  std::optional<std::string> id;
  std::string type;
  std::string aggregate_type;
  std::int32_t version = 1;
  std::optional<std::string> causation_id;
  std::optional<std::string> correlation_id;
  boost::json::object metadata;
  boost::json::object payload;
};

// appendEvents(aggregateId, expectedVersion, events).
struct append_request {
  std::string aggregate_id;
  std::optional<std::int64_t> expected_version;  // nullopt = any; 0 = must not exist
  std::vector<new_event> events;
};

// What an append assigned to each event, in order.
struct appended_event {
  std::string id;
  sequence_number sequence;
  log_position position;
  timestamp time;
};

struct append_result {
  std::string aggregate_id;
  std::int64_t version = 0;  // the aggregate's version after the append
  std::vector<appended_event> events;
  bool idempotent_replay = false;  // true when nothing was written: a retry of a stored append
};

// Sequence numbers [from, to] (both included) of an aggregate that compaction rewrote:
// events there were moved to the archive or merged (ops/compaction, docs/storage.md).
struct sequence_range {
  std::int64_t from = 0;
  std::int64_t to = 0;
  bool operator==(const sequence_range&) const = default;
};

// Spec AggregateMetadata.
struct aggregate_metadata {
  std::string aggregate_id;
  std::string aggregate_type;
  std::int64_t version = 0;
  timestamp first_event_time{};
  timestamp last_event_time{};
  std::int64_t event_count = 0;
  std::optional<std::int64_t> snapshot_version;
  std::optional<timestamp> snapshot_time;
  // Ranges compaction rewrote, ascending and disjoint. `event_count` counts the live events
  // (after compaction it is below `version`); `version` is never lowered by compaction.
  std::vector<sequence_range> compacted_ranges;
};

// Spec EventSnapshot.
struct snapshot {
  std::string aggregate_id;
  std::string aggregate_type;
  std::int64_t sequence_number = 0;
  boost::json::object data;
  timestamp created_at{};
};

}  // namespace pliers
