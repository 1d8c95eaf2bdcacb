#include "process/retry_policy.hpp"

#include <algorithm>

namespace pliers {

namespace json = boost::json;

namespace {

constexpr std::int64_t max_attempts_limit = 1000;
constexpr std::int64_t max_delay_limit_ms = 7LL * 24 * 3600 * 1000;  // a week

result<std::int64_t> integer_member(const json::object& o, const char* name, const std::string& field,
                                    std::int64_t lo, std::int64_t hi) {
  const auto& v = o.at(name);
  std::int64_t n = 0;
  if (v.is_int64()) n = v.get_int64();
  else if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(hi)) n = static_cast<std::int64_t>(v.get_uint64());
  else if (v.is_double() && v.get_double() == static_cast<double>(static_cast<std::int64_t>(v.get_double())))
    n = static_cast<std::int64_t>(v.get_double());
  else return error::invalid(field + "." + name, "must be an integer");
  if (n < lo || n > hi)
    return error::invalid(field + "." + name,
                          "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", not " + std::to_string(n));
  return n;
}

}  // namespace

const char* to_string(backoff_strategy s) noexcept {
  switch (s) {
    case backoff_strategy::fixed: return "fixed";
    case backoff_strategy::linear: return "linear";
    case backoff_strategy::exponential: return "exponential";
  }
  return "exponential";
}

result<retry_policy> retry_policy::from_json(const json::value& v, const std::string& field, const retry_policy& base) {
  if (!v.is_object()) return error::invalid(field, "must be an object (RetryConfig)");
  const auto& o = v.as_object();
  static constexpr const char* known[] = {"maxAttempts", "backoffStrategy", "baseDelay", "maxDelay",
                                          "jitter",      "maxAge",          "nonRetryable"};
  for (const auto& kv : o) {
    if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return kv.key() == k; }) == std::end(known))
      return error::invalid(field + "." + std::string(kv.key()), "unknown member of RetryConfig");
  }
  retry_policy p = base;
  if (o.contains("maxAttempts")) {
    auto n = integer_member(o, "maxAttempts", field, 1, max_attempts_limit);
    if (!n) return std::move(n).error();
    p.max_attempts = *n;
  }
  if (const auto* s = o.if_contains("backoffStrategy")) {
    if (!s->is_string()) return error::invalid(field + ".backoffStrategy", "must be fixed, linear or exponential");
    const auto& t = s->get_string();
    if (t == "fixed") p.strategy = backoff_strategy::fixed;
    else if (t == "linear") p.strategy = backoff_strategy::linear;
    else if (t == "exponential") p.strategy = backoff_strategy::exponential;
    else return error::invalid(field + ".backoffStrategy", "must be fixed, linear or exponential, not '" + std::string(t).substr(0, 40) + "'");
  }
  if (o.contains("baseDelay")) {
    auto n = integer_member(o, "baseDelay", field, 0, max_delay_limit_ms);
    if (!n) return std::move(n).error();
    p.base_delay = std::chrono::milliseconds(*n);
  }
  if (o.contains("maxDelay")) {
    auto n = integer_member(o, "maxDelay", field, 0, max_delay_limit_ms);
    if (!n) return std::move(n).error();
    p.max_delay = std::chrono::milliseconds(*n);
  }
  if (p.max_delay < p.base_delay)
    return error::invalid(field + ".maxDelay", "must not be less than baseDelay (" + std::to_string(p.base_delay.count()) + ")");
  if (const auto* j = o.if_contains("jitter")) {
    if (!j->is_bool()) return error::invalid(field + ".jitter", "must be true or false");
    p.jitter = j->get_bool();
  }
  if (const auto* a = o.if_contains("maxAge")) {
    if (a->is_null()) p.max_age.reset();
    else {
      auto n = integer_member(o, "maxAge", field, 1, 365LL * 24 * 3600 * 1000);
      if (!n) return std::move(n).error();
      p.max_age = std::chrono::milliseconds(*n);
    }
  }
  if (const auto* nr = o.if_contains("nonRetryable")) {
    if (!nr->is_array() || nr->get_array().size() > 100)
      return error::invalid(field + ".nonRetryable", "must be an array of at most 100 error types");
    p.non_retryable.clear();
    for (std::size_t i = 0; i < nr->get_array().size(); ++i) {
      const auto& e = nr->get_array()[i];
      if (!e.is_string() || e.get_string().empty() || e.get_string().size() > 100)
        return error::invalid(field + ".nonRetryable[" + std::to_string(i) + "]", "must be a non-empty string of at most 100 characters");
      p.non_retryable.emplace_back(e.get_string());
    }
  }
  return p;
}

json::object retry_policy::to_json() const {
  json::object o{{"maxAttempts", max_attempts},
                 {"backoffStrategy", pliers::to_string(strategy)},
                 {"baseDelay", base_delay.count()},
                 {"maxDelay", max_delay.count()},
                 {"jitter", jitter}};
  if (max_age) o["maxAge"] = max_age->count();
  json::array nr;
  for (const auto& t : non_retryable) nr.emplace_back(t);
  o["nonRetryable"] = std::move(nr);
  return o;
}

std::chrono::milliseconds retry_policy::delay_after(std::int64_t failures) const {
  const std::int64_t n = std::max<std::int64_t>(failures, 1);
  const std::int64_t base = base_delay.count(), cap = max_delay.count();
  std::int64_t d = base;
  switch (strategy) {
    case backoff_strategy::fixed: break;
    case backoff_strategy::linear:
      d = n > cap / std::max<std::int64_t>(base, 1) ? cap : base * n;
      break;
    case backoff_strategy::exponential:
      // base * 2^(n-1) without overflow: stop doubling once past the cap.
      for (std::int64_t i = 1; i < n && d < cap; ++i) d *= 2;
      break;
  }
  return std::chrono::milliseconds(std::min(d, cap));
}

std::chrono::milliseconds retry_policy::jittered_delay_after(std::int64_t failures, std::mt19937_64& rng) const {
  const auto d = delay_after(failures);
  if (!jitter || d.count() < 2) return d;
  std::uniform_int_distribution<std::int64_t> dist(d.count() / 2, d.count());
  return std::chrono::milliseconds(dist(rng));
}

retry_decision decide_retry(const retry_policy& policy, std::int64_t failures, timestamp first_failure, timestamp now,
                            const std::string& error_type, std::mt19937_64& rng) {
  retry_decision d;
  if (std::find(policy.non_retryable.begin(), policy.non_retryable.end(), error_type) != policy.non_retryable.end()) {
    d.reason = "error type '" + error_type + "' is not retryable";
    return d;
  }
  if (failures >= policy.max_attempts) {
    d.reason = "gave up after " + std::to_string(failures) + " attempt" + (failures == 1 ? "" : "s") +
               " (maxAttempts " + std::to_string(policy.max_attempts) + ")";
    return d;
  }
  const auto next = now + std::chrono::duration_cast<std::chrono::microseconds>(policy.jittered_delay_after(failures, rng));
  if (policy.max_age && next > first_failure + *policy.max_age) {
    d.reason = "gave up: the next attempt would fall after maxAge (" + std::to_string(policy.max_age->count()) +
               " ms from the first failure)";
    return d;
  }
  d.retry = true;
  d.next_at = next;
  return d;
}

}  // namespace pliers
