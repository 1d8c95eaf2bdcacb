// Helpers every backend uses to apply a compaction_change the same way: validation of the
// change against the aggregate's version, and the sequence ranges it rewrites.
#pragma once

#include <vector>

#include "store/event_store.hpp"

namespace pliers {

// invalid_argument unless: 1 <= upto <= version; `remove` strictly ascending within
// [1, upto]; rewrites within [1, upto], not removed, each once; snapshot within [1, upto];
// keep_snapshots >= 0.
result<void> check_compaction(const compaction_change& change, std::int64_t version);
// Maximal runs of consecutive sequence numbers that the change removes or rewrites.
std::vector<sequence_range> compaction_ranges(const compaction_change& change);
// Sorted, with overlapping or adjacent ranges joined.
std::vector<sequence_range> merge_ranges(std::vector<sequence_range> ranges);
// The memory store's measure of an event's size: its JSON encoding.
std::size_t encoded_size(const event& e);

}  // namespace pliers
