#include "bus/consumer_group.hpp"

#include <algorithm>

namespace pliers {

int consumer_group_member::partition_of(std::string_view aggregate_id, int partitions) {
  std::uint64_t h = 1469598103934665603ULL;  // FNV-1a: stable across processes and versions
  for (unsigned char c : aggregate_id) h = (h ^ c) * 1099511628211ULL;
  return static_cast<int>(h % static_cast<std::uint64_t>(partitions));
}

consumer_group_member::consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                                             std::string member, event_filter filter, handler h, options opts)
    : store_(store), tailer_(tailer), clock_(clk), group_(std::move(group)), member_(std::move(member)),
      filter_(std::move(filter)), handler_(std::move(h)), opts_(opts) {
  listener_ = tailer_.add_listener([this](log_position) {
    std::lock_guard lock(mutex_);
    woken_ = true;
    cv_.notify_one();
  });
  thread_ = std::thread([this] { run(); });
}

consumer_group_member::~consumer_group_member() {
  tailer_.remove_listener(listener_);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  for (const auto& [p, pos] : owned_) {
    (void)store_.group_checkpoint(group_, p, member_, pos);
    (void)store_.group_release(group_, p, member_);
  }
  (void)store_.group_leave(group_, member_);
}

std::vector<int> consumer_group_member::owned_partitions() const {
  std::lock_guard lock(mutex_);
  std::vector<int> out;
  for (const auto& [p, pos] : owned_) out.push_back(p);
  return out;
}

void consumer_group_member::sync() {
  auto start = opts_.start.resolve(store_, tailer_);
  if (!start) return;
  auto view = store_.group_sync(group_, member_, opts_.partitions, *start, clock_.now(), opts_.lease);
  if (!view) return;  // the store is unavailable: keep what we have, the lease covers us
  const auto& members = view->members;
  auto me = std::find(members.begin(), members.end(), member_);
  if (me == members.end()) return;
  const auto index = static_cast<int>(me - members.begin());
  const auto n = static_cast<int>(members.size());
  std::map<int, log_position> owned;
  {
    std::lock_guard lock(mutex_);
    owned = owned_;
  }
  for (const auto& p : view->partitions) {
    const bool mine = p.partition % n == index;
    const bool held = owned.count(p.partition) > 0;
    if (held && !mine) {
      // Progress is checkpointed after every batch; hand the partition over.
      (void)store_.group_checkpoint(group_, p.partition, member_, owned[p.partition]);
      (void)store_.group_release(group_, p.partition, member_);
      owned.erase(p.partition);
    } else if (mine) {
      auto claimed = store_.group_claim(group_, p.partition, member_, clock_.now(), opts_.lease);  // also renews
      if (claimed && *claimed) {
        if (!held) owned[p.partition] = p.checkpoint;
      } else {
        owned.erase(p.partition);
      }
    }
  }
  std::lock_guard lock(mutex_);
  owned_ = std::move(owned);
}

bool consumer_group_member::process() {
  std::map<int, log_position> owned;
  {
    std::lock_guard lock(mutex_);
    owned = owned_;
  }
  bool worked = false;
  for (auto& [partition, position] : owned) {
    auto batch = tailer_.read_after(position, opts_.batch);
    if (!batch || batch->empty()) continue;
    worked = true;
    for (const auto& e : *batch) {
      if (partition_of(e->aggregate_id, opts_.partitions) == partition && filter_.matches(*e)) {
        try {
          handler_(*e);
          ++processed_;
        } catch (...) {
          ++failures_;  // retried by the retry engine once it exists; here: counted, skipped
        }
      }
      position = e->position;
    }
    auto kept = store_.group_checkpoint(group_, partition, member_, position);
    std::lock_guard lock(mutex_);
    if (kept && !*kept) owned_.erase(partition);  // lost the lease: stop at once
    else if (owned_.count(partition)) owned_[partition] = position;
  }
  return worked;
}

void consumer_group_member::run() {
  while (true) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
    }
    if (std::chrono::steady_clock::now() >= next_sync_) {
      sync();
      next_sync_ = std::chrono::steady_clock::now() + opts_.heartbeat;
    }
    if (process()) continue;
    std::unique_lock lock(mutex_);
    cv_.wait_until(lock, next_sync_, [&] { return stopping_ || woken_; });
    woken_ = false;
  }
}

}  // namespace pliers
