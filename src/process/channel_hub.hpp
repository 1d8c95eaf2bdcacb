// Named channels for the websocket routing target: the router publishes an event's JSON to
// a channel, every WebSocket client of this node subscribed to it receives it
// (GET /v1/channels/{name}). Delivery to a client is a bounded, non-blocking push: the
// subscriber's callback must not block (the server queues per connection and drops the
// connection, not the publisher, when a client falls behind).
// Thread-safety: all members may be called from any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace pliers {

class channel_hub {
 public:
  using sink = std::function<void(const std::string& message)>;
  // Returns a token for unsubscribe().
  std::uint64_t subscribe(const std::string& channel, sink s) {
    std::lock_guard lock(mutex_);
    const auto id = ++next_;
    subs_[channel][id] = std::make_shared<sink>(std::move(s));
    return id;
  }
  void unsubscribe(const std::string& channel, std::uint64_t id) {
    std::lock_guard lock(mutex_);
    auto it = subs_.find(channel);
    if (it == subs_.end()) return;
    it->second.erase(id);
    if (it->second.empty()) subs_.erase(it);
  }
  // How many subscribers it was handed to.
  std::size_t publish(const std::string& channel, const std::string& message) {
    std::vector<std::shared_ptr<sink>> to;
    {
      std::lock_guard lock(mutex_);
      auto it = subs_.find(channel);
      if (it == subs_.end()) return 0;
      for (auto& [id, s] : it->second) to.push_back(s);
    }
    for (auto& s : to) (*s)(message);
    return to.size();
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::map<std::uint64_t, std::shared_ptr<sink>>> subs_;  // GUARDED_BY(mutex_)
  std::uint64_t next_ = 0;                                                       // GUARDED_BY(mutex_)
};

}  // namespace pliers
