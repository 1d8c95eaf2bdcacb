// The plugin hook system and the retry engine on every store: chain order, previous
// results, failures and timeouts, generated events (idempotent, with causation,
// correlation and a hop limit), the dead-letter queue driven by an injected clock, and the
// durable plugin consumer.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <mutex>
#include <thread>

#include "bus/event_bus.hpp"
#include "core/uuid.hpp"
#include "process/plugin_chain.hpp"
#include "process/plugin_kinds.hpp"
#include "process/plugin_processor.hpp"
#include "support/postgres.hpp"

namespace pliers {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

// A native plugin whose behaviour a test sets with a function.
class test_plugin final : public event_plugin {
 public:
  using fn = std::function<plugin_result(const event&, const plugin_context&)>;
  test_plugin(std::string id, std::int64_t priority, fn f) : f_(std::move(f)) {
    info_.id = std::move(id);
    info_.name = info_.id;
    info_.priority = priority;
  }
  const plugin_info& info() const override { return info_; }
  std::string kind() const override { return "native"; }
  plugin_result process(const event& e, const plugin_context& ctx) override { return f_(e, ctx); }
  void on_enable() override { ++enabled; }
  void on_disable() override { ++disabled; }
  std::atomic<int> enabled{0}, disabled{0};

 private:
  plugin_info info_;
  fn f_;
};

plugin_result ok(std::string id = {}) {
  plugin_result r;
  r.plugin_id = std::move(id);
  r.success = true;
  return r;
}

json::object md() { return {{"sourceSystem", "t"}, {"sourceVersion", "1"}}; }

}  // namespace

class PluginChain : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("pliers-plugins-" + new_uuid_v4().substr(0, 8));
    std::filesystem::create_directories(dir_);
    const auto url = testing::backend_url(GetParam(), dir_, schema_);
    if (!url) return testing::missing_postgres();
    store_options so;
    so.time_source = &clock_;
    auto s = open_store(*url, so);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    retry_engine::options ro;
    ro.default_policy.strategy = backoff_strategy::fixed;
    ro.default_policy.base_delay = 1000ms;
    ro.default_policy.max_delay = 1000ms;
    ro.default_policy.jitter = false;
    ro.default_policy.max_attempts = 3;
    retries_ = std::make_unique<retry_engine>(*store_, clock_, ro);
    chain_ = std::make_unique<plugin_chain>(*store_, clock_, *retries_, nullptr, plugin_chain::options{.max_hops = 3});
  }
  void TearDown() override {
    chain_.reset();
    retries_.reset();
    store_.reset();
    schema_.reset();
    std::filesystem::remove_all(dir_);
  }
  event append(const std::string& type, const std::string& aggregate = "form-1", json::object metadata = md()) {
    new_event ne;
    ne.type = type;
    ne.aggregate_type = "form";
    ne.metadata = std::move(metadata);
    ne.payload = {{"n", 1}};
    auto r = store_->append({aggregate, std::nullopt, {std::move(ne)}});
    EXPECT_TRUE(r) << r.error().message;
    return *store_->get_event(r->events[0].id);
  }
  std::shared_ptr<test_plugin> add(const std::string& id, std::int64_t priority, test_plugin::fn f,
                                   std::vector<std::string> types = {"form.*"}, plugin_options o = {}) {
    auto p = std::make_shared<test_plugin>(id, priority, std::move(f));
    auto r = chain_->register_plugin(p, std::move(types), std::move(o));
    EXPECT_TRUE(r) << r.error().message;
    return p;
  }
  std::vector<event> of_type(const std::string& type) {
    auto r = store_->read_by_type(type, std::nullopt, std::nullopt);
    EXPECT_TRUE(r);
    return r ? *r : std::vector<event>{};
  }
  dead_letter only_dead_letter() {
    auto page = retries_->list({}, 100, std::nullopt);
    EXPECT_TRUE(page);
    EXPECT_EQ(page->entries.size(), 1u);
    return page->entries.empty() ? dead_letter{} : page->entries.front();
  }

  fake_clock clock_{from_micros(1'800'000'000'000'000)};
  std::filesystem::path dir_;
  std::unique_ptr<testing::postgres_schema> schema_;
  std::unique_ptr<event_store> store_;
  std::unique_ptr<retry_engine> retries_;
  std::unique_ptr<plugin_chain> chain_;
};

TEST_P(PluginChain, RunsInPriorityOrderAndEachSeesThePreviousResults) {
  std::mutex m;
  std::vector<std::string> order;
  std::vector<std::vector<std::string>> seen;
  auto record = [&](std::string id) {
    return [&, id](const event&, const plugin_context& ctx) {
      std::lock_guard lock(m);
      order.push_back(id);
      std::vector<std::string> prev;
      for (const auto& r : ctx.previous_results) prev.push_back(r.plugin_id);
      seen.push_back(prev);
      auto r = ok();
      r.metadata["by"] = id;
      return r;
    };
  };
  auto low = add("low", 1, record("low"));
  add("high", 10, record("high"));
  add("mid", 5, record("mid"));
  add("other", 100, record("other"), {"submission.*"});  // does not match
  EXPECT_EQ(low->enabled.load(), 1);  // onEnable at registration
  auto e = append("form.created");
  auto names = chain_->plugins_for_event("form.created");
  ASSERT_EQ(names.size(), 3u);
  EXPECT_EQ(names[0]->info().id, "high");
  auto results = chain_->process_event(e);
  ASSERT_TRUE(results) << results.error().message;
  ASSERT_EQ(results->size(), 3u);
  EXPECT_EQ(order, (std::vector<std::string>{"high", "mid", "low"}));
  EXPECT_EQ(seen[0], std::vector<std::string>{});
  EXPECT_EQ(seen[1], std::vector<std::string>{"high"});
  EXPECT_EQ(seen[2], (std::vector<std::string>{"high", "mid"}));
  // plugin.executed per run, under the plugin's lifecycle aggregate, with its result.
  auto executed = of_type("plugin.executed");
  ASSERT_EQ(executed.size(), 3u);
  EXPECT_EQ(executed[0].aggregate_type, "plugin");
  EXPECT_EQ(executed[0].payload.at("triggerEventId").as_string(), e.id);
  EXPECT_EQ(executed[0].payload.at("result").at("by").as_string(), "high");
  EXPECT_TRUE(executed[0].payload.contains("executionTime"));
  EXPECT_EQ(executed[0].causation_id, e.id);
  // Lifecycle events never trigger plugins.
  EXPECT_TRUE(chain_->execute(executed[0]).results.empty());
  EXPECT_EQ(of_type("plugin.registered").size(), 4u);
}

TEST_P(PluginChain, AFailingOrThrowingPluginIsDeadLetteredAndTheChainGoesOn) {
  add("thrower", 10, [](const event&, const plugin_context&) -> plugin_result { throw std::runtime_error("boom"); });
  add("refuser", 5, [](const event&, const plugin_context&) {
    auto r = failed_result("", "validation", "missing field");
    generated_event g;  // discarded: effects are kept only on success
    g.aggregate_id = "x";
    g.event.type = "never.stored";
    g.event.aggregate_type = "x";
    g.event.metadata = md();
    r.generated_events.push_back(g);
    return r;
  });
  std::atomic<int> after{0};
  add("after", 1, [&](const event&, const plugin_context& ctx) {
    ++after;
    EXPECT_EQ(ctx.previous_results.size(), 2u);
    EXPECT_FALSE(ctx.previous_results[0].success);
    return ok();
  });
  auto e = append("form.submitted");
  auto results = chain_->process_event(e);
  ASSERT_TRUE(results);
  EXPECT_EQ(after.load(), 1);
  EXPECT_EQ((*results)[0].error_type, "exception");
  EXPECT_EQ(*(*results)[0].error, "boom");
  EXPECT_EQ((*results)[1].error_type, "validation");
  EXPECT_TRUE(of_type("never.stored").empty());
  EXPECT_EQ(of_type("plugin.failed").size(), 2u);
  auto page = retries_->list({}, 100, std::nullopt);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->entries.size(), 2u);
  for (const auto& d : page->entries) {
    EXPECT_EQ(d.status, "pending_retry");
    EXPECT_EQ(d.original_event.id, e.id);
    EXPECT_EQ(d.attempts, 1);
    EXPECT_EQ(d.max_attempts, 3);
    ASSERT_TRUE(d.next_retry_at);
    EXPECT_EQ(*d.next_retry_at, clock_.now() + 1000ms);
    EXPECT_EQ(d.history.size(), 1u);
  }
  dead_letter_filter f;
  f.consumer = "plugin:refuser";
  auto one = retries_->list(f, 100, std::nullopt);
  ASSERT_TRUE(one);
  ASSERT_EQ(one->entries.size(), 1u);
  EXPECT_EQ(one->entries[0].error.type, "validation");
  // Processing the same event again (at-least-once) does not duplicate the entries.
  ASSERT_TRUE(chain_->process_event(e));
  EXPECT_EQ(retries_->list({}, 100, std::nullopt)->total_count, 2);
}

TEST_P(PluginChain, APluginThatOverrunsItsTimeoutIsAbandonedAndItsEffectsDiscarded) {
  std::atomic<bool> release{false};
  plugin_options o;
  o.timeout = 100ms;
  add("sleeper", 10,
      [&](const event& e, const plugin_context&) {
        while (!release.load()) std::this_thread::sleep_for(5ms);  // hangs past its deadline
        auto r = ok();
        generated_event g;
        g.aggregate_id = "late";
        g.event.type = "late.event";
        g.event.aggregate_type = "late";
        g.event.metadata = md();
        g.event.payload = {{"trigger", e.id}};
        r.generated_events.push_back(g);
        return r;
      },
      {"form.*"}, o);
  std::atomic<int> next{0};
  add("next", 1, [&](const event&, const plugin_context&) {
    ++next;
    return ok();
  });
  auto e = append("form.created");
  const auto t0 = std::chrono::steady_clock::now();
  auto results = chain_->process_event(e);
  const auto took = std::chrono::steady_clock::now() - t0;
  release = true;
  ASSERT_TRUE(results);
  EXPECT_LT(took, 2s);
  EXPECT_EQ((*results)[0].error_type, "timeout");
  EXPECT_EQ(next.load(), 1);
  std::this_thread::sleep_for(50ms);  // the abandoned call returns now: nothing of it is kept
  EXPECT_TRUE(of_type("late.event").empty());
  EXPECT_EQ(only_dead_letter().error.type, "timeout");
}

// A durable consumer's batch runs on the chain thread, which calls native plugins itself: a
// call that overruns is abandoned there too, mid-batch, and the batch goes on in order.
TEST_P(PluginChain, ABatchGoesOnPastANativeCallThatOverruns) {
  std::vector<event> events;
  for (int i = 0; i < 150; ++i) events.push_back(append("form.created", "form-" + std::to_string(i % 7)));
  std::vector<const event*> batch;
  for (const auto& e : events) batch.push_back(&e);
  const std::string hung = events[70].id;
  // The abandoned call outlives this test: it owns what it reads.
  auto release = std::make_shared<std::atomic<bool>>(false);
  plugin_options o;
  o.timeout = 100ms;
  add("sleeper", 10,
      [hung, release](const event& e, const plugin_context&) {
        while (e.id == hung && !release->load()) std::this_thread::sleep_for(5ms);
        auto r = ok();
        generated_event g;
        g.aggregate_id = "late-" + e.id;
        g.event.type = "late.event";
        g.event.aggregate_type = "late";
        g.event.metadata = md();
        r.generated_events.push_back(g);
        return r;
      },
      {"form.*"}, o);
  std::mutex m;
  std::vector<std::string> order;
  std::map<std::string, std::string> before;  // trigger -> what `next` saw of sleeper
  add("next", 1, [&](const event& e, const plugin_context& ctx) {
    std::lock_guard lock(m);
    order.push_back(e.id);
    const auto& prev = ctx.previous_results;
    before[e.id] = prev.empty() ? "none" : prev[0].success ? "ok" : prev[0].error_type;
    return ok();
  });
  // Native plugins see events of the log delivered again as well (registered anew by their
  // process): these were stored before the registrations.
  const auto t0 = std::chrono::steady_clock::now();
  auto done = chain_->process_batch(batch);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(done) << done.error().message;
  EXPECT_LT(took, 2s);
  {
    std::lock_guard lock(m);
    ASSERT_EQ(order.size(), events.size());
    for (std::size_t i = 0; i < events.size(); ++i) EXPECT_EQ(order[i], events[i].id) << i;
    EXPECT_EQ(before[hung], "timeout");
    EXPECT_EQ(before[events[71].id], "ok");
  }
  EXPECT_EQ(of_type("late.event").size(), events.size() - 1);
  EXPECT_EQ(of_type("plugin.executed").size(), 2 * events.size() - 1);
  auto failed = of_type("plugin.failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].payload.at("errorType").as_string(), "timeout");
  EXPECT_EQ(failed[0].payload.at("triggerEventId").as_string(), hung);
  EXPECT_EQ(only_dead_letter().error.type, "timeout");
  // The next batch runs on a fresh chain thread.
  auto more = append("form.created");
  const event* one[] = {&more};
  ASSERT_TRUE(chain_->process_batch(one));
  EXPECT_EQ(of_type("plugin.executed").size(), 2 * events.size() + 1);
  *release = true;
  std::this_thread::sleep_for(50ms);  // the abandoned call returns now: nothing of it is kept
  EXPECT_EQ(of_type("late.event").size(), events.size());
}

// Past `max_abandoned` calls left running, native plugins fail with `overloaded` (batches
// run on the caller's thread), and run again once the calls have returned.
TEST_P(PluginChain, TooManyAbandonedCallsMakeNativePluginsOverloaded) {
  chain_.reset();
  chain_ = std::make_unique<plugin_chain>(*store_, clock_, *retries_, nullptr,
                                          plugin_chain::options{.max_hops = 3, .max_abandoned = 1});
  auto release = std::make_shared<std::atomic<bool>>(false);  // read by the abandoned call
  auto calls = std::make_shared<std::atomic<int>>(0);
  plugin_options o;
  o.timeout = 50ms;
  add("stuck", 1,
      [release, calls](const event&, const plugin_context&) {
        if ((*calls)++ == 0)
          while (!release->load()) std::this_thread::sleep_for(5ms);
        return ok();
      },
      {"form.*"}, o);
  auto a = append("form.created");
  auto b = append("form.created");
  const event* first[] = {&a};
  const event* second[] = {&b};
  ASSERT_TRUE(chain_->process_batch(first));
  ASSERT_TRUE(chain_->process_batch(second));
  auto failed = of_type("plugin.failed");
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_EQ(failed[0].payload.at("errorType").as_string(), "timeout");
  EXPECT_EQ(failed[1].payload.at("errorType").as_string(), "overloaded");
  *release = true;
  for (int i = 0; i < 200 && chain_->process_batch(second) && of_type("plugin.executed").empty(); ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(of_type("plugin.executed").size(), 1u);
}

// A Lua plugin in a batch: the event as a table, the previous results in the context, and
// pliers.emit, on the chain thread.
TEST_P(PluginChain, LuaPluginsRunInBatchesWithTheEventAndPreviousResults) {
  add("first", 10, [&](const event&, const plugin_context&) {
    auto r = ok();
    r.metadata["x"] = 7;
    return r;
  });
  plugin_info info{"lua-derive", "derive", "1.0.0", 5, {}};
  auto lua = make_lua_plugin(info, {{"source", R"(
function process(event, context)
  local prev = context.previousResults[1]
  pliers.emit{aggregateId = "derived-" .. event.aggregateId, type = "derived.made", aggregateType = "derived",
              payload = {from = event.id, x = prev.metadata.x, n = event.payload.n}}
  return {success = true, metadata = {type = event.type, seq = event.sequenceNumber}}
end)"}},
                             5s);
  ASSERT_TRUE(lua) << lua.error().message;
  ASSERT_TRUE(chain_->register_plugin(*lua, {"form.*"}, {}));
  std::vector<event> events;
  for (int i = 0; i < 3; ++i) events.push_back(append("form.created", "form-" + std::to_string(i)));
  std::vector<const event*> batch;
  for (const auto& e : events) batch.push_back(&e);
  ASSERT_TRUE(chain_->process_batch(batch));
  auto derived = of_type("derived.made");
  ASSERT_EQ(derived.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(derived[i].causation_id, events[i].id);
    EXPECT_EQ(derived[i].payload.at("from").as_string(), events[i].id);
    EXPECT_EQ(derived[i].payload.at("x"), json::value(7));
    EXPECT_EQ(derived[i].payload.at("n"), json::value(1));
  }
  std::size_t lua_runs = 0;
  for (const auto& e : of_type("plugin.executed"))
    if (e.aggregate_id == "plugin-lua-derive") {
      ++lua_runs;
      EXPECT_EQ(e.payload.at("result").at("type").as_string(), "form.created");
      EXPECT_EQ(e.payload.at("result").at("seq"), json::value(1));
    }
  EXPECT_EQ(lua_runs, 3u);
}

TEST_P(PluginChain, GeneratedEventsCarryCausationCorrelationAndAreStoredOnce) {
  add("echo", 1, [](const event& e, const plugin_context& ctx) {
    auto r = ok();
    EXPECT_EQ(ctx.correlation_id, e.correlation_id.value_or(e.id));
    for (int i = 0; i < 2; ++i) {
      generated_event g;
      g.aggregate_id = "audit-" + e.aggregate_id;
      g.event.type = "audit.recorded";
      g.event.aggregate_type = "audit";
      g.event.payload = {{"of", e.id}, {"i", i}};
      r.generated_events.push_back(g);
    }
    return r;
  });
  auto e = append("form.created");
  ASSERT_TRUE(chain_->process_event(e));
  ASSERT_TRUE(chain_->process_event(e));  // delivered again: nothing new is stored
  auto audit = of_type("audit.recorded");
  ASSERT_EQ(audit.size(), 2u);
  for (const auto& a : audit) {
    EXPECT_EQ(a.causation_id, e.id);
    EXPECT_EQ(a.correlation_id, e.id);
    EXPECT_EQ(a.metadata.at("pluginHops").as_int64(), 1);
    EXPECT_EQ(a.metadata.at("sourceSystem").as_string(), "pliers-plugin:echo");
  }
  EXPECT_EQ(of_type("plugin.executed").size(), 1u);
}

TEST_P(PluginChain, GeneratedEventsPastTheHopLimitAreRefusedAsALoop) {
  // A plugin that answers every form event with another form event: a loop.
  add("looper", 1, [](const event& e, const plugin_context&) {
    auto r = ok();
    generated_event g;
    g.aggregate_id = e.aggregate_id;
    g.event.type = "form.updated";
    g.event.aggregate_type = "form";
    r.generated_events.push_back(g);
    return r;
  });
  auto e = append("form.created");
  std::size_t rounds = 0;
  for (event current = e; rounds < 10; ++rounds) {
    auto results = chain_->process_event(current);
    ASSERT_TRUE(results);
    if (!(*results)[0].success) {
      EXPECT_EQ((*results)[0].error_type, "hop_limit");
      break;
    }
    auto updates = of_type("form.updated");
    current = updates.back();
  }
  EXPECT_EQ(rounds, 3u);  // max_hops = 3
  EXPECT_EQ(of_type("form.updated").size(), 3u);
  auto d = only_dead_letter();
  EXPECT_EQ(d.status, "pending_retry");  // hop_limit is a failure like others; by policy
}

TEST_P(PluginChain, InvalidGeneratedEventsFailThePluginNotTheBatch) {
  add("bad", 2, [](const event&, const plugin_context&) {
    auto r = ok();
    generated_event g;
    g.aggregate_id = "x";
    g.event.type = std::string(150, 'x');
    g.event.aggregate_type = "x";
    r.generated_events.push_back(g);
    return r;
  });
  add("good", 1, [](const event& e, const plugin_context&) {
    auto r = ok();
    generated_event g;
    g.aggregate_id = "ok-" + e.aggregate_id;
    g.event.type = "ok.done";
    g.event.aggregate_type = "ok";
    r.generated_events.push_back(g);
    return r;
  });
  auto e = append("form.created");
  auto results = chain_->process_event(e);
  ASSERT_TRUE(results) << results.error().message;
  EXPECT_EQ((*results)[0].error_type, "invalid_result");
  EXPECT_NE((*results)[0].error->find("generatedEvents[0].type"), std::string::npos) << *(*results)[0].error;
  EXPECT_EQ(of_type("ok.done").size(), 1u);
}

TEST_P(PluginChain, AnAppendTheStoreRefusesFailsOnlyThatPlugin) {
  // The aggregate exists with type "form": an event of another aggregateType is refused.
  add("clash", 2, [](const event& e, const plugin_context&) {
    auto r = ok();
    generated_event g;
    g.aggregate_id = e.aggregate_id;
    g.event.type = "x.happened";
    g.event.aggregate_type = "not-form";
    r.generated_events.push_back(g);
    return r;
  });
  add("good", 1, [](const event& e, const plugin_context&) {
    auto r = ok();
    generated_event g;
    g.aggregate_id = "ok-" + e.aggregate_id;
    g.event.type = "ok.done";
    g.event.aggregate_type = "ok";
    r.generated_events.push_back(g);
    return r;
  });
  auto e = append("form.created");
  auto results = chain_->process_event(e);
  ASSERT_TRUE(results) << results.error().message;
  EXPECT_EQ(of_type("ok.done").size(), 1u);
  EXPECT_TRUE(of_type("x.happened").empty());
  auto d = only_dead_letter();
  EXPECT_EQ(d.consumer, "plugin:clash");
  EXPECT_EQ(d.error.type, "append_refused");
  EXPECT_EQ(of_type("plugin.failed").size(), 1u);
  EXPECT_EQ(of_type("plugin.executed").size(), 1u);
}

TEST_P(PluginChain, RetriesFollowTheScheduleExactlyThenResolve) {
  std::atomic<int> calls{0};
  add("flaky", 1, [&](const event&, const plugin_context& ctx) {
    const int n = ++calls;
    EXPECT_EQ(ctx.attempt, n);
    if (n < 3) return failed_result("", "http_503", "try later");
    return ok();
  });
  auto e = append("form.created");
  ASSERT_TRUE(chain_->process_event(e));
  auto d = only_dead_letter();
  EXPECT_EQ(*d.next_retry_at, clock_.now() + 1000ms);
  EXPECT_EQ(retries_->run_due(), 0u);  // not due yet
  clock_.advance(999ms);
  EXPECT_EQ(retries_->run_due(), 0u);
  clock_.advance(1ms);
  EXPECT_EQ(retries_->run_due(), 1u);
  d = only_dead_letter();
  EXPECT_EQ(d.attempts, 2);
  EXPECT_EQ(d.status, "pending_retry");
  EXPECT_EQ(*d.next_retry_at, clock_.now() + 1000ms);
  clock_.advance(1000ms);
  EXPECT_EQ(retries_->run_due(), 1u);
  d = only_dead_letter();
  EXPECT_EQ(d.status, "resolved");
  EXPECT_EQ(d.attempts, 3);
  ASSERT_EQ(d.history.size(), 3u);
  EXPECT_FALSE(d.history[1].success);
  EXPECT_TRUE(d.history[2].success);
  EXPECT_EQ(of_type("plugin.executed").size(), 1u);
  EXPECT_EQ(of_type("plugin.failed").size(), 2u);
  clock_.advance(1h);
  EXPECT_EQ(retries_->run_due(), 0u);
}

TEST_P(PluginChain, ExhaustedWorkIsPermanentAndOnlyAnOperatorRetriesIt) {
  std::atomic<bool> healthy{false};
  add("down", 1, [&](const event&, const plugin_context&) {
    return healthy.load() ? ok() : failed_result("", "connection_error", "refused");
  });
  auto e = append("form.created");
  ASSERT_TRUE(chain_->process_event(e));
  for (int i = 0; i < 2; ++i) {
    clock_.advance(1000ms);
    EXPECT_EQ(retries_->run_due(), 1u);
  }
  auto d = only_dead_letter();
  EXPECT_EQ(d.status, "permanent_failure");
  EXPECT_EQ(d.attempts, 3);
  ASSERT_TRUE(d.permanent_reason);
  EXPECT_NE(d.permanent_reason->find("maxAttempts 3"), std::string::npos);
  clock_.advance(24h);
  EXPECT_EQ(retries_->run_due(), 0u);  // never again on its own
  // An operator's retry that fails leaves it permanent; one that succeeds resolves it.
  auto r1 = retries_->retry(d.id);
  ASSERT_TRUE(r1) << r1.error().message;
  EXPECT_FALSE(r1->success);
  EXPECT_EQ(r1->status, "permanent_failure");
  healthy = true;
  auto r2 = retries_->retry(d.id);
  ASSERT_TRUE(r2);
  EXPECT_TRUE(r2->success);
  EXPECT_EQ(r2->status, "resolved");
  EXPECT_EQ(r2->attempts, 5);
  EXPECT_TRUE(retries_->get(d.id)->history.back().manual);
  EXPECT_EQ(retries_->retry(d.id).error().code, errc::conflict);  // resolved
  EXPECT_EQ(retries_->retry(new_uuid_v4()).error().code, errc::not_found);
}

TEST_P(PluginChain, MarkPermanentStopsTheScheduleAndBatchRetryReportsEach) {
  add("down", 1, [](const event&, const plugin_context&) { return failed_result("", "x", "no"); });
  auto a = append("form.created", "form-a");
  auto b = append("form.created", "form-b");
  ASSERT_TRUE(chain_->process_event(a));
  ASSERT_TRUE(chain_->process_event(b));
  auto page = retries_->list({}, 100, std::nullopt);
  ASSERT_EQ(page->entries.size(), 2u);
  auto marked = retries_->mark_permanent(page->entries[0].id, "customer deleted");
  ASSERT_TRUE(marked);
  EXPECT_EQ(marked->status, "permanent_failure");
  EXPECT_EQ(marked->permanent_reason, "customer deleted");
  clock_.advance(5s);
  EXPECT_EQ(retries_->run_due(), 1u);  // only the other one
  auto results = retries_->retry_batch({page->entries[0].id, page->entries[1].id, "nope"});
  ASSERT_EQ(results.size(), 3u);
  EXPECT_TRUE(results[0]);
  EXPECT_TRUE(results[1]);
  EXPECT_FALSE(results[2]);
}

TEST_P(PluginChain, AsyncPluginsRunBesideTheChain) {
  plugin_options o;
  o.async = true;
  std::atomic<bool> async_ran{false};
  add("async", 100,
      [&](const event&, const plugin_context& ctx) {
        EXPECT_TRUE(ctx.previous_results.empty());
        std::this_thread::sleep_for(50ms);
        async_ran = true;
        return ok();
      },
      {"form.*"}, o);
  add("sync", 1, [&](const event&, const plugin_context& ctx) {
    EXPECT_TRUE(ctx.previous_results.empty());  // the async one is not waited for
    EXPECT_FALSE(async_ran.load());
    return ok();
  });
  auto results = chain_->process_event(append("form.created"));
  ASSERT_TRUE(results);
  ASSERT_EQ(results->size(), 2u);
  EXPECT_EQ((*results)[0].plugin_id, "sync");
  EXPECT_EQ((*results)[1].plugin_id, "async");
  EXPECT_TRUE((*results)[1].async);
  EXPECT_TRUE(async_ran.load());
}

TEST_P(PluginChain, RegistrationRefusesBadDefinitionsClearly) {
  auto p = std::make_shared<test_plugin>("bad id!", 0, [](const event&, const plugin_context&) { return ok(); });
  auto r = chain_->register_plugin(p, {"form.*"}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "id");
  auto q = std::make_shared<test_plugin>("fine", 0, [](const event&, const plugin_context&) { return ok(); });
  r = chain_->register_plugin(q, {"form.**.x*"}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "eventTypes[0]");
  r = chain_->register_plugin(q, {}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "eventTypes");
  auto neg = plugin_options_from_json(json::parse(R"({"timeout": -5})"), "options");
  ASSERT_FALSE(neg);
  EXPECT_EQ(neg.error().field, "options.timeout");
  ASSERT_TRUE(chain_->register_plugin(q, {"form.*"}, {}));
  r = chain_->register_plugin(q, {"form.*"}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::conflict);
  EXPECT_TRUE(of_type("plugin.registered").size() == 1u);
}

TEST_P(PluginChain, DisabledPluginsDoNotRunAndLifecycleIsLogged) {
  std::atomic<int> runs{0};
  auto p = add("p", 1, [&](const event&, const plugin_context&) {
    ++runs;
    return ok();
  });
  ASSERT_TRUE(chain_->disable("p"));
  EXPECT_EQ(p->disabled.load(), 1);
  ASSERT_TRUE(chain_->process_event(append("form.created")));
  EXPECT_EQ(runs.load(), 0);
  ASSERT_TRUE(chain_->enable("p"));
  EXPECT_EQ(p->enabled.load(), 2);
  ASSERT_TRUE(chain_->process_event(append("form.created")));
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(of_type("plugin.disabled").size(), 1u);
  EXPECT_EQ(of_type("plugin.enabled").size(), 1u);
  ASSERT_TRUE(chain_->unregister_plugin("p"));
  EXPECT_EQ(chain_->get("p").error().code, errc::not_found);
  EXPECT_EQ(of_type("plugin.unregistered").size(), 1u);
}

TEST_P(PluginChain, TheDurableConsumerProcessesEveryEventAcrossRestarts) {
  std::mutex m;
  std::map<std::string, int> seen;
  add("count", 1,
      [&](const event& e, const plugin_context&) {
        std::lock_guard lock(m);
        seen[e.id] += 1;
        return ok();
      },
      {"job.*"});
  auto count = [&] {
    std::lock_guard lock(m);
    return seen.size();
  };
  auto wait_for = [&](std::size_t n) {
    for (int i = 0; i < 400 && count() < n; ++i) std::this_thread::sleep_for(25ms);
  };
  auto add_jobs = [&](int n, int from) {
    std::vector<append_request> group;
    for (int i = from; i < from + n; ++i) {
      new_event ne;
      ne.type = "job.done";
      ne.aggregate_type = "job";
      ne.metadata = md();
      group.push_back({"job-" + std::to_string(i % 17), std::nullopt, {std::move(ne)}});
    }
    ASSERT_TRUE(store_->append_group(std::move(group)));
  };
  log_tailer tailer(*store_, log_tailer::options{.poll_interval = 50ms});
  plugin_processor::options po;
  po.start = subscription_start::beginning();
  add_jobs(300, 0);
  {
    plugin_processor proc(*store_, tailer, default_clock(), *chain_, "node-a", po);
    wait_for(300);
    add_jobs(200, 300);
    wait_for(500);
  }
  add_jobs(100, 500);  // while no processor runs
  {
    plugin_processor proc(*store_, tailer, default_clock(), *chain_, "node-a", po);
    wait_for(600);
  }
  std::lock_guard lock(m);
  ASSERT_EQ(seen.size(), 600u);
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(of_type("plugin.executed").size(), 600u);
}

INSTANTIATE_TEST_SUITE_P(Stores, PluginChain, ::testing::Values("memory", "sqlite", "postgres"));

}  // namespace pliers
