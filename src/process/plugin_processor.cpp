#include "process/plugin_processor.hpp"

namespace pliers {

plugin_processor::plugin_processor(event_store& store, log_tailer& tailer, const clock& clk, plugin_chain& chain,
                                   std::string member, options opts)
    : store_(store), tailer_(tailer), clock_(clk), chain_(chain), name_(std::move(member)), opts_(std::move(opts)) {
  chain_.set_on_change([this] {
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

plugin_processor::~plugin_processor() {
  chain_.set_on_change(nullptr);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  watcher_.join();
  std::lock_guard lock(mutex_);
  member_.reset();
}

std::uint64_t plugin_processor::processed() const {
  std::lock_guard lock(mutex_);
  return member_ ? member_->processed() : 0;
}

std::uint64_t plugin_processor::batch_failures() const {
  std::lock_guard lock(mutex_);
  return member_ ? member_->handler_failures() : 0;
}

void plugin_processor::watch() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    cv_.wait_for(lock, opts_.lifecycle_poll, [&] { return stopping_ || poke_; });
    if (stopping_) break;
    poke_ = false;
    lock.unlock();
    (void)chain_.load();  // other nodes' registrations; a failed read is retried next time
    lock.lock();
    ensure_member();
  }
}

void plugin_processor::ensure_member() {
  if (member_ || chain_.empty()) return;
  consumer_group_member::options group_opts;
  group_opts.partitions = opts_.partitions;
  group_opts.batch = opts_.batch;
  group_opts.lease = opts_.lease;
  group_opts.start = opts_.start;
  if (opts_.start.k == subscription_start::kind::now) {
    const auto first = chain_.first_registration();
    group_opts.start = subscription_start::after(log_position(std::max<std::int64_t>(first.value - 1, 0)));
  }
  group_opts.checkpoint_interval = opts_.checkpoint_interval;
  member_ = std::make_unique<consumer_group_member>(
      store_, tailer_, clock_, "pliers.plugins", name_, event_filter{},
      consumer_group_member::async_batch_handler([this, on_error = opts_.on_error](std::span<const event* const> batch) {
        auto wait = chain_.process_batch_async(batch);
        return std::function<void()>([wait = std::move(wait), on_error, n = batch.size()] {
          auto ok = wait();
          if (!ok) {
            const std::string what = "plugin effects of " + std::to_string(n) +
                                     " events not stored, the batch runs again: " +
                                     (ok.error().field.empty() ? "" : ok.error().field + ": ") + ok.error().message;
            if (on_error) on_error(what);
            throw std::runtime_error(what);
          }
        });
      }),
      group_opts);
}

}  // namespace pliers
