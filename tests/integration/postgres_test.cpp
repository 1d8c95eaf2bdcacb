// PostgreSQL-specific guarantees (issue 3): positions under a held transaction, several
// server processes on one database, partition rollover.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

#include "core/clock.hpp"
#include "core/time_format.hpp"
#include "store/postgres/pg_db.hpp"
#include "store/postgres/postgres_store.hpp"
#include "support/append_history.hpp"
#include "support/fixtures.hpp"
#include "support/postgres.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

class Postgres : public ::testing::Test {
 protected:
  void SetUp() override {
    auto url = postgres_url();
    if (!url) {
      if (in_ci()) FAIL() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set";
      GTEST_SKIP() << "no PostgreSQL configured (PLIERS_TEST_POSTGRES_URL); scripts/test starts one";
    }
    schema_ = std::make_unique<postgres_schema>(*url);
  }
  std::unique_ptr<event_store> open(const clock* c = nullptr) {
    store_options o;
    o.time_source = c;
    auto s = open_store(schema_->url(), o);
    if (!s) throw std::runtime_error(s.error().message);
    return std::move(*s);
  }
  static new_event make(std::string type) {
    new_event e;
    e.type = std::move(type);
    e.aggregate_type = "pg";
    e.metadata = json::object{{"sourceSystem", "tests"}, {"sourceVersion", "1"}};
    return e;
  }
  std::unique_ptr<postgres_schema> schema_;
};

TEST_F(Postgres, AHeldAppendTransactionNeverShowsReadersAGap) {
  auto store = open();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->append({"before", std::nullopt, {make("t.before")}}));
  // A transaction that has taken its position and written its event, then waits: an append
  // committing late.
  auto raw = pg::connection::open(schema_->url());
  ASSERT_TRUE(raw);
  auto& db = **raw;
  ASSERT_TRUE(db.exec("BEGIN"));
  auto pos = db.exec("UPDATE log_head SET position = position + 1 RETURNING position");
  ASSERT_TRUE(pos);
  const auto held = pos->int64(0, 0);
  ASSERT_EQ(held, 6);
  ASSERT_TRUE(db.exec("INSERT INTO events (position, id, type, timestamp, aggregate_id, aggregate_type, sequence_number, "
                      "metadata, payload) VALUES ($1, gen_random_uuid(), 'held.event', now(), 'held', 'pg', 1, "
                      "'{\"sourceSystem\":\"t\",\"sourceVersion\":\"1\"}', '{}')",
                      {std::to_string(held)}));

  // Meanwhile another engine instance (its own connections, like another process) appends,
  // and a reader follows the global log.
  auto other = open();
  std::atomic<int> appended{0};
  std::thread writer([&] {
    for (int i = 0; i < 20; ++i)
      if (other->append({"after-" + std::to_string(i % 4), std::nullopt, {make("t.after")}})) ++appended;
  });
  std::atomic<bool> stop{false};
  std::vector<std::int64_t> seen;
  std::thread reader([&] {
    std::int64_t last = 0;
    while (!stop || last < 26) {
      auto page = store->read_all(log_position(last), 100);
      ASSERT_TRUE(page);
      for (const auto& e : *page) {
        ASSERT_EQ(e.position.value, last + 1) << "the reader saw a position beyond a gap";
        last = e.position.value;
        seen.push_back(last);
      }
      std::this_thread::sleep_for(2ms);
    }
  });
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(appended.load(), 0) << "appends must wait behind the held positions";
  ASSERT_TRUE(db.exec("COMMIT"));
  writer.join();
  EXPECT_EQ(appended.load(), 20);
  stop = true;
  reader.join();
  ASSERT_EQ(seen.size(), 26u);
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<std::int64_t>(i + 1));
}

TEST_F(Postgres, TwoServerProcessesShareOneGapFreeLog) {
  server_process a(schema_->url());
  server_process b(schema_->url());
  a.start();
  b.start();
  // 32 writers across both processes race for each version of one aggregate.
  std::atomic<int> created{0}, conflicts{0}, other{0};
  std::vector<std::thread> racers;
  constexpr int writers = 32, versions = 8;
  for (int w = 0; w < writers; ++w) {
    racers.emplace_back([&, w] {
      auto http = (w % 2 ? a : b).client();
      for (int v = 0; v < versions; ++v) {
        auto r = http->post("/v1/aggregates/race/events", append_body({event_json("race.won", "race", {{"w", w}})}, v));
        if (r && r->status == 201) ++created;
        else if (r && r->status == 409) ++conflicts;
        else ++other;
      }
    });
  }
  for (auto& t : racers) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(created.load(), versions);
  EXPECT_EQ(created.load() + conflicts.load(), writers * versions);

  append_history history([&](int c) { return c % 2 ? a.url() : b.url(); }, 8);
  history.start();
  std::this_thread::sleep_for(1500ms);
  history.stop();
  EXPECT_GT(history.acknowledged_count(), 100u);
  history.check_log(a.url());
}

TEST_F(Postgres, TwoServersFireEachScheduledEventOnce) {
  server_process a(schema_->url());
  server_process b(schema_->url());
  a.start();
  b.start();
  auto http = a.client();
  const auto at = format_rfc3339(default_clock().now() + 400ms);
  for (int i = 0; i < 30; ++i) {
    auto r = http->post("/v1/scheduled-events",
                        json::serialize(json::object{{"aggregateId", "sched-" + std::to_string(i % 3)},
                                                     {"publishAt", at},
                                                     {"event", json::parse(event_json("sched.fired", "s", {{"i", i}}))}}));
    ASSERT_EQ(r->status, 201u) << r->body;
  }
  json::array published;
  for (int i = 0; i < 100; ++i) {
    published = json::parse(b.client()->get("/v1/scheduled-events?status=published")->body).at("scheduledEvents").as_array();
    if (published.size() == 30) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(published.size(), 30u);
  auto all = json::parse(http->get("/v1/events?type=sched.fired&limit=100")->body);
  EXPECT_EQ(all.at("totalCount").as_int64(), 30) << "a scheduled event was published twice or not at all";
}

TEST_F(Postgres, PartitionsRollOverAndAreCreatedOnDemand) {
  fake_clock clk(*parse_rfc3339("2025-01-31T23:59:59.500000Z"));
  auto store = open(&clk);
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.jan")}}));
  clk.advance(1s);  // February
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.feb")}}));
  clk.set(*parse_rfc3339("2025-09-15T12:00:00Z"));  // beyond the partitions made ahead
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.sep")}}));

  auto raw = pg::connection::open(schema_->url());
  ASSERT_TRUE(raw);
  auto r = (*raw)->exec("SELECT tableoid::regclass::text, type FROM events ORDER BY position");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->rows(), 3);
  EXPECT_EQ(r->text(0, 0), "events_p20250101");
  EXPECT_EQ(r->text(1, 0), "events_p20250201");
  EXPECT_EQ(r->text(2, 0), "events_p20250901");
  EXPECT_EQ(*store->read_aggregate("roll", 1, std::nullopt, 10)->at(1).type.data(), 't');

  auto* pg_store = dynamic_cast<postgres_store*>(store.get());
  ASSERT_NE(pg_store, nullptr);
  auto parts = pg_store->list_partitions();
  ASSERT_TRUE(parts);
  EXPECT_GE(parts->size(), 5u);  // Jan..Apr made ahead, Sep on demand
  ASSERT_TRUE(pg_store->detach_partition("events_p20250101", false));
  EXPECT_EQ(pg_store->read_aggregate("roll", 1, std::nullopt, 10)->size(), 2u);  // January left the log
  auto still = (*raw)->exec("SELECT count(*) FROM events_p20250101");
  ASSERT_TRUE(still);
  EXPECT_EQ(still->int64(0, 0), 1);  // kept as a standalone table
  EXPECT_EQ(pg_store->detach_partition("events; DROP TABLE x", true).error().code, errc::invalid_argument);
}

}  // namespace pliers
