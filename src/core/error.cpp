#include "core/error.hpp"

namespace pliers {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::conflict: return "conflict";
    case errc::not_found: return "not_found";
    case errc::forbidden: return "forbidden";
    case errc::payload_too_large: return "payload_too_large";
    case errc::unavailable: return "unavailable";
    case errc::timeout: return "timeout";
    case errc::internal: return "internal";
  }
  return "internal";
}

}  // namespace pliers
