// Runs the router from a durable subscription: the consumer group "pliers.routes"
// (bus/consumer_group.hpp), so every node takes a share of the aggregates, each event is
// routed at least once (a restart resumes from the stored checkpoint) and one aggregate's
// events are routed in order. A batch's failed deliveries are filed with the retry engine
// before its checkpoint moves; when they cannot be (the store is down) the batch runs
// again. Also keeps the rules current with the lifecycle events other nodes append (read
// every `lifecycle_poll`). The consumer starts with the first rule: a node without rules
// neither follows the log nor writes checkpoints (measured: an idle always-on consumer
// cost HTTP appends a quarter of their throughput).
// Lifecycle: starts in the constructor, stops in the destructor.
#pragma once

#include <memory>

#include "bus/consumer_group.hpp"
#include "bus/lazy_consumer.hpp"
#include "process/event_router.hpp"

namespace pliers {

class route_processor {
 public:
  struct options {
    int partitions = 8;
    std::size_t batch = 500;
    std::chrono::milliseconds lease{10000};
    subscription_start start = subscription_start::now();  // where a new group begins
    std::chrono::milliseconds checkpoint_interval{250};  // consumer_group_member::options
    std::function<void(const std::string&)> on_error;      // a batch whose failures could not be filed
    std::chrono::milliseconds lifecycle_poll{1000};
  };
  route_processor(event_store& store, log_tailer& tailer, const clock& clk, event_router& router, std::string member,
                  options opts);
  ~route_processor();

  std::uint64_t processed() const;

 private:
  event_router& router_;
  std::unique_ptr<lazy_consumer> consumer_;
};

}  // namespace pliers
