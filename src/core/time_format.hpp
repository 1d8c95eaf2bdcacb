// RFC 3339 timestamps: formatting (always UTC, "Z", six fractional digits) and parsing
// (any offset, 0-9 fractional digits, date-only "YYYY-MM-DD" meaning midnight UTC).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"

namespace pliers {

std::string format_rfc3339(timestamp t);
std::optional<timestamp> parse_rfc3339(std::string_view text);

}  // namespace pliers
