// UUIDs as canonical lowercase text (8-4-4-4-12). New ids are version 4 from a
// per-thread generator seeded from the OS.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pliers {

std::string new_uuid_v4();
// Name-based (version 5, SHA-1): the same name always gives the same id. Used for ids that
// must not change when work is repeated (events a plugin generates for a trigger).
std::string uuid_v5(std::string_view name);
// Time-ordered (version 7, RFC 9562): 48 bits of Unix milliseconds, then random bits. New
// event ids: consecutive ids land next to each other in the stores' id indexes instead of
// at random pages (an insert touches one hot page, not a cold one).
std::string new_uuid_v7();
// Ordered and name-based (version 8, RFC 9562 "custom"): the first 48 bits are `order` (a
// log position), the rest a SHA-1 of `name`. Ids derived from repeatable work (a plugin's
// effects of a trigger, keyed by the trigger's position) that still land in index order.
std::string uuid_v8_ordered(std::int64_t order, std::string_view name);
// Positional (version 8): a 60-bit `tag` (a store's, random per database) in the first 64
// bits around the version, then the variant and a log position (62 bits). The PostgreSQL
// store names the events it generates ids for this way (docs/adr/0007): the id is its
// position, so no index maps one to the other. `position` must be in [0, 2^62).
std::string uuid_v8_positional(std::uint64_t tag, std::int64_t position);
// The first 19 characters of every uuid_v8_positional(tag, ...): "tttttttt-tttt-8ttt-".
std::string uuid_v8_positional_prefix(std::uint64_t tag);
// The position in an id made by uuid_v8_positional(tag, ...) (lowercase or not), or -1.
std::int64_t uuid_v8_position(std::string_view id, std::uint64_t tag) noexcept;
// Any RFC 4122 layout (hex digits and dashes in the 8-4-4-4-12 places), any case.
bool is_uuid(std::string_view text) noexcept;
// Lowercase copy; call only on text that is_uuid accepted.
std::string canonical_uuid(std::string_view text);

}  // namespace pliers
