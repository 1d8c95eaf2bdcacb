#include "server/stream_registry.hpp"

#include "core/time_format.hpp"

namespace pliers {

void stream_registry::add(std::shared_ptr<stream_info> s) {
  std::lock_guard lock(mutex_);
  streams_[s->id] = std::move(s);
}

void stream_registry::remove(const std::string& id) {
  std::lock_guard lock(mutex_);
  streams_.erase(id);
}

std::vector<std::shared_ptr<stream_info>> stream_registry::list() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<stream_info>> out;
  for (const auto& [id, s] : streams_) out.push_back(s);
  return out;
}

bool stream_registry::close(const std::string& id) {
  std::shared_ptr<stream_info> s;
  {
    std::lock_guard lock(mutex_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return false;
    s = it->second;
  }
  if (s->close) s->close();
  return true;
}

std::uint64_t stream_registry::add_connection(std::function<void()> close) {
  std::lock_guard lock(mutex_);
  auto id = next_connection_++;
  connections_.emplace(id, std::move(close));
  return id;
}

void stream_registry::remove_connection(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  connections_.erase(id);
}

void stream_registry::close_connections() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, f] : connections_) fns.push_back(f);
  }
  for (auto& f : fns) f();
}

std::size_t stream_registry::size() const {
  std::lock_guard lock(mutex_);
  return streams_.size();
}

boost::json::object to_json(const stream_info& s) {
  boost::json::object o{{"id", s.id},
                        {"clientId", s.client_id},
                        {"kind", s.kind},
                        {"connectedAt", format_rfc3339(s.connected_at)},
                        {"filter", s.filter},
                        {"eventsDelivered", s.events_delivered.load()},
                        {"position", s.position.load()}};
  if (auto t = s.last_event_at.load()) o["lastEventAt"] = format_rfc3339(from_micros(t));
  return o;
}

}  // namespace pliers
