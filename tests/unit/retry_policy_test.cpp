#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/event_codec.hpp"
#include "process/retry_policy.hpp"

namespace pliers {
namespace {

using std::chrono::milliseconds;

retry_policy policy(backoff_strategy s, std::int64_t base, std::int64_t cap, bool jitter = false) {
  retry_policy p;
  p.strategy = s;
  p.base_delay = milliseconds(base);
  p.max_delay = milliseconds(cap);
  p.jitter = jitter;
  p.max_attempts = 10;
  return p;
}

TEST(RetryPolicy, FixedLinearExponentialSchedulesAreExact) {
  auto f = policy(backoff_strategy::fixed, 250, 10000);
  auto l = policy(backoff_strategy::linear, 250, 1000);
  auto x = policy(backoff_strategy::exponential, 100, 1500);
  const std::int64_t fixed[] = {250, 250, 250, 250, 250};
  const std::int64_t linear[] = {250, 500, 750, 1000, 1000};
  const std::int64_t expo[] = {100, 200, 400, 800, 1500};
  for (int n = 1; n <= 5; ++n) {
    EXPECT_EQ(f.delay_after(n).count(), fixed[n - 1]) << n;
    EXPECT_EQ(l.delay_after(n).count(), linear[n - 1]) << n;
    EXPECT_EQ(x.delay_after(n).count(), expo[n - 1]) << n;
  }
  // No overflow far out.
  EXPECT_EQ(x.delay_after(1000).count(), 1500);
  EXPECT_EQ(l.delay_after(std::numeric_limits<std::int64_t>::max()).count(), 1000);
}

TEST(RetryPolicy, JitterStaysWithinHalfToFullDelay) {
  auto p = policy(backoff_strategy::exponential, 1000, 60000, true);
  std::mt19937_64 rng(42);
  for (int n = 1; n <= 8; ++n) {
    const auto full = p.delay_after(n).count();
    std::int64_t lo = full, hi = 0;
    for (int i = 0; i < 2000; ++i) {
      const auto d = p.jittered_delay_after(n, rng).count();
      ASSERT_GE(d, full / 2);
      ASSERT_LE(d, full);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
    // It really spreads: both halves of the range are reached.
    EXPECT_LT(lo, full / 2 + full / 10) << n;
    EXPECT_GT(hi, full - full / 10) << n;
  }
}

TEST(RetryPolicy, DecideFollowsAttemptsAgeAndNonRetryableKinds) {
  auto p = policy(backoff_strategy::fixed, 1000, 1000);
  p.max_attempts = 3;
  p.non_retryable = {"invalid_result"};
  std::mt19937_64 rng(1);
  const timestamp t0 = from_micros(1'700'000'000'000'000);
  auto d1 = decide_retry(p, 1, t0, t0, "timeout", rng);
  ASSERT_TRUE(d1.retry);
  EXPECT_EQ(d1.next_at, t0 + milliseconds(1000));
  auto d2 = decide_retry(p, 2, t0, t0 + milliseconds(1000), "timeout", rng);
  ASSERT_TRUE(d2.retry);
  EXPECT_EQ(d2.next_at, t0 + milliseconds(2000));
  auto d3 = decide_retry(p, 3, t0, t0 + milliseconds(2000), "timeout", rng);
  EXPECT_FALSE(d3.retry);
  EXPECT_NE(d3.reason.find("maxAttempts 3"), std::string::npos) << d3.reason;
  auto nr = decide_retry(p, 1, t0, t0, "invalid_result", rng);
  EXPECT_FALSE(nr.retry);
  EXPECT_NE(nr.reason.find("not retryable"), std::string::npos);
  p.max_age = milliseconds(1500);
  auto aged = decide_retry(p, 2, t0, t0 + milliseconds(1000), "timeout", rng);
  EXPECT_FALSE(aged.retry);  // the next attempt (t0+2000) would be after maxAge
  EXPECT_NE(aged.reason.find("maxAge"), std::string::npos);
}

TEST(RetryPolicy, JsonRoundTripAndClearErrors) {
  auto v = parse_json(R"({"maxAttempts":4,"backoffStrategy":"linear","baseDelay":10,"maxDelay":50,"jitter":false,
                          "maxAge":60000,"nonRetryable":["http_410"]})");
  ASSERT_TRUE(v);
  auto p = retry_policy::from_json(*v, "retry");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->max_attempts, 4);
  EXPECT_EQ(p->strategy, backoff_strategy::linear);
  EXPECT_EQ(p->max_age, milliseconds(60000));
  auto back = retry_policy::from_json(boost::json::value(p->to_json()), "retry");
  ASSERT_TRUE(back);
  EXPECT_EQ(back->to_json(), p->to_json());

  struct bad_case {
    const char* json;
    const char* field;
  };
  for (auto c : {bad_case{R"({"maxAttempts":0})", "retry.maxAttempts"},
                 bad_case{R"({"maxAttempts":"3"})", "retry.maxAttempts"},
                 bad_case{R"({"backoffStrategy":"random"})", "retry.backoffStrategy"},
                 bad_case{R"({"baseDelay":-5})", "retry.baseDelay"},
                 bad_case{R"({"baseDelay":100,"maxDelay":50})", "retry.maxDelay"},
                 bad_case{R"({"jitter":"yes"})", "retry.jitter"},
                 bad_case{R"({"nonRetryable":[1]})", "retry.nonRetryable[0]"},
                 bad_case{R"({"backof":"fixed"})", "retry.backof"}}) {
    auto j = parse_json(c.json);
    ASSERT_TRUE(j);
    auto r = retry_policy::from_json(*j, "retry");
    ASSERT_FALSE(r) << c.json;
    EXPECT_EQ(r.error().field, c.field) << c.json << ": " << r.error().message;
  }
}

}  // namespace
}  // namespace pliers
