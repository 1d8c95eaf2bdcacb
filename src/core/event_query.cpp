#include "core/event_query.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <charconv>

namespace pliers {

bool event_query::matches(const event& e) const {
  if (!event_types.empty() &&
      std::none_of(event_types.begin(), event_types.end(), [&](const auto& p) { return p.matches(e.type); }))
    return false;
  if (!aggregate_types.empty() &&
      std::find(aggregate_types.begin(), aggregate_types.end(), e.aggregate_type) == aggregate_types.end())
    return false;
  if (!aggregate_ids.empty() &&
      std::find(aggregate_ids.begin(), aggregate_ids.end(), e.aggregate_id) == aggregate_ids.end())
    return false;
  if (from && e.time < *from) return false;
  if (to && e.time > *to) return false;
  if (sequence_from && e.sequence.value < *sequence_from) return false;
  if (sequence_to && e.sequence.value > *sequence_to) return false;
  if (!metadata_query.empty()) {
    boost::json::value doc(e.metadata);
    for (const auto& q : metadata_query)
      if (!q.matches(doc)) return false;
  }
  if (!payload_query.empty()) {
    boost::json::value doc(e.payload);
    for (const auto& q : payload_query)
      if (!q.matches(doc)) return false;
  }
  return true;
}

// Cursor format (opaque to clients): "p" followed by the position in base 36, e.g. "p2n9c".
// Short, URL-safe, and strictly validated on the way back in.
std::string encode_cursor(log_position after) {
  char buf[24];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, after.value, 36);
  (void)ec;
  return "p" + std::string(buf, ptr);
}

result<log_position> decode_cursor(std::string_view c, std::string_view field) {
  auto bad = [&] { return error::invalid(std::string(field), "not a cursor returned by this server"); };
  if (c.size() < 2 || c.size() > 14 || c.front() != 'p') return bad();
  std::int64_t v = 0;
  auto [ptr, ec] = std::from_chars(c.data() + 1, c.data() + c.size(), v, 36);
  if (ec != std::errc{} || ptr != c.data() + c.size() || v < 0) return bad();
  for (char ch : c.substr(1))
    if (ch >= 'A' && ch <= 'Z') return bad();  // canonical lowercase only
  return log_position(v);
}

}  // namespace pliers
