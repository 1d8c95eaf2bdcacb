// Live streams (WebSocket subscriptions and SSE responses) for GET/DELETE /v1/streams
// (spec StreamInfo). Entries are added and removed by the stream's own coroutine; `close`
// asks the stream to end (posted to its strand). Thread-safe.
#pragma once

#include <atomic>
#include <boost/json/object.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"

namespace pliers {

struct stream_info {
  std::string id;
  std::string client_id;  // connection: remote address and port
  std::string kind;       // "websocket" | "sse"
  timestamp connected_at{};
  boost::json::object filter;
  std::atomic<std::uint64_t> events_delivered{0};
  std::atomic<std::int64_t> last_event_at{0};  // micros; 0 = none yet
  std::atomic<std::int64_t> position{0};
  std::function<void()> close;  // thread-safe request to end the stream
};

class stream_registry {
 public:
  void add(std::shared_ptr<stream_info> s);
  void remove(const std::string& id);
  std::vector<std::shared_ptr<stream_info>> list() const;
  bool close(const std::string& id);
  std::size_t size() const;

  // Long-lived connections (WebSocket) register how to close them at shutdown.
  std::uint64_t add_connection(std::function<void()> close);
  void remove_connection(std::uint64_t id);
  void close_connections();

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<stream_info>> streams_;  // GUARDED_BY(mutex_)
  std::map<std::uint64_t, std::function<void()>> connections_;   // GUARDED_BY(mutex_)
  std::uint64_t next_connection_ = 1;                            // GUARDED_BY(mutex_)
};

boost::json::object to_json(const stream_info& s);

}  // namespace pliers
