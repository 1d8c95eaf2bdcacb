#include "security/access.hpp"

namespace pliers {

const access_policy& default_access_policy() {
  static const allow_all_policy policy;
  return policy;
}

}  // namespace pliers
