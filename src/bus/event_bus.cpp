#include "bus/event_bus.hpp"

#include <algorithm>

namespace pliers {

void subscription::close() { closed_ = true; }

result<log_position> subscription_start::resolve(event_store& store, log_tailer& tailer) const {
  switch (k) {
    case kind::now: return store.head();  // the tailer may not have seen the latest commits yet
    case kind::beginning:
    case kind::after_position: return position;
    case kind::at_time: {
      event_query q;
      q.from = time;
      auto first = store.query(q, pagination{1, log_position(0)});
      if (!first) return std::move(first).error();
      if (first->events.empty()) return tailer.head();
      return log_position(first->events.front().position.value - 1);
    }
  }
  return tailer.head();
}

event_bus::event_bus(event_store& store, log_tailer& tailer, unsigned delivery_threads)
    : store_(store), tailer_(tailer) {
  for (unsigned i = 0; i < std::max(1u, delivery_threads); ++i) workers_.emplace_back([this] { worker(); });
  listener_id_ = tailer_.add_listener([this](log_position) {
    std::vector<std::shared_ptr<subscription>> live;
    {
      std::lock_guard lock(mutex_);
      std::erase_if(subscriptions_, [&](const std::weak_ptr<subscription>& w) {
        auto s = w.lock();
        if (!s || s->closed()) return true;
        live.push_back(std::move(s));
        return false;
      });
    }
    for (auto& s : live) schedule(s);
  });
}

event_bus::~event_bus() {
  tailer_.remove_listener(listener_id_);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

std::shared_ptr<subscription> event_bus::subscribe_with_filter(event_filter filter, handler h, subscription_start start) {
  auto s = std::make_shared<subscription>();
  s->filter_ = std::move(filter);
  s->handler_ = std::move(h);
  s->bus_ = this;
  auto from = start.resolve(store_, tailer_);
  s->position_ = from ? from->value : store_.head().value;
  {
    std::lock_guard lock(mutex_);
    subscriptions_.push_back(s);
  }
  schedule(s);  // catch up history at once
  return s;
}

std::shared_ptr<subscription> event_bus::subscribe(const std::vector<std::string>& event_types, handler h,
                                                   subscription_start start) {
  event_filter f;
  for (const auto& t : event_types)
    if (auto p = type_pattern::parse(t)) f.event_types.push_back(std::move(*p));
  return subscribe_with_filter(std::move(f), std::move(h), start);
}

result<std::shared_ptr<subscription>> event_bus::subscribe_to_pattern(std::string_view pattern, handler h,
                                                                      subscription_start start) {
  auto p = type_pattern::parse(pattern, "pattern");
  if (!p) return std::move(p).error();
  event_filter f;
  f.event_types.push_back(std::move(*p));
  return subscribe_with_filter(std::move(f), std::move(h), start);
}

result<append_result> event_bus::publish(std::string aggregate_id, new_event e) {
  append_request r;
  r.aggregate_id = std::move(aggregate_id);
  r.events.push_back(std::move(e));
  return store_.append(std::move(r));
}

result<append_result> event_bus::publish_to(std::string aggregate_id, new_event e, std::string routing_key) {
  e.metadata["routingKey"] = std::move(routing_key);
  return publish(std::move(aggregate_id), std::move(e));
}

result<scheduled_event> event_bus::schedule_event(std::string aggregate_id, new_event e, timestamp publish_at) {
  scheduled_event entry;
  entry.request.aggregate_id = std::move(aggregate_id);
  entry.request.events.push_back(std::move(e));
  entry.publish_at = publish_at;
  return store_.schedule(std::move(entry));
}

void event_bus::schedule(const std::shared_ptr<subscription>& s) {
  if (s->scheduled_.exchange(true)) return;  // already queued or draining: it will look again
  {
    std::lock_guard lock(mutex_);
    ready_.push_back(s);
  }
  cv_.notify_one();
}

void event_bus::worker() {
  while (true) {
    std::shared_ptr<subscription> s;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
      if (stopping_) return;
      s = std::move(ready_.front());
      ready_.pop_front();
    }
    drain(s);
  }
}

void event_bus::drain(const std::shared_ptr<subscription>& s) {
  bool failed = false;
  while (!s->closed()) {
    auto batch = tailer_.read_next(log_position(s->position_.load()), 1000);
    if (!batch) failed = true;
    if (!batch || batch->empty()) break;  // caught up, or the store failed: retried on the next wake
    for (const auto& e : *batch) {
      if (s->closed()) return;
      if (s->filter_.matches(*e)) {
        try {
          s->handler_(*e);
          ++s->delivered_;
        } catch (const std::exception& ex) {
          ++s->failures_;
          if (on_handler_error) on_handler_error(*e, ex.what());
        } catch (...) {
          ++s->failures_;
          if (on_handler_error) on_handler_error(*e, "unknown exception");
        }
      }
      s->position_ = e->position.value;
    }
  }
  s->scheduled_ = false;
  // An advance that arrived while we were finishing must not be lost (after a failed read,
  // the next wake or poll retries instead of a tight loop).
  if (!failed && !s->closed() && tailer_.head().value > s->position_.load()) schedule(s);
}

}  // namespace pliers
