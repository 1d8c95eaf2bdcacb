// JSONQuery (spec "Core Event Operations"): a path into a JSON document, an operator and a
// value. Paths: `$`, `.name`, `[index]`, `['name']` / `["name"]`, e.g. `$.a.b`,
// `$.items[0].sku`; a path without the leading `$` is taken as relative to it.
// Operators:
//   equals   - deep equality; numbers compare by value (1 == 1.0)
//   contains - string: substring; array: holds every element of an array value, or the
//              value itself; object: the value object is a subset (PostgreSQL `@>`)
//   exists   - the path resolves (value ignored)
//   regex    - the string at the path matches the RE2 pattern (unanchored, linear time)
// A path that does not resolve makes every operator but `exists` false.
// A compiled json_query is immutable and safe to share between threads.
#pragma once

#include <boost/json/value.hpp>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "core/result.hpp"

namespace re2 { class RE2; }

namespace pliers {

class json_path {
 public:
  // Parses a path; the error names `field` and says what is wrong.
  static result<json_path> parse(std::string_view text, std::string_view field = "path");
  // The value at the path, or nullptr when it does not resolve.
  const boost::json::value* resolve(const boost::json::value& root) const noexcept;
  // The same from an object (an event's payload or metadata) without wrapping it in a value.
  const boost::json::value* resolve(const boost::json::object& root) const noexcept;
  const std::string& text() const noexcept { return text_; }
  // Steps: a string is an object key, a size_t an array index.
  using step = std::variant<std::string, std::size_t>;
  const std::vector<step>& steps() const noexcept { return steps_; }

 private:
  const boost::json::value* walk(const boost::json::value* cur, const boost::json::object* start) const noexcept;
  std::string text_;
  std::vector<step> steps_;
};

enum class json_operator { equals, contains, exists, regex };
const char* to_string(json_operator op) noexcept;

class json_query {
 public:
  // From the spec's JSON form {"path", "operator", "value"}; `field` prefixes error paths.
  static result<json_query> from_json(const boost::json::value& v, std::string_view field);
  static result<json_query> make(std::string_view path, json_operator op, boost::json::value value,
                                 std::string_view field = "query");

  bool matches(const boost::json::value& document) const;
  boost::json::object to_json() const;

  const json_path& path() const noexcept { return path_; }
  json_operator op() const noexcept { return op_; }
  const boost::json::value& value() const noexcept { return value_; }

 private:
  json_path path_;
  json_operator op_ = json_operator::equals;
  boost::json::value value_;
  std::shared_ptr<const re2::RE2> regex_;
};

// Deep equality with numbers compared by value.
bool json_equal(const boost::json::value& a, const boost::json::value& b) noexcept;
// PostgreSQL-style containment (`@>`) extended with substring for strings.
bool json_contains(const boost::json::value& haystack, const boost::json::value& needle) noexcept;

}  // namespace pliers
