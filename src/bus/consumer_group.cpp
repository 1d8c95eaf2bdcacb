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
    : consumer_group_member(store, tailer, clk, std::move(group), std::move(member), std::move(filter),
                            async_batch_handler([this, h = std::move(h)](std::span<const event* const> batch) {
                              for (const event* e : batch) {
                                try {
                                  h(*e);
                                  ++processed_;
                                } catch (...) {
                                  ++failures_;  // per-event handlers: counted, skipped
                                }
                              }
                              return std::function<void()>([] {});
                            }),
                            opts, true) {}

consumer_group_member::consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                                             std::string member, event_filter filter, batch_handler h, options opts)
    : consumer_group_member(store, tailer, clk, std::move(group), std::move(member), std::move(filter),
                            async_batch_handler([h = std::move(h)](std::span<const event* const> batch) {
                              h(batch);  // done when it returns
                              return std::function<void()>([] {});
                            }),
                            opts, false) {}

consumer_group_member::consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                                             std::string member, event_filter filter, async_batch_handler h, options opts)
    : consumer_group_member(store, tailer, clk, std::move(group), std::move(member), std::move(filter), std::move(h),
                            opts, false) {}

consumer_group_member::consumer_group_member(event_store& store, log_tailer& tailer, const clock& clk, std::string group,
                                             std::string member, event_filter filter, async_batch_handler h, options opts,
                                             bool counts_itself)
    : counts_itself_(counts_itself), store_(store), tailer_(tailer), clock_(clk), group_(std::move(group)), member_(std::move(member)),
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
  // Release and hand-over decisions use the positions in owned_: make them durable first.
  (void)finish_pending();
  save_checkpoints();
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

bool consumer_group_member::finish_pending() {
  if (!pending_) return true;
  auto p = std::move(*pending_);
  pending_.reset();
  try {
    p.wait();
  } catch (...) {
    // Not durable: back to the last durable checkpoint; the work after it comes again.
    ++failures_;
    retry_at_ = std::chrono::steady_clock::now() + opts_.retry_delay;
    std::lock_guard lock(mutex_);
    for (int partition : p.partitions)
      if (owned_.count(partition)) owned_[partition] = p.from;
    return false;
  }
  for (int partition : p.partitions) unsaved_[partition] = p.last;
  if (std::chrono::steady_clock::now() - last_save_ >= opts_.checkpoint_interval) save_checkpoints();
  return true;
}

void consumer_group_member::save_checkpoints() {
  for (const auto& [partition, position] : unsaved_) {
    auto kept = store_.group_checkpoint(group_, partition, member_, position);
    if (kept && !*kept) {
      std::lock_guard lock(mutex_);
      owned_.erase(partition);  // lost the lease: stop at once
    }
  }
  unsaved_.clear();
  last_save_ = std::chrono::steady_clock::now();
}

bool consumer_group_member::process() {
  if (std::chrono::steady_clock::now() < retry_at_) return false;
  std::map<int, log_position> owned;
  {
    std::lock_guard lock(mutex_);
    owned = owned_;
  }
  // Partitions standing at the same position share one read and one handler call (the
  // usual case once caught up).
  std::map<std::int64_t, std::vector<int>> by_position;
  for (const auto& [partition, position] : owned) by_position[position.value].push_back(partition);
  bool worked = false;
  std::vector<const event*> matching;
  for (const auto& [from, partitions] : by_position) {
    auto batch = tailer_.read_next(log_position(from), opts_.batch);
    if (!batch || batch->empty()) continue;
    worked = true;
    // At most one batch in flight, and only for these partitions.
    if (pending_ && pending_->partitions != partitions && !finish_pending()) return false;
    std::vector<bool> mine(static_cast<std::size_t>(opts_.partitions), false);
    for (int p : partitions) mine[static_cast<std::size_t>(p)] = true;
    matching.clear();
    for (const auto& e : *batch)
      if (mine[static_cast<std::size_t>(partition_of(e->aggregate_id, opts_.partitions))] && filter_.matches(*e))
        matching.push_back(e.get());
    std::function<void()> wait = [] {};
    if (!matching.empty()) {
      try {
        wait = handler_(matching);
        if (!counts_itself_) processed_ += matching.size();
      } catch (...) {
        (void)finish_pending();  // what came before may still be durable
        ++failures_;             // this batch: nothing checkpointed, it comes again
        retry_at_ = std::chrono::steady_clock::now() + opts_.retry_delay;
        return false;
      }
    }
    if (!finish_pending()) {
      // The previous batch of these partitions failed and they were rewound: this one
      // (started on top of it) is dropped too; whatever of it was stored is found again.
      try {
        wait();
      } catch (...) {
      }
      return false;
    }
    const log_position last = batch->back()->position;
    {
      std::lock_guard lock(mutex_);
      for (int partition : partitions)
        if (owned_.count(partition)) owned_[partition] = last;
    }
    pending_ = pending_batch{partitions, log_position(from), last, std::move(wait),
                             std::make_shared<const std::vector<log_tailer::event_ptr>>(std::move(*batch))};
  }
  if (!worked) {  // idle: the checkpoints catch up
    (void)finish_pending();
    save_checkpoints();
  }
  return worked;
}

void consumer_group_member::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      if (stopping_) {
        lock.unlock();
        (void)finish_pending();
        save_checkpoints();
        return;
      }
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
