// Routing pieces that need no peer: the Standard Webhooks signature against the
// specification's published test vector, the private-address classifier behind the
// webhook SSRF check, templates, and the retry engine honouring a peer's Retry-After.
#include <gtest/gtest.h>

#include <random>

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

}  // namespace pliers
