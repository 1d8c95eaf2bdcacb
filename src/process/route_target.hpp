// A routing target (spec RoutingTarget): where a routing rule sends the events it matches.
// Kinds (process/route_targets.hpp): webhook, queue (NATS JetStream or Redis Streams),
// plugin, websocket, email. A target is built from its `config` when the rule is added
// (a bad config is refused then, naming the member) and is shared by every thread that
// delivers: deliver() must be thread-safe and must return by `deadline`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/json/object.hpp>

#include "core/clock.hpp"
#include "core/event.hpp"
#include "core/result.hpp"
#include "store/event_store.hpp"

namespace pliers {

struct delivery_context {
  std::string rule_id;
  std::size_t target_index = 0;
  std::int64_t attempt = 1;
  std::chrono::steady_clock::time_point deadline;
};

struct delivery_outcome {
  bool success = false;
  processing_error error;               // when !success; `type` is what retry policies match on
  std::optional<timestamp> not_before;  // the peer asked to wait (Retry-After)
  bool gone = false;                    // the peer said it will never accept again (HTTP 410)
  std::string detail;                   // on success: what the peer answered (e.g. a stream id)
};

class route_target {
 public:
  virtual ~route_target() = default;
  virtual std::string kind() const = 0;
  virtual delivery_outcome deliver(const event& e, const delivery_context& ctx) = 0;
  // The timeout of one delivery.
  virtual std::chrono::milliseconds timeout() const = 0;
};

// Builds a target of a kind from its config; errors name the member under `field`
// ("targets[0].config.url").
using route_target_factory = std::function<result<std::shared_ptr<route_target>>(
    const std::string& type, const boost::json::object& config, const std::string& field)>;

}  // namespace pliers
