// UUIDs as canonical lowercase text (8-4-4-4-12). New ids are version 4 from a
// per-thread generator seeded from the OS.
#pragma once

#include <string>
#include <string_view>

namespace pliers {

std::string new_uuid_v4();
// Name-based (version 5, SHA-1): the same name always gives the same id. Used for ids that
// must not change when work is repeated (events a plugin generates for a trigger).
std::string uuid_v5(std::string_view name);
// Any RFC 4122 layout (hex digits and dashes in the 8-4-4-4-12 places), any case.
bool is_uuid(std::string_view text) noexcept;
// Lowercase copy; call only on text that is_uuid accepted.
std::string canonical_uuid(std::string_view text);

}  // namespace pliers
