// One conformance suite for the store contract, run against every backend (memory, SQLite;
// PostgreSQL joins when configured). A test that cannot apply to a backend skips with the
// reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <random>
#include <thread>

#include "core/clock.hpp"
#include "core/event_codec.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "store/event_store.hpp"
#include "support/postgres.hpp"

namespace pliers {

namespace json = boost::json;
using namespace std::chrono_literals;

struct backend {
  std::string name;
  bool persistent;
  // Opens (or reopens) the store kept in `dir`.
  std::function<std::unique_ptr<event_store>(const std::filesystem::path& dir, const clock* c)> open;
};

std::vector<backend> backends() {
  std::vector<backend> out;
  out.push_back({"memory", false, [](const std::filesystem::path&, const clock* c) {
                   store_options o;
                   o.time_source = c;
                   return std::move(*open_store("memory:", o));
                 }});
  out.push_back({"sqlite", true, [](const std::filesystem::path& dir, const clock* c) {
                   store_options o;
                   o.time_source = c;
                   auto s = open_store("sqlite:" + (dir / "events.db").string(), o);
                   if (!s) throw std::runtime_error(s.error().message);
                   return std::move(*s);
                 }});
  if (auto url = testing::postgres_url()) {
    out.push_back({"postgres", true, [base = *url](const std::filesystem::path& dir, const clock* c) {
                     // One schema per test, named in a file of the test's directory so that
                     // a reopen finds the same one.
                     static std::map<std::string, std::unique_ptr<testing::postgres_schema>> schemas;
                     auto& schema = schemas[dir.string()];
                     if (!schema) schema = std::make_unique<testing::postgres_schema>(base);
                     store_options o;
                     o.time_source = c;
                     o.read_connections = 4;
                     auto s = open_store(schema->url(), o);
                     if (!s) throw std::runtime_error(s.error().message);
                     return std::move(*s);
                   }});
  } else if (testing::in_ci()) {
    ADD_FAILURE() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set: PostgreSQL must be tested in CI";
  }
  return out;
}

void PrintTo(const backend& b, std::ostream* os) { *os << b.name; }

class StoreConformance : public ::testing::TestWithParam<backend> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("pliers-conf-" + GetParam().name + "-" + std::to_string(::getpid()) + "-" + new_uuid_v4().substr(0, 8));
    std::filesystem::create_directories(dir_);
    store_ = GetParam().open(dir_, &clock_);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void reopen() {
    store_.reset();
    store_ = GetParam().open(dir_, &clock_);
  }

  static new_event make(std::string type, json::object payload = {}, std::string aggregate_type = "form") {
    new_event e;
    e.type = std::move(type);
    e.aggregate_type = std::move(aggregate_type);
    e.metadata = json::object{{"sourceSystem", "tests"}, {"sourceVersion", "1.0"}};
    e.payload = std::move(payload);
    return e;
  }
  static append_request req(std::string aggregate, std::vector<new_event> events,
                            std::optional<std::int64_t> expected = std::nullopt) {
    return append_request{std::move(aggregate), expected, std::move(events)};
  }
  append_result must_append(append_request r) {
    auto out = store_->append(std::move(r));
    if (!out) ADD_FAILURE() << out.error().message;
    return out ? *out : append_result{};
  }
  std::vector<event> all_events() { return *store_->read_all(log_position(0), 1000000); }

  std::filesystem::path dir_;
  fake_clock clock_{*parse_rfc3339("2025-01-15T10:00:00Z")};
  std::unique_ptr<event_store> store_;
};

TEST_P(StoreConformance, AppendAssignsSequencePositionAndTimestamp) {
  EXPECT_EQ(store_->head().value, 0);
  auto r = must_append(req("form-1", {make("form.created"), make("form.updated")}, 0));
  EXPECT_EQ(r.aggregate_id, "form-1");
  EXPECT_EQ(r.version, 2);
  ASSERT_EQ(r.events.size(), 2u);
  EXPECT_EQ(r.events[0].sequence.value, 1);
  EXPECT_EQ(r.events[1].sequence.value, 2);
  EXPECT_EQ(r.events[0].position.value, 1);
  EXPECT_EQ(r.events[1].position.value, 2);
  EXPECT_EQ(r.events[0].time, clock_.now());
  EXPECT_TRUE(is_uuid(r.events[0].id));
  EXPECT_FALSE(r.idempotent_replay);
  EXPECT_EQ(store_->head().value, 2);

  auto r2 = must_append(req("form-2", {make("form.created")}));
  EXPECT_EQ(r2.events[0].sequence.value, 1);
  EXPECT_EQ(r2.events[0].position.value, 3);

  auto events = *store_->read_aggregate("form-1", 1, std::nullopt, 100);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, "form.created");
  EXPECT_EQ(events[0].version, 1);  // schema version defaults to 1
  EXPECT_EQ(events[0].aggregate_type, "form");
  EXPECT_EQ(events[1].id, r.events[1].id);
}

TEST_P(StoreConformance, ExpectedVersionConflictWritesNothing) {
  must_append(req("a", {make("t.one")}, 0));
  auto r = store_->append(req("a", {make("t.two")}, 0));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::conflict);
  EXPECT_EQ(r.error().current_version, 1);
  EXPECT_EQ(r.error().expected_version, 0);
  auto r2 = store_->append(req("a", {make("t.two")}, 5));
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error().current_version, 1);
  auto r3 = store_->append(req("new", {make("t.two")}, 3));  // does not exist: version 0
  ASSERT_FALSE(r3);
  EXPECT_EQ(r3.error().current_version, 0);
  EXPECT_EQ(store_->head().value, 1);
  EXPECT_EQ(all_events().size(), 1u);
  // The right version and "any" both succeed.
  EXPECT_EQ(must_append(req("a", {make("t.two")}, 1)).version, 2);
  EXPECT_EQ(must_append(req("a", {make("t.three")})).version, 3);
}

TEST_P(StoreConformance, RetryWithSameIdsIsIdempotent) {
  auto e1 = make("t.one");
  auto e2 = make("t.two");
  e1.id = new_uuid_v4();
  e2.id = new_uuid_v4();
  auto first = must_append(req("a", {e1, e2}, 0));
  must_append(req("a", {make("t.three")}));  // the aggregate moves on
  auto retry = store_->append(req("a", {e1, e2}, 0));  // stale expectedVersion, same ids
  ASSERT_TRUE(retry) << retry.error().message;
  EXPECT_TRUE(retry->idempotent_replay);
  EXPECT_EQ(retry->version, 2);
  ASSERT_EQ(retry->events.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(retry->events[i].id, first.events[i].id);
    EXPECT_EQ(retry->events[i].position, first.events[i].position);
    EXPECT_EQ(retry->events[i].sequence, first.events[i].sequence);
    EXPECT_EQ(retry->events[i].time, first.events[i].time);
  }
  EXPECT_EQ(all_events().size(), 3u);
  // Upper-case ids name the same events.
  auto upper = e1;
  std::transform(upper.id->begin(), upper.id->end(), upper.id->begin(), ::toupper);
  auto retry_upper = store_->append(req("a", {upper, e2}));
  ASSERT_TRUE(retry_upper);
  EXPECT_TRUE(retry_upper->idempotent_replay);
}

TEST_P(StoreConformance, ExistingIdElsewhereIsAConflict) {
  auto e = make("t.one");
  e.id = new_uuid_v4();
  must_append(req("a", {e}));
  auto other = store_->append(req("b", {e}));  // same id, other aggregate
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, errc::conflict);
  auto fresh = make("t.two");
  fresh.id = new_uuid_v4();
  auto partial = store_->append(req("a", {fresh, e}));  // second id exists
  ASSERT_FALSE(partial);
  EXPECT_EQ(partial.error().code, errc::conflict);
  EXPECT_EQ(partial.error().field, "events[1].id");
  auto reordered = store_->append(req("a", {e, e}));  // duplicate within the request
  ASSERT_FALSE(reordered);
  EXPECT_EQ(all_events().size(), 1u);
  EXPECT_EQ(store_->get_aggregate_metadata("b").error().code, errc::not_found);
}

TEST_P(StoreConformance, AggregateTypeIsFixedByTheFirstEvent) {
  must_append(req("a", {make("t.one", {}, "form")}));
  auto r = store_->append(req("a", {make("t.two", {}, "submission")}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::invalid_argument);
  EXPECT_EQ(r.error().field, "events[0].aggregateType");
  EXPECT_EQ(all_events().size(), 1u);
}

TEST_P(StoreConformance, OneInvalidEventRefusesTheWholeBatch) {
  auto bad = make("t.bad");
  bad.metadata.erase("sourceVersion");
  auto r = store_->append(req("a", {make("t.ok"), bad, make("t.ok")}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "events[1].metadata.sourceVersion");
  EXPECT_EQ(store_->head().value, 0);
  EXPECT_TRUE(store_->read_aggregate("a", 1, std::nullopt, 10)->empty());
}

TEST_P(StoreConformance, ReadAggregateRangesAreInclusive) {
  std::vector<new_event> evs;
  for (int i = 0; i < 10; ++i) evs.push_back(make("t.n", {{"i", i}}));
  must_append(req("a", evs));
  auto r = *store_->read_aggregate("a", 3, 5, 100);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].sequence.value, 3);
  EXPECT_EQ(r[2].sequence.value, 5);
  EXPECT_EQ(r[0].payload.at("i").as_int64(), 2);
  EXPECT_EQ(store_->read_aggregate("a", 0, std::nullopt, 100)->size(), 10u);
  EXPECT_EQ(store_->read_aggregate("a", 8, std::nullopt, 100)->size(), 3u);
  EXPECT_EQ(store_->read_aggregate("a", 1, std::nullopt, 4)->size(), 4u);
  EXPECT_TRUE(store_->read_aggregate("a", 11, std::nullopt, 100)->empty());
  EXPECT_TRUE(store_->read_aggregate("a", 5, 4, 100)->empty());
  EXPECT_TRUE(store_->read_aggregate("nobody", 1, std::nullopt, 100)->empty());
}

TEST_P(StoreConformance, GlobalLogIsGapFreeAndOrdered) {
  for (int i = 0; i < 30; ++i) must_append(req("agg-" + std::to_string(i % 7), {make("t.x"), make("t.y")}));
  auto all = all_events();
  ASSERT_EQ(all.size(), 60u);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].position.value, static_cast<std::int64_t>(i + 1));
  auto page = *store_->read_all(log_position(10), 5);
  ASSERT_EQ(page.size(), 5u);
  EXPECT_EQ(page.front().position.value, 11);
  EXPECT_TRUE(store_->read_all(log_position(60), 5)->empty());
}

TEST_P(StoreConformance, GetEventByIdAndMetadata) {
  auto r = must_append(req("a", {make("t.one")}));
  clock_.advance(5s);
  must_append(req("a", {make("t.two")}));
  auto e = store_->get_event(r.events[0].id);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, "t.one");
  EXPECT_EQ(store_->get_event(new_uuid_v4()).error().code, errc::not_found);

  auto m = store_->get_aggregate_metadata("a");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->aggregate_type, "form");
  EXPECT_EQ(m->version, 2);
  EXPECT_EQ(m->event_count, 2);
  EXPECT_EQ(m->first_event_time, *parse_rfc3339("2025-01-15T10:00:00Z"));
  EXPECT_EQ(m->last_event_time, *parse_rfc3339("2025-01-15T10:00:05Z"));
  EXPECT_FALSE(m->snapshot_version);
  EXPECT_EQ(store_->get_aggregate_metadata("zzz").error().code, errc::not_found);
}

TEST_P(StoreConformance, Snapshots) {
  EXPECT_EQ(store_->create_snapshot("a", 1, {}).error().code, errc::not_found);
  must_append(req("a", {make("t.one"), make("t.two"), make("t.three")}));
  EXPECT_FALSE(*store_->get_latest_snapshot("a"));
  ASSERT_TRUE(store_->create_snapshot("a", 2, {{"count", 2}}));
  clock_.advance(1s);
  ASSERT_TRUE(store_->create_snapshot("a", 3, {{"count", 3}}));
  ASSERT_TRUE(store_->create_snapshot("a", 1, {{"count", 1}}));  // older: not the latest
  auto s = *store_->get_latest_snapshot("a");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->sequence_number, 3);
  EXPECT_EQ(s->data.at("count").as_int64(), 3);
  EXPECT_EQ(s->aggregate_type, "form");
  EXPECT_EQ(store_->create_snapshot("a", 4, {}).error().field, "sequenceNumber");
  EXPECT_EQ(store_->create_snapshot("a", 0, {}).error().field, "sequenceNumber");
  auto m = *store_->get_aggregate_metadata("a");
  EXPECT_EQ(m.snapshot_version, 3);
  EXPECT_EQ(m.snapshot_time, *parse_rfc3339("2025-01-15T10:00:01Z"));
}

class QueryConformance : public StoreConformance {
 protected:
  void SetUp() override {
    StoreConformance::SetUp();
    // 3 forms x 4 events and 2 submissions x 3 events, one second apart.
    for (int f = 0; f < 3; ++f) {
      std::vector<new_event> evs;
      evs.push_back(make("form.created", {{"title", "Form " + std::to_string(f)}, {"items", json::array{json::object{{"sku", "s" + std::to_string(f)}}}}}));
      evs.push_back(make("form.field.added", {{"field", "email"}}));
      evs.push_back(make("form.updated", {{"title", "Renamed " + std::to_string(f)}, {"rev", f}}));
      evs.push_back(make("form.published", {{"tags", json::array{"public", f % 2 ? "odd" : "even"}}}));
      for (auto& e : evs) e.metadata["userId"] = "user-" + std::to_string(f);
      for (auto& e : evs) {
        must_append(req("form-" + std::to_string(f), {e}));
        clock_.advance(1s);
      }
    }
    for (int s = 0; s < 2; ++s) {
      for (const char* t : {"submission.created", "submission.validated", "submission.completed"}) {
        must_append(req("sub-" + std::to_string(s), {make(t, {{"score", s * 10}}, "submission")}));
        clock_.advance(1s);
      }
    }
  }
  query_result run(const char* query_json, std::size_t limit = 100, log_position after = log_position(0)) {
    auto q = event_query_from_json(json::parse(query_json), "query");
    EXPECT_TRUE(q) << (q ? "" : q.error().message);
    auto r = store_->query(*q, pagination{limit, after});
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
    return r ? *r : query_result{};
  }
  static std::vector<std::int64_t> positions(const query_result& r) {
    std::vector<std::int64_t> out;
    for (const auto& e : r.events) out.push_back(e.position.value);
    return out;
  }
};

TEST_P(QueryConformance, ByTypesAndPatterns) {
  EXPECT_EQ(run(R"({"eventTypes":["form.created"]})").total_count, 3);
  EXPECT_EQ(run(R"({"eventTypes":["form.created","submission.created"]})").total_count, 5);
  EXPECT_EQ(run(R"({"eventTypes":["form.*"]})").total_count, 9);  // not form.field.added
  EXPECT_EQ(run(R"({"eventTypes":["form.**"]})").total_count, 12);
  EXPECT_EQ(run(R"({"eventTypes":["*.created"]})").total_count, 5);
  EXPECT_EQ(run(R"({"eventTypes":["nothing.here"]})").total_count, 0);
  EXPECT_EQ(run(R"({})").total_count, 18);
}

TEST_P(QueryConformance, ByAggregateTypeIdTimeAndSequence) {
  EXPECT_EQ(run(R"({"aggregateTypes":["submission"]})").total_count, 6);
  EXPECT_EQ(run(R"({"aggregateIds":["form-1","sub-0"]})").total_count, 7);
  // Inclusive both ends: 10:00:02 .. 10:00:04 holds three events.
  auto r = run(R"({"timestampRange":{"from":"2025-01-15T10:00:02Z","to":"2025-01-15T10:00:04Z"}})");
  EXPECT_EQ(positions(r), (std::vector<std::int64_t>{3, 4, 5}));
  EXPECT_EQ(run(R"({"timestampRange":{"from":"2025-01-15T10:00:16Z"}})").total_count, 2);
  EXPECT_EQ(run(R"({"sequenceRange":{"from":2,"to":3}})").total_count, 3 * 2 + 2 * 2);
  EXPECT_EQ(run(R"({"aggregateTypes":["form"],"sequenceRange":{"from":4}})").total_count, 3);
}

TEST_P(QueryConformance, PayloadAndMetadataQueries) {
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.title","operator":"equals","value":"Form 1"}})").total_count, 1);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.items[0].sku","operator":"equals","value":"s2"}})").total_count, 1);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.title","operator":"contains","value":"Renamed"}})").total_count, 3);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.tags","operator":"contains","value":"odd"}})").total_count, 1);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.rev","operator":"exists"}})").total_count, 3);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.title","operator":"regex","value":"^(Form|Renamed) [02]$"}})").total_count, 4);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.score","operator":"equals","value":10}})").total_count, 3);
  EXPECT_EQ(run(R"({"payloadQuery":{"path":"$.missing","operator":"equals","value":null}})").total_count, 0);
  EXPECT_EQ(run(R"({"metadataQuery":{"path":"$.userId","operator":"equals","value":"user-2"}})").total_count, 4);
  EXPECT_EQ(run(R"({"metadataQuery":{"path":"$.userId","operator":"exists"},"eventTypes":["form.published"],
                    "payloadQuery":[{"path":"$.tags","operator":"contains","value":"even"}]})").total_count, 2);
}

TEST_P(QueryConformance, PaginationWithCursor) {
  std::vector<std::int64_t> seen;
  log_position after(0);
  int pages = 0;
  while (true) {
    auto r = run(R"({"aggregateTypes":["form"]})", 5, after);
    EXPECT_EQ(r.total_count, 12);
    for (auto p : positions(r)) seen.push_back(p);
    ++pages;
    if (!r.has_more) {
      EXPECT_FALSE(r.cursor);
      break;
    }
    ASSERT_TRUE(r.cursor);
    after = *decode_cursor(*r.cursor);
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 12u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ(std::set<std::int64_t>(seen.begin(), seen.end()).size(), 12u);
  auto exact = run(R"({"aggregateTypes":["submission"]})", 6);
  EXPECT_FALSE(exact.has_more);  // exactly one full page
  EXPECT_FALSE(exact.cursor);
}

// Without count_total a query pages exactly as with it (same events, hasMore, cursor);
// only totalCount is left 0.
TEST_P(QueryConformance, PagesWithoutTotalCountAreTheSamePages) {
  for (const char* text : {R"({})", R"({"aggregateTypes":["form"]})", R"({"eventTypes":["form.*"]})"}) {
    auto q = event_query_from_json(json::parse(text), "query");
    ASSERT_TRUE(q);
    log_position after(0);
    for (int pages = 0; pages < 10; ++pages) {
      auto counted = store_->query(*q, pagination{4, after});
      auto uncounted = store_->query(*q, pagination{4, after, false});
      ASSERT_TRUE(counted && uncounted) << text;
      EXPECT_EQ(positions(*uncounted), positions(*counted)) << text;
      EXPECT_EQ(uncounted->has_more, counted->has_more) << text;
      EXPECT_EQ(uncounted->cursor, counted->cursor) << text;
      EXPECT_EQ(uncounted->total_count, 0) << text;
      if (!counted->has_more) break;
      after = *decode_cursor(*counted->cursor);
    }
  }
}

// query_json (what HTTP serves) renders exactly what write_query_result_json makes of query.
TEST_P(QueryConformance, JsonQueriesRenderTheSamePagesAsDecodedQueries) {
  for (const char* text : {R"({})", R"({"aggregateTypes":["form"]})", R"({"eventTypes":["nothing.here"]})",
                           R"({"payloadQuery":{"path":"$.title","operator":"contains","value":"Renamed"}})"}) {
    auto q = event_query_from_json(json::parse(text), "query");
    ASSERT_TRUE(q);
    log_position after(0);
    for (int pages = 0; pages < 10; ++pages) {
      auto decoded = store_->query(*q, pagination{5, after});
      auto rendered = store_->query_json(*q, pagination{5, after});
      ASSERT_TRUE(decoded && rendered) << text;
      std::string want, got;
      write_query_result_json(want, *decoded);
      write_query_result_json(got, *rendered);
      EXPECT_EQ(got, want) << text;
      EXPECT_EQ(rendered->events.count, decoded->events.size());
      if (!decoded->has_more) break;
      after = *decode_cursor(*decoded->cursor);
    }
  }
}

TEST_P(QueryConformance, ReadByType) {
  auto r = store_->read_by_type("submission.*", std::nullopt, std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 6u);
  auto ranged = store_->read_by_type("form.created", parse_rfc3339("2025-01-15T10:00:01Z"), std::nullopt);
  EXPECT_EQ(ranged->size(), 2u);
  EXPECT_EQ(store_->read_by_type("bad..pattern", std::nullopt, std::nullopt).error().code, errc::invalid_argument);
}

TEST_P(StoreConformance, RacingWritersOnOneAggregateExactlyOneWinsEachVersion) {
  constexpr int writers = 24, rounds = 20;
  std::atomic<int> wins{0}, conflicts{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < rounds; ++round) {
        auto r = store_->append(req("contended", {make("t.race", {{"writer", w}})}, round));
        if (r) ++wins;
        else if (r.error().code == errc::conflict) ++conflicts;
        else ADD_FAILURE() << r.error().message;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), rounds);  // version `round` is won exactly once
  EXPECT_EQ(wins.load() + conflicts.load(), writers * rounds);
  auto events = *store_->read_aggregate("contended", 1, std::nullopt, 1000);
  ASSERT_EQ(events.size(), static_cast<std::size_t>(rounds));
  for (int i = 0; i < rounds; ++i) EXPECT_EQ(events[i].sequence.value, i + 1);
}

TEST_P(StoreConformance, ConcurrentAppendsAreGapFreeAndAConflictFailsOnlyItself) {
  must_append(req("fixed", {make("t.one")}));
  constexpr int n = 400;
  std::vector<std::promise<result<append_result>>> promises(n);
  for (int i = 0; i < n; ++i) {
    // Every 50th append conflicts; the others target their own aggregates.
    auto r = i % 50 == 0 ? req("fixed", {make("t.late")}, 0) : req("agg-" + std::to_string(i), {make("t.x"), make("t.y")}, 0);
    store_->append_async(std::move(r), [&promises, i](result<append_result> out) { promises[i].set_value(std::move(out)); });
  }
  int ok = 0, conflict = 0;
  for (int i = 0; i < n; ++i) {
    auto r = promises[i].get_future().get();
    if (i % 50 == 0) {
      ASSERT_FALSE(r);
      EXPECT_EQ(r.error().code, errc::conflict);
      ++conflict;
    } else {
      EXPECT_TRUE(r) << r.error().message;
      if (r) ++ok;
    }
  }
  EXPECT_EQ(conflict, n / 50);
  auto all = all_events();
  ASSERT_EQ(all.size(), 1u + 2u * static_cast<std::size_t>(ok));
  for (std::size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i].position.value, static_cast<std::int64_t>(i + 1));
  for (std::size_t i = 1; i + 1 < all.size(); i += 2) {  // each append's two events are adjacent
    EXPECT_EQ(all[i].aggregate_id, all[i + 1].aggregate_id);
    EXPECT_EQ(all[i].sequence.value + 1, all[i + 1].sequence.value);
  }
}

TEST_P(StoreConformance, GroupsCommitAllOrNothingAcrossAggregates) {
  must_append(req("a", {make("t.one")}));
  auto failed = store_->append_group({req("b", {make("t.b")}, 0), req("a", {make("t.a")}, 0)});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, errc::conflict);
  EXPECT_EQ(failed.error().field, "appends[1].expectedVersion");
  EXPECT_EQ(store_->get_aggregate_metadata("b").error().code, errc::not_found) << "part of a failed group was written";
  EXPECT_EQ(store_->head().value, 1);
  auto invalid = make("t.bad");
  invalid.metadata.erase("sourceSystem");
  auto refused = store_->append_group({req("b", {make("t.b")}), req("c", {invalid})});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().field, "appends[1].events[0].metadata.sourceSystem");

  auto ok = store_->append_group({req("b", {make("t.b1")}, 0), req("c", {make("t.c1"), make("t.c2")}), req("b", {make("t.b2")}, 1)});
  ASSERT_TRUE(ok) << ok.error().field << " " << ok.error().message;
  ASSERT_EQ(ok->size(), 3u);
  EXPECT_EQ((*ok)[0].events[0].position.value, 2);
  EXPECT_EQ((*ok)[1].events[1].position.value, 4);
  EXPECT_EQ((*ok)[2].events[0].sequence.value, 2);
  EXPECT_EQ((*ok)[2].version, 2);
  auto all = all_events();
  ASSERT_EQ(all.size(), 5u);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].position.value, static_cast<std::int64_t>(i + 1));
  EXPECT_EQ(store_->get_aggregate_metadata("b")->version, 2);
  EXPECT_FALSE(store_->append_group({}));
}

TEST_P(StoreConformance, ScheduledPublicationsFireOnceWhenDue) {
  auto at = [&](std::chrono::seconds from_now, const char* type) {
    scheduled_event e;
    e.request = req("sched", {make(type)});
    e.publish_at = clock_.now() + from_now;
    return e;
  };
  auto first = store_->schedule(at(10s, "t.first"));
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->status, "pending");
  ASSERT_TRUE(first->request.events[0].id);  // fixed now: firing twice stores it once
  auto second = store_->schedule(at(20s, "t.second"));
  auto cancelled = store_->schedule(at(5s, "t.cancelled"));
  ASSERT_TRUE(second && cancelled);
  auto bad = at(1s, "t.bad");
  bad.request.events[0].metadata.erase("sourceSystem");
  EXPECT_EQ(store_->schedule(bad).error().code, errc::invalid_argument);

  ASSERT_TRUE(store_->cancel_scheduled(cancelled->id));
  EXPECT_EQ(store_->cancel_scheduled(cancelled->id).error().code, errc::conflict);
  EXPECT_EQ(store_->cancel_scheduled(new_uuid_v4()).error().code, errc::not_found);
  EXPECT_TRUE(store_->claim_due(clock_.now(), 10, 30s)->empty());
  clock_.advance(15s);
  auto due = store_->claim_due(clock_.now(), 10, 30s);
  ASSERT_TRUE(due);
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ(due->front().id, first->id);
  EXPECT_TRUE(store_->claim_due(clock_.now(), 10, 30s)->empty()) << "a claimed entry was handed out twice";
  // Fired twice (a second node, or a crash before finish): stored once.
  auto a = store_->append(due->front().request);
  auto b = store_->append(due->front().request);
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(b->idempotent_replay);
  ASSERT_TRUE(store_->finish_scheduled(first->id, "published", a->events[0].position, std::nullopt));
  clock_.advance(40s);  // second is due; the finished one never comes back
  due = store_->claim_due(clock_.now(), 10, 30s);
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ(due->front().id, second->id);
  clock_.advance(31s);  // lease over without a finish: handed out again
  EXPECT_EQ(store_->claim_due(clock_.now(), 10, 30s)->size(), 1u);
  auto got = store_->get_scheduled(first->id);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, "published");
  EXPECT_EQ(got->position, a->events[0].position);
  EXPECT_EQ(store_->list_scheduled(std::string("cancelled"), 10)->size(), 1u);
  EXPECT_EQ(store_->list_scheduled(std::nullopt, 10)->size(), 3u);
  EXPECT_EQ(all_events().size(), 1u);
}

TEST_P(StoreConformance, TimestampsNeverGoBackwards) {
  must_append(req("a", {make("t.one")}));
  clock_.advance(-1h);  // the wall clock steps back
  must_append(req("a", {make("t.two")}));
  auto all = all_events();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_LE(all[0].time, all[1].time);
}

TEST_P(StoreConformance, PayloadsRoundTripExactly) {
  auto payload = json::parse(R"({"unicode":"zażółć 🚀","nested":{"a":[1,2.5,-3,{"b":null}]},"big":9007199254740993,
                                "neg":-9223372036854775808,"u":18446744073709551615,"esc":"\"\\\n\t"})").as_object();
  auto e = make("t.payload", payload);
  e.metadata["tags"] = json::array{"x", "y"};
  e.causation_id = new_uuid_v4();
  e.correlation_id = new_uuid_v4();
  e.version = 7;
  auto r = must_append(req("a", {e}));
  auto back = *store_->get_event(r.events[0].id);
  EXPECT_EQ(back.payload, payload);
  EXPECT_EQ(back.metadata, e.metadata);
  EXPECT_EQ(back.causation_id, e.causation_id);
  EXPECT_EQ(back.correlation_id, e.correlation_id);
  EXPECT_EQ(back.version, 7);
}

// read_aggregate_json (what HTTP serves) is byte for byte write_event_json of read_aggregate,
// for awkward payloads too, and reports the last sequence and position it wrote.
TEST_P(StoreConformance, JsonReadsRenderTheSameEventsAsDecodedReads) {
  auto odd = make("t.payload", json::parse(R"({"unicode":"zażółć 🚀","nested":{"a":[1,2.5,-3,1e300,{"b":null}]},
      "big":9007199254740993,"neg":-9223372036854775808,"u":18446744073709551615,"esc":"\"\\\n\t\u0001"})").as_object());
  odd.metadata["tags"] = json::array{"x", "y"};
  odd.causation_id = new_uuid_v4();
  odd.correlation_id = new_uuid_v4();
  odd.version = 7;
  must_append(req("other", {make("t.x", {{"n", 0}})}));
  must_append(req("a\"b", {odd, make("t.y", {{"n", 1}}), make("t.y", {{"n", 2.25}})}));
  for (auto [from, to, limit] : {std::tuple<std::int64_t, std::optional<std::int64_t>, std::size_t>{1, std::nullopt, 100},
                                 {2, 3, 100}, {1, std::nullopt, 2}, {4, std::nullopt, 100}}) {
    auto decoded = store_->read_aggregate("a\"b", from, to, limit);
    event_json_page page;
    page.json = "[";  // the caller's framing stays in front
    ASSERT_TRUE(store_->read_aggregate_json("a\"b", from, to, limit, page));
    ASSERT_TRUE(decoded);
    ASSERT_EQ(page.json.substr(0, 1), "[");
    page.json.erase(0, 1);
    const auto* rendered = &page;
    std::string want;
    for (std::size_t i = 0; i < decoded->size(); ++i) {
      if (i) want += ',';
      write_event_json(want, (*decoded)[i]);
    }
    EXPECT_EQ(rendered->json, want);
    ASSERT_EQ(rendered->count, decoded->size());
    if (!decoded->empty()) {
      EXPECT_EQ(rendered->last_sequence.value, decoded->back().sequence.value);
      EXPECT_EQ(rendered->last_position.value, decoded->back().position.value);
    }
    // And the text is the events' JSON: it parses back to the events.
    auto back = json::parse("[" + rendered->json + "]").as_array();
    ASSERT_EQ(back.size(), decoded->size());
    for (std::size_t i = 0; i < back.size(); ++i) EXPECT_EQ(back[i].as_object(), event_to_json((*decoded)[i]));
  }
}

TEST_P(StoreConformance, ReopenKeepsEverythingAndContinuesTheLog) {
  if (!GetParam().persistent) GTEST_SKIP() << "the memory store keeps nothing across instances by design";
  auto e = make("t.one");
  e.id = new_uuid_v4();
  must_append(req("a", {e, make("t.two")}));
  ASSERT_TRUE(store_->create_snapshot("a", 2, {{"s", 1}}));
  reopen();
  EXPECT_EQ(store_->head().value, 2);
  EXPECT_EQ(store_->read_aggregate("a", 1, std::nullopt, 10)->size(), 2u);
  EXPECT_EQ((*store_->get_latest_snapshot("a"))->sequence_number, 2);
  auto retry = store_->append(req("a", {e}));
  EXPECT_TRUE(retry && retry->idempotent_replay);
  auto next = must_append(req("a", {make("t.three")}, 2));
  EXPECT_EQ(next.events[0].position.value, 3);
  EXPECT_EQ(next.events[0].sequence.value, 3);
}

// SQLite only: the WAL is checkpointed into the database file by the store's own thread,
// not inside some append's COMMIT. No append here crosses SQLite's automatic threshold
// with a checkpoint (the store replaces it); the file grows only if the thread runs.
TEST(SqliteStore, CheckpointsTheWalInTheBackgroundAndKeepsEverything) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("pliers-ckpt-" + std::to_string(::getpid()) + "-" + new_uuid_v4().substr(0, 8));
  std::filesystem::create_directories(dir);
  const auto db = dir / "events.db";
  const std::string pad(1000, 'x');
  constexpr int appends = 120, per_append = 200;  // ~30 MB of WAL: past the 16 MiB wake-up
  {
    auto store = open_store("sqlite:" + db.string());
    ASSERT_TRUE(store) << store.error().message;
    const auto schema_only = std::filesystem::file_size(db);
    for (int a = 0; a < appends; ++a) {
      std::vector<new_event> events;
      for (int i = 0; i < per_append; ++i) {
        new_event e;
        e.type = "bulk.added";
        e.aggregate_type = "bulk";
        e.metadata = json::object{{"sourceSystem", "tests"}, {"sourceVersion", "1.0"}};
        e.payload = json::object{{"n", a * per_append + i}, {"pad", pad}};
        events.push_back(std::move(e));
      }
      auto r = (*store)->append(append_request{"bulk-" + std::to_string(a % 7), std::nullopt, std::move(events)});
      ASSERT_TRUE(r) << r.error().message;
    }
    // The checkpoint runs concurrently with appends: wait for it, a bounded time.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::filesystem::file_size(db) < schema_only + (8u << 20) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(20ms);
    EXPECT_GE(std::filesystem::file_size(db), schema_only + (8u << 20))
        << "the database file did not grow: the WAL was not checkpointed while the store was open";
    EXPECT_EQ((*store)->head().value, appends * per_append);
  }
  auto reopened = open_store("sqlite:" + db.string());
  ASSERT_TRUE(reopened) << reopened.error().message;
  auto all = (*reopened)->read_all(log_position(0), appends * per_append + 10);
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), static_cast<std::size_t>(appends * per_append));
  for (std::size_t i = 0; i < all->size(); ++i) ASSERT_EQ((*all)[i].payload.at("n").as_int64(), static_cast<std::int64_t>(i));
  reopened->reset();
  std::filesystem::remove_all(dir);
}

// --- Dead-letter queue --------------------------------------------------------------

class DeadLetterConformance : public StoreConformance {
 protected:
  // A stored event of `type` (the DLQ keeps real events).
  event stored(const std::string& type) {
    auto r = must_append(req("dlq-" + std::to_string(++aggregates_), {make(type, {{"n", aggregates_}})}));
    return *store_->get_event(r.events.at(0).id);
  }
  dead_letter entry(const event& e, std::string consumer, std::string status = "pending_retry",
                    std::optional<timestamp> next_retry = std::nullopt) {
    dead_letter d;
    d.original_event = e;
    d.consumer = std::move(consumer);
    d.error = {"timeout", "no answer within 5000 ms", std::nullopt, {{"timeoutMs", 5000}}};
    d.attempts = 1;
    d.max_attempts = 5;
    d.first_failed_at = clock_.now();
    d.failed_at = clock_.now();
    d.next_retry_at = next_retry;
    d.status = std::move(status);
    d.retry_config = {{"maxAttempts", 5}, {"backoff", "exponential"}};
    d.history.push_back({1, clock_.now(), false, d.error, 5000, false});
    return d;
  }
  dead_letter must_add(dead_letter d) {
    auto r = store_->dlq_add(std::move(d));
    if (!r) ADD_FAILURE() << r.error().message;
    return r ? *r : dead_letter{};
  }
  static std::vector<std::string> ids(const std::vector<dead_letter>& entries) {
    std::vector<std::string> out;
    for (const auto& d : entries) out.push_back(d.id);
    return out;
  }

  int aggregates_ = 0;
};

void expect_same_error(const processing_error& a, const processing_error& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.message, b.message);
  EXPECT_EQ(a.stack, b.stack);
  EXPECT_EQ(a.context, b.context);
}

// Field by field (not through the JSON codec, which the SQL backends use to store them).
void expect_same(const dead_letter& a, const dead_letter& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.seq, b.seq);
  const auto &e = a.original_event, &f = b.original_event;
  EXPECT_EQ(e.id, f.id);
  EXPECT_EQ(e.type, f.type);
  EXPECT_EQ(e.version, f.version);
  EXPECT_EQ(e.time, f.time);
  EXPECT_EQ(e.aggregate_id, f.aggregate_id);
  EXPECT_EQ(e.aggregate_type, f.aggregate_type);
  EXPECT_EQ(e.sequence, f.sequence);
  EXPECT_EQ(e.position, f.position);
  EXPECT_EQ(e.causation_id, f.causation_id);
  EXPECT_EQ(e.correlation_id, f.correlation_id);
  EXPECT_EQ(e.metadata, f.metadata);
  EXPECT_EQ(e.payload, f.payload);
  EXPECT_EQ(a.consumer, b.consumer);
  expect_same_error(a.error, b.error);
  EXPECT_EQ(a.attempts, b.attempts);
  EXPECT_EQ(a.max_attempts, b.max_attempts);
  EXPECT_EQ(a.first_failed_at, b.first_failed_at);
  EXPECT_EQ(a.failed_at, b.failed_at);
  EXPECT_EQ(a.next_retry_at, b.next_retry_at);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.permanent_reason, b.permanent_reason);
  EXPECT_EQ(a.resolved_at, b.resolved_at);
  EXPECT_EQ(a.lease_until, b.lease_until);
  EXPECT_EQ(a.retry_config, b.retry_config);
  ASSERT_EQ(a.history.size(), b.history.size());
  for (std::size_t i = 0; i < a.history.size(); ++i) {
    const auto &x = a.history[i], &y = b.history[i];
    EXPECT_EQ(x.attempt, y.attempt);
    EXPECT_EQ(x.at, y.at);
    EXPECT_EQ(x.success, y.success);
    EXPECT_EQ(x.duration_ms, y.duration_ms);
    EXPECT_EQ(x.manual, y.manual);
    ASSERT_EQ(x.error.has_value(), y.error.has_value());
    if (x.error) expect_same_error(*x.error, *y.error);
  }
}

TEST_P(DeadLetterConformance, AddAssignsIdAndSeqAndKeepsOneEntryPerConsumerAndEvent) {
  const auto e1 = stored("form.created"), e2 = stored("form.updated");
  auto d = entry(e1, "plugin:mailer", "pending_retry", clock_.now() + 10s);
  d.seq = 99;  // assigned by the store, whatever the caller says
  auto first = must_add(d);
  EXPECT_TRUE(is_uuid(first.id));
  EXPECT_GT(first.seq, 0);
  d.id = first.id;
  d.seq = first.seq;
  expect_same(first, d);
  expect_same(*store_->dlq_get(first.id), d);

  auto again = entry(e1, "plugin:mailer", "permanent_failure");
  again.error.message = "a different failure";
  auto same = must_add(again);
  expect_same(same, first);  // the existing entry, unchanged
  expect_same(*store_->dlq_get(first.id), first);

  auto other_consumer = must_add(entry(e1, "route:r1:0"));
  auto other_event = must_add(entry(e2, "plugin:mailer"));
  EXPECT_NE(other_consumer.id, first.id);
  EXPECT_GT(other_consumer.seq, first.seq);
  EXPECT_GT(other_event.seq, other_consumer.seq);
  EXPECT_EQ(store_->dlq_list({}, 100, std::nullopt)->total_count, 3);

  // A caller's id is kept (canonical lowercase) and may not name another entry.
  const auto mine = new_uuid_v4();
  auto upper = mine;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  auto given = entry(e2, "route:r1:0");
  given.id = upper;
  EXPECT_EQ(must_add(given).id, mine);
  auto clash = entry(e2, "route:r2:0");
  clash.id = mine;
  EXPECT_EQ(store_->dlq_add(clash).error().code, errc::conflict);

  EXPECT_EQ(store_->dlq_get(new_uuid_v4()).error().code, errc::not_found);
  EXPECT_EQ(store_->dlq_get("not-a-uuid").error().code, errc::not_found);
  auto no_consumer = entry(e2, "");
  EXPECT_EQ(store_->dlq_add(no_consumer).error().code, errc::invalid_argument);
  auto bad_status = entry(e2, "plugin:x", "lost");
  EXPECT_EQ(store_->dlq_add(bad_status).error().code, errc::invalid_argument);
  auto bad_id = entry(e2, "plugin:x");
  bad_id.id = "not-a-uuid";
  EXPECT_EQ(store_->dlq_add(bad_id).error().code, errc::invalid_argument);
  EXPECT_EQ(store_->dlq_list({}, 100, std::nullopt)->total_count, 4);
}

TEST_P(DeadLetterConformance, ListFiltersPagesAndCounts) {
  const auto t0 = clock_.now();
  std::vector<dead_letter> all;
  auto add = [&](const char* type, const char* consumer, const char* status, std::chrono::seconds failed) {
    auto d = entry(stored(type), consumer, status);
    d.failed_at = t0 + failed;
    all.push_back(must_add(d));
    return all.back().id;
  };
  const auto a = add("form.created", "plugin:a", "pending_retry", 0s);
  const auto b = add("form.field.added", "plugin:a", "permanent_failure", 10s);
  const auto c = add("submission.created", "route:r1:0", "pending_retry", 20s);
  const auto d = add("form.updated", "route:r1:0", "resolved", 30s);
  const auto e = add("form.created", "plugin:b", "pending_retry", 40s);
  const auto f = add("submission", "plugin:a", "retrying", 50s);

  auto list = [&](dead_letter_filter filter, std::size_t limit = 100) {
    auto page = store_->dlq_list(filter, limit, std::nullopt);
    EXPECT_TRUE(page) << page.error().message;
    return page ? *page : dead_letter_page{};
  };
  auto everything = list({});
  EXPECT_EQ(ids(everything.entries), (std::vector<std::string>{a, b, c, d, e, f}));
  EXPECT_EQ(everything.total_count, 6);
  EXPECT_FALSE(everything.has_more);
  EXPECT_FALSE(everything.next_after);
  for (std::size_t i = 1; i < everything.entries.size(); ++i)
    EXPECT_LT(everything.entries[i - 1].seq, everything.entries[i].seq);

  auto by_type = [&](const char* pattern) {
    dead_letter_filter filter;
    filter.event_type = pattern;
    return ids(list(filter).entries);
  };
  EXPECT_EQ(by_type("form.*"), (std::vector<std::string>{a, d, e}));
  EXPECT_EQ(by_type("form.**"), (std::vector<std::string>{a, b, d, e}));
  EXPECT_EQ(by_type("form.created"), (std::vector<std::string>{a, e}));
  EXPECT_EQ(by_type("submission.**"), (std::vector<std::string>{c, f}));
  EXPECT_EQ(by_type("*.created"), (std::vector<std::string>{a, c, e}));
  EXPECT_TRUE(by_type("form").empty());

  dead_letter_filter by_consumer;
  by_consumer.consumer = "plugin:a";
  EXPECT_EQ(ids(list(by_consumer).entries), (std::vector<std::string>{a, b, f}));
  dead_letter_filter by_status;
  by_status.status = "pending_retry";
  EXPECT_EQ(ids(list(by_status).entries), (std::vector<std::string>{a, c, e}));
  dead_letter_filter by_time;  // both ends included
  by_time.from = t0 + 10s;
  by_time.to = t0 + 30s;
  EXPECT_EQ(ids(list(by_time).entries), (std::vector<std::string>{b, c, d}));
  dead_letter_filter combined;
  combined.event_type = "form.**";
  combined.consumer = "plugin:a";
  combined.from = t0 + 1s;
  EXPECT_EQ(ids(list(combined).entries), (std::vector<std::string>{b}));
  EXPECT_EQ(list(combined).total_count, 1);

  // Pages of two over a pattern: total_count is for the whole filter on every page.
  dead_letter_filter forms;
  forms.event_type = "form.**";
  std::vector<std::string> seen;
  std::optional<std::int64_t> after;
  int pages = 0;
  while (true) {
    auto page = store_->dlq_list(forms, 2, after);
    ASSERT_TRUE(page) << page.error().message;
    EXPECT_EQ(page->total_count, 4);
    for (auto& id : ids(page->entries)) seen.push_back(id);
    ++pages;
    if (!page->has_more) {
      EXPECT_FALSE(page->next_after);
      break;
    }
    ASSERT_EQ(page->entries.size(), 2u);
    ASSERT_TRUE(page->next_after);
    EXPECT_EQ(*page->next_after, page->entries.back().seq);
    after = page->next_after;
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(seen, (std::vector<std::string>{a, b, d, e}));
  auto past_end = store_->dlq_list({}, 10, all.back().seq);
  ASSERT_TRUE(past_end);
  EXPECT_TRUE(past_end->entries.empty());
  EXPECT_EQ(past_end->total_count, 6);

  dead_letter_filter bad_pattern;
  bad_pattern.event_type = "form.*x";
  EXPECT_EQ(store_->dlq_list(bad_pattern, 10, std::nullopt).error().code, errc::invalid_argument);
  dead_letter_filter bad_status;
  bad_status.status = "lost";
  EXPECT_EQ(store_->dlq_list(bad_status, 10, std::nullopt).error().code, errc::invalid_argument);
}

TEST_P(DeadLetterConformance, ClaimDueHandsOutDueRetriesAndExpiredLeasesOnly) {
  const auto t0 = clock_.now();
  auto a = must_add(entry(stored("t.a"), "plugin:x", "pending_retry", t0 + 10s));
  auto b = must_add(entry(stored("t.b"), "plugin:x", "pending_retry", t0 + 20s));
  must_add(entry(stored("t.c"), "plugin:x", "permanent_failure", t0));  // never retried automatically
  must_add(entry(stored("t.d"), "plugin:x", "resolved", t0));
  must_add(entry(stored("t.e"), "plugin:x", "pending_retry"));  // no retry time: not due
  auto claim = [&](std::size_t max = 10) {
    auto r = store_->dlq_claim_due(clock_.now(), max, 30s);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::vector<dead_letter>{};
  };
  EXPECT_TRUE(claim().empty());
  clock_.set(t0 + 10s);  // next_retry_at == now is due
  auto got = claim();
  ASSERT_EQ(ids(got), (std::vector<std::string>{a.id}));
  EXPECT_EQ(got[0].status, "retrying");
  EXPECT_EQ(got[0].lease_until, t0 + 40s);
  EXPECT_EQ(got[0].attempts, a.attempts);  // attempts are the retry engine's to record
  auto now_a = *store_->dlq_get(a.id);
  EXPECT_EQ(now_a.status, "retrying");
  EXPECT_EQ(now_a.lease_until, t0 + 40s);
  EXPECT_TRUE(claim().empty()) << "a leased entry was handed out twice";
  clock_.set(t0 + 25s);
  EXPECT_EQ(ids(claim()), (std::vector<std::string>{b.id}));
  clock_.set(t0 + 39s);
  EXPECT_TRUE(claim().empty());
  clock_.set(t0 + 40s);  // a's claimant died: its lease ran out
  got = claim();
  ASSERT_EQ(ids(got), (std::vector<std::string>{a.id}));
  EXPECT_EQ(got[0].lease_until, t0 + 70s);

  // At most `max`, oldest first.
  auto c1 = must_add(entry(stored("t.f"), "plugin:y", "pending_retry", t0));
  auto c2 = must_add(entry(stored("t.g"), "plugin:y", "pending_retry", t0));
  EXPECT_EQ(ids(claim(1)), (std::vector<std::string>{c1.id}));
  EXPECT_EQ(ids(claim(1)), (std::vector<std::string>{c2.id}));
  EXPECT_TRUE(claim(0).empty());
  EXPECT_TRUE(claim().empty());
}

TEST_P(DeadLetterConformance, ConcurrentClaimersNeverShareAnEntry) {
  constexpr int entries = 40, claimers = 4;
  std::set<std::string> added;
  for (int i = 0; i < entries; ++i)
    added.insert(must_add(entry(stored("t.due"), "plugin:x", "pending_retry", clock_.now())).id);
  std::vector<std::vector<std::string>> claimed(claimers);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < claimers; ++t)
    threads.emplace_back([&, t] {
      while (true) {
        auto r = store_->dlq_claim_due(clock_.now(), 3, 30s);
        if (!r) {
          ++failures;
          return;
        }
        if (r->empty()) return;
        for (auto& d : *r) claimed[static_cast<std::size_t>(t)].push_back(d.id);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  std::multiset<std::string> all;
  for (auto& c : claimed) all.insert(c.begin(), c.end());
  EXPECT_EQ(all.size(), static_cast<std::size_t>(entries)) << "an entry was claimed twice or not at all";
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()), added);
}

TEST_P(DeadLetterConformance, ClaimByIdForAnOperatorsRetry) {
  const auto t0 = clock_.now();
  auto waiting = must_add(entry(stored("t.a"), "plugin:x", "pending_retry", t0 + 1h));
  auto permanent = must_add(entry(stored("t.b"), "plugin:x", "permanent_failure"));
  auto resolved = must_add(entry(stored("t.c"), "plugin:x", "resolved"));

  auto got = store_->dlq_claim(waiting.id, t0, 30s);  // not due yet: an operator may still retry it
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->status, "retrying");
  EXPECT_EQ(got->lease_until, t0 + 30s);
  EXPECT_EQ(got->next_retry_at, waiting.next_retry_at);
  EXPECT_EQ(store_->dlq_get(waiting.id)->status, "retrying");
  EXPECT_EQ(store_->dlq_claim(waiting.id, t0 + 29s, 30s).error().code, errc::conflict) << "claimed under a live lease";
  auto after_lease = store_->dlq_claim(waiting.id, t0 + 30s, 30s);
  ASSERT_TRUE(after_lease);
  EXPECT_EQ(after_lease->lease_until, t0 + 60s);

  auto again = store_->dlq_claim(permanent.id, t0, 1min);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, "retrying");
  EXPECT_EQ(store_->dlq_claim(resolved.id, t0, 30s).error().code, errc::conflict);
  EXPECT_EQ(store_->dlq_get(resolved.id)->status, "resolved");
  EXPECT_EQ(store_->dlq_claim(new_uuid_v4(), t0, 30s).error().code, errc::not_found);
  // The sweep leaves what an operator holds, and takes it over once the lease runs out.
  EXPECT_TRUE(store_->dlq_claim_due(t0 + 59s, 10, 30s)->empty());
  EXPECT_EQ(ids(*store_->dlq_claim_due(t0 + 60s, 10, 30s)), (std::vector<std::string>{waiting.id, permanent.id}));
}

TEST_P(DeadLetterConformance, UpdateRoundTripsEveryMutableField) {
  const auto t0 = clock_.now();
  auto added = must_add(entry(stored("t.a"), "plugin:x", "pending_retry", t0 + 10s));
  auto claimed = store_->dlq_claim(added.id, t0 + 10s, 30s);
  ASSERT_TRUE(claimed);

  auto d = *claimed;
  d.error = {"http_500", "upstream said \"no\"\n", std::string("at f()\nat g()"),
             {{"status", 500}, {"body", json::object{{"x", json::array{1, nullptr}}}}}};
  d.attempts = 2;
  d.first_failed_at = t0 - 1us;
  d.failed_at = t0 + 11s + 123us;
  d.next_retry_at.reset();
  d.status = "permanent_failure";
  d.permanent_reason = "max attempts reached";
  d.resolved_at = t0 + 12s + 7us;
  d.lease_until = t0 + 11s;
  d.history.push_back({2, t0 + 11s + 123us, false, d.error, 77, true});
  d.history.push_back({3, t0 + 12s, true, std::nullopt, 0, true});
  // Identity and the add-time policy do not change.
  auto sent = d;
  sent.consumer = "plugin:other";
  sent.max_attempts = 99;
  sent.retry_config = {{"changed", true}};
  sent.original_event.type = "t.changed";
  ASSERT_TRUE(store_->dlq_update(sent));
  auto back = store_->dlq_get(d.id);
  ASSERT_TRUE(back);
  expect_same(*back, d);

  // The columns SQL filters on follow the update.
  dead_letter_filter permanent;
  permanent.status = "permanent_failure";
  EXPECT_EQ(ids(store_->dlq_list(permanent, 10, std::nullopt)->entries), (std::vector<std::string>{d.id}));
  dead_letter_filter when;
  when.from = t0 + 11s + 123us;
  when.to = t0 + 11s + 123us;
  EXPECT_EQ(store_->dlq_list(when, 10, std::nullopt)->total_count, 1);
  d.status = "pending_retry";
  d.next_retry_at = t0 + 20s;
  ASSERT_TRUE(store_->dlq_update(d));
  EXPECT_TRUE(store_->dlq_claim_due(t0 + 19s, 10, 30s)->empty());
  EXPECT_EQ(store_->dlq_claim_due(t0 + 20s, 10, 30s)->size(), 1u);

  if (GetParam().persistent) {
    auto before = *store_->dlq_get(d.id);
    reopen();
    expect_same(*store_->dlq_get(d.id), before);
  }

  auto missing = d;
  missing.id = new_uuid_v4();
  EXPECT_EQ(store_->dlq_update(missing).error().code, errc::not_found);
  auto bad = d;
  bad.status = "lost";
  EXPECT_EQ(store_->dlq_update(bad).error().code, errc::invalid_argument);
}

// Regression: an HTTP body or a plugin's exception text with bytes that are not UTF-8 made
// the stored JSON unreadable (SQLite) or was refused (PostgreSQL), losing the entry.
TEST_P(DeadLetterConformance, FailureTextThatIsNotUtf8IsStoredReadable) {
  auto d = entry(stored("t.a"), "route:r1:0");
  d.error.message = std::string("bad \xff\xfe bytes, good \xc3\xa9");
  d.error.context = {{std::string("k\xc0"), std::string("v\xed\xa0\x80")}};
  auto added = store_->dlq_add(d);
  ASSERT_TRUE(added) << added.error().message;
  auto back = store_->dlq_get(added->id);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->error.message, "bad \xef\xbf\xbd\xef\xbf\xbd bytes, good \xc3\xa9");
  EXPECT_EQ(back->error.context, (json::object{{"k\xef\xbf\xbd", "v\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}}));
  auto update = *back;
  update.history.push_back({2, clock_.now(), false, processing_error{"exception", "\x80", std::nullopt, {}}, 1, false});
  update.permanent_reason = std::string("\xf5");
  ASSERT_TRUE(store_->dlq_update(update));
  back = store_->dlq_get(added->id);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->history.back().error->message, "\xef\xbf\xbd");
  EXPECT_EQ(back->permanent_reason, "\xef\xbf\xbd");
  EXPECT_EQ(store_->dlq_list({}, 10, std::nullopt)->total_count, 1);
}

auto backend_name = [](const ::testing::TestParamInfo<backend>& info) { return info.param.name; };
INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::ValuesIn(backends()), backend_name);
INSTANTIATE_TEST_SUITE_P(Backends, QueryConformance, ::testing::ValuesIn(backends()), backend_name);
INSTANTIATE_TEST_SUITE_P(Backends, DeadLetterConformance, ::testing::ValuesIn(backends()), backend_name);

}  // namespace pliers
