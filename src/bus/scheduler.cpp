#include "bus/scheduler.hpp"

namespace pliers {

scheduler::scheduler(event_store& store, const clock& clk, options opts) : store_(store), clock_(clk), opts_(opts) {
  thread_ = std::thread([this] { run(); });
}

scheduler::~scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

result<scheduled_event> scheduler::schedule(scheduled_event entry) {
  auto r = store_.schedule(std::move(entry));
  if (r) {
    std::lock_guard lock(mutex_);
    woken_ = true;
    cv_.notify_one();
  }
  return r;
}

std::size_t scheduler::fire_due() {
  auto due = store_.claim_due(clock_.now(), opts_.batch, opts_.lease);
  if (!due) return 0;  // store unavailable: the next tick tries again
  std::size_t fired = 0;
  for (auto& entry : *due) {
    auto r = store_.append(entry.request);
    if (r) {
      (void)store_.finish_scheduled(entry.id, "published", r->events.front().position, std::nullopt);
      ++fired;
    } else if (r.error().code == errc::unavailable || r.error().code == errc::timeout) {
      // Left claimed: the lease runs out and the entry is tried again.
    } else {
      (void)store_.finish_scheduled(entry.id, "failed", std::nullopt,
                                    (r.error().field.empty() ? "" : r.error().field + ": ") + r.error().message);
    }
  }
  return fired;
}

void scheduler::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, opts_.tick, [&] { return stopping_ || woken_; });
      if (stopping_) return;
      woken_ = false;
    }
    while (fire_due() == opts_.batch) {
    }
  }
}

}  // namespace pliers
