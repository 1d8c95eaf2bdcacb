#include "bus/lazy_consumer.hpp"

#include <algorithm>

namespace pliers {

lazy_consumer::lazy_consumer(subscription_start start, std::chrono::milliseconds poll, hooks h)
    : start_(start), poll_(poll), hooks_(std::move(h)) {
  {
    std::lock_guard lock(mutex_);
    ensure_member();
  }
  watcher_ = std::thread([this] { watch(); });
}

lazy_consumer::~lazy_consumer() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  watcher_.join();
  std::lock_guard lock(mutex_);
  member_.reset();
}

void lazy_consumer::poke() {
  std::lock_guard lock(mutex_);
  poked_ = true;
  cv_.notify_all();
}

std::uint64_t lazy_consumer::processed() const {
  std::lock_guard lock(mutex_);
  return member_ ? member_->processed() : 0;
}

std::uint64_t lazy_consumer::handler_failures() const {
  std::lock_guard lock(mutex_);
  return member_ ? member_->handler_failures() : 0;
}

void lazy_consumer::watch() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    cv_.wait_for(lock, poll_, [&] { return stopping_ || poked_; });
    if (stopping_) break;
    poked_ = false;
    lock.unlock();
    hooks_.refresh();
    lock.lock();
    ensure_member();
  }
}

void lazy_consumer::ensure_member() {
  if (member_ || !hooks_.has_work()) return;
  subscription_start start = start_;
  if (start.k == subscription_start::kind::now)
    start = subscription_start::after(log_position(std::max<std::int64_t>(hooks_.first_position().value - 1, 0)));
  member_ = hooks_.make_member(start);
}

}  // namespace pliers
