#include "store/group_commit.hpp"

namespace pliers {

group_commit::group_commit(commit_function commit, std::size_t max_pending, std::size_t max_batch_events)
    : commit_(std::move(commit)), max_pending_(max_pending), max_batch_events_(max_batch_events) {
  thread_ = std::thread([this] { run(); });
}

group_commit::~group_commit() { stop(); }

void group_commit::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void group_commit::enqueue(std::vector<append_request> requests, event_store::group_callback done) {
  {
    std::unique_lock lock(mutex_);
    if (stopping_) {
      lock.unlock();
      done(error::make(errc::unavailable, "the store is shutting down"));
      return;
    }
    if (queue_.size() >= max_pending_) {
      lock.unlock();
      done(error::make(errc::unavailable, "too many appends waiting for commit (" +
                                              std::to_string(max_pending_) + "); retry later"));
      return;
    }
    queue_.push_back({std::move(requests), std::move(done)});
  }
  cv_.notify_one();
}

void group_commit::run() {
  std::vector<pending> batch;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      std::size_t events = 0;
      while (!queue_.empty() && (batch.empty() || events + queue_.front().event_count() <= max_batch_events_)) {
        events += queue_.front().event_count();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    auto results = commit_(batch);
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i].done(std::move(results[i]));
    batch.clear();
  }
}

}  // namespace pliers
