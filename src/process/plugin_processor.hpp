// Runs the plugin chain from a durable subscription: the consumer group
// "pliers.plugins" (bus/consumer_group.hpp), so that every node of a cluster takes a share
// of the aggregates, each event is processed at least once (a restart resumes from the
// stored checkpoint), and one aggregate's events are processed in order. A batch's effects
// (generated events, lifecycle events, dead-letter entries) are stored before its
// checkpoint moves; when they cannot be (the store is down) the batch runs again.
// Also keeps the registry current with lifecycle events other nodes append.
// Lifecycle: starts in the constructor, stops in the destructor.
#pragma once

#include <memory>

#include "bus/consumer_group.hpp"
#include "bus/event_bus.hpp"
#include "process/plugin_chain.hpp"

namespace pliers {

class plugin_processor {
 public:
  struct options {
    int partitions = 8;
    std::size_t batch = 1000;
    std::chrono::milliseconds lease{10000};
    subscription_start start = subscription_start::now();  // where a new group begins
    std::function<void(const std::string&)> on_error;      // a batch whose effects could not be stored
    std::chrono::milliseconds checkpoint_interval{250};    // consumer_group_member::options
  };
  plugin_processor(event_store& store, log_tailer& tailer, event_bus& bus, const clock& clk, plugin_chain& chain,
                   std::string member, options opts);
  ~plugin_processor();

  std::uint64_t processed() const { return member_ ? member_->processed() : 0; }
  std::uint64_t batch_failures() const { return member_ ? member_->handler_failures() : 0; }

 private:
  plugin_chain& chain_;
  std::shared_ptr<subscription> lifecycle_;
  std::unique_ptr<consumer_group_member> member_;
};

}  // namespace pliers
