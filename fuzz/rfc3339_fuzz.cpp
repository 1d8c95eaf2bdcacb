// RFC 3339 timestamps (query ranges): parse_rfc3339 on arbitrary text. Invariant: a
// timestamp accepted within years 0001-9999 formats and parses back to itself.
#include <string_view>

#include "core/time_format.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace std::chrono;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto t = pliers::parse_rfc3339(text);
  if (!t) return 0;
  const auto y = static_cast<int>(year_month_day{floor<days>(*t)}.year());
  if (y < 1 || y > 9999) return 0;  // offsets can move a date past the 4-digit range
  const auto formatted = pliers::format_rfc3339(*t);
  auto back = pliers::parse_rfc3339(formatted);
  FUZZ_CHECK(back.has_value(), "a formatted timestamp does not parse");
  FUZZ_CHECK(*back == *t, "format/parse do not round-trip");
  return 0;
}
