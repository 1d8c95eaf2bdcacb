// Group commit (the LevelDB DBImpl::Write model, made asynchronous): appends from any
// thread are queued; one writer thread takes everything queued (up to a batch bound),
// hands it to the backend to commit as one transaction with each append checked on its
// own, then completes every callback. Concurrent appends thus share one fsync.
//
// Bounds: at most `max_pending` appends wait; past that, enqueue completes at once with
// `unavailable`. A batch holds at most `max_batch_events` events (a single larger append
// still goes alone).
// Lifecycle: the thread starts in the constructor; stop() (or the destructor) commits what
// is queued, then joins. Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "store/event_store.hpp"

namespace pliers {

class group_commit {
 public:
  // One unit of the batch: one append, or a group of appends that commit all or none.
  struct pending {
    std::vector<append_request> requests;
    event_store::group_callback done;
    std::size_t event_count() const {
      std::size_t n = 0;
      for (const auto& r : requests) n += r.events.size();
      return n;
    }
  };
  using unit_result = result<std::vector<append_result>>;
  // Commits the batch; must return one result per unit, in order.
  using commit_function = std::function<std::vector<unit_result>(std::span<pending> batch)>;

  group_commit(commit_function commit, std::size_t max_pending, std::size_t max_batch_events = 20000);
  ~group_commit();
  group_commit(const group_commit&) = delete;
  group_commit& operator=(const group_commit&) = delete;

  void enqueue(std::vector<append_request> requests, event_store::group_callback done);
  void stop();

 private:
  void run();

  commit_function commit_;
  const std::size_t max_pending_;
  const std::size_t max_batch_events_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<pending> queue_;  // GUARDED_BY(mutex_)
  bool stopping_ = false;      // GUARDED_BY(mutex_)
  std::thread thread_;
};

}  // namespace pliers
