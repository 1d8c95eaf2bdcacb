#include "process/route_processor.hpp"

namespace pliers {

route_processor::route_processor(event_store& store, log_tailer& tailer, const clock& clk, event_router& router,
                                 std::string member, options opts)
    : router_(router) {
  lazy_consumer::hooks h;
  h.refresh = [this] { (void)router_.load(); };  // idempotent
  h.has_work = [this] { return !router_.empty(); };
  h.first_position = [this] { return router_.first_rule_position(); };
  h.make_member = [this, &store, &tailer, &clk, member = std::move(member), opts](subscription_start start) {
    consumer_group_member::options group_opts;
    group_opts.partitions = opts.partitions;
    group_opts.batch = opts.batch;
    group_opts.lease = opts.lease;
    group_opts.start = start;
    group_opts.checkpoint_interval = opts.checkpoint_interval;
    return std::make_unique<consumer_group_member>(
        store, tailer, clk, "pliers.routes", member, event_filter{},
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
  };
  consumer_ = std::make_unique<lazy_consumer>(opts.start, opts.lifecycle_poll, std::move(h));
  router_.set_on_change([this] { consumer_->poke(); });
}

route_processor::~route_processor() {
  router_.set_on_change(nullptr);
  consumer_.reset();
}

std::uint64_t route_processor::processed() const { return consumer_->processed(); }

}  // namespace pliers
