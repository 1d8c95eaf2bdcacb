// The one place where an append is accepted or refused before it is stored, whatever the
// path it came by (HTTP, CLI, C++ API, later plugins). Error fields are JSON paths of the
// request body, e.g. "events[2].metadata.sourceSystem". Also normalizes: ids lowercased.
#pragma once

#include "core/event.hpp"
#include "core/result.hpp"

namespace pliers {

inline constexpr std::size_t max_events_per_append = 10000;

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s) noexcept;

result<void> validate_aggregate_id(std::string_view aggregate_id, std::string_view field = "aggregateId");
result<void> validate_append(append_request& request);

}  // namespace pliers
