// The retry engine and the dead-letter queue (spec DeadLetterQueue; DESIGN "Processing").
// Every delivery path (plugins, routing targets) reports a failed attempt here; the engine
// files it as a dead-letter entry (one per consumer and event), either pending_retry with
// the policy's next time, or permanent_failure when the policy gives up. Its thread claims
// due entries from the store (several nodes never run one entry at once: the claim is a
// lease, SKIP LOCKED on PostgreSQL) and runs them again through the consumer's handler,
// found by the consumer name's prefix ("plugin:<id>" -> handler "plugin"). Operators list,
// inspect, retry (one or many, at once, whatever the schedule) and give up entries; an
// entry that is permanent is only ever retried by an operator.
//
// Claimed entries run concurrently on a pool of `max_concurrent` threads, so one slow or
// dead target (each attempt bounded by its own timeout) does not hold back everyone
// else's retries: one consumer ("route:<rule>:<target>", "plugin:<id>") has at most half
// the threads (at least one); a due entry of a consumer at that cap is handed back,
// pending, for `busy_delay` (not an attempt). The engine's thread claims only as many
// entries as there are free threads, so a claimed entry starts at once and its lease
// (longer than any attempt) is never spent waiting in a queue.
// Thread-safety: all members may be called from any thread. The threads start in start()
// (the pool on first use) and stop in stop() or the destructor; stop() waits for the
// attempts in progress.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "core/clock.hpp"
#include "process/retry_policy.hpp"
#include "store/event_store.hpp"

namespace pliers {

// The spec's RetryResult for an operator's retry.
struct retry_result {
  std::string id;
  bool success = false;
  std::string status;              // the entry's status afterwards
  std::int64_t attempts = 0;
  std::optional<processing_error> error;
};

class retry_engine {
 public:
  struct attempt_outcome {
    bool success = false;
    processing_error error;        // when !success
  };
  // Runs the work of `entry` once more (attempt number `attempt`); must not throw.
  using consumer_handler = std::function<attempt_outcome(const dead_letter& entry, std::int64_t attempt)>;

  struct options {
    std::chrono::milliseconds tick{250};
    std::chrono::milliseconds lease{60000};   // longer than any one attempt may take
    std::size_t batch = 64;
    std::size_t max_concurrent = 8;           // entries attempted at once (retry.max_concurrent)
    std::chrono::milliseconds busy_delay{1000};  // a busy consumer's surplus entries wait this long
    retry_policy default_policy;
  };

  retry_engine(event_store& store, const clock& clk, options opts);
  ~retry_engine();
  retry_engine(const retry_engine&) = delete;
  retry_engine& operator=(const retry_engine&) = delete;

  void register_consumer(std::string prefix, consumer_handler handler);
  void start();
  void stop();

  // A failed attempt of `consumer` on `e`: files (or finds) its dead-letter entry. `attempts`
  // counts the failed attempts so far (1 for a first delivery).
  result<dead_letter> record_failure(const event& e, const std::string& consumer, processing_error err,
                                     const retry_policy& policy, std::int64_t duration_ms);

  // Operators (spec getDeadLetterEvents, retryDeadLetterEvent, retryBatch,
  // markPermanentFailure).
  result<dead_letter_page> list(const dead_letter_filter& filter, std::size_t limit, std::optional<std::int64_t> after);
  result<dead_letter> get(std::string_view id);
  result<retry_result> retry(std::string_view id);
  std::vector<result<retry_result>> retry_batch(const std::vector<std::string>& ids);
  result<dead_letter> mark_permanent(std::string_view id, std::string reason);

  // One round of due retries now (tests): claims up to `batch` due entries, attempts them
  // on the pool and returns, when all are done, how many it attempted.
  std::size_t run_due();
  const retry_policy& default_policy() const { return opts_.default_policy; }

  std::uint64_t attempted() const { return attempted_.load(); }

 private:
  attempt_outcome run_handler(const dead_letter& entry, std::int64_t attempt);
  // Records the outcome of an attempt on a claimed entry and writes it back.
  result<dead_letter> finish(dead_letter entry, const attempt_outcome& outcome, timestamp started,
                             std::int64_t duration_ms, bool manual);
  void run();
  // Runs `job` on the pool (started on first use). REQUIRES: mutex_ held.
  void submit(std::function<void()> job);
  void work();
  // Attempts a claimed entry and records the outcome; then `done`.
  void attempt_claimed(dead_letter entry);

  event_store& store_;
  const clock& clock_;
  const options opts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, consumer_handler, std::less<>> handlers_;  // GUARDED_BY(mutex_)
  std::mt19937_64 rng_;                                             // GUARDED_BY(mutex_)
  bool stopping_ = false, woken_ = false;                           // GUARDED_BY(mutex_)
  std::thread thread_;
  // The pool: claimed entries waiting for or being attempted.
  std::condition_variable jobs_cv_, idle_cv_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mutex_)
  std::size_t in_flight_ = 0;               // GUARDED_BY(mutex_): submitted and not finished
  std::map<std::string, std::size_t, std::less<>> consumer_in_flight_;  // GUARDED_BY(mutex_): by the engine's thread
  bool pool_stopping_ = false;              // GUARDED_BY(mutex_)
  std::vector<std::thread> workers_;        // GUARDED_BY(mutex_)
  std::atomic<std::uint64_t> attempted_{0};
};

// A failed attempt may carry the earliest time the peer accepts another (HTTP
// Retry-After) in its context as "retryNotBefore" (RFC 3339): the next attempt is then
// scheduled no sooner; the policy still decides whether there is one.
void set_retry_not_before(processing_error& err, timestamp t);
std::optional<timestamp> retry_not_before(const processing_error& err);
// A delivery deferred on purpose (a rule's rate limit: not a failure of the peer) names
// the time of its slot as "retryAt": the next attempt is scheduled exactly then, not after
// the policy's backoff; the policy still decides whether there is one.
void set_retry_at(processing_error& err, timestamp t);
std::optional<timestamp> retry_at(const processing_error& err);

// "plugin:abc" -> "plugin".
std::string_view consumer_kind(std::string_view consumer);

}  // namespace pliers
