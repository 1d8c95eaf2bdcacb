#include "core/type_pattern.hpp"

#include "core/event.hpp"

namespace pliers {

namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (true) {
    auto dot = s.find('.', start);
    out.push_back(s.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return out;
}

// Matches tokens[ti..] against parts[pi..]; `**` backtracks over zero or more parts.
// Iterative with a single backtrack point per `**` run, so cost is O(tokens * parts).
bool match(const std::vector<std::string>& tokens, const std::vector<std::string_view>& parts) {
  std::size_t ti = 0, pi = 0;
  std::size_t star_ti = std::string::npos, star_pi = 0;
  while (pi < parts.size()) {
    if (ti < tokens.size() && tokens[ti] == "**") {
      star_ti = ti++;
      star_pi = pi;
    } else if (ti < tokens.size() && (tokens[ti] == "*" || tokens[ti] == parts[pi])) {
      ++ti;
      ++pi;
    } else if (star_ti != std::string::npos) {
      ti = star_ti + 1;
      pi = ++star_pi;
    } else {
      return false;
    }
  }
  while (ti < tokens.size() && tokens[ti] == "**") ++ti;
  return ti == tokens.size();
}

}  // namespace

result<type_pattern> type_pattern::parse(std::string_view text, std::string_view field) {
  auto fail = [&](std::string why) {
    return error::invalid(std::string(field), "invalid type pattern '" + std::string(text) + "': " + why);
  };
  if (text.empty()) return fail("empty");
  if (text.size() > max_type_length) return fail("longer than 100 characters");
  type_pattern p;
  p.text_ = std::string(text);
  for (auto tok : split(text)) {
    if (tok.empty()) return fail("empty token (leading, trailing or double '.')");
    if (tok != "*" && tok != "**" && tok.find('*') != std::string_view::npos)
      return fail("'*' must be a whole token ('*' or '**')");
    if (tok == "*" || tok == "**") p.literal_ = false;
    p.tokens_.emplace_back(tok);
  }
  return p;
}

bool type_pattern::matches(std::string_view type) const noexcept {
  if (literal_) return type == text_;
  return match(tokens_, split(type));
}

}  // namespace pliers
