#include "bus/log_tailer.hpp"

#include "core/event_codec.hpp"

namespace pliers {

log_tailer::log_tailer(event_store& store, options opts) : store_(store), opts_(opts), head_(store.head()) {
  store_.set_commit_observer([this](std::vector<event> committed) { offer(std::move(committed)); });
  thread_ = std::thread([this] { run(); });
}

log_tailer::~log_tailer() {
  store_.set_commit_observer(nullptr);
  {
    std::lock_guard lock(wake_mutex_);
    stopping_ = true;
  }
  wake_cv_.notify_all();
  thread_.join();
}

void log_tailer::wake() { offer({}); }

void log_tailer::offer(std::vector<event> committed) {
  std::vector<std::vector<event>> dropped;  // freed outside the lock
  {
    std::lock_guard lock(wake_mutex_);
    if (committed.empty()) {
      must_read_ = true;
    } else {
      offered_events_ += committed.size();
      offered_.push_back(std::move(committed));
      // The thread is busy (a long store read): keep no more than a ring's worth waiting;
      // the store has them.
      if (offered_events_ > opts_.ring_capacity) {
        dropped.swap(offered_);
        offered_events_ = 0;
        must_read_ = true;
      }
    }
    woken_ = true;
  }
  wake_cv_.notify_one();
}

bool log_tailer::take_offered(std::vector<event>& committed) {
  std::unique_lock lock(ring_mutex_);
  for (auto& e : committed) {
    if (e.position <= head_) continue;  // read from the store already
    if (e.position.value != head_.value + 1) return false;
    head_ = e.position;
    ring_.push_back(std::make_shared<const tailed_event>(std::move(e)));
    if (ring_.size() > opts_.ring_capacity) ring_.pop_front();
  }
  return true;
}

void log_tailer::tell_listeners(log_position head) {
  std::vector<std::shared_ptr<listener>> ls;
  {
    std::lock_guard lock(listeners_mutex_);
    for (auto& [id, l] : listeners_) ls.push_back(l);
  }
  for (auto& l : ls) (*l)(head);
}

log_position log_tailer::head() const {
  std::shared_lock lock(ring_mutex_);
  return head_;
}

std::uint64_t log_tailer::add_listener(listener l) {
  std::uint64_t id;
  {
    std::lock_guard lock(listeners_mutex_);
    id = next_listener_++;
    listeners_.emplace(id, std::make_shared<listener>(std::move(l)));
    following_ = true;
  }
  wake();  // an idle tailer catches up for its new listener
  return id;
}

void log_tailer::remove_listener(std::uint64_t id) {
  std::lock_guard lock(listeners_mutex_);
  listeners_.erase(id);
  following_ = !listeners_.empty();
}

const std::string& tailed_event::json() const {
  std::call_once(json_once_, [this] { write_event_json(json_, *this); });
  return json_;
}

result<std::vector<log_tailer::event_ptr>> log_tailer::read_after(log_position after, std::size_t max) {
  return read(after, max, false);
}

result<std::vector<log_tailer::event_ptr>> log_tailer::read_next(log_position after, std::size_t max) {
  return read(after, max, true);
}

void log_tailer::forget_rewritten() {
  const auto rewrites = store_.rewrites();
  if (rewrites == seen_rewrites_.load()) return;
  std::unique_lock lock(ring_mutex_);
  ring_.clear();  // compacted (or restored) events may be in it; the store has the live log
  seen_rewrites_ = rewrites;
}

result<std::vector<log_tailer::event_ptr>> log_tailer::read(log_position after, std::size_t max, bool wait_at_head) {
  forget_rewritten();
  {
    std::shared_lock lock(ring_mutex_);
    if (!ring_.empty() && after.value >= ring_.front()->position.value - 1 && after < head_) {
      auto first = static_cast<std::size_t>(after.value - (ring_.front()->position.value - 1));
      auto n = std::min(max, ring_.size() - first);
      return std::vector<event_ptr>(ring_.begin() + static_cast<std::ptrdiff_t>(first),
                                    ring_.begin() + static_cast<std::ptrdiff_t>(first + n));
    }
    // A reader at the head of a tailer that follows the log: nothing newer yet. Listeners
    // are told when there is.
    if (wait_at_head && after >= head_ && following_.load()) return std::vector<event_ptr>();
  }
  // Not in the ring (older, or newer than an idle tailer has seen): from the store.
  store_reads_.fetch_add(1, std::memory_order_relaxed);
  auto events = store_.read_all(after, max);
  if (!events) return std::move(events).error();
  std::vector<event_ptr> out;
  out.reserve(events->size());
  for (auto& e : *events) out.push_back(std::make_shared<const tailed_event>(std::move(e)));
  return out;
}

void log_tailer::run() {
  while (true) {
    std::vector<std::vector<event>> offered;
    bool must_read = false;
    {
      std::unique_lock lock(wake_mutex_);
      const bool woken = wake_cv_.wait_for(lock, opts_.poll_interval, [&] { return woken_ || stopping_; });
      if (stopping_) return;
      offered.swap(offered_);
      offered_events_ = 0;
      must_read = must_read_ || !woken;  // a poll looks in the store
      woken_ = must_read_ = false;
    }
    {
      // Nobody listens: do not read (and parse) every commit back; catch up when a
      // listener arrives, jumping ahead when more than a ring's worth was missed. (The
      // offered events are dropped here, on this thread.)
      std::lock_guard lock(listeners_mutex_);
      if (listeners_.empty()) continue;
    }
    // This process's commits, in commit order: they join the ring when they follow its
    // head (the store makes positions visible in order, so nothing before them is missing),
    // made what a read returns here rather than on the store's writer thread.
    for (auto& committed : offered)
      for (auto& e : committed) store_.make_as_read(e);
    const log_position before = head();
    for (auto& committed : offered)
      if (!take_offered(committed)) {
        must_read = true;  // another process's events, or a hole, come first: read them
        break;
      }
    forget_rewritten();  // before telling: a reader then finds no event compacted meanwhile
    if (const auto now = head(); now != before) tell_listeners(now);
    if (!must_read) continue;
    if (auto store_head = store_.head(); store_head.value - head().value > static_cast<std::int64_t>(opts_.ring_capacity)) {
      std::unique_lock lock(ring_mutex_);
      ring_.clear();
      head_ = log_position(store_head.value - static_cast<std::int64_t>(opts_.ring_capacity));
    }
    while (true) {
      log_position from = head();
      // Every position up to the store's head is committed and visible (the backends make
      // positions visible in order), so a hole below it is permanent: compaction archived
      // those events. A hole above it may still fill: never skip one.
      const log_position visible = store_.head();
      store_reads_.fetch_add(1, std::memory_order_relaxed);
      auto batch = store_.read_all(from, opts_.read_batch);
      if (!batch || batch->empty()) break;  // a failed read is retried on the next wake or poll
      log_position new_head;
      {
        std::unique_lock lock(ring_mutex_);
        for (auto& e : *batch) {
          if (e.position.value != head_.value + 1 && e.position.value > visible.value) break;
          head_ = e.position;
          ring_.push_back(std::make_shared<const tailed_event>(std::move(e)));
          if (ring_.size() > opts_.ring_capacity) ring_.pop_front();
        }
        new_head = head_;
      }
      forget_rewritten();
      tell_listeners(new_head);
      if (batch->size() < opts_.read_batch) break;
    }
  }
}

}  // namespace pliers
