// Spec EventQuery / PaginationOptions / EventQueryResult, compiled: type patterns parsed,
// JSON queries compiled. All ranges include both ends. Results are in ascending position
// order; the cursor is opaque and means "after this position" (see cursor.hpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/event.hpp"
#include "core/json_query.hpp"
#include "core/type_pattern.hpp"

namespace pliers {

struct event_query {
  std::vector<type_pattern> event_types;   // any of (patterns allowed)
  std::vector<std::string> aggregate_types;  // any of
  std::vector<std::string> aggregate_ids;    // any of
  std::optional<timestamp> from;             // timestampRange.from, inclusive
  std::optional<timestamp> to;               // timestampRange.to, inclusive
  std::vector<json_query> metadata_query;    // all must match
  std::vector<json_query> payload_query;     // all must match
  std::optional<std::int64_t> sequence_from;  // sequenceRange, inclusive
  std::optional<std::int64_t> sequence_to;

  // The in-memory evaluation of the whole query; backends may push parts into SQL but
  // must agree with this.
  bool matches(const event& e) const;
};

inline constexpr std::size_t default_page_limit = 100;
inline constexpr std::size_t max_page_limit = 10000;

struct pagination {
  std::size_t limit = default_page_limit;
  log_position after{};  // from a decoded cursor; 0 = from the start
  // false: total_count is left 0. Counting every match scans the whole filtered log, which
  // internal pollers that only page forward must not pay on every poll.
  bool count_total = true;
};

struct query_result {
  std::vector<event> events;
  std::int64_t total_count = 0;  // matches of the whole query, ignoring the page
  bool has_more = false;
  std::optional<std::string> cursor;  // present when has_more
};

// Reads rendered as the API writes them: the events' JSON objects (write_event_json),
// comma-separated, ready to go between "[" and "]". Backends that keep metadata and payload
// as JSON text copy it instead of parsing and re-serializing it.
struct event_json_page {
  std::string json;
  std::size_t count = 0;
  sequence_number last_sequence{};  // of the last event written
  log_position last_position{};
};

struct query_json_result {
  event_json_page events;
  std::int64_t total_count = 0;
  bool has_more = false;
  std::optional<std::string> cursor;
};

// Opaque cursor text for "after position p", and its strict decoder.
std::string encode_cursor(log_position after);
result<log_position> decode_cursor(std::string_view cursor, std::string_view field = "cursor");

}  // namespace pliers
