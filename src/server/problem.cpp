#include "server/problem.hpp"

namespace pliers {

namespace {

struct problem_kind {
  unsigned status;
  const char* slug;
  const char* title;
};

problem_kind kind_of(const error& e) noexcept {
  switch (e.code) {
    case errc::invalid_argument: return {400, "invalid-request", "Invalid request"};
    case errc::conflict:
      return e.current_version ? problem_kind{409, "version-conflict", "Version conflict"}
                               : problem_kind{409, "conflict", "Conflict"};
    case errc::not_found: return {404, "not-found", "Not found"};
    case errc::forbidden: return {403, "forbidden", "Forbidden"};
    case errc::payload_too_large: return {413, "payload-too-large", "Payload too large"};
    case errc::unavailable: return {503, "unavailable", "Service unavailable"};
    case errc::timeout: return {504, "timeout", "Timed out"};
    case errc::internal: return {500, "internal", "Internal error"};
  }
  return {500, "internal", "Internal error"};
}

}  // namespace

unsigned http_status(const error& e) noexcept { return kind_of(e).status; }

boost::json::object problem_json(const error& e) {
  auto k = kind_of(e);
  boost::json::object o;
  o["type"] = std::string("https://pliers.dev/problems/") + k.slug;
  o["title"] = k.title;
  o["status"] = k.status;
  o["detail"] = e.field.empty() ? e.message : e.field + ": " + e.message;
  o["code"] = to_string(e.code);
  if (!e.field.empty()) o["field"] = e.field;
  if (e.current_version) o["currentVersion"] = *e.current_version;
  if (e.expected_version) o["expectedVersion"] = *e.expected_version;
  return o;
}

}  // namespace pliers
