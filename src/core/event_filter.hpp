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
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/event.hpp"
#include "core/json_query.hpp"
#include "core/result.hpp"
#include "core/type_pattern.hpp"

namespace re2 {
class RE2;
}

namespace pliers {

// The leaf operators of a condition, shared by every code that evaluates one (event
// filters here, routing rules in process/event_router).
enum class condition_op : std::uint8_t { equals, not_equals, contains, regex, in, not_in, exists, prefix, suffix, gt, gte, lt, lte };
std::optional<condition_op> condition_op_from(std::string_view name);
// Whether the operator holds for a field's value (nullptr: the field is missing, which
// makes every operator but `exists` false). `operand` is the condition's value (an array
// for in / not_in); `re` is the compiled operand of regex (compile_condition_regex).
bool condition_op_holds(condition_op o, const boost::json::value* v, const boost::json::value& operand, const re2::RE2* re);
// The regex operand compiled as conditions compile it (RE2, 8 MiB, no logging); nullptr
// with `why` set when the pattern is invalid.
std::shared_ptr<const re2::RE2> compile_condition_regex(std::string_view pattern, std::string* why = nullptr);

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
