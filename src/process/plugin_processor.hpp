// Runs the plugin chain from a durable subscription: the consumer group
// "pliers.plugins" (bus/consumer_group.hpp), so that every node of a cluster takes a share
// of the aggregates, each event is processed at least once (a restart resumes from the
// stored checkpoint), and one aggregate's events are processed in order. A batch's effects
// (generated events, lifecycle events, dead-letter entries) are stored before its
// checkpoint moves; when they cannot be (the store is down) the batch runs again.
// Also keeps the registry current with the lifecycle events other nodes append (an indexed
// query every `lifecycle_poll`). The consumer starts when the registry first holds a
// plugin: a node without plugins neither reads the log nor writes checkpoints (nor keeps
// the log tailer following every commit).
// Lifecycle: starts in the constructor, stops in the destructor.
#pragma once

#include <memory>

#include "bus/consumer_group.hpp"
#include "bus/lazy_consumer.hpp"
#include "process/plugin_chain.hpp"

namespace pliers {

class plugin_processor {
 public:
  struct options {
    int partitions = 8;
    std::size_t batch = 1000;
    std::chrono::milliseconds lease{10000};
    // Where a new group begins; `now` means just before the first plugin's registration, so
    // that nothing stored after a registration is missed while the consumer starts.
    subscription_start start = subscription_start::now();
    std::function<void(const std::string&)> on_error;      // a batch whose effects could not be stored
    std::chrono::milliseconds checkpoint_interval{250};    // consumer_group_member::options
    std::chrono::milliseconds lifecycle_poll{1000};
  };
  plugin_processor(event_store& store, log_tailer& tailer, const clock& clk, plugin_chain& chain, std::string member,
                   options opts);
  ~plugin_processor();

  std::uint64_t processed() const;
  std::uint64_t batch_failures() const;

 private:
  plugin_chain& chain_;
  std::unique_ptr<lazy_consumer> consumer_;
};

}  // namespace pliers
