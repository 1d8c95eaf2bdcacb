// The one retry policy of every delivery path (DESIGN "Processing"): the spec's RetryConfig
// plus a maximum age and error kinds that are never retried. Pure functions of their
// inputs (time and randomness are passed in), so schedules are exact under test.
//
// Delays: after n failed attempts (n >= 1) the next attempt waits
//   fixed       base
//   linear      base * n
//   exponential base * 2^(n-1)
// capped at maxDelay. With jitter the wait is uniform in [delay/2, delay] ("equal jitter":
// spread out, yet never sooner than half the schedule).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "core/clock.hpp"
#include "core/result.hpp"

namespace pliers {

enum class backoff_strategy : std::uint8_t { fixed, linear, exponential };

struct retry_policy {
  std::int64_t max_attempts = 5;  // every attempt counts, the first one too
  backoff_strategy strategy = backoff_strategy::exponential;
  std::chrono::milliseconds base_delay{1000};
  std::chrono::milliseconds max_delay{300000};
  bool jitter = true;
  std::optional<std::chrono::milliseconds> max_age;  // from the first failure
  std::vector<std::string> non_retryable;            // processing_error types

  // The spec's RetryConfig plus "maxAge" and "nonRetryable"; absent members keep the
  // defaults of `base`. Errors name the member under `field`.
  static result<retry_policy> from_json(const boost::json::value& v, const std::string& field,
                                        const retry_policy& base);
  static result<retry_policy> from_json(const boost::json::value& v, const std::string& field) {
    return from_json(v, field, retry_policy{});
  }
  boost::json::object to_json() const;

  // The delay before the next attempt after `failures` failed attempts, without jitter.
  std::chrono::milliseconds delay_after(std::int64_t failures) const;
  // The same with jitter applied (when enabled) from `rng`.
  std::chrono::milliseconds jittered_delay_after(std::int64_t failures, std::mt19937_64& rng) const;
};

const char* to_string(backoff_strategy s) noexcept;

// What to do after a failed attempt.
struct retry_decision {
  bool retry = false;
  timestamp next_at{};        // when retry
  std::string reason;         // when not: why the work is given up
};

// `failures` counts the failed attempts so far, this one included.
retry_decision decide_retry(const retry_policy& policy, std::int64_t failures, timestamp first_failure,
                            timestamp now, const std::string& error_type, std::mt19937_64& rng);

}  // namespace pliers
