// Event type patterns (DESIGN "Distribution"): dot-separated tokens where `*` matches
// exactly one token and `**` matches zero or more; any other token matches itself.
// `form.*` matches `form.created` but not `form.field.added`; `submission.**` matches
// `submission`, `submission.created` and `submission.a.b`. Immutable, thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/result.hpp"

namespace pliers {

class type_pattern {
 public:
  static result<type_pattern> parse(std::string_view text, std::string_view field = "type");
  bool matches(std::string_view type) const noexcept;
  bool is_literal() const noexcept { return literal_; }
  const std::string& text() const noexcept { return text_; }

 private:
  std::string text_;
  std::vector<std::string> tokens_;
  bool literal_ = true;
};

}  // namespace pliers
