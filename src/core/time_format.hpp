// RFC 3339 timestamps: formatting (always UTC, "Z", six fractional digits) and parsing
// (any offset, 0-9 fractional digits, date-only "YYYY-MM-DD" meaning midnight UTC).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"

namespace pliers {

std::string format_rfc3339(timestamp t);

// Writes what format_rfc3339 writes ("YYYY-MM-DDTHH:MM:SS.ffffffZ") without snprintf, the
// date part cached per day: for writers of many timestamps (pages of events, projections).
// The view is valid until the next write. Trivially destructible, so it may live where Lua
// can longjmp past it.
class rfc3339_writer {
 public:
  std::string_view write(timestamp t);

 private:
  std::int64_t day_ = INT64_MIN;
  char buf_[32] = {};
  char fallback_[48] = {};
};
std::optional<timestamp> parse_rfc3339(std::string_view text);

}  // namespace pliers
