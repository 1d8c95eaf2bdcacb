#include "store/compaction_support.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <set>

#include "core/event_codec.hpp"

namespace pliers {

result<void> check_compaction(const compaction_change& c, std::int64_t version) {
  if (c.compaction_id.empty()) return error::invalid("compactionId", "is required");
  if (c.upto < 1 || c.upto > version)
    return error::invalid("upto", "must be between 1 and the aggregate's version " + std::to_string(version));
  std::int64_t prev = 0;
  for (auto s : c.remove) {
    if (s <= prev || s > c.upto) return error::invalid("remove", "sequence numbers must ascend within 1..upto");
    prev = s;
  }
  std::set<std::int64_t> seen;
  for (const auto& r : c.rewrite) {
    if (r.sequence < 1 || r.sequence > c.upto || !seen.insert(r.sequence).second ||
        std::binary_search(c.remove.begin(), c.remove.end(), r.sequence))
      return error::invalid("rewrite", "each rewritten event must be live, within 1..upto, and named once");
  }
  if (c.snapshot && (c.snapshot->first < 1 || c.snapshot->first > c.upto))
    return error::invalid("snapshot", "sequence must be within 1..upto");
  if (c.keep_snapshots < 0) return error::invalid("keepSnapshots", "must not be negative");
  return {};
}

std::vector<sequence_range> compaction_ranges(const compaction_change& c) {
  std::vector<std::int64_t> seqs(c.remove.begin(), c.remove.end());
  for (const auto& r : c.rewrite) seqs.push_back(r.sequence);
  std::sort(seqs.begin(), seqs.end());
  std::vector<sequence_range> out;
  for (auto s : seqs) {
    if (!out.empty() && out.back().to + 1 >= s) out.back().to = std::max(out.back().to, s);
    else out.push_back({s, s});
  }
  return out;
}

std::vector<sequence_range> merge_ranges(std::vector<sequence_range> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.from < b.from; });
  std::vector<sequence_range> out;
  for (const auto& r : ranges) {
    if (!out.empty() && out.back().to + 1 >= r.from) out.back().to = std::max(out.back().to, r.to);
    else out.push_back(r);
  }
  return out;
}

std::size_t encoded_size(const event& e) { return boost::json::serialize(event_to_json(e)).size(); }

}  // namespace pliers
