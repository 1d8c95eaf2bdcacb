// The append decision shared by every backend: idempotent replay, duplicate ids, the
// optimistic version check, aggregateType fixed by the first event, and the assignment of
// sequence numbers, positions and timestamps. A backend supplies lookups of what is
// already stored (including what earlier appends of the same group commit wrote) and then
// writes the plan. Not thread-safe: called by the single writer of a backend.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/event.hpp"
#include "core/result.hpp"

namespace pliers {

class append_lookup {
 public:
  struct stored_event {
    std::string aggregate_id;
    sequence_number sequence;
    log_position position;
    timestamp time;
  };
  struct aggregate_state {
    std::string aggregate_type;
    std::int64_t version = 0;
  };
  virtual std::optional<stored_event> find_event(std::string_view id) = 0;
  virtual std::optional<aggregate_state> find_aggregate(std::string_view aggregate_id) = 0;

 protected:
  ~append_lookup() = default;
};

struct append_plan {
  bool replay = false;            // nothing to write: `result` is the original outcome
  bool creates_aggregate = false;
  std::string aggregate_type;
  std::vector<event> events;      // fully assigned, to be written in order
  append_result result;
};

// `head` is the last position used; `now` the commit time (already made monotonic).
// Events without an id get a new version 7 UUID, unless `generate_ids` is false: then the
// id is left empty for the backend to fill in once the position is stored (PostgreSQL,
// docs/adr/0007). The const form copies the events and leaves the request intact, so a
// backend may plan it again after a failed transaction; the rvalue form moves the events
// out.
result<append_plan> plan_append(const append_request& request, append_lookup& lookup, log_position head,
                                timestamp now, bool generate_ids = true);
result<append_plan> plan_append(append_request&& request, append_lookup& lookup, log_position head, timestamp now,
                                bool generate_ids = true);

// Plans several appends that commit together or not at all (publishBatch): each sees the
// ones before it; the first failure fails the group, its field prefixed "appends[i]." when
// the group has more than one append. Positions follow each other from `head`.
result<std::vector<append_plan>> plan_group(const std::vector<append_request>& requests, append_lookup& lookup,
                                            log_position head, timestamp now, bool generate_ids = true);
result<std::vector<append_plan>> plan_group(std::vector<append_request>&& requests, append_lookup& lookup,
                                            log_position head, timestamp now, bool generate_ids = true);

}  // namespace pliers
