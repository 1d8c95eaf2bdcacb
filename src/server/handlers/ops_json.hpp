// Request members shared by /v1/replay, /v1/compaction and /v1/projections: each reader
// takes a body object and a member name and returns invalid_argument naming that member.
#pragma once

#include <boost/json.hpp>
#include <memory>
#include <optional>
#include <string>

#include "core/event_filter.hpp"
#include "core/time_format.hpp"
#include "ops/lua_projector.hpp"

namespace pliers::http_api::ops_json {

inline result<std::string> required_string(const boost::json::object& o, const char* key, std::size_t max = 255) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return error::invalid(key, "required");
  if (!v->is_string() || v->get_string().empty() || v->get_string().size() > max)
    return error::invalid(key, "must be a string of 1 to " + std::to_string(max) + " characters");
  return std::string(v->get_string());
}

// An optional integer in [min, max]; absent or null = nullopt.
inline result<std::optional<std::int64_t>> optional_int(const boost::json::object& o, const char* key, std::int64_t min,
                                                        std::int64_t max = std::numeric_limits<std::int64_t>::max()) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::optional<std::int64_t>();
  if (!v->is_int64() || v->get_int64() < min || v->get_int64() > max)
    return error::invalid(key, "must be an integer from " + std::to_string(min) +
                                   (max == std::numeric_limits<std::int64_t>::max() ? std::string(" up")
                                                                                     : " to " + std::to_string(max)));
  return std::optional<std::int64_t>(v->get_int64());
}

inline result<timestamp> required_time(const boost::json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return error::invalid(key, "required: an RFC 3339 timestamp");
  auto t = v->is_string() ? parse_rfc3339(v->get_string()) : std::nullopt;
  if (!t) return error::invalid(key, "must be an RFC 3339 timestamp");
  return *t;
}

inline result<std::optional<event_filter>> optional_filter(const boost::json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::optional<event_filter>();
  auto f = event_filter::from_json(*v, key);
  if (!f) return std::move(f).error();
  return std::optional<event_filter>(std::move(*f));
}

// Lua source defining handlers/reduce (ops/lua_projector.hpp), compiled; errors name `key`
// (a syntax error keeps Lua's "<chunk>:<line>:" in the message).
inline result<std::unique_ptr<lua_projector>> required_projector(const boost::json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return error::invalid(key, "required: Lua source defining `handlers` or `reduce`");
  if (!v->is_string()) return error::invalid(key, "must be Lua source (a string)");
  if (v->get_string().size() > 256 * 1024) return error::invalid(key, "longer than 256 KiB");
  auto p = lua_projector::create(std::string_view(v->get_string()));
  if (!p) {
    auto e = std::move(p).error();
    e.field = key;
    return e;
  }
  return p;
}

}  // namespace pliers::http_api::ops_json
