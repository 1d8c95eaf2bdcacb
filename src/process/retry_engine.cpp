#include "process/retry_engine.hpp"

#include <algorithm>

#include "core/time_format.hpp"
#include "core/uuid.hpp"

namespace pliers {

namespace {

constexpr std::size_t max_history = 100;  // the most recent attempts of an entry

std::int64_t elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count();
}

void add_attempt(dead_letter& d, delivery_attempt a) {
  d.history.push_back(std::move(a));
  if (d.history.size() > max_history) d.history.erase(d.history.begin());
}

}  // namespace

void set_retry_not_before(processing_error& err, timestamp t) { err.context["retryNotBefore"] = format_rfc3339(t); }

std::optional<timestamp> retry_not_before(const processing_error& err) {
  const auto* v = err.context.if_contains("retryNotBefore");
  if (!v || !v->is_string()) return std::nullopt;
  return parse_rfc3339(v->get_string());
}

void set_retry_at(processing_error& err, timestamp t) { err.context["retryAt"] = format_rfc3339(t); }

std::optional<timestamp> retry_at(const processing_error& err) {
  const auto* v = err.context.if_contains("retryAt");
  if (!v || !v->is_string()) return std::nullopt;
  return parse_rfc3339(v->get_string());
}

std::string_view consumer_kind(std::string_view consumer) { return consumer.substr(0, consumer.find(':')); }

retry_engine::retry_engine(event_store& store, const clock& clk, options opts)
    : store_(store), clock_(clk), opts_(std::move(opts)), rng_(std::random_device{}()) {}

retry_engine::~retry_engine() { stop(); }

void retry_engine::register_consumer(std::string prefix, consumer_handler handler) {
  std::lock_guard lock(mutex_);
  handlers_[std::move(prefix)] = std::move(handler);
}

void retry_engine::start() {
  std::lock_guard lock(mutex_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void retry_engine::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The pool finishes what was claimed (each attempt is bounded by its target's timeout).
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(mutex_);
    pool_stopping_ = true;
    workers.swap(workers_);
  }
  jobs_cv_.notify_all();
  for (auto& t : workers) t.join();
  std::lock_guard lock(mutex_);
  pool_stopping_ = false;
}

void retry_engine::submit(std::function<void()> job) {
  if (workers_.empty())
    for (std::size_t i = 0; i < std::max<std::size_t>(opts_.max_concurrent, 1); ++i)
      workers_.emplace_back([this] { work(); });
  ++in_flight_;
  jobs_.push_back(std::move(job));
  jobs_cv_.notify_one();
}

void retry_engine::work() {
  std::unique_lock lock(mutex_);
  while (true) {
    jobs_cv_.wait(lock, [&] { return pool_stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and nothing left
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    job();
    lock.lock();
    --in_flight_;
    idle_cv_.notify_all();
    cv_.notify_all();  // the engine's thread may claim more
  }
}

void retry_engine::attempt_claimed(dead_letter entry) {
  const auto started = clock_.now();
  const auto t0 = std::chrono::steady_clock::now();
  auto outcome = run_handler(entry, entry.attempts + 1);
  entry.status = "pending_retry";  // claimed by the schedule, so not permanent
  (void)finish(std::move(entry), outcome, started, elapsed_ms(t0), false);
}

result<dead_letter> retry_engine::record_failure(const event& e, const std::string& consumer, processing_error err,
                                                 const retry_policy& policy, std::int64_t duration_ms) {
  const auto now = clock_.now();
  dead_letter d;
  d.id = new_uuid_v4();
  d.original_event = e;
  d.consumer = consumer;
  d.attempts = 1;
  d.max_attempts = policy.max_attempts;
  d.first_failed_at = d.failed_at = now;
  d.retry_config = policy.to_json();
  add_attempt(d, {1, now, false, err, duration_ms, false});
  retry_decision decision;
  {
    std::lock_guard lock(mutex_);
    decision = decide_retry(policy, 1, now, now, err.type, rng_);
  }
  if (auto nb = retry_not_before(err); decision.retry && nb && *nb > decision.next_at) decision.next_at = *nb;
  if (auto at = retry_at(err); decision.retry && at) decision.next_at = *at;
  d.error = std::move(err);
  if (decision.retry) {
    d.status = "pending_retry";
    d.next_retry_at = decision.next_at;
  } else {
    d.status = "permanent_failure";
    d.permanent_reason = decision.reason;
  }
  auto stored = store_.dlq_add(std::move(d));
  if (stored && stored->status == "pending_retry") {
    std::lock_guard lock(mutex_);
    woken_ = true;
    cv_.notify_all();
  }
  return stored;
}

result<dead_letter_page> retry_engine::list(const dead_letter_filter& filter, std::size_t limit,
                                            std::optional<std::int64_t> after) {
  return store_.dlq_list(filter, limit, after);
}

result<dead_letter> retry_engine::get(std::string_view id) { return store_.dlq_get(id); }

retry_engine::attempt_outcome retry_engine::run_handler(const dead_letter& entry, std::int64_t attempt) {
  consumer_handler handler;
  {
    std::lock_guard lock(mutex_);
    auto it = handlers_.find(consumer_kind(entry.consumer));
    if (it != handlers_.end()) handler = it->second;
  }
  ++attempted_;
  if (!handler)
    return {false, {"no_handler", "no consumer of kind '" + std::string(consumer_kind(entry.consumer)) +
                                      "' runs on this node", std::nullopt, {}}};
  try {
    return handler(entry, attempt);
  } catch (const std::exception& ex) {
    return {false, {"exception", ex.what(), std::nullopt, {}}};
  } catch (...) {
    return {false, {"exception", "unknown exception", std::nullopt, {}}};
  }
}

result<dead_letter> retry_engine::finish(dead_letter entry, const attempt_outcome& outcome, timestamp started,
                                         std::int64_t duration_ms, bool manual) {
  const auto now = clock_.now();
  const bool was_permanent = entry.status == "permanent_failure";
  const std::int64_t attempt = entry.attempts + 1;
  entry.attempts = attempt;
  entry.lease_until = {};
  add_attempt(entry, {attempt, started, outcome.success,
                      outcome.success ? std::nullopt : std::optional<processing_error>(outcome.error), duration_ms, manual});
  if (outcome.success) {
    entry.status = "resolved";
    entry.resolved_at = now;
    entry.next_retry_at.reset();
  } else {
    entry.error = outcome.error;
    entry.failed_at = now;
    entry.next_retry_at.reset();
    if (was_permanent) {
      entry.status = "permanent_failure";  // an operator's retry does not re-arm the schedule
    } else {
      auto policy = retry_policy::from_json(boost::json::value(entry.retry_config), "retryConfig", opts_.default_policy);
      const retry_policy& p = policy ? *policy : opts_.default_policy;
      retry_decision decision;
      {
        std::lock_guard lock(mutex_);
        decision = decide_retry(p, attempt, entry.first_failed_at, now, outcome.error.type, rng_);
      }
      if (auto nb = retry_not_before(outcome.error); decision.retry && nb && *nb > decision.next_at)
        decision.next_at = *nb;
      if (decision.retry) {
        entry.status = "pending_retry";
        entry.next_retry_at = decision.next_at;
      } else {
        entry.status = "permanent_failure";
        entry.permanent_reason = decision.reason;
      }
    }
  }
  if (auto ok = store_.dlq_update(entry); !ok) return std::move(ok).error();
  return entry;
}

result<retry_result> retry_engine::retry(std::string_view id) {
  auto before = store_.dlq_get(id);
  if (!before) return std::move(before).error();
  if (before->status == "resolved") return error::make(errc::conflict, "dead letter " + std::string(id) + " is resolved");
  auto claimed = store_.dlq_claim(id, clock_.now(), opts_.lease);
  if (!claimed) return std::move(claimed).error();
  claimed->status = before->status;  // what finish() judges by: was it permanent?
  const auto started = clock_.now();
  const auto t0 = std::chrono::steady_clock::now();
  auto outcome = run_handler(*claimed, claimed->attempts + 1);
  auto done = finish(std::move(*claimed), outcome, started, elapsed_ms(t0), true);
  if (!done) return std::move(done).error();
  retry_result r{done->id, outcome.success, done->status, done->attempts, std::nullopt};
  if (!outcome.success) r.error = outcome.error;
  return r;
}

std::vector<result<retry_result>> retry_engine::retry_batch(const std::vector<std::string>& ids) {
  std::vector<result<retry_result>> out;
  out.reserve(ids.size());
  for (const auto& id : ids) out.push_back(retry(id));
  return out;
}

result<dead_letter> retry_engine::mark_permanent(std::string_view id, std::string reason) {
  auto claimed = store_.dlq_claim(id, clock_.now(), opts_.lease);
  if (!claimed) return std::move(claimed).error();
  claimed->status = "permanent_failure";
  claimed->permanent_reason = std::move(reason);
  claimed->next_retry_at.reset();
  claimed->lease_until = {};
  if (auto ok = store_.dlq_update(*claimed); !ok) return std::move(ok).error();
  return std::move(*claimed);
}

std::size_t retry_engine::run_due() {
  auto due = store_.dlq_claim_due(clock_.now(), opts_.batch, opts_.lease);
  if (!due) return 0;  // the store is unavailable: the next tick tries again
  const std::size_t n = due->size();
  std::size_t left = n;
  std::unique_lock lock(mutex_);
  for (auto& entry : *due)
    submit([this, &left, e = std::move(entry)]() mutable {
      attempt_claimed(std::move(e));
      std::lock_guard done(mutex_);
      --left;  // the waiter below is woken by idle_cv_ (work() notifies after each job)
    });
  idle_cv_.wait(lock, [&] { return left == 0; });
  return n;
}

void retry_engine::run() {
  while (true) {
    std::size_t room = 0;
    {
      std::unique_lock lock(mutex_);
      if (stopping_) return;
      const std::size_t cap = std::max<std::size_t>(opts_.max_concurrent, 1);
      room = in_flight_ < cap ? std::min(cap - in_flight_, opts_.batch) : 0;
    }
    // Claim no more than free threads: a claimed entry starts at once.
    bool more = room == 0;  // all busy: claim again as soon as one is free
    if (room > 0) {
      auto due = store_.dlq_claim_due(clock_.now(), room, opts_.lease);
      if (due) {
        more = due->size() == room;
        std::vector<dead_letter> busy;
        {
          std::lock_guard lock(mutex_);
          const std::size_t per_consumer = std::max<std::size_t>(opts_.max_concurrent / 2, 1);
          for (auto& entry : *due) {
            auto& running = consumer_in_flight_[entry.consumer];
            if (running >= per_consumer) {
              busy.push_back(std::move(entry));
              continue;
            }
            ++running;
            submit([this, e = std::move(entry)]() mutable {
              const std::string consumer = e.consumer;
              attempt_claimed(std::move(e));
              std::lock_guard done(mutex_);
              if (auto it = consumer_in_flight_.find(consumer); it != consumer_in_flight_.end() && --it->second == 0)
                consumer_in_flight_.erase(it);
            });
          }
        }
        // Handed back unchanged but for the time: no attempt was made.
        for (auto& entry : busy) {
          entry.status = "pending_retry";
          entry.lease_until = {};
          entry.next_retry_at = clock_.now() + opts_.busy_delay;
          (void)store_.dlq_update(entry);
        }
      }
    }
    std::unique_lock lock(mutex_);
    if (stopping_) return;
    const std::size_t cap = std::max<std::size_t>(opts_.max_concurrent, 1);
    if (more && in_flight_ < cap) continue;
    cv_.wait_for(lock, opts_.tick, [&] { return stopping_ || woken_ || (more && in_flight_ < cap); });
    woken_ = false;
  }
}

}  // namespace pliers
