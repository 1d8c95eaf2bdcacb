// Replay and compaction (src/ops) over every store backend: memory, SQLite, and PostgreSQL
// when PLIERS_TEST_POSTGRES_URL is set (failing under CI=true without it). Includes the
// property test of issue 7: for every strategy, over random event sequences, the state
// rebuilt from the compacted log equals the state of the original log.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "bus/event_bus.hpp"
#include "bus/log_tailer.hpp"
#include "core/clock.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "ops/compaction.hpp"
#include "ops/maintenance.hpp"
#include "ops/projections.hpp"
#include "ops/lua_projector.hpp"
#include "ops/replay.hpp"
#include "store/event_store.hpp"
#include "support/postgres.hpp"

namespace pliers {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

struct backend {
  std::string name;
  std::function<std::unique_ptr<event_store>(const std::filesystem::path& dir, const clock* c)> open;
};

std::vector<backend> backends() {
  std::vector<backend> out;
  out.push_back({"memory", [](const std::filesystem::path&, const clock* c) {
                   store_options o;
                   o.time_source = c;
                   return std::move(*open_store("memory:", o));
                 }});
  out.push_back({"sqlite", [](const std::filesystem::path& dir, const clock* c) {
                   store_options o;
                   o.time_source = c;
                   o.unsafe_no_fsync = true;  // durability is not what these tests check
                   auto s = open_store("sqlite:" + (dir / "events.db").string(), o);
                   if (!s) throw std::runtime_error(s.error().message);
                   return std::move(*s);
                 }});
  if (auto url = testing::postgres_url()) {
    out.push_back({"postgres", [base = *url](const std::filesystem::path& dir, const clock* c) {
                     static std::map<std::string, std::unique_ptr<testing::postgres_schema>> schemas;
                     auto& schema = schemas[dir.string()];
                     if (!schema) schema = std::make_unique<testing::postgres_schema>(base);
                     store_options o;
                     o.time_source = c;
                     auto s = open_store(schema->url(), o);
                     if (!s) throw std::runtime_error(s.error().message);
                     return std::move(*s);
                   }});
  } else if (testing::in_ci()) {
    ADD_FAILURE() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set: PostgreSQL must be tested in CI";
  }
  return out;
}

new_event make(std::string type, json::object payload = {}) {
  new_event e;
  e.type = std::move(type);
  e.aggregate_type = "doc";
  e.metadata = json::object{{"sourceSystem", "tests"}, {"sourceVersion", "1.0"}};
  e.payload = std::move(payload);
  return e;
}

// The reducer of the property test. Its event types have the semantics the strategies
// assume: set.* are last-writer-wins, patch is a JSON merge patch, count adds, noop is
// ignored.
json::value reduce(json::value state, const event& e) {
  if (!state.is_object()) state = json::object{{"n", 0}, {"fields", json::object()}, {"doc", json::object()}};
  auto& s = state.get_object();
  if (e.type.rfind("set.", 0) == 0) s["fields"].get_object()[e.type] = e.payload.at("v");
  else if (e.type == "patch") s["doc"] = apply_merge_patch(s["doc"], e.payload);
  else if (e.type == "count") s["n"] = s["n"].to_number<std::int64_t>() + e.payload.at("d").to_number<std::int64_t>();
  return state;
}

json::value fold(const std::vector<event>& events) {
  json::value s;
  for (const auto& e : events) s = reduce(std::move(s), e);
  return s;
}

}  // namespace

class Compaction : public ::testing::TestWithParam<backend> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("pliers-ops-" + GetParam().name + "-" + std::to_string(::getpid()) + "-" + new_uuid_v4().substr(0, 8));
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
  void append(const std::string& agg, std::vector<new_event> events, std::optional<std::int64_t> expected = std::nullopt) {
    for (auto& e : events) {
      clock_.advance(1ms);
      auto r = store_->append(append_request{agg, expected, {std::move(e)}});
      ASSERT_TRUE(r) << r.error().message;
      if (expected) ++*expected;
    }
  }
  std::vector<event> live(const std::string& agg) { return store_->read_aggregate(agg, 1, std::nullopt, 1000000).value(); }
  std::vector<std::int64_t> seqs(const std::vector<event>& evs) {
    std::vector<std::int64_t> out;
    for (const auto& e : evs) out.push_back(e.sequence.value);
    return out;
  }

  std::filesystem::path dir_;
  fake_clock clock_{*parse_rfc3339("2025-01-15T10:00:00Z")};
  std::unique_ptr<event_store> store_;
};

TEST_P(Compaction, EliminateArchivesReportsRangesAndKeepsTheSequence) {
  std::vector<new_event> evs;
  for (int i = 1; i <= 10; ++i) evs.push_back(make(i % 2 ? "set.title" : "count", {{"v", i}, {"d", 1}}));
  append("doc-1", std::move(evs), 0);
  const auto original = live("doc-1");
  compaction_strategy s;
  s.type = "eliminate_intermediates";
  s.eliminate_types = {"set.*"};
  s.keep_last = true;
  event_compaction c(*store_, {.actor = "test-operator"});
  auto r = c.compact_aggregate("doc-1", s);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->original_event_count, 10);
  EXPECT_EQ(r->compacted_event_count, 6);
  EXPECT_EQ(r->events_eliminated, 4);
  EXPECT_GT(r->space_saved, 0);
  EXPECT_EQ(seqs(live("doc-1")), (std::vector<std::int64_t>{2, 4, 6, 8, 9, 10}));
  auto meta = store_->get_aggregate_metadata("doc-1").value();
  EXPECT_EQ(meta.version, 10);
  EXPECT_EQ(meta.event_count, 6);
  EXPECT_EQ(meta.compacted_ranges, (std::vector<sequence_range>{{1, 1}, {3, 3}, {5, 5}, {7, 7}}));
  // Compacted events are gone from every read, and kept in the archive.
  EXPECT_EQ(store_->get_event(original[0].id).error().code, errc::not_found);
  const auto log = store_->read_all(log_position(0), 1000).value();
  for (const auto& e : log) EXPECT_NE(e.id, original[0].id);
  auto archived = store_->list_archived("doc-1", std::nullopt, log_position(0), 100).value();
  ASSERT_EQ(archived.size(), 4u);
  EXPECT_EQ(archived[0].original.id, original[0].id);
  EXPECT_EQ(archived[0].original.payload, original[0].payload);
  EXPECT_EQ(archived[0].compaction_id, r->compaction_ids.at(0));
  // The audit trail is an event.
  auto audit = store_->read_aggregate("pliers-compaction-log", 1, std::nullopt, 10).value();
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_EQ(audit[0].type, "compaction.completed");
  EXPECT_EQ(audit[0].payload.at("aggregateId"), "doc-1");
  EXPECT_EQ(audit[0].payload.at("actor"), "test-operator");
  EXPECT_EQ(audit[0].payload.at("eventsEliminated"), 4);
  // Optimistic concurrency is unaffected and new appends continue the sequence.
  EXPECT_EQ(store_->append(append_request{"doc-1", 9, {make("count", {{"d", 1}})}}).error().code, errc::conflict);
  auto next = store_->append(append_request{"doc-1", 10, {make("count", {{"d", 1}})}});
  ASSERT_TRUE(next) << next.error().message;
  EXPECT_EQ(next->events[0].sequence.value, 11);
  // A retry of a compacted append is still recognised, not appended again.
  auto retry = make("set.title", {{"v", 1}});
  retry.id = original[0].id;
  auto again = store_->append(append_request{"doc-1", std::nullopt, {retry}});
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_TRUE(again->idempotent_replay);
  EXPECT_EQ(again->events.at(0).position, original[0].position);
  // Restore puts everything back.
  auto restored = store_->restore_archived("doc-1", std::nullopt);
  ASSERT_TRUE(restored) << restored.error().message;
  EXPECT_EQ(*restored, 4);
  auto back = live("doc-1");
  ASSERT_EQ(back.size(), 11u);
  for (std::size_t i = 0; i < original.size(); ++i) EXPECT_EQ(back[i].id, original[i].id);
  EXPECT_TRUE(store_->get_aggregate_metadata("doc-1")->compacted_ranges.empty());
  EXPECT_EQ(store_->get_aggregate_metadata("doc-1")->event_count, 11);
}

TEST_P(Compaction, SnapshotStrategyWithLuaReducerAndKeepSnapshots) {
  std::vector<new_event> evs;
  for (int i = 1; i <= 25; ++i) evs.push_back(make("count", {{"d", i}}));
  append("doc-2", std::move(evs));
  auto lua = lua_projector::create("initial_state = {n = 0}\nfunction reduce(s, e) s.n = s.n + e.payload.d return s end").value();
  event_replay replay(*store_);
  const auto before = replay.replay_to_state("doc-2", json::value(), *lua).value();
  EXPECT_EQ(before.state.at("n"), 325);
  EXPECT_FALSE(before.snapshot_sequence);
  compaction_strategy s;
  s.type = "snapshot";
  s.snapshot_frequency = 10;
  s.keep_snapshots = 1;
  event_compaction c(*store_);
  EXPECT_EQ(c.compact_aggregate("doc-2", s).error().code, errc::invalid_argument);  // needs a reducer
  auto r = c.compact_aggregate("doc-2", s, lua.get());
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->events_eliminated, 20);
  EXPECT_EQ(r->snapshots_created, 1);
  EXPECT_EQ(seqs(live("doc-2")).front(), 21);
  append("doc-2", {make("count", {{"d", 100}})});
  auto after = replay.replay_to_state("doc-2", json::value(), *lua).value();
  EXPECT_EQ(after.state.at("n"), 425);
  EXPECT_EQ(after.snapshot_sequence, 20);
  EXPECT_EQ(after.events_applied, 6);
  EXPECT_EQ(after.version, 26);
  EXPECT_EQ(after.compacted_ranges, (std::vector<sequence_range>{{1, 20}}));
  // A second snapshot compaction keeps only the newest snapshot.
  compaction_strategy keep_one;
  keep_one.type = "snapshot";
  keep_one.keep_snapshots = 1;
  auto r2 = c.compact_aggregate("doc-2", keep_one, lua.get());
  ASSERT_TRUE(r2) << r2.error().message;
  EXPECT_EQ(store_->get_latest_snapshot("doc-2").value()->sequence_number, 26);
  EXPECT_EQ(replay.replay_to_state("doc-2", json::value(), *lua)->state.at("n"), 425);
  EXPECT_TRUE(live("doc-2").empty());
  auto listed = store_->list_archived("doc-2", r2->compaction_ids.at(0), log_position(0), 100).value();
  EXPECT_EQ(listed.size(), 6u);
}

TEST_P(Compaction, CompactionConcurrentWithAppendsLosesNothing) {
  append("doc-3", {make("set.a", {{"v", 0}})}, 0);
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> version{1};
  std::thread writer([&] {
    for (int i = 1; i <= 300; ++i) {
      auto r = store_->append(append_request{"doc-3", version.load(), {make(i % 3 ? "set.a" : "count", {{"v", i}, {"d", 1}})}});
      if (!r) {
        ADD_FAILURE() << r.error().message;
        break;
      }
      version = r->version;
    }
    stop = true;
  });
  compaction_strategy s;
  s.type = "eliminate_intermediates";
  s.eliminate_types = {"set.a"};
  s.keep_last = true;
  event_compaction c(*store_);
  int runs = 0, conflicts = 0;
  while (!stop || runs == 0) {
    auto r = c.compact_aggregate("doc-3", s);
    if (r) ++runs;
    else if (r.error().code == errc::conflict) ++conflicts;
    else FAIL() << r.error().message;
  }
  writer.join();
  ASSERT_TRUE(c.compact_aggregate("doc-3", s));
  // Every sequence number 1..301 is exactly once either live or in the archive.
  std::map<std::int64_t, int> seen;
  for (const auto& e : live("doc-3")) ++seen[e.sequence.value];
  const auto archived = store_->list_archived("doc-3", std::nullopt, log_position(0), 100000).value();
  for (const auto& a : archived) ++seen[a.original.sequence.value];
  ASSERT_EQ(seen.size(), 301u);
  for (const auto& [seq, n] : seen) EXPECT_EQ(n, 1) << seq;
  EXPECT_EQ(seen.begin()->first, 1);
  EXPECT_EQ(seen.rbegin()->first, 301);
  EXPECT_EQ(store_->get_aggregate_metadata("doc-3")->version, 301);
  EXPECT_EQ(static_cast<std::int64_t>(live("doc-3").size()), store_->get_aggregate_metadata("doc-3")->event_count);
}

TEST_P(Compaction, PositionsOfArchivedEventsAreNeverReused) {
  if (GetParam().name == "memory") GTEST_SKIP() << "nothing persists across a reopen of the memory store";
  append("doc-4", {make("set.a", {{"v", 1}}), make("set.a", {{"v", 2}}), make("set.a", {{"v", 3}})});
  const auto head = store_->head();
  compaction_strategy s;
  s.type = "eliminate_intermediates";
  s.eliminate_types = {"set.a"};
  ASSERT_TRUE(event_compaction(*store_).compact_aggregate("doc-4", s));
  reopen();
  append("doc-5", {make("count", {{"d", 1}})});
  EXPECT_GT(live("doc-5").at(0).position, head);
}

// The property test: random sequences, every strategy, state(snapshot + remaining) ==
// state(original); for eliminate/merge/custom without a snapshot, the remaining events alone
// also fold to the original state.
TEST_P(Compaction, PropertyCompactedStateEqualsOriginalForEveryStrategy) {
  std::mt19937 rng(20250115);
  const char* strategies[] = {"snapshot", "eliminate_intermediates", "merge_similar", "custom"};
  auto reducer = fold_with(reduce);
  for (int round = 0; round < 12; ++round) {
    for (const char* type : strategies) {
      for (int with_reducer = 0; with_reducer < 2; ++with_reducer) {
        if (std::string(type) == "snapshot" && !with_reducer) continue;
        const std::string agg = std::string("prop-") + type + "-" + std::to_string(round) + "-" + std::to_string(with_reducer);
        auto random_events = [&](int n) {
          std::vector<new_event> out;
          for (int i = 0; i < n; ++i) {
            switch (rng() % 5) {
              case 0: out.push_back(make("set." + std::string(1, static_cast<char>('a' + rng() % 3)), {{"v", static_cast<int>(rng() % 100)}})); break;
              case 1: {
                json::object p;
                for (int k = 0; k < 2; ++k) {
                  std::string key(1, static_cast<char>('p' + rng() % 4));
                  if (rng() % 4 == 0) p[key] = nullptr;
                  else p[key] = static_cast<int>(rng() % 50);
                }
                out.push_back(make("patch", std::move(p)));
                break;
              }
              case 2: out.push_back(make("count", {{"d", static_cast<int>(rng() % 21) - 10}})); break;
              case 3: out.push_back(make("noop", {{"x", 1}})); break;
              default: out.push_back(make("patch", {{"q", static_cast<int>(rng() % 9)}}));
            }
          }
          return out;
        };
        append(agg, random_events(5 + static_cast<int>(rng() % 40)));
        std::vector<event> history = live(agg);  // every event ever appended, uncompacted
        compaction_strategy s;
        s.type = type;
        s.snapshot_frequency = rng() % 3 == 0 ? 1 + static_cast<std::int64_t>(rng() % 7) : 0;
        s.eliminate_types = {rng() % 2 ? "set.*" : "noop"};
        s.keep_last = s.eliminate_types[0] == "set.*" || rng() % 2;
        s.merge_types = {"patch"};
        s.merge_window_ms = rng() % 2 ? 1000000 : static_cast<std::int64_t>(rng() % 5);
        s.custom_function = "function compact(events) local out = {} for _, e in ipairs(events) do "
                            "if e.type == 'noop' then out[#out + 1] = e.sequenceNumber end end return out end";
        // Compact twice with appends in between: new appends continue, earlier ranges stay.
        for (int pass = 0; pass < 2; ++pass) {
          const auto expected = fold(history);
          auto r = event_compaction(*store_).compact_aggregate(agg, s, with_reducer ? reducer.get() : nullptr);
          ASSERT_TRUE(r) << type << ": " << r.error().message;
          const auto remaining = live(agg);
          EXPECT_EQ(r->compacted_event_count, static_cast<std::int64_t>(remaining.size()));
          if (with_reducer) {
            auto st = event_replay(*store_).replay_to_state(agg, json::value(), reduce);
            ASSERT_TRUE(st) << st.error().message;
            EXPECT_EQ(st->state, expected) << type << " round " << round << " pass " << pass;
          }
          if (std::string(type) != "snapshot" && !with_reducer) {
            // No snapshot was made: the remaining events alone give the same state.
            ASSERT_FALSE(store_->get_latest_snapshot(agg).value());
            EXPECT_EQ(fold(remaining), expected) << type << " round " << round << " pass " << pass;
          }
          append(agg, random_events(3 + static_cast<int>(rng() % 10)));
          auto added = store_->read_aggregate(agg, history.back().sequence.value + 1, std::nullopt, 1000).value();
          history.insert(history.end(), added.begin(), added.end());
        }
      }
    }
  }
}

// Regression (issue 7 part 5): compaction leaves holes in the middle of the global log. A
// live subscriber and one subscribing from the beginning afterwards (reading history from the
// store across the holes, with a ring too small to hold it) must both keep receiving every
// live event in position order, including those appended after the compaction.
TEST_P(Compaction, SubscribersKeepReceivingAfterCompactionLeavesHolesInTheLog) {
  log_tailer tailer(*store_, log_tailer::options{.ring_capacity = 4, .read_batch = 3, .poll_interval = std::chrono::milliseconds(20)});
  event_bus bus(*store_, tailer, 1);
  struct received {
    std::mutex m;
    std::vector<std::int64_t> positions;
    void add(const event& e) {
      std::lock_guard lock(m);
      positions.push_back(e.position.value);
    }
    std::vector<std::int64_t> get() {
      std::lock_guard lock(m);
      return positions;
    }
  };
  received live_sub, late_sub;
  auto a = bus.subscribe_to_pattern("**", [&](const event& e) { live_sub.add(e); }, subscription_start::beginning());
  ASSERT_TRUE(a);
  for (int i = 1; i <= 12; ++i) {
    append("doc-a", {make(i % 4 == 0 ? "count" : "set.title", {{"v", i}, {"d", 1}})});
    append("doc-b", {make("count", {{"d", 1}})});
  }
  compaction_strategy s;
  s.type = "eliminate_intermediates";
  s.eliminate_types = {"set.*"};
  s.keep_last = true;
  event_compaction c(*store_);
  auto r = c.compact_aggregate("doc-a", s);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->events_eliminated, 8);
  auto b = bus.subscribe_to_pattern("**", [&](const event& e) { late_sub.add(e); }, subscription_start::beginning());
  ASSERT_TRUE(b);
  for (int i = 0; i < 6; ++i) append(i % 2 ? "doc-a" : "doc-b", {make("count", {{"d", 1}})});
  tailer.wake();

  std::vector<std::int64_t> expected;  // the live log now: the holes are the archived events
  const auto log = store_->read_all(log_position(0), 1000).value();
  for (const auto& e : log) expected.push_back(e.position.value);
  ASSERT_EQ(expected.size(), 24u - 8u + 1u + 6u);  // + the compaction.completed audit event
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline &&
         (late_sub.get().size() < expected.size() || live_sub.get().empty() || live_sub.get().back() != expected.back()))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // The late subscriber sees exactly the live log.
  EXPECT_EQ(late_sub.get(), expected);
  // The live one saw the archived events before they were compacted; it must have every
  // event appended since, in order, and nothing twice.
  const auto got = live_sub.get();
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end()) && std::adjacent_find(got.begin(), got.end()) == got.end());
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), expected.back());
  for (std::size_t i = expected.size() - 7; i < expected.size(); ++i)
    EXPECT_TRUE(std::binary_search(got.begin(), got.end(), expected[i])) << "missing position " << expected[i];
}

TEST_P(Compaction, SnapshotPoliciesEveryNEventsPerTypeKeepTheirStates) {
  for (int i = 1; i <= 23; ++i) append("doc-p", {make("count", {{"d", i}})});
  for (int i = 1; i <= 7; ++i) append("doc-q", {make("count", {{"d", 1}})});
  append("other-1", {make("count", {{"d", 1}})});
  snapshot_policies policies(*store_);
  EXPECT_EQ(policies.set({.aggregate_type = "doc", .every_events = 0, .keep_last = 2, .make_folder = [] { return fold_with(reduce); }})
                .error().field, "everyEvents");
  ASSERT_TRUE(policies.set({.aggregate_type = "doc", .every_events = 5, .keep_last = 2, .make_folder = [] { return fold_with(reduce); }}));
  // Fed in pages of 4 (a consumer's batches), twice: the second pass writes nothing new.
  std::int64_t written = 0;
  for (int pass = 0; pass < 2; ++pass) {
    log_position after{};
    while (true) {
      auto page = store_->read_all(after, 4).value();
      if (page.empty()) break;
      auto n = policies.on_events(page);
      ASSERT_TRUE(n) << n.error().message;
      if (pass == 0) written += *n;
      else EXPECT_EQ(*n, 0);
      after = page.back().position;
    }
  }
  EXPECT_EQ(written, 4 + 1);  // doc-p at 5, 10, 15, 20; doc-q at 5; other-1 has no policy
  auto snap = store_->get_latest_snapshot("doc-p").value();
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->sequence_number, 20);
  const auto all = live("doc-p");
  EXPECT_EQ(json::value(snap->data), fold(std::vector<event>(all.begin(), all.begin() + 20)));
  EXPECT_EQ(store_->get_latest_snapshot("doc-q").value()->sequence_number, 5);
  EXPECT_FALSE(store_->get_latest_snapshot("other-1").value());
  // replayToState from the policy's snapshot equals the full fold.
  event_replay replay(*store_);
  auto r = replay.replay_to_state("doc-p", json::value(), reduce);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->snapshot_sequence, 20);
  EXPECT_EQ(r->state, fold(all));
  // No event was touched.
  EXPECT_EQ(live("doc-p").size(), 23u);
  EXPECT_TRUE(store_->get_aggregate_metadata("doc-p")->compacted_ranges.empty());
}

TEST_P(Compaction, ScheduledCompactionRunsOnOneNodeOnly) {
  for (int i = 1; i <= 6; ++i) append("doc-s", {make(i % 2 ? "set.title" : "count", {{"v", i}, {"d", 1}})});
  compaction_scheduler a(*store_, clock_, "node-a"), b(*store_, clock_, "node-b");
  auto sched = compaction_schedule::from_json(json::parse(R"({"id": "nightly", "criteria": {"aggregateTypes": ["doc"]},
      "strategy": {"type": "eliminate_intermediates", "config": {"eliminateTypes": ["set.*"], "keepLast": true}},
      "intervalMs": 60000})"));
  ASSERT_TRUE(sched) << sched.error().message;
  EXPECT_EQ(compaction_schedule::from_json(json::parse(R"({"id": "x", "criteria": {}, "strategy": {"type": "snapshot"}, "intervalMs": 60000})"))
                .error().field, "criteria");
  EXPECT_EQ(compaction_schedule::from_json(json::parse(R"({"id": "x", "criteria": {"aggregateIds": ["a"]}, "strategy": {"type": "snapshot"}, "intervalMs": 60000})"))
                .error().field, "reducer");
  ASSERT_TRUE(a.schedule(*sched));
  EXPECT_TRUE(a.tick()->empty());  // not due yet
  EXPECT_TRUE(b.tick()->empty());
  auto run_both = [&] {
    std::vector<std::pair<std::string, batch_compaction_result>> ra, rb;
    std::thread ta([&] { ra = a.tick().value(); });
    std::thread tb([&] { rb = b.tick().value(); });
    ta.join();
    tb.join();
    return ra.size() + rb.size();
  };
  clock_.advance(std::chrono::seconds(61));
  EXPECT_EQ(run_both(), 1u);
  EXPECT_EQ(seqs(live("doc-s")), (std::vector<std::int64_t>{2, 4, 5, 6}));
  EXPECT_EQ(run_both(), 0u);  // the occurrence was taken; the next is an interval away
  for (int i = 7; i <= 9; ++i) append("doc-s", {make("set.title", {{"v", i}})});
  clock_.advance(std::chrono::seconds(61));
  EXPECT_EQ(run_both(), 1u);
  EXPECT_EQ(seqs(live("doc-s")), (std::vector<std::int64_t>{2, 4, 6, 9}));
  auto audit = store_->read_aggregate("pliers-compaction-log", 1, std::nullopt, 100).value();
  EXPECT_EQ(audit.size(), 2u);
  auto runs = store_->read_aggregate("pliers-compaction-schedule-nightly", 1, std::nullopt, 100).value();
  ASSERT_EQ(runs.size(), 5u);  // scheduled, started, completed, started, completed
  EXPECT_EQ(runs[2].type, "compaction.run_completed");
  EXPECT_EQ(runs[2].payload.at("eventsEliminated"), 2);
  ASSERT_TRUE(b.cancel("nightly"));
  clock_.advance(std::chrono::seconds(61));
  EXPECT_EQ(run_both(), 0u);
}

TEST_P(Compaction, BatchProcessorPublishReplayCompact) {
  batch_processor batch(*store_);
  std::vector<std::pair<std::string, new_event>> events;
  for (int i = 0; i < 250; ++i) events.emplace_back("doc-b" + std::to_string(i % 5), make(i % 3 ? "count" : "set.a", {{"d", 1}, {"v", i}}));
  auto bad = make("count", {{"d", 1}});
  bad.type.clear();  // invalid: refused by validation, alone in its append
  events.emplace_back("doc-bad", std::move(bad));
  EXPECT_EQ(batch.batch_publish(events, 0).error().field, "batchSize");
  auto pub = batch.batch_publish(std::move(events), 100);
  ASSERT_TRUE(pub) << pub.error().message;
  EXPECT_EQ(pub->total_events, 251);
  EXPECT_EQ(pub->successful_events, 250);
  EXPECT_EQ(pub->failed_events, 1);
  ASSERT_EQ(pub->errors.size(), 1u);
  EXPECT_EQ(pub->errors[0].aggregate_id, "doc-bad");
  EXPECT_EQ(pub->errors[0].type, "invalid_argument");
  for (int a = 0; a < 5; ++a) EXPECT_EQ(live("doc-b" + std::to_string(a)).size(), 50u);

  auto rep = batch.batch_replay({"doc-b0", "doc-b1", "doc-b2"}, [] { return fold_with(reduce); });
  ASSERT_TRUE(rep);
  EXPECT_EQ(rep->summary.total_events, 150);
  EXPECT_EQ(rep->summary.successful_events, 150);
  ASSERT_EQ(rep->states.size(), 3u);
  EXPECT_EQ(rep->states[1].first, "doc-b1");
  EXPECT_EQ(rep->states[1].second.state, fold(live("doc-b1")));

  compaction_strategy s;
  s.type = "eliminate_intermediates";
  s.eliminate_types = {"set.*"};
  s.keep_last = true;
  compaction_criteria crit;
  crit.aggregate_types = {"doc"};
  crit.min_events = 10;
  auto before = fold(live("doc-b3"));
  std::int64_t set_events = 0, set_in_b3 = 0;  // set.a: every third event
  for (int a = 0; a < 5; ++a)
    for (const auto& e : live("doc-b" + std::to_string(a)))
      if (e.type == "set.a") {
        ++set_events;
        if (a == 3) ++set_in_b3;
      }
  ASSERT_EQ(set_events, 84);  // i = 0, 3, ..., 249
  auto comp = batch.batch_compact(crit, s, [] { return fold_with(reduce); }, 2);
  ASSERT_TRUE(comp) << comp.error().message;
  EXPECT_EQ(comp->compaction.aggregates_compacted, 5);
  EXPECT_EQ(comp->summary.successful_events, 250);
  EXPECT_EQ(comp->compaction.events_eliminated, set_events - 5);  // the last set.a of each aggregate kept
  EXPECT_EQ(static_cast<std::int64_t>(live("doc-b3").size()), 50 - (set_in_b3 - 1));
  event_replay replay(*store_);
  EXPECT_EQ(replay.replay_to_state("doc-b3", json::value(), reduce)->state, before);
  crit.min_events = 1000;
  EXPECT_EQ(batch.batch_compact(crit, s)->compaction.aggregates_compacted, 0);
}

// Two nodes on one store: one owns the projection (lease) and folds it; the other reports
// it from the checkpoints; when the owner stops, the other takes over from the newest
// checkpoint and no event is folded twice or missed.
TEST_P(Compaction, ProjectionsHaveOneOwnerAndFailOver) {
  auto make_node = [&](const std::string& member) {
    projection_manager::options o;
    o.member = member;
    o.lease = std::chrono::milliseconds(600);
    o.idle_poll = std::chrono::milliseconds(20);
    o.checkpoint_interval = std::chrono::milliseconds(50);
    o.page_size = 7;
    return std::make_unique<projection_manager>(*store_, o);
  };
  auto a = make_node("node-a");
  auto b = make_node("node-b");
  ASSERT_TRUE(a->start());
  ASSERT_TRUE(b->start());
  const char* source = "initial_state = {n = 0, d = 0}\nfunction reduce(s, e) s.n = s.n + 1; s.d = s.d + e.payload.d; return s end";
  auto reg = a->register_projection(json::parse(std::string(R"({"name": "docs", "filter": {"aggregateTypes": ["doc"]}, "source": )") +
                                                json::serialize(json::value(source)) + "}"));
  ASSERT_TRUE(reg) << reg.error().message;
  for (int i = 0; i < 40; ++i) append("doc-" + std::to_string(i % 3), {make("count", {{"d", 1}})});
  auto other_type = make("count", {{"d", 1000}});
  other_type.aggregate_type = "misc";  // filtered out
  append("other", {std::move(other_type)});
  auto settled = [&](projection_manager& m, std::int64_t n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      auto st = m.get("docs");
      if (st && st->state.is_object() && st->state.as_object().contains("n") && st->state.at("n").as_int64() == n &&
          st->checkpoint_position == st->head)
        return *st;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "projection did not settle at n=" << n << ": " << json::serialize(m.get("docs")->to_json(true));
    return m.get("docs").value();
  };
  // Both report the same state (the owner from Lua, the other from the checkpoint).
  auto sa = settled(*a, 40);
  auto sb = settled(*b, 40);
  EXPECT_NE(sa.owner, sb.owner);
  EXPECT_EQ(sa.state, sb.state);
  EXPECT_EQ(sa.state.at("d").as_int64(), 40);
  // The owner stops; the other takes over and folds the new events once.
  auto& owner = sa.owner ? a : b;
  auto& other = sa.owner ? b : a;
  owner->stop();
  for (int i = 0; i < 25; ++i) append("doc-x", {make("count", {{"d", 2}})});
  auto after = settled(*other, 65);
  EXPECT_TRUE(after.owner);
  EXPECT_EQ(after.state.at("d").as_int64(), 40 + 50);
  EXPECT_EQ(after.events_processed, 65);
}

INSTANTIATE_TEST_SUITE_P(Backends, Compaction, ::testing::ValuesIn(backends()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace pliers
