// Routing pieces that need no peer: the Standard Webhooks signature against the
// specification's published test vector, the private-address classifier behind the
// webhook SSRF check, templates, and the retry engine honouring a peer's Retry-After,
// scheduling rate-limited deliveries at their slot and running entries concurrently.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "core/event.hpp"
#include "process/http_post.hpp"
#include "process/retry_engine.hpp"
#include "process/route_targets.hpp"

namespace pliers {

TEST(Routing, WebhookSignatureMatchesTheStandardWebhooksTestVector) {
  // github.com/standard-webhooks/standard-webhooks, libraries' shared test case.
  EXPECT_EQ(webhook_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                              R"({"test": 2432232314})"),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(Routing, PrivateLoopbackLinkLocalAndMetadataAddressesAreRecognised) {
  for (const char* a : {"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                        "::1", "::", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1"})
    EXPECT_EQ(is_private_address(a), std::optional<bool>(true)) << a;
  for (const char* a : {"93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"})
    EXPECT_EQ(is_private_address(a), std::optional<bool>(false)) << a;
  EXPECT_EQ(is_private_address("example.com"), std::nullopt);
}

TEST(Routing, PublicOnlyRefusesLoopbackUnlessAllowListed) {
  auto refused = resolve_public("http://127.0.0.1:9/x", {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, errc::forbidden);
  auto allowed = resolve_public("http://127.0.0.1:9/x", {"127.0.0.1"});
  ASSERT_TRUE(allowed) << allowed.error().message;
  EXPECT_EQ(*allowed, "127.0.0.1:9:127.0.0.1");
  EXPECT_FALSE(resolve_public("http://[::1]:9/", {}));
}

TEST(Routing, TemplatesFillEventFieldsAndSubjectsStayOneLine) {
  event e;
  e.id = "e1";
  e.type = "form.created";
  e.aggregate_id = "form-1";
  e.payload = {{"title", "Intake\r\nBcc: x"}, {"n", 3}};
  EXPECT_EQ(render_template("{{type}}/{{ aggregateId }}: {{payload.title}} {{payload.n}}{{payload.none}}", e, true),
            "form.created/form-1: Intake  Bcc: x 3");
}

TEST(Routing, RetryEngineSchedulesNoSoonerThanThePeerAsked) {
  auto st = open_store("memory:");
  ASSERT_TRUE(st);
  fake_clock clk(from_micros(1'700'000'000'000'000));
  retry_engine engine(**st, clk, {});
  retry_policy p;
  p.strategy = backoff_strategy::fixed;
  p.base_delay = std::chrono::milliseconds(100);
  p.jitter = false;
  event e;
  e.id = "00000000-0000-4000-8000-000000000001";
  e.type = "t";
  e.aggregate_id = "a";
  e.aggregate_type = "x";
  processing_error err{"http_429", "slow down", std::nullopt, {}};
  set_retry_not_before(err, clk.now() + std::chrono::seconds(30));
  auto d = engine.record_failure(e, "route:r:0", err, p, 1);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(*d->next_retry_at, clk.now() + std::chrono::seconds(30));
  // Without it the policy's 100 ms applies.
  auto d2 = engine.record_failure(e, "route:r:1", {"http_500", "x", std::nullopt, {}}, p, 1);
  ASSERT_TRUE(d2);
  EXPECT_EQ(*d2->next_retry_at, clk.now() + std::chrono::milliseconds(100));
}

namespace {

event test_event(int i) {
  event e;
  char id[37];
  std::snprintf(id, sizeof id, "00000000-0000-4000-8000-%012d", i);
  e.id = id;
  e.type = "t";
  e.aggregate_id = "a";
  e.aggregate_type = "x";
  return e;
}

retry_policy quick_policy() {
  retry_policy p;
  p.strategy = backoff_strategy::fixed;
  p.base_delay = std::chrono::milliseconds(0);
  p.jitter = false;
  return p;
}

}  // namespace

TEST(Routing, RateLimitedDeliveriesAreDueExactlyAtTheirSlot) {
  auto st = open_store("memory:");
  ASSERT_TRUE(st);
  fake_clock clk(from_micros(1'700'000'000'000'000));
  retry_engine engine(**st, clk, {});
  retry_policy p;  // exponential from 1 s with jitter: would push a 200 ms slot later
  processing_error err{"rate_limited", "over the limit", std::nullopt, {}};
  set_retry_at(err, clk.now() + std::chrono::milliseconds(200));
  auto d = engine.record_failure(test_event(1), "route:r:0", err, p, 0);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(*d->next_retry_at, clk.now() + std::chrono::milliseconds(200));
}

// One target that hangs must not hold back the retries of the others: entries run on a
// bounded pool, one consumer on at most half of it.
TEST(Routing, ASlowTargetsRetriesDoNotHoldBackOtherTargetsRetries) {
  auto st = open_store("memory:");
  ASSERT_TRUE(st);
  fake_clock clk(from_micros(1'700'000'000'000'000));
  retry_engine::options o;
  o.tick = std::chrono::milliseconds(20);
  o.max_concurrent = 4;
  retry_engine engine(**st, clk, o);
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> slow_running{0}, slow_peak{0}, fast_done{0};
  engine.register_consumer("slow", [&](const dead_letter&, std::int64_t) {
    const int running = ++slow_running;
    for (int peak = slow_peak.load(); running > peak && !slow_peak.compare_exchange_weak(peak, running);) {
    }
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return release; });
    --slow_running;
    return retry_engine::attempt_outcome{true, {}};
  });
  engine.register_consumer("fast", [&](const dead_letter&, std::int64_t) {
    ++fast_done;
    return retry_engine::attempt_outcome{true, {}};
  });
  // The hanging target's six entries are filed first (claimed first), then 20 others.
  for (int i = 0; i < 6; ++i)
    ASSERT_TRUE(engine.record_failure(test_event(i), "slow:target", {"timeout", "x", std::nullopt, {}}, quick_policy(), 0));
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(engine.record_failure(test_event(100 + i), "fast:target", {"http_500", "x", std::nullopt, {}}, quick_policy(), 0));
  clk.advance(std::chrono::seconds(1));
  engine.start();
  auto wait_for = [](const std::function<bool()>& pred) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pred() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return pred();
  };
  EXPECT_TRUE(wait_for([&] { return fast_done.load() == 20; })) << fast_done.load() << " of 20 while the slow target hangs";
  EXPECT_EQ(slow_running.load(), 2);  // half the pool, no more
  EXPECT_EQ(slow_peak.load(), 2);
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  // The ones handed back (busy) are due again `busy_delay` later, and none is lost.
  auto resolved = [&] {
    dead_letter_filter f;
    f.status = "resolved";
    auto page = engine.list(f, 100, std::nullopt);
    return page ? page->entries.size() : 0u;
  };
  EXPECT_TRUE(wait_for([&] {
    clk.advance(std::chrono::milliseconds(500));
    return resolved() == 26;
  })) << resolved();
  engine.stop();
  dead_letter_filter f;
  f.consumer = "slow:target";
  auto slow = engine.list(f, 100, std::nullopt);
  ASSERT_TRUE(slow);
  for (const auto& d : slow->entries) EXPECT_EQ(d.attempts, 2) << "handing back is not an attempt";
}

}  // namespace pliers
