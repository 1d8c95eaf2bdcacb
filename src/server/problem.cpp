#include "server/problem.hpp"

#include "core/validation.hpp"

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

// Problem text may quote request bytes: keep it valid UTF-8 (U+FFFD for anything else)
// and short, so the problem document is always valid JSON of bounded size.
std::string clean_text(std::string_view s, std::size_t max) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && out.size() < max;) {
    std::size_t len = 1;
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0xF0) len = 4;
    else if (c >= 0xE0) len = 3;
    else if (c >= 0xC0) len = 2;
    auto piece = s.substr(i, len);
    if (piece.size() == len && (len == 1 ? c < 0x80 : is_valid_utf8(piece))) {
      out.append(piece);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += 1;
    }
  }
  if (out.size() >= max) out += "...";
  return out;
}

}  // namespace

unsigned http_status(const error& e) noexcept { return kind_of(e).status; }

boost::json::object problem_json(const error& e) {
  auto k = kind_of(e);
  boost::json::object o;
  o["type"] = std::string("https://pliers.dev/problems/") + k.slug;
  o["title"] = k.title;
  o["status"] = k.status;
  const auto field = clean_text(e.field, 200);
  o["detail"] = clean_text(e.field.empty() ? e.message : e.field + ": " + e.message, 400);
  o["code"] = to_string(e.code);
  if (!e.field.empty()) o["field"] = field;
  if (e.current_version) o["currentVersion"] = *e.current_version;
  if (e.expected_version) o["expectedVersion"] = *e.expected_version;
  return o;
}

}  // namespace pliers
