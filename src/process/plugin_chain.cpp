#include "process/plugin_chain.hpp"

#include <algorithm>
#include <condition_variable>
#include <future>
#include <limits>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "core/validation.hpp"

namespace pliers {

namespace json = boost::json;

// Worker threads that run plugin calls with a deadline. A call that overruns is abandoned:
// its caller gets no result, its thread is left to finish on its own (and then exits), and
// a fresh thread takes its place, so one hanging plugin never starves the others. The
// shared state outlives the runner for threads still running abandoned calls.
// Most calls take microseconds, so both sides spin briefly before sleeping: a hand-off then
// costs no futex wake-up (measured: the wake-ups were a quarter of the chain's time).
// Runners may share one budget of abandoned calls (threads left running past a deadline).
class native_runner {
 public:
  struct task {
    std::function<plugin_result()> fn;
    // running -> done (the worker finished first) or running -> abandoned (the deadline did):
    // one compare-exchange decides, so exactly one side owns the outcome.
    enum : int { running, done, abandoned };
    std::atomic<int> phase{running};
    std::atomic<bool> waiter_sleeps{false};
    std::mutex mutex;
    std::condition_variable cv;
    plugin_result result;
  };
  struct budget {
    explicit budget(std::size_t max) : max_abandoned(max) {}
    const std::size_t max_abandoned;
    std::atomic<std::size_t> abandoned{0};  // threads still running an abandoned call
  };

  native_runner(std::size_t workers, std::shared_ptr<budget> b) : state_(std::make_shared<state>()) {
    state_->target = std::max<std::size_t>(workers, 1);
    state_->shared = std::move(b);
    std::lock_guard lock(state_->mutex);
    for (std::size_t i = 0; i < state_->target; ++i) spawn(state_);
  }
  ~native_runner() {
    std::unique_lock lock(state_->mutex);
    state_->stopping = true;
    state_->cv.notify_all();
    // Wait for the healthy workers; the abandoned ones keep `state_` alive by themselves.
    state_->idle_cv.wait(lock, [&] { return state_->live <= state_->abandoned; });
  }

  result<std::shared_ptr<task>> submit(std::function<plugin_result()> fn) {
    auto t = std::make_shared<task>();
    t->fn = std::move(fn);
    std::lock_guard lock(state_->mutex);
    if (const auto n = state_->shared->abandoned.load(); n >= state_->shared->max_abandoned)
      return error::make(errc::unavailable, std::to_string(n) + " plugin calls are still running past their deadline");
    state_->queue.push_back(t);
    state_->queued.fetch_add(1);
    if (state_->sleeping > 0) state_->cv.notify_one();
    return t;
  }

  // The task's result, or nullopt when the deadline passed first (the task is abandoned).
  std::optional<plugin_result> wait(const std::shared_ptr<task>& t, std::chrono::steady_clock::time_point deadline) {
    const auto spin_until = std::chrono::steady_clock::now() + spin_time;
    auto finished = [&] { return t->phase.load() == task::done; };
    while (!finished()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= spin_until || now >= deadline) break;
      std::this_thread::yield();
    }
    if (!finished()) {
      std::unique_lock lock(t->mutex);
      t->waiter_sleeps.store(true);
      t->cv.wait_until(lock, deadline, finished);
    }
    if (finished() || !abandon(t)) return std::move(t->result);  // just finished
    return std::nullopt;
  }

  // Gives up on a task: removed when it has not started, else its thread is left to finish
  // it alone and a fresh one takes its place. False when it had finished already.
  bool abandon(const std::shared_ptr<task>& t) {
    std::lock_guard lock(state_->mutex);
    auto it = std::find(state_->queue.begin(), state_->queue.end(), t);
    if (it != state_->queue.end()) {
      state_->queue.erase(it);  // never started: nothing to abandon
      state_->queued.fetch_sub(1);
      return true;
    }
    int expected = task::running;
    if (!t->phase.compare_exchange_strong(expected, task::abandoned)) return false;
    ++state_->abandoned;
    state_->shared->abandoned.fetch_add(1);
    spawn(state_);
    return true;
  }

 private:
  static constexpr auto spin_time = std::chrono::microseconds(50);
  static constexpr auto worker_spin_time = std::chrono::microseconds(50);

  struct state {
    std::mutex mutex;
    std::condition_variable cv, idle_cv;
    std::deque<std::shared_ptr<task>> queue;
    std::atomic<std::size_t> queued{0};
    std::size_t target = 0, live = 0, abandoned = 0, sleeping = 0;
    std::shared_ptr<budget> shared;
    bool stopping = false;
  };

  static void spawn(const std::shared_ptr<state>& s) {  // called with s->mutex held
    ++s->live;
    std::thread([s] { work(s); }).detach();
  }

  static void work(std::shared_ptr<state> s) {
    std::unique_lock lock(s->mutex);
    while (true) {
      if (s->queue.empty() && !s->stopping) {
        // Spin a little for the next call before sleeping (briefly: a spinning worker takes a
        // core from the store's writer on small machines).
        lock.unlock();
        const auto spin_until = std::chrono::steady_clock::now() + worker_spin_time;
        while (s->queued.load() == 0 && std::chrono::steady_clock::now() < spin_until) std::this_thread::yield();
        lock.lock();
        ++s->sleeping;
        s->cv.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
        --s->sleeping;
      }
      if (s->queue.empty()) break;  // stopping
      auto t = std::move(s->queue.front());
      s->queue.pop_front();
      s->queued.fetch_sub(1);
      lock.unlock();
      plugin_result r;
      try {
        r = t->fn();
      } catch (const std::exception& ex) {
        r = failed_result({}, "exception", ex.what());
      } catch (...) {
        r = failed_result({}, "exception", "unknown exception");
      }
      t->result = std::move(r);
      int expected = task::running;
      const bool was_abandoned = !t->phase.compare_exchange_strong(expected, task::done);
      if (!was_abandoned && t->waiter_sleeps.load()) {
        std::lock_guard tl(t->mutex);
        t->cv.notify_all();
      }
      lock.lock();
      if (was_abandoned) {
        // A replacement was started when this call was abandoned: this thread retires.
        --s->abandoned;
        s->shared->abandoned.fetch_sub(1);
        break;
      }
    }
    --s->live;
    s->idle_cv.notify_all();
  }

  std::shared_ptr<state> state_;
};

struct plugin_chain::entry {
  std::shared_ptr<event_plugin> plugin;
  std::string kind;
  std::vector<type_pattern> patterns;
  std::vector<std::string> pattern_text;
  plugin_options options;
  std::int64_t priority = 0;
  std::uint64_t order = 0;
  std::chrono::milliseconds timeout{};
  std::atomic<bool> enabled{true};
  std::atomic<std::uint64_t> executions{0}, failures{0};
  // Runs on events after this position only: a Lua or remote plugin sees the events stored
  // after its registration, even when older ones are delivered again (at-least-once). Native
  // plugins, registered anew by their process at every start, see everything (0).
  std::atomic<std::int64_t> registered_at{std::numeric_limits<std::int64_t>::max()};
  std::int64_t registration_position = 0;  // of its plugin.registered event
};

namespace {

constexpr const char* lifecycle_aggregate_type = "plugin";

std::string lifecycle_aggregate(std::string_view plugin_id) { return "plugin-" + std::string(plugin_id); }

result<void> check_plugin_id(std::string_view id) {
  if (id.empty() || id.size() > 100) return error::invalid("id", "must be 1 to 100 characters");
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return error::invalid("id", "may contain only letters, digits, '.', '_' and '-'");
  return {};
}

std::int64_t hops_of(const event& e) {
  if (const auto* h = e.metadata.if_contains("pluginHops"); h && h->is_int64()) return h->get_int64();
  return 0;
}

json::object engine_metadata() { return {{"sourceSystem", "pliers-events"}, {"sourceVersion", "0.1.0"}}; }

new_event lifecycle_event(std::string type, json::object payload) {
  new_event ne;
  ne.type = std::move(type);
  ne.aggregate_type = lifecycle_aggregate_type;
  ne.metadata = engine_metadata();
  ne.payload = std::move(payload);
  return ne;
}

std::int64_t ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

plugin_result failed_result(std::string plugin_id, std::string type, std::string message) {
  plugin_result r;
  r.plugin_id = std::move(plugin_id);
  r.success = false;
  r.error_type = std::move(type);
  r.error = std::move(message);
  return r;
}

json::object to_json(const plugin_view& v) {
  json::array types;
  for (const auto& t : v.event_types) types.emplace_back(t);
  json::object o{{"id", v.info.id},
                 {"name", v.info.name},
                 {"version", v.info.version},
                 {"kind", v.kind},
                 {"priority", v.priority},
                 {"eventTypes", std::move(types)},
                 {"options", to_json(v.options)},
                 {"enabled", v.enabled},
                 {"config", v.info.config},
                 {"executions", v.executions},
                 {"failures", v.failures}};
  if (!v.definition.empty()) o["definition"] = v.definition;
  return o;
}

plugin_chain::plugin_chain(event_store& store, const clock& clk, retry_engine& retries, factory make, options opts)
    : store_(store), clock_(clk), retries_(retries), make_(std::move(make)), opts_(opts) {
  // One budget of calls left running past their deadline for both.
  auto budget = std::make_shared<native_runner::budget>(opts.max_abandoned);
  native_ = std::make_unique<native_runner>(opts.native_workers, budget);
  chain_thread_ = std::make_unique<native_runner>(1, budget);
  retries_.register_consumer("plugin", [this](const dead_letter& d, std::int64_t attempt) { return retry(d, attempt); });
}

plugin_chain::~plugin_chain() = default;

std::shared_ptr<plugin_chain::entry> plugin_chain::find(std::string_view id) const {
  std::shared_lock lock(mutex_);
  auto it = plugins_.find(id);
  return it == plugins_.end() ? nullptr : it->second;
}

const retry_policy& plugin_chain::policy_of(const entry& en) const {
  return en.options.retry ? *en.options.retry : retries_.default_policy();
}

plugin_view plugin_chain::view_of(const entry& en) const {
  plugin_view v;
  v.info = en.plugin->info();
  v.kind = en.kind;
  v.event_types = en.pattern_text;
  v.options = en.options;
  v.enabled = en.enabled.load();
  v.priority = en.priority;
  v.executions = en.executions.load();
  v.failures = en.failures.load();
  v.definition = en.plugin->definition();
  return v;
}

result<void> plugin_chain::append_lifecycle(const std::string& plugin_id, std::string type, json::object payload) {
  append_request req;
  req.aggregate_id = lifecycle_aggregate(plugin_id);
  req.events.push_back(lifecycle_event(std::move(type), std::move(payload)));
  auto r = store_.append(std::move(req));
  if (!r) return std::move(r).error();
  auto& last = applied_[plugin_id];
  last = std::max(last, r->events.back().position.value);
  return {};
}

result<plugin_view> plugin_chain::register_plugin(std::shared_ptr<event_plugin> plugin, std::vector<std::string> event_types,
                                                  plugin_options opts) {
  std::lock_guard serial(lifecycle_mutex_);
  if (!plugin) return error::invalid("plugin", "required");
  const auto& info = plugin->info();
  if (auto ok = check_plugin_id(info.id); !ok) return std::move(ok).error();
  if (info.name.empty() || info.name.size() > 200) return error::invalid("name", "must be 1 to 200 characters");
  if (event_types.empty()) return error::invalid("eventTypes", "must name at least one event type or pattern");
  if (event_types.size() > 100) return error::invalid("eventTypes", "at most 100 event types");
  auto en = std::make_shared<entry>();
  for (std::size_t i = 0; i < event_types.size(); ++i) {
    auto p = type_pattern::parse(event_types[i], "eventTypes[" + std::to_string(i) + "]");
    if (!p) return std::move(p).error();
    en->patterns.push_back(std::move(*p));
  }
  if (opts.timeout && opts.timeout->count() <= 0) return error::invalid("options.timeout", "must be a positive number of milliseconds");
  en->plugin = std::move(plugin);
  en->kind = en->plugin->kind();
  en->pattern_text = std::move(event_types);
  en->options = std::move(opts);
  en->priority = en->options.priority.value_or(info.priority);
  en->timeout = en->options.timeout.value_or(opts_.default_timeout);
  // In the registry first (so that the echo of our own plugin.registered from the log finds
  // it), out again if the event cannot be stored.
  {
    std::unique_lock lock(mutex_);
    if (plugins_.count(info.id)) return error::make(errc::conflict, "plugin '" + info.id + "' is already registered");
    en->order = next_order_++;
    plugins_[info.id] = en;
    chain_generation_.fetch_add(1);
  }
  auto view = view_of(*en);
  json::object payload = to_json(view);
  payload.erase("executions");
  payload.erase("failures");
  payload.erase("id");
  payload["pluginId"] = info.id;
  if (auto ok = append_lifecycle(info.id, "plugin.registered", std::move(payload)); !ok) {
    std::unique_lock lock(mutex_);
    plugins_.erase(info.id);
    chain_generation_.fetch_add(1);
    return std::move(ok).error();
  }
  en->registration_position = applied_[info.id];
  en->registered_at = en->kind == "native" ? 0 : en->registration_position;
  changed();
  try {
    en->plugin->on_enable();
  } catch (...) {
  }
  return view;
}

result<void> plugin_chain::unregister_plugin(std::string_view id) {
  std::lock_guard serial(lifecycle_mutex_);
  auto en = find(id);
  if (!en) return error::make(errc::not_found, "no plugin '" + std::string(id) + "'");
  if (auto ok = append_lifecycle(std::string(id), "plugin.unregistered", {{"pluginId", id}}); !ok) return ok;
  {
    std::unique_lock lock(mutex_);
    plugins_.erase(std::string(id));
    chain_generation_.fetch_add(1);
  }
  if (en->enabled.exchange(false)) {
    try {
      en->plugin->on_disable();
    } catch (...) {
    }
  }
  return {};
}

result<plugin_view> plugin_chain::enable(std::string_view id) {
  std::lock_guard serial(lifecycle_mutex_);
  auto en = find(id);
  if (!en) return error::make(errc::not_found, "no plugin '" + std::string(id) + "'");
  if (!en->enabled.load()) {
    if (auto ok = append_lifecycle(std::string(id), "plugin.enabled", {{"pluginId", id}}); !ok) return std::move(ok).error();
    const bool was = en->enabled.exchange(true);
    chain_generation_.fetch_add(1);  // after the flag: a chain cached meanwhile is dropped
    if (!was) {
      try {
        en->plugin->on_enable();
      } catch (...) {
      }
    }
  }
  return view_of(*en);
}

result<plugin_view> plugin_chain::disable(std::string_view id) {
  std::lock_guard serial(lifecycle_mutex_);
  auto en = find(id);
  if (!en) return error::make(errc::not_found, "no plugin '" + std::string(id) + "'");
  if (en->enabled.load()) {
    if (auto ok = append_lifecycle(std::string(id), "plugin.disabled", {{"pluginId", id}}); !ok) return std::move(ok).error();
    const bool was = en->enabled.exchange(false);
    chain_generation_.fetch_add(1);
    if (was) {
      try {
        en->plugin->on_disable();
      } catch (...) {
      }
    }
  }
  return view_of(*en);
}

std::vector<plugin_view> plugin_chain::list() const {
  std::vector<std::shared_ptr<entry>> all;
  {
    std::shared_lock lock(mutex_);
    for (const auto& [id, en] : plugins_) all.push_back(en);
  }
  std::vector<plugin_view> out;
  for (const auto& en : all) out.push_back(view_of(*en));
  return out;
}

result<plugin_view> plugin_chain::get(std::string_view id) const {
  auto en = find(id);
  if (!en) return error::make(errc::not_found, "no plugin '" + std::string(id) + "'");
  return view_of(*en);
}

std::vector<std::shared_ptr<plugin_chain::entry>> plugin_chain::chain_for(std::string_view type) const {
  // Cached per type until the registry changes (most logs have few types).
  const auto generation = chain_generation_.load();
  {
    std::lock_guard lock(cache_mutex_);
    if (cache_generation_ != generation) {
      chain_cache_.clear();
      cache_generation_ = generation;
    }
    auto it = chain_cache_.find(type);
    if (it != chain_cache_.end()) return it->second;
  }
  std::vector<std::shared_ptr<entry>> out;
  {
    std::shared_lock lock(mutex_);
    for (const auto& [id, en] : plugins_) {
      if (!en->enabled.load(std::memory_order_relaxed)) continue;
      for (const auto& p : en->patterns)
        if (p.matches(type)) {
          out.push_back(en);
          break;
        }
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a->priority != b->priority ? a->priority > b->priority : a->order < b->order;
  });
  std::lock_guard lock(cache_mutex_);
  if (cache_generation_ == generation && chain_cache_.size() < 10000) chain_cache_.emplace(std::string(type), out);
  return out;
}

std::vector<std::shared_ptr<event_plugin>> plugin_chain::plugins_for_event(std::string_view type) const {
  std::vector<std::shared_ptr<event_plugin>> out;
  for (const auto& en : chain_for(type)) out.push_back(en->plugin);
  return out;
}

struct plugin_chain::call {
  std::shared_ptr<entry> en;
  std::chrono::steady_clock::time_point t0, deadline;
  std::shared_ptr<native_runner::task> task;  // when it runs off this thread
  std::optional<plugin_result> result;         // when it already finished (or failed to start)
};

plugin_chain::call plugin_chain::start(const std::shared_ptr<entry>& en, const event& e,
                                       std::span<const plugin_result> previous, std::int64_t attempt) {
  call c;
  c.en = en;
  c.t0 = std::chrono::steady_clock::now();
  c.deadline = c.t0 + en->timeout;
  const auto& id = en->plugin->info().id;
  if (en->kind == "native" || en->options.async) {
    // The call may outlive this frame (abandoned at its deadline): it owns its inputs.
    auto trigger = std::make_shared<const event>(e);
    auto prev = std::make_shared<const std::vector<plugin_result>>(previous.begin(), previous.end());
    auto plugin = en->plugin;
    const auto deadline = c.deadline;
    auto task = native_->submit([plugin, trigger, prev, attempt, deadline] {
      const std::string correlation = trigger->correlation_id.value_or(trigger->id);
      plugin_context ctx{*trigger, *prev, correlation, trigger->id, attempt, deadline, plugin->info().config};
      return plugin->process(*trigger, ctx);
    });
    if (task) c.task = std::move(*task);
    else c.result = failed_result(id, "overloaded", task.error().message);
    return c;
  }
  const std::string correlation = e.correlation_id.value_or(e.id);
  plugin_context ctx{e, previous, correlation, e.id, attempt, c.deadline, en->plugin->info().config};
  try {
    c.result = en->plugin->process(e, ctx);
  } catch (const std::exception& ex) {
    c.result = failed_result(id, "exception", ex.what());
  } catch (...) {
    c.result = failed_result(id, "exception", "unknown exception");
  }
  return c;
}

plugin_result plugin_chain::finish(call& c) {
  const auto& en = c.en;
  const auto& id = en->plugin->info().id;
  plugin_result r;
  if (c.result) {
    r = std::move(*c.result);
  } else if (auto done = native_->wait(c.task, c.deadline)) {
    r = std::move(*done);
  } else {
    r = failed_result(id, "timeout", "timed out after " + std::to_string(en->timeout.count()) + " ms");
  }
  r.execution_time_ms = ms_since(c.t0);
  if (r.success && std::chrono::steady_clock::now() > c.deadline + std::chrono::milliseconds(1))
    r = failed_result(id, "timeout", "took " + std::to_string(ms_since(c.t0)) + " ms, over its timeout of " +
                                         std::to_string(en->timeout.count()) + " ms");
  if (!r.success && r.error_type.empty()) r.error_type = "plugin_error";
  if (!r.success && !r.error) r.error = "the plugin reported failure";
  if (!r.success) r.generated_events.clear();  // effects are kept only on success
  r.plugin_id = id;
  r.async = en->options.async;
  if (r.execution_time_ms == 0) r.execution_time_ms = ms_since(c.t0);
  ++en->executions;
  if (!r.success) ++en->failures;
  return r;
}

plugin_result plugin_chain::run_one(const std::shared_ptr<entry>& en, const event& e, std::span<const plugin_result> previous,
                                    std::int64_t attempt) {
  auto c = start(en, e, previous, attempt);
  return finish(c);
}

// One event's way through the chain, kept where another thread can take it over.
struct plugin_chain::progress {
  const event* trigger = nullptr;
  std::int64_t attempt = 1;
  std::vector<std::shared_ptr<entry>> sync;  // the synchronous plugins that apply, in order
  std::size_t next = 0;                      // the next of them to run
  std::vector<call> async_calls;             // started first, finished last
  std::vector<plugin_result> results;        // of sync[0..next)
  // A copy of the trigger for calls made on the chain thread: a native call left running
  // past its deadline still reads it after the caller's batch is gone.
  std::shared_ptr<const event> owned;
};

// A batch run on the chain thread (process_batch_async). The thread runs every event's chain
// and calls native plugins itself; the caller sleeps until the batch is done, and gives up on
// the thread when a native call overruns its deadline (the thread is left to finish it
// alone), taking over the rest of that event's chain. One wake-up per batch instead of a
// hand-off per native call.
struct plugin_chain::batch_job {
  std::span<const event* const> events;
  std::size_t first = 0;         // where this job starts
  std::vector<run>* runs = nullptr;  // the caller's; written by the thread for [first, done)
  std::size_t done = 0;          // the thread has written runs [first, done)
  std::size_t wake_at_done = 0;  // the caller waits for `done` to reach this (0: it does not)
  std::size_t index = 0;         // of the event in progress
  progress current;              // its state (the thread's until abandoned)
  std::mutex mutex;
  std::condition_variable cv;
  // GUARDED_BY(mutex):
  bool finished = false;         // every event ran (or `failure` is set)
  bool abandoned = false;        // the caller gave up on the thread, which must stop at once
  std::exception_ptr failure;    // the thread threw outside any plugin
  bool in_call = false;          // a native call is running on the thread
  std::chrono::steady_clock::time_point call_t0, call_deadline;
  // When the caller wakes up next: a native call whose deadline comes earlier wakes it.
  std::chrono::steady_clock::time_point caller_wakes = std::chrono::steady_clock::time_point::max();
};

bool plugin_chain::begin(const event& e, std::int64_t attempt, progress& p) {
  p.trigger = &e;
  p.attempt = attempt;
  if (is_lifecycle(e)) return false;
  auto chain = chain_for(e.type);
  if (chain.empty()) return false;
  // Async plugins start first and run beside the chain (seeing no previous results: they
  // do not wait for it); their results come last.
  // A stored event (position > 0) meets only the plugins registered before it; an example
  // event (dry run, position 0) meets them all.
  auto applies = [&](const std::shared_ptr<entry>& en) {
    return e.position.value == 0 || en->registered_at.load(std::memory_order_relaxed) < e.position.value;
  };
  for (auto& en : chain) {
    if (!applies(en)) continue;
    if (en->options.async) p.async_calls.push_back(start(en, e, {}, attempt));
    else p.sync.push_back(std::move(en));
  }
  return true;
}

bool plugin_chain::advance(progress& p, batch_job* job) {
  for (; p.next < p.sync.size(); ++p.next) {
    const auto& en = p.sync[p.next];
    if (!job || en->kind != "native") {
      p.results.push_back(run_one(en, *p.trigger, p.results, p.attempt));
      continue;
    }
    // On the chain thread: the call runs here, watched by the caller.
    if (!p.owned) p.owned = std::make_shared<const event>(*p.trigger);
    call c;
    c.en = en;
    c.t0 = std::chrono::steady_clock::now();
    c.deadline = c.t0 + en->timeout;
    {
      std::lock_guard lock(job->mutex);
      job->in_call = true;
      job->call_t0 = c.t0;
      job->call_deadline = c.deadline;
      if (c.deadline < job->caller_wakes) job->cv.notify_one();
    }
    const event& e = *p.owned;
    const auto& info = en->plugin->info();
    plugin_result r;
    try {
      plugin_context ctx{e, p.results, e.correlation_id.value_or(e.id), e.id, p.attempt, c.deadline, info.config};
      r = en->plugin->process(e, ctx);
    } catch (const std::exception& ex) {
      r = failed_result(info.id, "exception", ex.what());
    } catch (...) {
      r = failed_result(info.id, "exception", "unknown exception");
    }
    {
      std::lock_guard lock(job->mutex);
      job->in_call = false;
      if (job->abandoned) return false;  // the caller took over: touch nothing more
    }
    c.result = std::move(r);
    p.results.push_back(finish(c));
  }
  return true;
}

plugin_chain::run plugin_chain::end(progress& p) {
  run out;
  out.trigger = p.trigger;
  out.results = std::move(p.results);
  for (auto& c : p.async_calls) out.results.push_back(finish(c));
  return out;
}

plugin_chain::run plugin_chain::execute(const event& e, std::int64_t attempt) {
  progress p;
  if (!begin(e, attempt, p)) return run{&e, {}};
  advance(p, nullptr);
  return end(p);
}

void plugin_chain::run_job(batch_job& job) {
  try {
    for (std::size_t i = job.first; i < job.events.size(); ++i) {
      job.index = i;  // read by the caller only while a call runs (published by in_call's lock)
      job.current = progress{};
      run r;
      if (begin(*job.events[i], 1, job.current)) {
        if (!advance(job.current, &job)) return;  // abandoned: this thread is the job's no more
        r = end(job.current);
      } else {
        r.trigger = job.events[i];
      }
      (*job.runs)[i] = std::move(r);
      std::lock_guard lock(job.mutex);
      job.done = i + 1;
      if (job.done == job.wake_at_done) job.cv.notify_one();
    }
  } catch (...) {
    std::lock_guard lock(job.mutex);
    if (job.abandoned) return;
    job.failure = std::current_exception();
  }
  std::lock_guard lock(job.mutex);
  job.finished = true;
  job.cv.notify_one();
}

std::vector<plugin_chain::run> plugin_chain::execute_batch(std::span<const event* const> events,
                                                           const std::function<void(run&)>& ready) {
  std::vector<run> runs(events.size());
  // `ready` throwing must not cut the job short: the chain thread writes `runs` and reads the
  // events until the job is done, so the exception waits for that.
  std::exception_ptr ready_failed;
  auto tell = [&](std::size_t begin, std::size_t end) {
    if (!ready || ready_failed) return;
    try {
      for (std::size_t i = begin; i < end; ++i) ready(runs[i]);
    } catch (...) {
      ready_failed = std::current_exception();
    }
  };
  std::size_t from = 0;
  while (from < events.size()) {
    auto job = std::make_shared<batch_job>();
    job->events = events;
    job->first = from;
    job->done = from;
    job->runs = &runs;
    job->caller_wakes = std::chrono::steady_clock::now() + shortest_native_timeout();
    auto task = chain_thread_->submit([this, job] {
      run_job(*job);
      return plugin_result{};
    });
    if (!task) {  // too many calls left running past their deadline: here, one by one
      for (std::size_t i = from; i < events.size(); ++i) runs[i] = execute(*events[i]);
      tell(from, events.size());
      break;
    }
    std::size_t told = from;
    std::unique_lock lock(job->mutex);
    while (true) {
      if (job->done > told) {  // handed over in chunks, while the thread goes on
        const std::size_t upto = job->done;
        lock.unlock();
        tell(told, upto);
        told = upto;
        lock.lock();
        continue;
      }
      if (job->finished) break;
      const auto now = std::chrono::steady_clock::now();
      if (job->in_call && now >= job->call_deadline) break;
      // Until the running call's deadline; with none running, until a call could overrun
      // (a call starting later that could end sooner wakes us up); or until a chunk is done.
      job->caller_wakes = job->in_call ? job->call_deadline : now + shortest_native_timeout();
      job->wake_at_done = ready ? std::min(told + ready_chunk, events.size()) : events.size();
      job->cv.wait_until(lock, job->caller_wakes);
      job->wake_at_done = 0;
    }
    if (job->finished) {
      if (job->failure) std::rethrow_exception(job->failure);
      break;
    }
    // A native call overran: the thread is left to finish it alone; this event's chain goes
    // on here (the thread's copy of its state stays with the job, which the call may read).
    job->abandoned = true;
    progress p;
    p.trigger = job->current.trigger;
    p.attempt = job->current.attempt;
    p.sync = job->current.sync;
    p.next = job->current.next;
    p.results = job->current.results;
    p.async_calls = std::move(job->current.async_calls);
    call c;
    c.en = p.sync[p.next];
    c.t0 = job->call_t0;
    c.deadline = job->call_deadline;
    const std::size_t at = job->index;
    lock.unlock();
    chain_thread_->abandon(*task);
    c.result = failed_result(c.en->plugin->info().id, "timeout",
                             "timed out after " + std::to_string(c.en->timeout.count()) + " ms");
    p.results.push_back(finish(c));
    ++p.next;
    advance(p, nullptr);
    runs[at] = end(p);
    tell(at, at + 1);
    from = at + 1;
  }
  if (ready_failed) std::rethrow_exception(ready_failed);
  return runs;
}

std::chrono::milliseconds plugin_chain::shortest_native_timeout() const {
  std::shared_lock lock(mutex_);
  auto shortest = std::chrono::milliseconds(std::chrono::hours(1));
  for (const auto& [id, en] : plugins_)
    if (en->kind == "native") shortest = std::min(shortest, en->timeout);
  return shortest;
}

void plugin_chain::collect(const event& trigger, const std::shared_ptr<entry>& en, plugin_result& r, std::int64_t attempt,
                           effects& out, bool generated_events) {
  const auto& id = en->plugin->info().id;
  const auto& info = en->plugin->info();
  std::vector<append_request> generated;
  if (generated_events && r.success && !r.generated_events.empty()) {
    const std::int64_t hops = hops_of(trigger);
    if (hops >= opts_.max_hops) {
      r = failed_result(id, "hop_limit",
                        "refused " + std::to_string(r.generated_events.size()) + " generated event(s): the trigger is " +
                            std::to_string(hops) + " plugin hops from its origin (limit " + std::to_string(opts_.max_hops) +
                            "); is there a loop?");
    } else {
      for (std::size_t i = 0; i < r.generated_events.size(); ++i) {
        auto& g = r.generated_events[i];
        const std::string field = "generatedEvents[" + std::to_string(i) + "]";
        append_request req;
        req.aggregate_id = std::move(g.aggregate_id);
        auto& ne = g.event;
        ne.id = uuid_v8_ordered(trigger.position.value, "pliers/plugin/" + id + "/" + trigger.id + "/" + std::to_string(i));
        ne.causation_id = trigger.id;
        ne.correlation_id = trigger.correlation_id.value_or(trigger.id);
        if (!ne.metadata.contains("sourceSystem")) ne.metadata["sourceSystem"] = "pliers-plugin:" + id;
        if (!ne.metadata.contains("sourceVersion")) ne.metadata["sourceVersion"] = info.version;
        ne.metadata["pluginHops"] = hops + 1;
        req.events.push_back(std::move(ne));
        if (req.events.front().aggregate_type == lifecycle_aggregate_type) {
          r = failed_result(id, "invalid_result", field + ".aggregateType: 'plugin' is reserved for plugin lifecycle events");
          break;
        }
        if (auto ok = validate_append(req); !ok) {
          const auto& err = ok.error();
          std::string where = err.field.rfind("events[0]", 0) == 0 ? field + err.field.substr(9) : field + "." + err.field;
          r = failed_result(id, "invalid_result", where + ": " + err.message);
          break;
        }
        generated.push_back(std::move(req));
      }
    }
    if (!r.success) {
      r.generated_events.clear();
      generated.clear();
    }
  }
  const effects::owner me{&trigger, en, attempt, r.execution_time_ms};
  if (r.success) {
    for (auto& g : generated) {
      out.appends.push_back(std::move(g));
      out.owners.push_back(me);
    }
    if (opts_.record_executions) {
      append_request req;
      req.aggregate_id = lifecycle_aggregate(id);
      auto ne = lifecycle_event("plugin.executed", {{"pluginId", id},
                                                     {"triggerEventId", trigger.id},
                                                     {"triggerEventType", trigger.type},
                                                     {"executionTime", r.execution_time_ms},
                                                     {"success", true},
                                                     {"async", r.async},
                                                     {"attempt", attempt},
                                                     {"result", r.metadata}});
      ne.id = uuid_v8_ordered(trigger.position.value, "pliers/plugin.executed/" + id + "/" + trigger.id);
      ne.causation_id = trigger.id;
      ne.correlation_id = trigger.correlation_id.value_or(trigger.id);
      out.add_lifecycle(id, std::move(ne));
    }
    return;
  }
  auto ne = lifecycle_event("plugin.failed", {{"pluginId", id},
                                              {"triggerEventId", trigger.id},
                                              {"triggerEventType", trigger.type},
                                              {"executionTime", r.execution_time_ms},
                                              {"success", false},
                                              {"async", r.async},
                                              {"attempt", attempt},
                                              {"errorType", r.error_type},
                                              {"error", r.error.value_or("")}});
  ne.id = uuid_v8_ordered(trigger.position.value,
                          "pliers/plugin.failed/" + id + "/" + trigger.id + "/" + std::to_string(attempt));
  ne.causation_id = trigger.id;
  ne.correlation_id = trigger.correlation_id.value_or(trigger.id);
  out.add_lifecycle(id, std::move(ne));
  out.failures.push_back({&trigger, "plugin:" + id, {r.error_type, r.error.value_or(""), std::nullopt, {}}, policy_of(*en),
                          r.execution_time_ms});
}

void plugin_chain::effects::add_lifecycle(const std::string& plugin_id, new_event e) {
  auto& req = lifecycle[plugin_id];
  if (req.aggregate_id.empty()) {
    req.aggregate_id = lifecycle_aggregate(plugin_id);
    req.events.reserve(expected_triggers);
  }
  req.events.push_back(std::move(e));
}

namespace {

// Work that runs again (after a crash, before its checkpoint moved) finds some of its
// events stored: their ids are derived from the work. Drops those; true if any was.
bool drop_stored(event_store& store, std::vector<append_request>& appends) {
  bool dropped = false;
  for (auto& req : appends) {
    auto& evs = req.events;
    const auto before = evs.size();
    evs.erase(std::remove_if(evs.begin(), evs.end(), [&](const new_event& e) { return e.id && store.get_event(*e.id); }),
              evs.end());
    dropped |= evs.size() != before;
  }
  return dropped;
}

}  // namespace

result<void> plugin_chain::store_effects(effects& fx) {
  // Lifecycle events go last, one append per plugin (its aggregate), in order.
  const std::size_t generated = fx.appends.size();
  for (auto& [id, req] : fx.lifecycle)
    if (!req.events.empty()) fx.appends.push_back(std::move(req));
  fx.lifecycle.clear();
  // The store may refuse an append a plugin asked for (its aggregate exists with another
  // aggregateType, an id taken elsewhere): that plugin's run becomes a failure and the
  // rest of the batch is stored. Each round removes at least one append.
  std::size_t generated_left = generated;
  while (!fx.appends.empty()) {
    auto stored = store_.append_group(fx.appends);  // a copy: a refused group is planned again
    if (stored) break;
    const auto& err = stored.error();
    if (err.code != errc::invalid_argument && err.code != errc::conflict) return err;
    if (err.code == errc::conflict && drop_stored(store_, fx.appends)) {
      std::vector<append_request> kept;
      std::vector<effects::owner> owners;
      std::size_t left = 0;
      for (std::size_t i = 0; i < fx.appends.size(); ++i) {
        if (fx.appends[i].events.empty()) continue;
        if (i < generated_left) {
          owners.push_back(fx.owners[i]);
          ++left;
        }
        kept.push_back(std::move(fx.appends[i]));
      }
      fx.appends = std::move(kept);
      fx.owners = std::move(owners);
      generated_left = left;
      continue;
    }
    std::size_t culprit = 0;
    if (fx.appends.size() > 1) {
      if (err.field.rfind("appends[", 0) != 0) return err;
      culprit = std::strtoul(err.field.c_str() + 8, nullptr, 10);
    }
    if (culprit >= generated_left) return err;  // a lifecycle append: not a plugin's doing
    const auto owner = fx.owners[culprit];
    const auto& id = owner.en->plugin->info().id;
    effects kept;
    for (std::size_t i = 0; i < generated_left; ++i) {
      if (fx.owners[i].trigger == owner.trigger && fx.owners[i].en == owner.en) continue;
      kept.appends.push_back(std::move(fx.appends[i]));
      kept.owners.push_back(fx.owners[i]);
    }
    // The plugin's plugin.executed for this trigger becomes a plugin.failed.
    const std::string executed_id =
        uuid_v8_ordered(owner.trigger->position.value, "pliers/plugin.executed/" + id + "/" + owner.trigger->id);
    for (std::size_t i = generated_left; i < fx.appends.size(); ++i) {
      auto& req = fx.appends[i];
      const std::string plugin_id = req.aggregate_id.substr(7);  // "plugin-<id>"
      for (auto& e : req.events)
        if (e.id != executed_id) kept.add_lifecycle(plugin_id, std::move(e));
    }
    kept.failures = std::move(fx.failures);
    auto r = failed_result(id, "append_refused", "the store refused what the plugin generated: " +
                                                     (err.field.empty() ? "" : err.field + ": ") + err.message);
    r.execution_time_ms = owner.duration_ms;
    ++owner.en->failures;
    collect(*owner.trigger, owner.en, r, owner.attempt, kept);
    fx = std::move(kept);
    generated_left = fx.appends.size();
    for (auto& [pid, req] : fx.lifecycle)
      if (!req.events.empty()) fx.appends.push_back(std::move(req));
    fx.lifecycle.clear();
  }
  for (const auto& f : fx.failures) {
    auto filed = retries_.record_failure(*f.trigger, f.consumer, f.error, f.policy, f.duration_ms);
    if (!filed) return std::move(filed).error();
  }
  return {};
}

result<std::vector<plugin_result>> plugin_chain::process_event(const event& e) {
  const event* one[] = {&e};
  auto r = std::move(execute_batch(one).front());
  effects fx;
  for (auto& res : r.results) {
    auto en = find(res.plugin_id);
    if (en) collect(e, en, res, 1, fx);
  }
  if (auto ok = store_effects(fx); !ok) return std::move(ok).error();
  return std::move(r.results);
}

result<void> plugin_chain::process_batch(std::span<const event* const> events) {
  return process_batch_async(events)();
}

std::function<result<void>()> plugin_chain::process_batch_async(std::span<const event* const> events) {
  // What the careful path below needs if the store refuses the batch: the runs (their
  // results are final once collected) and the generated appends. The lifecycle events, most
  // of what is stored, are handed to the store, not copied; they are made again if needed.
  struct kept {
    std::vector<run> runs;
    std::vector<append_request> generated;
    std::vector<effects::owner> owners;
  };
  auto k = std::make_shared<kept>();
  effects fx;
  fx.expected_triggers = events.size();
  // The effects are made here while the chain thread goes on with the next events.
  k->runs = execute_batch(events, [&](run& r) {
    for (auto& res : r.results)
      if (auto en = find(res.plugin_id)) collect(*r.trigger, en, res, 1, fx);
  });
  // Dead letters first (one per consumer and event: running this again adds none).
  for (const auto& f : fx.failures) {
    auto filed = retries_.record_failure(*f.trigger, f.consumer, f.error, f.policy, f.duration_ms);
    if (!filed) return [err = std::move(filed).error()]() -> result<void> { return err; };
  }
  std::vector<append_request> all;
  all.reserve(fx.appends.size() + fx.lifecycle.size());
  if (!fx.appends.empty()) {
    all = fx.appends;
    k->generated = std::move(fx.appends);
    k->owners = std::move(fx.owners);
  }
  for (auto& [id, req] : fx.lifecycle)
    if (!req.events.empty()) all.push_back(std::move(req));
  if (all.empty()) return [] { return result<void>(); };
  auto done = std::make_shared<std::promise<result<void>>>();
  auto future = done->get_future().share();
  store_.append_group_async(std::move(all), [done](result<std::vector<append_result>> r) {
    if (r) done->set_value(result<void>());
    else done->set_value(std::move(r).error());
  });
  return [this, k, future]() -> result<void> {
    auto r = future.get();
    if (r) return r;
    const auto code = r.error().code;
    if (code != errc::invalid_argument && code != errc::conflict) return r;
    // Refused (some of it stored before, or a plugin asked for what the store refuses):
    // the careful path sorts it out append by append.
    effects again;
    again.appends = std::move(k->generated);
    again.owners = std::move(k->owners);
    for (auto& done_run : k->runs)
      for (auto& res : done_run.results)
        if (auto en = find(res.plugin_id)) collect(*done_run.trigger, en, res, 1, again, false);
    again.failures.clear();  // filed already
    return store_effects(again);
  };
}

namespace {

retry_engine::attempt_outcome failed_outcome(std::string type, std::string message) {
  retry_engine::attempt_outcome o;
  o.error.type = std::move(type);
  o.error.message = std::move(message);
  return o;
}

}  // namespace

retry_engine::attempt_outcome plugin_chain::retry(const dead_letter& d, std::int64_t attempt) {
  return run_plugin(std::string_view(d.consumer).substr(d.consumer.find(':') + 1), d.original_event, attempt);
}

retry_engine::attempt_outcome plugin_chain::run_plugin(std::string_view plugin_id, const event& e, std::int64_t attempt) {
  const std::string id(plugin_id);
  auto en = find(id);
  if (!en) return failed_outcome("plugin_not_found", "plugin '" + id + "' is not registered");
  if (!en->enabled.load()) return failed_outcome("plugin_disabled", "plugin '" + id + "' is disabled");
  auto r = run_one(en, e, {}, attempt);
  effects fx;
  collect(e, en, r, attempt, fx);
  for (auto& [pid, req] : fx.lifecycle) fx.appends.push_back(std::move(req));
  if (!fx.appends.empty()) {
    auto stored = store_.append_group(fx.appends);
    if (!stored && stored.error().code == errc::conflict && drop_stored(store_, fx.appends)) {
      // An attempt that ran before (its claimant died before recording it) stored some.
      std::erase_if(fx.appends, [](const append_request& req) { return req.events.empty(); });
      if (!fx.appends.empty()) stored = store_.append_group(fx.appends);
      else stored = std::vector<append_result>{};
    }
    if (!stored) {
      const auto& err = stored.error();
      if (err.code != errc::invalid_argument && err.code != errc::conflict)
        return failed_outcome("store_unavailable", err.message);
      return failed_outcome("append_refused", "the store refused what the plugin generated: " +
                                                  (err.field.empty() ? "" : err.field + ": ") + err.message);
    }
  }
  if (r.success) {
    retry_engine::attempt_outcome ok;
    ok.success = true;
    return ok;
  }
  return failed_outcome(r.error_type, r.error.value_or(""));
}

result<void> plugin_chain::load() {
  event_query q;
  for (const char* t : {"plugin.registered", "plugin.enabled", "plugin.disabled", "plugin.unregistered"})
    q.event_types.push_back(*type_pattern::parse(t));
  q.aggregate_types.push_back(lifecycle_aggregate_type);
  pagination page;
  page.limit = max_page_limit;
  page.count_total = false;
  page.after = log_position(lifecycle_read_.load());
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    for (const auto& e : r->events) apply_lifecycle(e);
    if (r->events.empty()) break;
    page.after = r->events.back().position;
    lifecycle_read_.store(page.after.value);
    if (!r->has_more) break;
  }
  return {};
}

bool plugin_chain::empty() const {
  std::shared_lock lock(mutex_);
  return plugins_.empty();
}

log_position plugin_chain::first_registration() const {
  std::shared_lock lock(mutex_);
  std::int64_t first = std::numeric_limits<std::int64_t>::max();
  for (const auto& [id, en] : plugins_) first = std::min(first, en->registration_position);
  return log_position(plugins_.empty() ? 0 : first);
}

void plugin_chain::set_on_change(std::function<void()> f) {
  std::lock_guard lock(on_change_mutex_);
  on_change_ = std::move(f);
}

void plugin_chain::changed() {
  std::function<void()> f;
  {
    std::lock_guard lock(on_change_mutex_);
    f = on_change_;
  }
  if (f) f();
}

void plugin_chain::apply_lifecycle(const event& e) {
  if (!is_lifecycle(e)) return;
  const auto* pid = e.payload.if_contains("pluginId");
  if (!pid || !pid->is_string()) return;
  const std::string id(pid->get_string());
  std::lock_guard serial(lifecycle_mutex_);
  auto& last = applied_[id];
  if (e.position.value <= last) return;  // made here, or older than what was
  last = e.position.value;
  if (e.type == "plugin.registered") {
    if (find(id)) return;  // already known (registered here, or seen before)
    const auto* kind = e.payload.if_contains("kind");
    if (!kind || !kind->is_string() || kind->get_string() == "native" || !make_) return;
    plugin_info info;
    info.id = id;
    if (const auto* n = e.payload.if_contains("name"); n && n->is_string()) info.name = n->get_string();
    if (const auto* v = e.payload.if_contains("version"); v && v->is_string()) info.version = v->get_string();
    if (const auto* p = e.payload.if_contains("priority"); p && p->is_int64()) info.priority = p->get_int64();
    if (const auto* c = e.payload.if_contains("config"); c && c->is_object()) info.config = c->get_object();
    plugin_options opts;
    if (const auto* o = e.payload.if_contains("options")) {
      auto parsed = plugin_options_from_json(*o, "options");
      if (parsed) opts = std::move(*parsed);
    }
    std::vector<std::string> types;
    if (const auto* t = e.payload.if_contains("eventTypes")) {
      auto list = string_list(*t, "eventTypes");
      if (list) types = std::move(*list);
    }
    json::object definition;
    if (const auto* d = e.payload.if_contains("definition"); d && d->is_object()) definition = d->get_object();
    auto plugin = make_(std::string(kind->get_string()), std::move(info), definition,
                        opts.timeout.value_or(opts_.default_timeout));
    if (!plugin) return;
    auto en = std::make_shared<entry>();
    for (const auto& t : types) {
      auto p = type_pattern::parse(t);
      if (p) en->patterns.push_back(std::move(*p));
    }
    en->plugin = std::move(*plugin);
    en->kind = en->plugin->kind();
    en->pattern_text = std::move(types);
    en->options = std::move(opts);
    en->priority = en->options.priority.value_or(en->plugin->info().priority);
    en->timeout = en->options.timeout.value_or(opts_.default_timeout);
    if (const auto* on = e.payload.if_contains("enabled"); on && on->is_bool()) en->enabled = on->get_bool();
    en->registered_at = e.position.value;
    en->registration_position = e.position.value;
    {
      std::unique_lock lock(mutex_);
      en->order = next_order_++;
      plugins_.emplace(id, std::move(en));
      chain_generation_.fetch_add(1);
    }
    changed();
  } else if (e.type == "plugin.unregistered") {
    std::unique_lock lock(mutex_);
    plugins_.erase(id);
    chain_generation_.fetch_add(1);
  } else if (e.type == "plugin.enabled" || e.type == "plugin.disabled") {
    if (auto en = find(id)) en->enabled = e.type == "plugin.enabled";
    chain_generation_.fetch_add(1);
  }
}

result<plugin_options> plugin_options_from_json(const json::value& v, const std::string& field) {
  plugin_options o;
  if (v.is_null()) return o;
  if (!v.is_object()) return error::invalid(field, "must be an object (PluginOptions)");
  for (const auto& kv : v.get_object()) {
    const std::string key(kv.key());
    const auto& m = kv.value();
    if (key == "priority") {
      if (!m.is_int64()) return error::invalid(field + ".priority", "must be an integer");
      o.priority = m.get_int64();
    } else if (key == "async") {
      if (!m.is_bool()) return error::invalid(field + ".async", "must be true or false");
      o.async = m.get_bool();
    } else if (key == "timeout") {
      if (!m.is_int64() || m.get_int64() <= 0 || m.get_int64() > 3'600'000)
        return error::invalid(field + ".timeout", "must be a positive number of milliseconds, at most 3600000");
      o.timeout = std::chrono::milliseconds(m.get_int64());
    } else if (key == "retry") {
      auto p = retry_policy::from_json(m, field + ".retry");
      if (!p) return std::move(p).error();
      o.retry = std::move(*p);
    } else {
      return error::invalid(field + "." + key, "unknown member of PluginOptions");
    }
  }
  return o;
}

json::object to_json(const plugin_options& o) {
  json::object j{{"async", o.async}};
  if (o.priority) j["priority"] = *o.priority;
  if (o.timeout) j["timeout"] = o.timeout->count();
  if (o.retry) j["retry"] = o.retry->to_json();
  return j;
}

json::object to_json(const plugin_result& r) {
  json::object o{{"pluginId", r.plugin_id}, {"success", r.success}, {"executionTime", r.execution_time_ms}};
  if (r.error) o["error"] = *r.error;
  if (!r.success && !r.error_type.empty()) o["errorType"] = r.error_type;
  if (!r.metadata.empty()) o["metadata"] = r.metadata;
  if (r.async) o["async"] = true;
  if (!r.generated_events.empty()) {
    json::array gen;
    for (const auto& g : r.generated_events) {
      auto ev = to_json(g.event);
      ev["aggregateId"] = g.aggregate_id;
      gen.push_back(std::move(ev));
    }
    o["generatedEvents"] = std::move(gen);
  }
  return o;
}

result<plugin_result> plugin_result_from_json(const json::value& v, const std::string& plugin_id, const std::string& field) {
  plugin_result r;
  r.plugin_id = plugin_id;
  if (v.is_null() || (v.is_bool() && v.get_bool())) {
    r.success = true;
    return r;
  }
  if (v.is_bool()) return failed_result(plugin_id, "rejected", "the plugin returned false");
  if (!v.is_object()) return error::invalid(field, "must be a PluginResult object, true, false or null");
  const auto& o = v.get_object();
  r.success = true;
  if (const auto* s = o.if_contains("success")) {
    if (!s->is_bool()) return error::invalid(field + ".success", "must be true or false");
    r.success = s->get_bool();
  }
  if (const auto* e = o.if_contains("error"); e && !e->is_null()) {
    if (!e->is_string()) return error::invalid(field + ".error", "must be a string");
    r.error = std::string(e->get_string());
  }
  if (const auto* t = o.if_contains("errorType"); t && !t->is_null()) {
    if (!t->is_string() || t->get_string().empty() || t->get_string().size() > 100)
      return error::invalid(field + ".errorType", "must be a non-empty string of at most 100 characters");
    r.error_type = std::string(t->get_string());
  }
  if (const auto* m = o.if_contains("metadata"); m && !m->is_null()) {
    if (!m->is_object()) return error::invalid(field + ".metadata", "must be an object");
    r.metadata = m->get_object();
  }
  if (const auto* g = o.if_contains("generatedEvents"); g && !g->is_null()) {
    if (!g->is_array()) return error::invalid(field + ".generatedEvents", "must be an array");
    if (g->get_array().size() > 1000) return error::invalid(field + ".generatedEvents", "at most 1000 events");
    for (std::size_t i = 0; i < g->get_array().size(); ++i) {
      const std::string f = field + ".generatedEvents[" + std::to_string(i) + "]";
      json::value item = g->get_array()[i];
      if (!item.is_object()) return error::invalid(f, "must be an object");
      const auto* agg = item.get_object().if_contains("aggregateId");
      if (!agg || !agg->is_string()) return error::invalid(f + ".aggregateId", "required, a string");
      generated_event ge;
      ge.aggregate_id = std::string(agg->get_string());
      item.get_object().erase("aggregateId");
      if (!item.get_object().contains("metadata")) item.get_object()["metadata"] = json::object();
      if (!item.get_object().contains("payload")) item.get_object()["payload"] = json::object();
      auto ne = new_event_from_json(item, f);
      if (!ne) return std::move(ne).error();
      ge.event = std::move(*ne);
      r.generated_events.push_back(std::move(ge));
    }
  }
  if (!r.success) {
    if (r.error_type.empty()) r.error_type = "plugin_error";
    if (!r.error) r.error = "the plugin reported failure";
  }
  return r;
}

}  // namespace pliers
