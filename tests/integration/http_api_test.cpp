// The v1 HTTP API end to end against the real server binary on 127.0.0.1:0.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <boost/json.hpp>

#include "core/time_format.hpp"
#include "core/uuid.hpp"

#include <thread>
#include "support/fixtures.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using pliers::testing::server_process;
using pliers::testing::temp_dir;
using pliers::testing::append_body;
using pliers::testing::event_json;

class HttpApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new temp_dir();
    server_ = new server_process("sqlite:" + (dir_->path() / "events.db").string());
    server_->start();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  void SetUp() override { http_ = server_->client(); }
  json::value get_json(const std::string& target, unsigned expected_status = 200) {
    auto r = http_->get(target);
    EXPECT_TRUE(r);
    EXPECT_EQ(r->status, expected_status) << target << " -> " << r->body;
    return json::parse(r->body);
  }
  static inline temp_dir* dir_ = nullptr;
  static inline server_process* server_ = nullptr;
  std::unique_ptr<http_client> http_;
};

TEST_F(HttpApi, AppendThenReadBack) {
  auto r = http_->post("/v1/aggregates/form-a/events",
                       append_body({event_json("form.created", "form", {{"title", "T"}}), event_json("form.updated")}, 0));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201u) << r->body;
  auto body = json::parse(r->body);
  EXPECT_EQ(body.at("aggregateId").as_string(), "form-a");
  EXPECT_EQ(body.at("version").as_int64(), 2);
  const auto& evs = body.at("events").as_array();
  ASSERT_EQ(evs.size(), 2u);
  EXPECT_EQ(evs[0].at("sequenceNumber").as_int64(), 1);
  EXPECT_LT(evs[0].at("position").as_int64(), evs[1].at("position").as_int64());
  EXPECT_EQ(evs[0].at("timestamp").as_string().size(), std::string("2025-01-01T00:00:00.000000Z").size());

  auto read = get_json("/v1/aggregates/form-a/events");
  ASSERT_EQ(read.at("events").as_array().size(), 2u);
  EXPECT_EQ(read.at("events").as_array()[0].at("payload").at("title").as_string(), "T");
  EXPECT_EQ(get_json("/v1/aggregates/form-a/events?fromVersion=2").at("events").as_array().size(), 1u);
  EXPECT_EQ(get_json("/v1/aggregates/form-a/events?toVersion=1").at("events").as_array().size(), 1u);

  auto id = std::string(evs[1].at("id").as_string());
  EXPECT_EQ(get_json("/v1/events/" + id).at("type").as_string(), "form.updated");
  auto meta = get_json("/v1/aggregates/form-a");
  EXPECT_EQ(meta.at("version").as_int64(), 2);
  EXPECT_EQ(meta.at("eventCount").as_int64(), 2);
  EXPECT_EQ(meta.at("aggregateType").as_string(), "form");
}

TEST_F(HttpApi, ConflictCarriesCurrentVersion) {
  ASSERT_EQ(http_->post("/v1/aggregates/form-c/events", append_body({event_json("form.created")}, 0))->status, 201u);
  auto r = http_->post("/v1/aggregates/form-c/events", append_body({event_json("form.created")}, 0));
  ASSERT_EQ(r->status, 409u);
  EXPECT_EQ(r->content_type, "application/problem+json");
  auto p = json::parse(r->body);
  EXPECT_EQ(p.at("currentVersion").as_int64(), 1);
  EXPECT_EQ(p.at("expectedVersion").as_int64(), 0);
  EXPECT_EQ(p.at("status").as_int64(), 409);
  EXPECT_EQ(p.at("type").as_string(), "https://pliers.dev/problems/version-conflict");
}

TEST_F(HttpApi, RetryWithSameIdsReturnsTheOriginalResult) {
  auto e = json::parse(event_json("form.created")).as_object();
  e["id"] = new_uuid_v4();
  std::string body = append_body({json::serialize(e)}, 0);
  auto first = http_->post("/v1/aggregates/form-i/events", body);
  ASSERT_EQ(first->status, 201u);
  auto second = http_->post("/v1/aggregates/form-i/events", body);
  ASSERT_EQ(second->status, 200u) << second->body;
  EXPECT_EQ(json::parse(first->body), json::parse(second->body));
  EXPECT_EQ(get_json("/v1/aggregates/form-i").at("version").as_int64(), 1);
}

TEST_F(HttpApi, UnknownAggregateReadsEmptyButHasNoMetadata) {
  EXPECT_EQ(get_json("/v1/aggregates/nobody/events").at("events").as_array().size(), 0u);
  auto p = get_json("/v1/aggregates/nobody", 404);
  EXPECT_EQ(p.at("status").as_int64(), 404);
  get_json("/v1/aggregates/nobody/snapshot", 404);
  get_json("/v1/events/" + new_uuid_v4(), 404);
}

TEST_F(HttpApi, SnapshotsOverHttp) {
  ASSERT_EQ(http_->post("/v1/aggregates/form-s/events", append_body({event_json("a.b"), event_json("a.c")}))->status, 201u);
  auto put = http_->request("PUT", "/v1/aggregates/form-s/snapshot", R"({"sequenceNumber":2,"data":{"n":2}})");
  ASSERT_EQ(put->status, 201u) << put->body;
  auto s = get_json("/v1/aggregates/form-s/snapshot");
  EXPECT_EQ(s.at("sequenceNumber").as_int64(), 2);
  EXPECT_EQ(s.at("data").at("n").as_int64(), 2);
  EXPECT_EQ(get_json("/v1/aggregates/form-s").at("snapshotVersion").as_int64(), 2);
  EXPECT_EQ(http_->request("PUT", "/v1/aggregates/form-s/snapshot", R"({"sequenceNumber":9,"data":{}})")->status, 400u);
}

TEST_F(HttpApi, QueryByStringAndBodyWithCursor) {
  for (int i = 0; i < 7; ++i)
    ASSERT_EQ(http_->post("/v1/aggregates/sub-q" + std::to_string(i) + "/events",
                          append_body({event_json("submission.created", "submission", {{"n", i}})}))
                  ->status,
              201u);
  auto page1 = get_json("/v1/events?type=submission.*&aggregateType=submission&limit=4");
  EXPECT_EQ(page1.at("totalCount").as_int64(), 7);
  EXPECT_TRUE(page1.at("hasMore").as_bool());
  auto cursor = std::string(page1.at("cursor").as_string());
  auto page2 = get_json("/v1/events?type=submission.*&aggregateType=submission&limit=4&cursor=" + cursor);
  EXPECT_EQ(page2.at("events").as_array().size(), 3u);
  EXPECT_FALSE(page2.at("hasMore").as_bool());
  EXPECT_FALSE(page2.as_object().contains("cursor"));
  EXPECT_LT(page1.at("events").as_array()[3].at("position").as_int64(),
            page2.at("events").as_array()[0].at("position").as_int64());

  auto r = http_->post("/v1/events/query", R"({"query":{"eventTypes":["submission.created"],
      "payloadQuery":{"path":"$.n","operator":"equals","value":3}},"pagination":{"limit":10}})");
  ASSERT_EQ(r->status, 200u) << r->body;
  auto q = json::parse(r->body);
  EXPECT_EQ(q.at("totalCount").as_int64(), 1);
  EXPECT_EQ(q.at("events").as_array()[0].at("aggregateId").as_string(), "sub-q3");
  auto ids = get_json("/v1/events?aggregateId=sub-q1&aggregateId=sub-q2");
  EXPECT_EQ(ids.at("totalCount").as_int64(), 2);
}

TEST_F(HttpApi, LargeAggregateIsStreamedWhole) {
  std::vector<std::string> batch;
  for (int i = 0; i < 500; ++i) batch.push_back(event_json("big.event", "big", {{"i", i}}));
  for (int b = 0; b < 6; ++b) ASSERT_EQ(http_->post("/v1/aggregates/big-1/events", append_body(batch))->status, 201u);
  auto all = get_json("/v1/aggregates/big-1/events");
  const auto& evs = all.at("events").as_array();
  ASSERT_EQ(evs.size(), 3000u);
  for (std::size_t i = 0; i < evs.size(); ++i) ASSERT_EQ(evs[i].at("sequenceNumber").as_int64(), static_cast<std::int64_t>(i + 1));
  EXPECT_EQ(get_json("/v1/aggregates/big-1/events?fromVersion=1001&toVersion=2000").at("events").as_array().size(), 1000u);
}

TEST_F(HttpApi, PublishOneAndAnAtomicBatchAcrossAggregates) {
  auto one = json::parse(event_json("order.placed", "order")).as_object();
  one["aggregateId"] = "order-1";
  one["routingKey"] = "eu-west";
  auto r = http_->post("/v1/events", json::serialize(one));
  ASSERT_EQ(r->status, 201u) << r->body;
  auto id = std::string(json::parse(r->body).at("events").as_array()[0].at("id").as_string());
  EXPECT_EQ(get_json("/v1/events/" + id).at("metadata").at("routingKey").as_string(), "eu-west");
  EXPECT_EQ(get_json("/v1/events?routingKey=eu-west").at("totalCount").as_int64(), 1);
  auto missing = json::parse(event_json("order.placed", "order")).as_object();
  auto bad = http_->post("/v1/events", json::serialize(missing));
  EXPECT_EQ(bad->status, 400u);
  EXPECT_EQ(json::parse(bad->body).at("field").as_string(), "aggregateId");

  auto ev = [](const char* aggregate, const char* type, std::optional<int> expected = std::nullopt) {
    auto e = json::parse(event_json(type, "order")).as_object();
    e["aggregateId"] = aggregate;
    if (expected) e["expectedVersion"] = *expected;
    return json::value(e);
  };
  // order-1 is at version 1: the third event's expectation fails, so nothing is written.
  auto conflict = http_->post("/v1/events/batch", json::serialize(json::object{
      {"events", json::array{ev("order-2", "order.placed"), ev("order-3", "order.placed"), ev("order-1", "order.paid", 0)}}}));
  ASSERT_EQ(conflict->status, 409u) << conflict->body;
  EXPECT_EQ(json::parse(conflict->body).at("field").as_string(), "events[2].expectedVersion");
  get_json("/v1/aggregates/order-2", 404);
  auto ok = http_->post("/v1/events/batch", json::serialize(json::object{
      {"events", json::array{ev("order-2", "order.placed"), ev("order-1", "order.paid", 1), ev("order-2", "order.paid")}}}));
  ASSERT_EQ(ok->status, 201u) << ok->body;
  const auto body = json::parse(ok->body);
  const auto& results = body.at("events").as_array();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[2].at("aggregateId").as_string(), "order-2");
  EXPECT_EQ(results[2].at("sequenceNumber").as_int64(), 2);
  EXPECT_EQ(results[0].at("position").as_int64() + 2, results[2].at("position").as_int64());
  auto invalid = http_->post("/v1/events/batch", R"({"events":[{"aggregateId":"x","type":"t","aggregateType":"o","payload":{}}]})");
  EXPECT_EQ(invalid->status, 400u);
  EXPECT_EQ(json::parse(invalid->body).at("field").as_string(), "events[0].metadata");
}

TEST_F(HttpApi, ScheduledEventsArePublishedWhenDueAndCanBeCancelled) {
  auto body = [](const std::string& publish_at, const char* type) {
    return json::serialize(json::object{{"aggregateId", "sched-1"},
                                        {"publishAt", publish_at},
                                        {"event", json::parse(event_json(type, "sched"))}});
  };
  auto soon = format_rfc3339(default_clock().now() + std::chrono::milliseconds(300));
  auto later = format_rfc3339(default_clock().now() + std::chrono::hours(1));
  auto a = http_->post("/v1/scheduled-events", body(soon, "sched.soon"));
  ASSERT_EQ(a->status, 201u) << a->body;
  auto b = http_->post("/v1/scheduled-events", body(later, "sched.later"));
  ASSERT_EQ(b->status, 201u);
  auto a_id = std::string(json::parse(a->body).at("id").as_string());
  auto b_id = std::string(json::parse(b->body).at("id").as_string());
  EXPECT_EQ(http_->request("DELETE", "/v1/scheduled-events/" + b_id)->status, 204u);
  EXPECT_EQ(http_->request("DELETE", "/v1/scheduled-events/" + b_id)->status, 409u);
  json::value entry;
  for (int i = 0; i < 100; ++i) {
    entry = get_json("/v1/scheduled-events/" + a_id);
    if (entry.at("status").as_string() == "published") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(entry.at("status").as_string(), "published");
  auto events = get_json("/v1/aggregates/sched-1/events").at("events").as_array();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at("type").as_string(), "sched.soon");
  EXPECT_EQ(events[0].at("position").as_int64(), entry.at("position").as_int64());
  EXPECT_EQ(get_json("/v1/scheduled-events?status=cancelled").at("scheduledEvents").as_array().size(), 1u);
  auto bad = http_->post("/v1/scheduled-events", R"({"aggregateId":"x","publishAt":"tomorrow","event":{}})");
  EXPECT_EQ(json::parse(bad->body).at("field").as_string(), "publishAt");
  auto no_meta = http_->post("/v1/scheduled-events",
                             R"({"aggregateId":"x","publishAt":"2030-01-01","event":{"type":"t","aggregateType":"a","payload":{}}})");
  EXPECT_EQ(json::parse(no_meta->body).at("field").as_string(), "event.metadata");
}

TEST_F(HttpApi, UnknownRoutesAndMethods) {
  EXPECT_EQ(http_->get("/v2/nothing")->status, 404u);
  auto r = http_->request("DELETE", "/v1/aggregates/a/events");
  EXPECT_EQ(r->status, 405u);
  EXPECT_EQ(http_->request("PUT", "/v1/events/query", "{}")->status, 405u);
  auto health = get_json("/health");
  EXPECT_EQ(health.at("status").as_string(), "ok");
}

TEST(ServerLifecycle, SigtermDrainsAndExitsZero) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string());
  server.start();
  auto http = server.client();
  ASSERT_EQ(http->post("/v1/aggregates/x/events", append_body({event_json("a.b")}))->status, 201u);
  int status = server.stop(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The event is there after a restart.
  server_process again("sqlite:" + (dir.path() / "e.db").string());
  again.start();
  auto read = again.client()->get("/v1/aggregates/x/events");
  EXPECT_EQ(json::parse(read->body).at("events").as_array().size(), 1u);
}

TEST(ServerLifecycle, AnOverdueScheduledEventFiresRightAfterARestart) {
  temp_dir dir;
  const std::string store = "sqlite:" + (dir.path() / "e.db").string();
  {
    server_process server(store);
    server.start();
    auto r = server.client()->post(
        "/v1/scheduled-events",
        json::serialize(json::object{{"aggregateId", "overdue"},
                                     {"publishAt", format_rfc3339(default_clock().now() + std::chrono::milliseconds(600))},
                                     {"event", json::parse(event_json("sched.overdue", "s"))}}));
    ASSERT_EQ(r->status, 201u);
    server.stop(SIGTERM);  // down before it is due
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  server_process again(store);
  again.start();
  auto http = again.client();
  std::size_t n = 0;
  for (int i = 0; i < 100 && n == 0; ++i) {
    n = json::parse(http->get("/v1/aggregates/overdue/events")->body).at("events").as_array().size();
    if (n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(n, 1u);
}

TEST(ServerLifecycle, BadStartupConfigurationFailsClearly) {
  temp_dir dir;
  server_process bad_store("nosuch:thing");
  try {
    bad_store.start();
    FAIL() << "server started with a bad store URL";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unknown store URL"), std::string::npos) << e.what();
  }
}

}  // namespace pliers
