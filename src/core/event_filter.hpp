// EventFilter (spec "Event Publishing System") and the condition tree of DESIGN
// "Distribution": `all` / `any` / `not` over leaves {field, operator, value}.
// Fields: type, aggregateType, aggregateId, routingKey (= metadata.routingKey), version,
// sequenceNumber, position, timestamp, metadata.<path>, payload.<path> (paths as in
// json_query: a.b, items[0].sku). Operators: equals, not_equals, contains, regex (RE2),
// in, not_in, exists, prefix, suffix, gt, gte, lt, lte. A missing field makes every value
// operator false (`exists` is false, `not` inverts as usual).
// EventFilter = eventTypes (type patterns), aggregateTypes, aggregateIds, routingKeys,
// metadataFilters / payloadFilters ({path: value} equalities), timestampRange, conditions.
// Compiled filters are immutable and thread-safe.
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/event.hpp"
#include "core/json_query.hpp"
#include "core/result.hpp"
#include "core/type_pattern.hpp"

namespace pliers {

class condition {
 public:
  // `field` prefixes error paths ("filter.conditions").
  static result<condition> from_json(const boost::json::value& v, const std::string& field, int depth = 0);
  bool matches(const event& e) const;

  struct node;  // internal

 private:
  std::shared_ptr<const node> root_;
};

struct event_filter {
  std::vector<type_pattern> event_types;
  std::vector<std::string> aggregate_types;
  std::vector<std::string> aggregate_ids;
  std::vector<std::string> routing_keys;
  std::vector<std::pair<json_path, boost::json::value>> metadata_filters;
  std::vector<std::pair<json_path, boost::json::value>> payload_filters;
  std::optional<timestamp> from, to;
  std::optional<condition> conditions;
  boost::json::object source;  // the filter as given, for listings (StreamInfo.filter)

  static result<event_filter> from_json(const boost::json::value& v, const std::string& field);
  bool matches(const event& e) const;
};

}  // namespace pliers
