// A consumer group member that exists only while there is work for it: the durable
// consumers of registries (plugins, routes) start with the first registered entry, so a
// node without any does not follow the log or write checkpoints. A watcher thread polls
// `refresh` (other nodes' registrations, read from the log) every `poll`, and poke() (a
// registration made here) makes it look at once. A new group begins just before
// `first_position()` when `start` is `now`, so nothing stored after the first
// registration is missed while the member starts.
// Lifecycle: the watcher starts in the constructor; the destructor stops it and the member.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "bus/consumer_group.hpp"

namespace pliers {

class lazy_consumer {
 public:
  struct hooks {
    std::function<void()> refresh;               // read other nodes' registrations (errors: next time)
    std::function<bool()> has_work;              // whether anything is registered
    std::function<log_position()> first_position;  // of the first registration
    // Builds the member, starting a new group at `start`.
    std::function<std::unique_ptr<consumer_group_member>(subscription_start start)> make_member;
  };
  lazy_consumer(subscription_start start, std::chrono::milliseconds poll, hooks h);
  ~lazy_consumer();
  lazy_consumer(const lazy_consumer&) = delete;
  lazy_consumer& operator=(const lazy_consumer&) = delete;

  void poke();
  std::uint64_t processed() const;
  std::uint64_t handler_failures() const;

 private:
  void watch();
  void ensure_member();  // called with mutex_ held

  const subscription_start start_;
  const std::chrono::milliseconds poll_;
  const hooks hooks_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false, poked_ = false;          // GUARDED_BY(mutex_)
  std::unique_ptr<consumer_group_member> member_;  // GUARDED_BY(mutex_)
  std::thread watcher_;
};

}  // namespace pliers
