// The one place that encodes and decodes events and the store's request/response shapes as
// JSON (the spec's camelCase names). Decoders check shapes and types and name the offending
// field; content rules live in validation.hpp. Stateless, thread-safe.
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "core/event_query.hpp"
#include "core/result.hpp"

namespace pliers {

struct json_limits {
  std::size_t max_depth = 64;
};

// Parses text as JSON with the limits; a syntax error or excess depth is invalid_argument
// with `field` = "body".
result<boost::json::value> parse_json(std::string_view text, const json_limits& limits = {});

// A JSON object a store kept as text (metadata, payload, snapshot data). Not one means the
// store was damaged: internal, "corrupt <what> JSON in store".
result<boost::json::object> parse_stored_object(std::string_view text, std::string_view what);

// Stored events.
void write_event_json(std::string& out, const event& e);  // appends compact JSON
// A stored event whose metadata and payload are JSON text already (as a store keeps them,
// written by boost::json::serialize); written exactly as write_event_json writes the event.
struct event_json_view {
  std::string_view id;
  std::string_view type;
  std::int32_t version = 1;
  timestamp time{};
  std::string_view aggregate_id;
  std::string_view aggregate_type;
  sequence_number sequence{};
  log_position position{};
  std::optional<std::string_view> causation_id;
  std::optional<std::string_view> correlation_id;
  std::string_view metadata_json;
  std::string_view payload_json;
};
void write_event_json(std::string& out, const event_json_view& e);
// Appends e to a page (comma-separated) and records its sequence and position.
void add_to_page(event_json_page& page, const event& e);
void add_to_page(event_json_page& page, const event_json_view& e);
boost::json::object event_to_json(const event& e);
result<event> event_from_json(const boost::json::value& v);

// Requests.
// Moves metadata and payload out of `v` (no copy of the event's JSON).
result<new_event> new_event_from_json(boost::json::value& v, const std::string& field);
// Body of POST /v1/aggregates/{id}/events: {"expectedVersion": int|null, "events": [...]}.
result<append_request> append_request_from_json(boost::json::value&& body, std::string aggregate_id);
// Spec EventQuery.
result<event_query> event_query_from_json(const boost::json::value& v, const std::string& field);
// Spec PaginationOptions {limit, cursor}.
result<pagination> pagination_from_json(const boost::json::value& v, const std::string& field);
result<std::size_t> parse_limit(std::string_view text, const std::string& field);

// A NewEvent as JSON (the inverse of new_event_from_json).
boost::json::object to_json(const new_event& e);

// Responses.
boost::json::object to_json(const append_result& r);
void write_append_result_json(std::string& out, const append_result& r);  // the same, as text
boost::json::object to_json(const aggregate_metadata& m);
boost::json::object to_json(const snapshot& s);
void write_query_result_json(std::string& out, const query_result& r);
void write_query_result_json(std::string& out, const query_json_result& r);

// A string or an array of at most 1000 strings, as a list; errors name `field`.
result<std::vector<std::string>> string_list(const boost::json::value& v, const std::string& field);

// Escapes s as a JSON string literal (with quotes) onto out.
void append_json_string(std::string& out, std::string_view s);

}  // namespace pliers
