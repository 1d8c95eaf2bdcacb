#include "core/validation.hpp"

#include <boost/json.hpp>
#include <unordered_set>

#include "core/uuid.hpp"

namespace pliers {

namespace {

bool has_control_chars(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

}  // namespace

bool is_valid_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    for (std::size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr std::uint32_t min_for[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_for[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;  // overlong, range, surrogate
    i += n + 1;
  }
  return true;
}

namespace {

// The checks build their error's field (a JSON path) only when they fail: an append of a
// thousand events would otherwise build a dozen strings per event that nobody reads.
template <class Field>
result<void> check_name(std::string_view value, std::size_t max, const Field& field) {
  if (value.empty()) return error::invalid(field(), "must not be empty");
  if (!is_valid_utf8(value)) return error::invalid(field(), "is not valid UTF-8");
  if (value.size() > max)
    return error::invalid(field(), "longer than " + std::to_string(max) + " characters (" +
                                       std::to_string(value.size()) + ")");
  if (has_control_chars(value)) return error::invalid(field(), "contains control characters");
  return {};
}

template <class Field>
result<void> check_uuid(std::optional<std::string>& id, const Field& field) {
  if (!id) return {};
  if (!is_uuid(*id)) return error::invalid(field(), "not a UUID: '" + id->substr(0, 64) + "'");
  for (auto& c : *id)  // canonical_uuid, in place
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
  return {};
}

template <class Field>
result<void> check_optional_string(const boost::json::object& md, const char* key, const Field& base) {
  if (const auto* v = md.if_contains(key); v && !v->is_string())
    return error::invalid(base() + "." + key, "must be a string");
  return {};
}

}  // namespace

result<void> validate_aggregate_id(std::string_view id, std::string_view field) {
  return check_name(id, max_aggregate_id_length, [&] { return std::string(field); });
}

result<void> validate_append(append_request& req) {
  if (auto r = validate_aggregate_id(req.aggregate_id); !r) return r;
  if (req.expected_version && *req.expected_version < 0)
    return error::invalid("expectedVersion", "must be null or an integer >= 0");
  if (req.events.empty()) return error::invalid("events", "must contain at least one event");
  if (req.events.size() > max_events_per_append)
    return error::invalid("events", "more than " + std::to_string(max_events_per_append) + " events in one append");
  std::unordered_set<std::string_view> seen_ids;  // views of the (already lowercased) ids
  if (req.events.size() > 1) seen_ids.reserve(req.events.size());
  for (std::size_t i = 0; i < req.events.size(); ++i) {
    auto& e = req.events[i];
    auto field = [i](const char* member) {
      return [i, member] { return "events[" + std::to_string(i) + "]" + member; };
    };
    if (auto r = check_name(e.type, max_type_length, field(".type")); !r) return r;
    if (e.type.find('*') != std::string::npos)
      return error::invalid(field(".type")(), "'*' is reserved for type patterns");
    if (auto r = check_name(e.aggregate_type, max_aggregate_type_length, field(".aggregateType")); !r) return r;
    if (e.aggregate_type != req.events.front().aggregate_type)
      return error::invalid(field(".aggregateType")(), "all events of one append must share the aggregateType");
    if (e.version < 1) return error::invalid(field(".version")(), "must be an integer >= 1");
    if (auto r = check_uuid(e.id, field(".id")); !r) return r;
    if (auto r = check_uuid(e.causation_id, field(".causationId")); !r) return r;
    if (auto r = check_uuid(e.correlation_id, field(".correlationId")); !r) return r;
    const auto md = field(".metadata");
    for (const char* key : {"sourceSystem", "sourceVersion"}) {
      const auto* v = e.metadata.if_contains(key);
      if (!v) return error::invalid(md() + "." + key, "required");
      if (!v->is_string() || v->get_string().empty())
        return error::invalid(md() + "." + key, "must be a non-empty string");
    }
    for (const char* key : {"userId", "sessionId", "traceId", "spanId"})
      if (auto r = check_optional_string(e.metadata, key, md); !r) return r;
    if (const auto* tags = e.metadata.if_contains("tags")) {
      if (!tags->is_array()) return error::invalid(md() + ".tags", "must be an array of strings");
      for (const auto& t : tags->get_array())
        if (!t.is_string()) return error::invalid(md() + ".tags", "must be an array of strings");
    }
    if (e.id && req.events.size() > 1 && !seen_ids.insert(*e.id).second)
      return error::invalid(field(".id")(), "the same id appears twice in one append");
  }
  return {};
}

}  // namespace pliers
