#include "process/plugin_processor.hpp"

namespace pliers {

plugin_processor::plugin_processor(event_store& store, log_tailer& tailer, event_bus& bus, const clock& clk,
                                   plugin_chain& chain, std::string member, options opts)
    : chain_(chain) {
  lifecycle_ = bus.subscribe({"plugin.registered", "plugin.enabled", "plugin.disabled", "plugin.unregistered"},
                             [this](const event& e) { chain_.apply_lifecycle(e); });
  consumer_group_member::options group_opts;
  group_opts.partitions = opts.partitions;
  group_opts.batch = opts.batch;
  group_opts.lease = opts.lease;
  group_opts.start = opts.start;
  group_opts.checkpoint_interval = opts.checkpoint_interval;
  member_ = std::make_unique<consumer_group_member>(
      store, tailer, clk, "pliers.plugins", std::move(member), event_filter{},
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
}

plugin_processor::~plugin_processor() {
  member_.reset();
  if (lifecycle_) lifecycle_->close();
}

}  // namespace pliers
