// How a scheduled entry's append request is kept in a store row: one JSON text
// {"aggregateId", "expectedVersion", "event": NewEvent}. Shared by the SQL backends.
#pragma once

#include <string>

#include "store/event_store.hpp"

namespace pliers {

std::string encode_scheduled_request(const append_request& r);
result<append_request> decode_scheduled_request(std::string_view text);
// Validates the entry, assigns the event id and the entry id when absent.
result<void> prepare_scheduled(scheduled_event& entry, timestamp now);

}  // namespace pliers
