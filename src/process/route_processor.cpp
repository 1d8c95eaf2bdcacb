#include "process/route_processor.hpp"

namespace pliers {

route_processor::route_processor(event_store& store, log_tailer& tailer, event_bus& bus, const clock& clk,
                                 event_router& router, std::string member, options opts)
    : router_(router) {
  lifecycle_ = bus.subscribe({"route.added", "route.updated", "route.removed"},
                             [this](const event& e) { router_.apply_lifecycle(e); });
  consumer_group_member::options group_opts;
  group_opts.partitions = opts.partitions;
  group_opts.batch = opts.batch;
  group_opts.lease = opts.lease;
  group_opts.start = opts.start;
  group_opts.checkpoint_interval = opts.checkpoint_interval;
  member_ = std::make_unique<consumer_group_member>(
      store, tailer, clk, "pliers.routes", std::move(member), event_filter{},
      consumer_group_member::batch_handler([this, on_error = opts.on_error](std::span<const event* const> batch) {
        auto ok = router_.process_batch(batch);
        if (!ok) {
          const std::string what = "routing failures of " + std::to_string(batch.size()) +
                                   " events not filed, the batch runs again: " + ok.error().message;
          if (on_error) on_error(what);
          throw std::runtime_error(what);
        }
      }),
      group_opts);
}

route_processor::~route_processor() {
  member_.reset();
  if (lifecycle_) lifecycle_->close();
}

}  // namespace pliers
