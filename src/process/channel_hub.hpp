// Named channels for the websocket routing target: the router publishes an event to a
// channel, every WebSocket client of this node subscribed to it receives it (a
// `{"type":"subscribe","channel":NAME}` message on GET /v1/stream; docs/routing.md).
//
// Channels are node-local and ephemeral: publish() hands the message to the subscribers
// connected to this process at that moment; nothing is stored or replayed. With several
// nodes, the node whose routing partition holds the event's aggregate is the one that
// publishes (docs/routing.md, "websocket channels").
//
// publish() never blocks on a subscriber: a sink must return at once (the server's sink
// appends to the subscription's bounded inbox and drops, counting, what does not fit).
// A sink may still be called once or twice just after unsubscribe() returns (publish
// calls the sinks it copied outside the lock), so it must stay safe to call until it is
// destroyed; the hub owns it until then.
// Thread-safety: all members may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pliers {

// One publication, shared by every subscriber it is handed to.
struct channel_message {
  std::string channel;
  std::string route_id;    // the rule that routed the event
  std::string event_json;  // the event as the API writes it (with its position)
};

class channel_hub {
 public:
  using sink = std::function<void(const std::shared_ptr<const channel_message>& message)>;
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
  std::size_t publish(const std::shared_ptr<const channel_message>& message) {
    std::vector<std::shared_ptr<sink>> to;
    {
      std::lock_guard lock(mutex_);
      auto it = subs_.find(message->channel);
      if (it == subs_.end()) return 0;
      to.reserve(it->second.size());
      for (auto& [id, s] : it->second) to.push_back(s);
    }
    for (auto& s : to) (*s)(message);
    return to.size();
  }
  std::size_t subscribers(const std::string& channel) const {
    std::lock_guard lock(mutex_);
    auto it = subs_.find(channel);
    return it == subs_.end() ? 0 : it->second.size();
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::map<std::uint64_t, std::shared_ptr<sink>>> subs_;  // GUARDED_BY(mutex_)
  std::uint64_t next_ = 0;                                                       // GUARDED_BY(mutex_)
};

}  // namespace pliers
