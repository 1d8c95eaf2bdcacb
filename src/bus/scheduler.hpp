// Fires scheduled publications when they are due (spec scheduleEvent). One per server
// process; several processes on one PostgreSQL share the work (claims are SKIP LOCKED) and
// an entry publishes once even if two fire it (its event id is fixed: the second append
// is an idempotent replay). Overdue entries fire at the first tick after a restart.
// Lifecycle: the thread starts in the constructor and stops in the destructor.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/clock.hpp"
#include "store/event_store.hpp"

namespace pliers {

class scheduler {
 public:
  struct options {
    std::chrono::milliseconds tick{250};
    std::chrono::seconds lease{30};
    std::size_t batch = 100;
  };
  scheduler(event_store& store, const clock& clk, options opts);
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  // Stores a scheduled publication and makes the next tick look at once.
  result<scheduled_event> schedule(scheduled_event entry);
  // Runs one round now (tests; the thread calls it every tick). Returns how many fired.
  std::size_t fire_due();

 private:
  void run();
  event_store& store_;
  const clock& clock_;
  const options opts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false, woken_ = false;  // GUARDED_BY(mutex_)
  std::thread thread_;
};

}  // namespace pliers
