// Error values of the engine. Expected outcomes (a version conflict, something not found,
// invalid input, an unavailable backend) are values, never exceptions: every fallible call
// returns result<T>. The codes never change meaning; server/problem.cpp maps each one to an
// HTTP status and a stable problem `type` URI.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace pliers {

enum class errc : std::uint8_t {
  invalid_argument,   // the caller's input is wrong; `field` names what
  conflict,           // optimistic concurrency or duplicate id; see current_version
  not_found,
  forbidden,          // the access policy refused
  payload_too_large,
  unavailable,        // backend down or overloaded; the caller may retry
  timeout,
  internal,           // a bug or an unexpected backend failure
};

// Stable machine-readable name of a code ("invalid_argument", ...).
const char* to_string(errc code) noexcept;

struct error {
  errc code = errc::internal;
  std::string message;
  std::string field;                          // JSON path of the offending input, if any
  std::optional<std::int64_t> current_version;  // set on version conflicts
  std::optional<std::int64_t> expected_version;

  static error invalid(std::string field_name, std::string why) {
    return {errc::invalid_argument, std::move(why), std::move(field_name), {}, {}};
  }
  static error make(errc c, std::string why) { return {c, std::move(why), {}, {}, {}}; }
};

}  // namespace pliers
