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

#include "core/clock.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "ops/compaction.hpp"
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
  EXPECT_TRUE(!again || again->idempotent_replay);
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
  auto r2 = c.compact_aggregate("doc-2", compaction_strategy{.type = "snapshot", .keep_snapshots = 1}, lua.get());
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
  compaction_strategy s{.type = "eliminate_intermediates", .eliminate_types = {"set.a"}};
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

INSTANTIATE_TEST_SUITE_P(Backends, Compaction, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return info.param.name; });

}  // namespace pliers
