#include "process/route_processor.hpp"

namespace pliers {

route_processor::route_processor(event_store& store, log_tailer& tailer, const clock& clk, event_router& router,
                                 std::string member, options opts)
    : store_(store), tailer_(tailer), clock_(clk), router_(router), name_(std::move(member)), opts_(std::move(opts)) {
  router_.set_on_change([this] {
    std::lock_guard lock(mutex_);
    poke_ = true;
    cv_.notify_all();
  });
  {
    std::lock_guard lock(mutex_);
    ensure_member();
  }
  watcher_ = std::thread([this] { watch(); });
}

route_processor::~route_processor() {
  router_.set_on_change(nullptr);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  watcher_.join();
  std::lock_guard lock(mutex_);
  member_.reset();
}

std::uint64_t route_processor::processed() const {
  std::lock_guard lock(mutex_);
  return member_ ? member_->processed() : 0;
}

void route_processor::watch() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    cv_.wait_for(lock, opts_.lifecycle_poll, [&] { return stopping_ || poke_; });
    if (stopping_) break;
    poke_ = false;
    lock.unlock();
    (void)router_.load();  // other nodes' rules (idempotent); a failed read is retried next time
    lock.lock();
    ensure_member();
  }
}

void route_processor::ensure_member() {
  if (member_ || router_.empty()) return;
  consumer_group_member::options group_opts;
  group_opts.partitions = opts_.partitions;
  group_opts.batch = opts_.batch;
  group_opts.lease = opts_.lease;
  group_opts.start = opts_.start;
  if (opts_.start.k == subscription_start::kind::now) {
    // A new group begins just before the first rule, so nothing stored after it is missed.
    const auto first = router_.first_rule_position();
    group_opts.start = subscription_start::after(log_position(std::max<std::int64_t>(first.value - 1, 0)));
  }
  group_opts.checkpoint_interval = opts_.checkpoint_interval;
  member_ = std::make_unique<consumer_group_member>(
      store_, tailer_, clock_, "pliers.routes", name_, event_filter{},
      consumer_group_member::batch_handler([this, on_error = opts_.on_error](std::span<const event* const> batch) {
        auto ok = router_.process_batch(batch);
        if (!ok) {
          const std::string what = "routing failures of " + std::to_string(batch.size()) +
                                   " events not filed, the batch runs again: " + ok.error().message;
          if (on_error) on_error(what);
          throw std::runtime_error(what);
        }
      }),
      group_opts);
}

}  // namespace pliers
