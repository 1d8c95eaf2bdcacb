// One conformance suite for the store contract, run against every backend (memory, SQLite;
// PostgreSQL joins when configured). A test that cannot apply to a backend skips with the
// reason.
#include <gtest/gtest.h>

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

auto backend_name = [](const ::testing::TestParamInfo<backend>& info) { return info.param.name; };
INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::ValuesIn(backends()), backend_name);
INSTANTIATE_TEST_SUITE_P(Backends, QueryConformance, ::testing::ValuesIn(backends()), backend_name);

}  // namespace pliers
