// Routing rules and their targets through the real server and real peers: webhooks signed
// and checked by an independent Python receiver, failures retried and dead-lettered
// (500, 410, 429 with Retry-After, redirects, private addresses, slow receivers), rules
// refused with the field named, the dry run, rules surviving a restart; Redis Streams,
// NATS JetStream and SMTP against the servers scripts/test-peers starts; websocket channels
// through the real WebSocket endpoint (a slow subscriber drops, never blocks); Lua plugins
// as targets; rate limits delaying, not dropping.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <csignal>
#include <sys/wait.h>

#include <hiredis/hiredis.h>
#include <nats/nats.h>

#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "process/route_targets.hpp"
#include "support/fixtures.hpp"
#include "support/peers.hpp"
#include "support/server_process.hpp"
#include "support/ws_client.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

namespace {

const std::string secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

server_launch allow_loopback() { return {"", {{"PLIERS_ROUTES_ALLOW_PRIVATE_TARGETS", "127.0.0.1"}}}; }

std::vector<json::value> read_lines(const std::filesystem::path& p) {
  std::vector<json::value> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Polls until pred() holds (timeout: 15 s); returns whether it did.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 15s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return pred();
}

std::string webhook(const python_peer& r, const std::string& path, const std::string& extra = "") {
  return R"({"type":"webhook","config":{"url":")" + r.base_url() + path + R"(","secret":")" + secret + R"(")" + extra +
         "}";
}

std::string fast_retry(int attempts) {
  return R"(,"retryConfig":{"maxAttempts":)" + std::to_string(attempts) +
         R"(,"backoffStrategy":"fixed","baseDelay":200,"maxDelay":200,"jitter":false})";
}

json::array dead_letters(http_client& c, const std::string& consumer) {
  auto r = c.get("/v1/dead-letters?consumer=" + consumer);
  if (!r || r->status != 200) return {};
  return json::parse(r->body).at("deadLetters").as_array();
}

std::string status_of(http_client& c, const std::string& consumer) {
  auto dl = dead_letters(c, consumer);
  return dl.empty() ? "" : std::string(dl[0].at("status").as_string());
}

std::string append_one(http_client& c, const std::string& agg, const std::string& type, json::object payload = {}) {
  auto r = c.post("/v1/aggregates/" + agg + "/events", append_body({event_json(type, "form", std::move(payload))}));
  EXPECT_TRUE(r && r->status == 201) << (r ? r->body : r.error().message);
  return r && r->status == 201 ? std::string(json::parse(r->body).at("events").at(0).at("id").as_string()) : "";
}

}  // namespace

TEST(Routes, WebhooksAreSignedAndVerifiedByAnIndependentReceiver) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  auto add = c->post("/v1/routes", R"({"id":"forms","name":"Forms","conditions":[
      {"type":"event_type","operator":"equals","value":"form.created"},
      {"type":"payload","field":"title","operator":"contains","value":"Intake"}],
      "targets":[)" + webhook(rx, "/ok") + "}]}");
  ASSERT_TRUE(add);
  ASSERT_EQ(add->status, 201) << add->body;
  EXPECT_EQ(json::parse(add->body).at("targets").at(0).at("config").at("secret").as_string(), "***");
  // A rule matching everything: it must never see the router's own lifecycle events.
  auto all = c->post("/v1/routes", R"({"id":"all","targets":[)" + webhook(rx, "/all") + "}]}");
  ASSERT_EQ(all->status, 201) << all->body;
  const auto id = append_one(*c, "form-1", "form.created", {{"title", "Intake v1"}});
  append_one(*c, "form-2", "form.created", {{"title", "Other"}});
  append_one(*c, "form-1", "form.updated", {{"title", "Intake v2"}});
  std::vector<json::value> log;
  ASSERT_TRUE(eventually([&] {
    log = read_lines(dir.path() / "log");
    return log.size() >= 4;
  }));
  std::this_thread::sleep_for(300ms);
  log = read_lines(dir.path() / "log");
  int ok = 0, everything = 0;
  for (const auto& rec : log) {
    EXPECT_TRUE(rec.at("verified").as_bool()) << json::serialize(rec);
    EXPECT_EQ(rec.at("id"), rec.at("event").at("id"));  // the event id is the idempotency key
    EXPECT_NE(rec.at("event").at("aggregateType").as_string(), "route");
    if (rec.at("path") == "/ok") {
      ++ok;
      EXPECT_EQ(rec.at("id").as_string(), id);
    } else {
      ++everything;
    }
  }
  EXPECT_EQ(ok, 1);
  EXPECT_EQ(everything, 3);
}

TEST(Routes, InvalidRulesAreRefusedNamingTheField) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  const std::string t = R"("targets":[{"type":"webhook","config":{"url":"http://example.com/h"}}])";
  const std::pair<std::string, std::string> cases[] = {
      {R"({"id":"a","conditions":[{"type":"event_type","operator":"resembles","value":"x"}],)" + t + "}", "conditions[0].operator"},
      {R"({"id":"a","conditions":[{"type":"payload","field":"a","operator":"regex","value":"(("}],)" + t + "}", "conditions[0].value"},
      {R"({"id":"a","conditions":[{"type":"custom","customFunction":"event.payload.x >"}],)" + t + "}", "conditions[0].customFunction"},
      {R"({"id":"a","conditions":[{"type":"weather","operator":"equals","value":1}],)" + t + "}", "conditions[0].type"},
      {R"({"id":"a","conditions":[{"type":"payload","operator":"equals","value":1}],)" + t + "}", "conditions[0].field"},
      {R"({"id":"a","targets":[{"type":"carrier-pigeon","config":{}}]})", "targets[0].type"},
      {R"({"id":"a","targets":[{"type":"webhook","config":{"url":"ftp://x/y"}}]})", "targets[0].config.url"},
      {R"({"id":"a","targets":[{"type":"webhook","config":{"url":"http://x","secret":"whsec_!!"}}]})", "targets[0].config.secret"},
      {R"({"id":"a","targets":[{"type":"queue","config":{"kind":"kafka","url":"x"}}]})", "targets[0].config.kind"},
      {R"({"id":"a","targets":[{"type":"email","config":{"url":"smtp://x","from":"a@b","to":"nobody","subject":"s","body":"b"}}]})", "targets[0].config.to"},
      {R"({"id":"a",)" + t + R"(,"rateLimit":{"maxEvents":0,"timeWindow":1000}})", "rateLimit.maxEvents"},
      {R"({"id":"a","targets":[{"type":"webhook","config":{"url":"http://x"},"retryConfig":{"maxAttempts":0}}]})", "targets[0].retryConfig.maxAttempts"},
      {R"({"id":"a b",)" + t + "}", "id"},
      {R"({"id":"a","targets":[]})", "targets"},
  };
  for (const auto& [body, field] : cases) {
    auto r = c->post("/v1/routes", body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body << " -> " << r->body;
    EXPECT_EQ(json::parse(r->body).at("field").as_string(), field) << r->body;
  }
  EXPECT_EQ(json::parse(c->get("/v1/routes")->body).at("routes").as_array().size(), 0u);
}

TEST(Routes, DryRunSaysWhichRulesMatchAndWhy) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"big","priority":5,"conditions":[
      {"type":"aggregate_type","operator":"in","value":["order","form"]},
      {"type":"custom","customFunction":"event.payload.total > 100"}],
      "targets":[{"type":"webhook","config":{"url":"https://example.com/h"}}]})")->status, 201);
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"eu","conditions":[{"type":"metadata","field":"region","operator":"equals","value":"eu"}],
      "targets":[{"type":"webhook","config":{"url":"https://example.com/h"}}]})")->status, 201);
  auto r = c->post("/v1/routes/dry-run", R"({"type":"order.placed","aggregateType":"order","payload":{"total":250},
      "metadata":{"sourceSystem":"x","sourceVersion":"1","region":"us"}})");
  ASSERT_EQ(r->status, 200) << r->body;
  auto doc = json::parse(r->body);
  EXPECT_EQ(json::serialize(doc.at("matched")), R"(["big"])");
  const auto& rules = doc.at("rules").as_array();
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(rules[0].at("ruleId"), "big");  // priority order
  EXPECT_EQ(rules[1].at("matched"), false);
  EXPECT_NE(json::serialize(rules[1].at("reasons")).find("metadata equals region): false"), std::string::npos) << r->body;
}

TEST(Routes, FailuresAreRetriedDeadLetteredOrDisableTheTarget) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  auto add = c->post("/v1/routes", R"({"id":"r","targets":[)" + webhook(rx, "/flaky") + fast_retry(3) + "}," +
                                       webhook(rx, "/fail") + fast_retry(3) + "}," + webhook(rx, "/gone") + fast_retry(3) +
                                       "}," + webhook(rx, "/redirect") + fast_retry(1) + R"(},
      {"type":"webhook","config":{"url":"http://169.254.169.254/latest/meta-data"}}]})");
  ASSERT_EQ(add->status, 201) << add->body;
  append_one(*c, "form-1", "form.created");
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:r:0") == "resolved"; })) << status_of(*c, "route:r:0");
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:r:1") == "permanent_failure"; }));
  auto failed = dead_letters(*c, "route:r:1");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].at("attempts").as_int64(), 3);
  EXPECT_EQ(failed[0].at("error").at("type").as_string(), "http_500");
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:r:2") == "permanent_failure"; }));
  EXPECT_EQ(dead_letters(*c, "route:r:2")[0].at("attempts").as_int64(), 1);  // 410: not retried
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:r:3") == "permanent_failure"; }));
  EXPECT_EQ(dead_letters(*c, "route:r:3")[0].at("error").at("type").as_string(), "http_302");
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:r:4") == "permanent_failure"; }));
  EXPECT_EQ(dead_letters(*c, "route:r:4")[0].at("error").at("type").as_string(), "forbidden_address");
  // 410 disabled the target: the next event is not sent there.
  auto rule = json::parse(c->get("/v1/routes/r")->body);
  EXPECT_EQ(rule.at("targets").at(2).at("enabled"), false);
  append_one(*c, "form-2", "form.created");
  EXPECT_TRUE(eventually([&] { return dead_letters(*c, "route:r:1").size() == 2; }));
  int gone = 0, redirected_followed = 0;
  for (const auto& rec : read_lines(dir.path() / "log")) {
    gone += rec.at("path") == "/gone";
    redirected_followed += rec.at("path") == "/ok";
  }
  EXPECT_EQ(gone, 1);
  EXPECT_EQ(redirected_followed, 0);
}

TEST(Routes, RetryAfterIsHonoured) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"r","targets":[)" + webhook(rx, "/limited") + fast_retry(5) + "}]}")->status, 201);
  append_one(*c, "form-1", "form.created");
  ASSERT_TRUE(eventually([&] { return status_of(*c, "route:r:0") == "resolved"; }));
  auto log = read_lines(dir.path() / "log");
  ASSERT_EQ(log.size(), 2u);
  // baseDelay is 200 ms; the receiver asked for 2 s.
  EXPECT_GE(log[1].at("at").as_double() - log[0].at("at").as_double(), 1.9);
}

TEST(Routes, ASlowReceiverBlocksNeitherAppendsNorOtherTargets) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"r","targets":[)" + webhook(rx, "/slow", R"(,"timeout":1000)") + fast_retry(3) +
                                      "}," + webhook(rx, "/ok") + "}]}")
                ->status,
            201);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) append_one(*c, "form-" + std::to_string(i), "form.created");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // Every event reaches the healthy target within about one slow timeout.
  EXPECT_TRUE(eventually(
      [&] {
        int ok = 0;
        for (const auto& rec : read_lines(dir.path() / "log")) ok += rec.at("path") == "/ok";
        return ok == 20;
      },
      5s))
      << [&] {
           int ok = 0, slow = 0;
           for (const auto& rec : read_lines(dir.path() / "log")) ok += rec.at("path") == "/ok", slow += rec.at("path") == "/slow";
           return std::to_string(ok) + " at /ok, " + std::to_string(slow) + " at /slow; dl0: " + json::serialize(dead_letters(*c, "route:r:0")).substr(0, 600) + " dl1: " + json::serialize(dead_letters(*c, "route:r:1")).substr(0, 600);
         }();
  // The slow target's deliveries are deferred to the retry engine, not lost.
  EXPECT_TRUE(eventually([&] { return dead_letters(*c, "route:r:0").size() == 20; }, 10s));
}

TEST(Routes, RulesAreStoredAsEventsAndSurviveARestart) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  const std::string store = "sqlite:" + (dir.path() / "events.db").string();
  {
    server_process server(store, {}, allow_loopback());
    server.start();
    auto c = server.client();
    ASSERT_EQ(c->post("/v1/routes", R"({"id":"keep","targets":[)" + webhook(rx, "/ok") + "}]}")->status, 201);
    ASSERT_EQ(c->post("/v1/routes", R"({"id":"drop","targets":[)" + webhook(rx, "/fail") + "}]}")->status, 201);
    auto del = c->request("DELETE", "/v1/routes/drop");
    ASSERT_EQ(del->status, 204);
    auto lifecycle = json::parse(c->get("/v1/events?aggregateType=route")->body);
    EXPECT_EQ(lifecycle.at("events").as_array().size(), 3u);  // added, added, removed
    // A clean stop hands the routing partitions back: the next server need not wait for
    // their leases to run out (SIGKILL would cost routes.lease_ms, 10 s).
    const int status = server.stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  server_process server(store, {}, allow_loopback());
  server.start();
  auto c = server.client();
  auto list = json::parse(c->get("/v1/routes")->body).at("routes").as_array();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].at("id"), "keep");
  const auto id = append_one(*c, "form-9", "form.created");
  EXPECT_TRUE(eventually([&] {
    for (const auto& rec : read_lines(dir.path() / "log"))
      if (rec.at("id").as_string() == id) return true;
    return false;
  }));
}

TEST(Routes, WebsocketTargetsPushToChannelSubscribersOfTheStreamEndpoint) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"live","conditions":[{"type":"event_type","operator":"equals","value":"form.created"}],
      "targets":[{"type":"websocket","config":{"channel":"forms"}}]})")->status, 201);
  ws_client a(server.url()), b(server.url());
  a.send(R"({"type":"subscribe","channel":"forms","requestId":"r1"})");
  auto confirmed = a.read_type("subscription_confirmed");
  ASSERT_TRUE(confirmed);
  EXPECT_EQ(confirmed->at("data").at("channel"), "forms");
  EXPECT_EQ(confirmed->at("data").at("requestId"), "r1");
  const std::string stream_id(confirmed->at("streamId").as_string());
  b.send(R"({"type":"subscribe","channel":"other"})");
  ASSERT_TRUE(b.read_type("subscription_confirmed"));
  // Refused subscriptions name the member; the connection stays usable.
  a.send(R"({"type":"subscribe","channel":"no spaces"})");
  auto bad = a.read_type("error");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->at("data").at("field"), "channel");
  a.send(R"({"type":"subscribe","channel":"forms","filter":{}})");
  bad = a.read_type("error");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->at("data").at("field"), "filter");

  const auto id = append_one(*c, "form-1", "form.created", {{"title", "Intake"}});
  append_one(*c, "form-1", "form.updated");  // matches no rule
  auto m = a.read_type("event");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->at("streamId"), stream_id.c_str());
  EXPECT_EQ(m->at("channel"), "forms");
  EXPECT_EQ(m->at("routeId"), "live");
  EXPECT_EQ(m->at("data").at("id").as_string(), id);
  EXPECT_EQ(m->at("data").at("payload").at("title"), "Intake");
  EXPECT_GT(m->at("data").at("position").as_int64(), 0);

  // Channel subscriptions are streams: listed (filter = the channel) and closable.
  auto streams = json::parse(c->get("/v1/streams")->body).at("streams").as_array();
  bool listed = false;
  for (const auto& st : streams)
    if (st.at("id") == stream_id.c_str()) {
      listed = true;
      EXPECT_EQ(json::serialize(st.at("filter")), R"({"channel":"forms"})");
      EXPECT_EQ(st.at("eventsDelivered").as_int64(), 1);
    }
  EXPECT_TRUE(listed) << json::serialize(streams);
  EXPECT_FALSE(a.read(700ms)) << "only the routed event";  // a timed-out client is closed
  EXPECT_FALSE(b.read(100ms)) << "another channel gets nothing";
  ws_client again(server.url());
  again.send(R"({"type":"subscribe","channel":"forms"})");
  auto c2 = again.read_type("subscription_confirmed");
  ASSERT_TRUE(c2);
  again.send_json(json::object{{"type", "unsubscribe"}, {"streamId", c2->at("streamId")}});
  ASSERT_TRUE(again.read_type("unsubscribed"));
  append_one(*c, "form-2", "form.created");
  EXPECT_FALSE(again.read(700ms)) << "nothing after unsubscribe";
}

TEST(Routes, ASlowChannelSubscriberDropsItsOwnMessagesAndBlocksNobody) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"firehose","targets":[{"type":"websocket","config":{"channel":"all"}}]})")->status, 201);
  ws_client slow(server.url()), fast(server.url());
  for (auto* w : {&slow, &fast}) {
    w->send(R"({"type":"subscribe","channel":"all"})");
    ASSERT_TRUE(w->read_type("subscription_confirmed"));
  }
  // 3,000 events of 16 KiB (48 MiB): far more than the slow client's socket buffers, its
  // outbox (8 MiB) and its inbox (1 MiB) hold.
  constexpr int n = 3000, per_request = 50;
  std::atomic<int> fast_events{0}, fast_dropped{0};
  std::thread reader([&] {
    while (fast_events + fast_dropped < n) {
      auto m = fast.read(15s);
      if (!m) return;
      if (m->at("type") == "event") ++fast_events;
      if (m->at("type") == "dropped") fast_dropped += static_cast<int>(m->at("data").at("dropped").as_int64());
    }
  });
  const std::string blob(16 * 1024, 'x');
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n / per_request; ++i) {
    std::vector<std::string> events;
    for (int k = 0; k < per_request; ++k) events.push_back(event_json("form.updated", "form", {{"blob", blob}, {"k", k}}));
    auto r = c->post("/v1/aggregates/form-" + std::to_string(i) + "/events", append_body(events));
    ASSERT_TRUE(r && r->status == 201) << (r ? r->body : r.error().message);
    std::this_thread::sleep_for(30ms);  // ~25 MiB/s: a client that reads keeps up
  }
  reader.join();
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(fast_events.load(), n) << "the reading subscriber got every event while the other one did not read ("
                                   << fast_dropped.load() << " dropped)";
  EXPECT_LT(took, 30s);
  // The slow subscriber now reads what was kept for it, each event once, and the count of
  // those dropped: together, every event.
  int got = 0;
  std::int64_t dropped = 0;
  std::set<std::string> ids;
  while (got + dropped < n) {
    auto m = slow.read(5s);
    if (!m) break;
    if (m->at("type") == "dropped") {
      dropped += m->at("data").at("dropped").as_int64();
    } else if (m->at("type") == "event") {
      ++got;
      EXPECT_TRUE(ids.insert(std::string(m->at("data").at("id").as_string())).second);
    }
  }
  EXPECT_GT(dropped, 0);
  EXPECT_GT(got, 0);
  EXPECT_EQ(got + dropped, n);
}

TEST(Routes, PluginTargetsRunARegisteredLuaPluginAndStoreItsEffects) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  // Registered for a type no event has: only the rule runs them.
  const std::string tagger = R"(
function process(event, context)
  pliers.emit({aggregateId = "tag-" .. event.aggregateId, type = "tag.added", aggregateType = "tag",
               payload = {of = event.id, attempt = context.attempt}})
  return {success = true}
end)";
  const std::string refuser = "function process(event, context) return {success = false, errorType = 'refused', error = 'no'} end";
  for (const auto& [id, src] : {std::pair{std::string("tagger"), tagger}, std::pair{std::string("refuser"), refuser}}) {
    auto reg = c->post("/v1/plugins", json::serialize(json::object{{"id", id}, {"kind", "lua"}, {"eventTypes", json::array{"never.*"}},
                                                                   {"source", src}}));
    ASSERT_EQ(reg->status, 201) << reg->body;
  }
  auto add = c->post("/v1/routes", R"({"id":"to-plugin","conditions":[{"type":"event_type","operator":"equals","value":"form.created"}],
      "targets":[{"type":"plugin","config":{"pluginId":"tagger"}},
                 {"type":"plugin","config":{"pluginId":"refuser"})" + fast_retry(2) + "}]}");
  ASSERT_EQ(add->status, 201) << add->body;
  EXPECT_EQ(c->post("/v1/routes", R"({"id":"x","targets":[{"type":"plugin","config":{"pluginId":"t","extra":1}}]})")->status, 400);
  const auto id = append_one(*c, "form-1", "form.created");
  append_one(*c, "form-1", "form.updated");  // not routed
  json::array tags;
  ASSERT_TRUE(eventually([&] {
    tags = json::parse(c->get("/v1/events?type=tag.added")->body).at("events").as_array();
    return !tags.empty();
  }));
  std::this_thread::sleep_for(500ms);
  tags = json::parse(c->get("/v1/events?type=tag.added")->body).at("events").as_array();
  ASSERT_EQ(tags.size(), 1u);
  EXPECT_EQ(tags[0].at("aggregateId"), "tag-form-1");
  EXPECT_EQ(tags[0].at("causationId").as_string(), id);
  EXPECT_EQ(tags[0].at("payload").at("of").as_string(), id);
  EXPECT_EQ(tags[0].at("metadata").at("pluginHops").as_int64(), 1);
  auto executed = json::parse(c->get("/v1/events?type=plugin.executed&aggregateId=plugin-tagger")->body).at("events").as_array();
  EXPECT_EQ(executed.size(), 1u);
  // The failing plugin follows the target's retryConfig into the dead-letter queue.
  EXPECT_TRUE(eventually([&] { return status_of(*c, "route:to-plugin:1") == "permanent_failure"; }));
  auto dl = dead_letters(*c, "route:to-plugin:1");
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].at("attempts").as_int64(), 2);
  EXPECT_EQ(dl[0].at("error").at("type").as_string(), "refused");
  EXPECT_TRUE(dead_letters(*c, "route:to-plugin:0").empty());
}

TEST(Routes, RateLimitedDeliveriesAreDelayedNotDropped) {
  temp_dir dir;
  python_peer rx({PLIERS_WEBHOOK_RECEIVER, (dir.path() / "log").string(), secret});
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  // k = 5 per 1,000 ms; N = 20 events appended at once.
  constexpr int n = 20, k = 5;
  constexpr double window = 1.0;
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"limited","rateLimit":{"maxEvents":5,"timeWindow":1000},"targets":[)" +
                                      webhook(rx, "/ok") + "}]}")->status,
            201);
  std::set<std::string> ids;
  std::vector<std::string> events;
  for (int i = 0; i < n; ++i) events.push_back(event_json("form.created"));
  auto r = c->post("/v1/aggregates/form-1/events", append_body(events));
  ASSERT_EQ(r->status, 201) << r->body;
  const auto appended = json::parse(r->body);
  for (const auto& e : appended.at("events").as_array()) ids.insert(std::string(e.at("id").as_string()));
  std::vector<json::value> log;
  ASSERT_TRUE(eventually([&] {
    log = read_lines(dir.path() / "log");
    return log.size() >= n;
  }));
  std::this_thread::sleep_for(500ms);
  log = read_lines(dir.path() / "log");
  // None lost, none twice.
  std::multiset<std::string> got;
  std::vector<double> at;
  for (const auto& rec : log) {
    got.insert(std::string(rec.at("id").as_string()));
    at.push_back(rec.at("at").as_double());
  }
  EXPECT_EQ(got.size(), std::size_t(n));
  EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), ids);
  std::sort(at.begin(), at.end());
  // A burst of k, then one every window / k: the last arrives (n - k) / k windows after the
  // first (3 s), give or take the retry engine's tick (250 ms).
  const double span = at.back() - at.front();
  EXPECT_GE(span, (n - k) * window / k - 0.1) << span;
  EXPECT_LE(span, n * window / k + 1.0) << span;
  // A token bucket lets a window hold the burst (k) plus what refills during it (k - 1);
  // a late tick of the retry engine may bunch one more. Unlimited, all 20 would be in one.
  for (std::size_t i = 0; i < at.size(); ++i) {
    const auto in_window = std::upper_bound(at.begin(), at.end(), at[i] + window - 0.001) - (at.begin() + static_cast<std::ptrdiff_t>(i));
    EXPECT_LE(in_window, 2 * k) << "deliveries in the window after " << i;
  }
}

TEST(Routes, RedisStreamsTargetAppendsOncePerEvent) {
  PLIERS_REQUIRE_PEER(url, "PLIERS_TEST_REDIS_URL");
  const std::string stream = "pliers-it-" + new_uuid_v4();
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"redis","targets":[{"type":"queue","config":{"kind":"redis","url":")" + url +
                                      R"(","stream":")" + stream + R"("}}]})")
                ->status,
            201);
  const auto id = append_one(*c, "form-1", "form.created", {{"n", 1}});
  const auto port = std::atoi(url.substr(url.rfind(':') + 1).c_str());
  redisContext* rc = redisConnect("127.0.0.1", port);
  ASSERT_TRUE(rc && !rc->err);
  auto xlen = [&] {
    auto* r = static_cast<redisReply*>(redisCommand(rc, "XLEN %s", stream.c_str()));
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    return n;
  };
  EXPECT_TRUE(eventually([&] { return xlen() == 1; }));
  auto* r = static_cast<redisReply*>(redisCommand(rc, "XRANGE %s - +", stream.c_str()));
  ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
  const auto* fields = r->element[0]->element[1];
  EXPECT_EQ(std::string(fields->element[0]->str), "eventId");
  EXPECT_EQ(std::string(fields->element[1]->str), id);
  freeReplyObject(r);
  // The same (event, rule, target) delivered again (at-least-once): stored once.
  auto make = make_route_target_factory({});
  auto target = make("queue", json::parse(R"({"kind":"redis","url":")" + url + R"(","stream":")" + stream + R"("})").as_object(), "t");
  ASSERT_TRUE(target) << target.error().message;
  auto e = event_from_json(json::parse(json::serialize(json::parse(c->get("/v1/events/" + id)->body))));
  ASSERT_TRUE(e);
  delivery_context ctx{"redis", 0, 2, std::chrono::steady_clock::now() + 2s};
  auto again = (*target)->deliver(*e, ctx);
  EXPECT_TRUE(again.success) << again.error.message;
  EXPECT_TRUE(again.detail.starts_with("dup:")) << again.detail;
  EXPECT_EQ(xlen(), 1);
  redisFree(rc);
}

TEST(Routes, NatsJetStreamTargetPublishesWithTheEventIdAsMsgId) {
  PLIERS_REQUIRE_PEER(url, "PLIERS_TEST_NATS_URL");
  const std::string name = "PLIERS_IT_" + new_uuid_v4().substr(0, 8);
  const std::string subject = "pliers.it." + name;
  natsConnection* nc = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&nc, url.c_str()), NATS_OK);
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  const char* subjects[] = {subject.c_str()};
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_MemoryStorage;
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  ASSERT_EQ(js_AddStream(&si, js, &cfg, nullptr, &jerr), NATS_OK) << jerr;
  jsStreamInfo_Destroy(si);
  auto messages = [&] {
    jsStreamInfo* info = nullptr;
    if (js_GetStreamInfo(&info, js, name.c_str(), nullptr, nullptr) != NATS_OK) return std::uint64_t(0);
    auto n = info->State.Msgs;
    jsStreamInfo_Destroy(info);
    return n;
  };

  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"nats","targets":[{"type":"queue","config":{"kind":"nats","url":")" + url +
                                      R"(","subject":")" + subject + R"("}}]})")
                ->status,
            201);
  const auto id = append_one(*c, "form-1", "form.created");
  EXPECT_TRUE(eventually([&] { return messages() == 1; }));
  natsMsg* msg = nullptr;
  ASSERT_EQ(js_GetLastMsg(&msg, js, name.c_str(), subject.c_str(), nullptr, nullptr), NATS_OK);
  const char* msg_id = nullptr;
  ASSERT_EQ(natsMsgHeader_Get(msg, "Nats-Msg-Id", &msg_id), NATS_OK);
  EXPECT_EQ(std::string(msg_id), id);
  auto body = json::parse(std::string(natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg))));
  EXPECT_EQ(body.at("id").as_string(), id);
  natsMsg_Destroy(msg);
  // Delivered again (at-least-once): JetStream de-duplicates by Msg-Id.
  auto make = make_route_target_factory({});
  auto target = make("queue", json::parse(R"({"kind":"nats","url":")" + url + R"(","subject":")" + subject + R"("})").as_object(), "t");
  ASSERT_TRUE(target);
  auto e = event_from_json(json::parse(c->get("/v1/events/" + id)->body));
  ASSERT_TRUE(e);
  auto again = (*target)->deliver(*e, {"nats", 0, 2, std::chrono::steady_clock::now() + 2s});
  EXPECT_TRUE(again.success) << again.error.message;
  EXPECT_NE(again.detail.find("duplicate"), std::string::npos) << again.detail;
  EXPECT_EQ(messages(), 1u);
  js_DeleteStream(js, name.c_str(), nullptr, nullptr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

TEST(Routes, EmailTargetSendsThroughSmtp) {
  PLIERS_REQUIRE_PEER(url, "PLIERS_TEST_SMTP_URL");
  PLIERS_REQUIRE_PEER(maildir, "PLIERS_TEST_SMTP_MAILDIR");
  server_process server("memory:", {}, allow_loopback());
  server.start();
  auto c = server.client();
  const std::string marker = new_uuid_v4();
  ASSERT_EQ(c->post("/v1/routes", R"({"id":"mail","targets":[{"type":"email","config":{"url":")" + url +
                                      R"(","from":"events@pliers.test","to":["ops@pliers.test"],
        "subject":"{{type}} for {{aggregateId}}\r\nBcc: evil@x","body":"Title: {{payload.title}}\nEvent {{id}}"}}]})")
                ->status,
            201);
  const auto id = append_one(*c, "form-7", "form.created", {{"title", marker}});
  std::string found;
  EXPECT_TRUE(eventually([&] {
    for (const char* sub : {"new", "cur"}) {
      std::error_code ec;
      for (const auto& f : std::filesystem::directory_iterator(std::filesystem::path(maildir) / sub, ec)) {
        std::ifstream in(f.path());
        std::string text((std::istreambuf_iterator<char>(in)), {});
        if (text.find(marker) != std::string::npos) {
          found = text;
          return true;
        }
      }
    }
    return false;
  }));
  EXPECT_NE(found.find("Subject: form.created for form-7  Bcc: evil@x"), std::string::npos) << found;  // no header injection
  EXPECT_NE(found.find("Message-ID: <" + id + ".mail.0@pliers-events>"), std::string::npos) << found;
  EXPECT_NE(found.find("Event " + id), std::string::npos);
}

}  // namespace pliers
