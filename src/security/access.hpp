// The one access decision point (DESIGN "Coming next"): every handler that reads or writes
// events asks here before touching the store. Today the policy allows everything; the
// authentication and authorization work replaces allow_all_policy without touching handlers.
#pragma once

#include <string>
#include <string_view>

#include "core/result.hpp"

namespace pliers {

enum class access_action { read, append, admin };

// Who is asking (filled by authentication later; anonymous for now).
struct principal {
  std::string id = "anonymous";
};

// What is touched: an aggregate, an event type, or the whole log ("*").
struct access_target {
  std::string_view aggregate_id;
  std::string_view event_type;
};

class access_policy {
 public:
  virtual ~access_policy() = default;
  // An error (code unavailable/invalid/...) means refuse; the handler returns it as is.
  virtual result<void> authorize(const principal& who, access_action action, const access_target& target) const = 0;
};

class allow_all_policy final : public access_policy {
 public:
  result<void> authorize(const principal&, access_action, const access_target&) const override { return {}; }
};

const access_policy& default_access_policy();

}  // namespace pliers
