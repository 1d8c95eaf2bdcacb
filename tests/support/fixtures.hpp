// Test support: request bodies for the HTTP API.
#pragma once

#include <boost/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace pliers::testing {

inline std::string event_json(const std::string& type, const std::string& aggregate_type = "form",
                              boost::json::object payload = {}) {
  return boost::json::serialize(boost::json::object{{"type", type},
                                                    {"aggregateType", aggregate_type},
                                                    {"payload", payload},
                                                    {"metadata", {{"sourceSystem", "it"}, {"sourceVersion", "1"}}}});
}

inline std::string append_body(const std::vector<std::string>& events, std::optional<long long> expected = std::nullopt) {
  std::string s = "{";
  if (expected) s += "\"expectedVersion\":" + std::to_string(*expected) + ",";
  s += "\"events\":[";
  for (std::size_t i = 0; i < events.size(); ++i) s += (i ? "," : "") + events[i];
  return s + "]}";
}

}  // namespace pliers::testing
