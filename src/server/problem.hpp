// The one table from error codes to HTTP statuses and RFC 9457 problem documents.
// The `type` URIs are stable: clients may branch on them.
#pragma once

#include <boost/json/object.hpp>

#include "core/error.hpp"

namespace pliers {

unsigned http_status(const error& e) noexcept;
// {"type","title","status","detail", plus "field", "currentVersion", "expectedVersion" when set}
boost::json::object problem_json(const error& e);

}  // namespace pliers
