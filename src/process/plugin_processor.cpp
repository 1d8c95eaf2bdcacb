#include "process/plugin_processor.hpp"

namespace pliers {

plugin_processor::plugin_processor(event_store& store, log_tailer& tailer, const clock& clk, plugin_chain& chain,
                                   std::string member, options opts)
    : chain_(chain) {
  lazy_consumer::hooks h;
  h.refresh = [this] { (void)chain_.load(); };
  h.has_work = [this] { return !chain_.empty(); };
  h.first_position = [this] { return chain_.first_registration(); };
  h.make_member = [this, &store, &tailer, &clk, member = std::move(member), opts](subscription_start start) {
    consumer_group_member::options group_opts;
    group_opts.partitions = opts.partitions;
    group_opts.batch = opts.batch;
    group_opts.lease = opts.lease;
    group_opts.start = start;
    group_opts.checkpoint_interval = opts.checkpoint_interval;
    return std::make_unique<consumer_group_member>(
        store, tailer, clk, "pliers.plugins", member, event_filter{},
        consumer_group_member::async_batch_handler([this, on_error = opts.on_error](std::span<const event* const> batch) {
          auto wait = chain_.process_batch_async(batch);
          return std::function<void()>([wait = std::move(wait), on_error, n = batch.size()] {
            auto ok = wait();
            if (!ok) {
              const std::string what = "plugin effects of " + std::to_string(n) +
                                       " events not stored, the batch runs again: " +
                                       (ok.error().field.empty() ? "" : ok.error().field + ": ") + ok.error().message;
              if (on_error) on_error(what);
              throw std::runtime_error(what);
            }
          });
        }),
        group_opts);
  };
  consumer_ = std::make_unique<lazy_consumer>(opts.start, opts.lifecycle_poll, std::move(h));
  chain_.set_on_change([this] { consumer_->poke(); });
}

plugin_processor::~plugin_processor() {
  chain_.set_on_change(nullptr);
  consumer_.reset();
}

std::uint64_t plugin_processor::processed() const { return consumer_->processed(); }

std::uint64_t plugin_processor::batch_failures() const { return consumer_->handler_failures(); }

}  // namespace pliers
