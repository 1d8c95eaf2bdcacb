// Replay, compaction and named projections through the real server (issue 7, docs/replay.md):
// /v1/replay, /v1/compaction, /v1/projections and the replay/compact/projections CLI; bad
// input refused with 400 naming the field (Lua that does not compile: with its line); a
// projection's checkpoint surviving a restart.
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <fstream>
#include <thread>

#include "support/fixtures.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

namespace {

constexpr const char* sum_reducer = R"lua(
initial_state = {total = 0, count = 0}
function reduce(s, e)
  s.total = s.total + (e.payload.amount or 0)
  s.count = s.count + 1
  return s
end
)lua";

json::value body_of(const result<http_response>& r, unsigned status = 200) {
  EXPECT_TRUE(r) << r.error().message;
  if (!r) return {};
  EXPECT_EQ(r->status, status) << r->body;
  return r->body.empty() ? json::value() : json::parse(r->body);
}

std::string post_json(const json::object& o) { return json::serialize(o); }

// Appends `n` order events to `aggregate`: amounts 1..n, types cycling placed/updated/noted.
void append_orders(http_client& c, const std::string& aggregate, int n, int first_amount = 1) {
  std::vector<std::string> events;
  const char* types[] = {"order.placed", "order.updated", "order.noted"};
  for (int i = 0; i < n; ++i)
    events.push_back(event_json(types[i % 3], "order", {{"amount", first_amount + i}, {"step", i}}));
  auto r = c.post("/v1/aggregates/" + aggregate + "/events", append_body(events));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
}

void expect_problem(const result<http_response>& r, unsigned status, const std::string& field,
                    const std::string& detail_part = {}) {
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, status) << r->body;
  auto p = json::parse(r->body);
  if (!field.empty()) {
    ASSERT_TRUE(p.as_object().contains("field")) << r->body;
    EXPECT_EQ(p.at("field").as_string(), field) << r->body;
  }
  if (!detail_part.empty()) {
    EXPECT_NE(r->body.find(detail_part), std::string::npos) << r->body;
  }
}

// Polls a projection until pred holds (10 s at most).
json::value wait_projection(http_client& c, const std::string& path, const std::function<bool(const json::value&)>& pred) {
  json::value last;
  for (int i = 0; i < 200; ++i) {
    auto r = c.get(path);
    if (r && r->status == 200) {
      last = json::parse(r->body);
      if (pred(last)) return last;
    }
    std::this_thread::sleep_for(50ms);
  }
  ADD_FAILURE() << "timed out on " << path << ": " << json::serialize(last);
  return last;
}

}  // namespace

TEST(Replay, EventsStateFromSnapshotAndTimeRange) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string());
  server.start();
  auto c = server.client();
  append_orders(*c, "order-1", 10);
  append_orders(*c, "order-2", 4, 100);

  auto ev = body_of(c->post("/v1/replay/events", post_json({{"aggregateId", "order-1"}, {"fromSequence", 3}, {"toSequence", 5}})));
  ASSERT_EQ(ev.at("events").as_array().size(), 3u);
  EXPECT_EQ(ev.at("events").as_array()[0].at("sequenceNumber").as_int64(), 3);
  EXPECT_EQ(ev.at("events").as_array()[2].at("payload").at("amount").as_int64(), 5);

  // Without a snapshot: every event folded. 1 + ... + 10 = 55.
  auto full = body_of(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}})));
  EXPECT_EQ(full.at("state").at("total").as_int64(), 55);
  EXPECT_EQ(full.at("eventsApplied").as_int64(), 10);
  EXPECT_TRUE(full.at("snapshotSequence").is_null());
  EXPECT_EQ(full.at("version").as_int64(), 10);

  // A snapshot at 6 holding a state that differs from the true one (total 1000 instead of
  // 21) proves the replay started there: 1000 + 7 + 8 + 9 + 10.
  auto snap = c->request("PUT", "/v1/aggregates/order-1/snapshot",
                         post_json({{"sequenceNumber", 6}, {"data", {{"total", 1000}, {"count", 6}}}}));
  ASSERT_TRUE(snap);
  ASSERT_EQ(snap->status, 201) << snap->body;
  auto from_snap = body_of(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}})));
  EXPECT_EQ(from_snap.at("state").at("total").as_int64(), 1034);
  EXPECT_EQ(from_snap.at("snapshotSequence").as_int64(), 6);
  EXPECT_EQ(from_snap.at("eventsApplied").as_int64(), 4);
  auto no_snap = body_of(c->post("/v1/replay/state",
                                 post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}, {"useSnapshot", false}})));
  EXPECT_EQ(no_snap.at("state").at("total").as_int64(), 55);

  // Time range + filter: the order.placed events of both aggregates (4 in order-1, 2 in order-2).
  auto range = body_of(c->post("/v1/replay/time-range", post_json({{"from", "2000-01-01T00:00:00Z"},
                                                                   {"to", "2100-01-01T00:00:00Z"},
                                                                   {"filter", {{"eventTypes", json::array{"order.placed"}}}}})));
  EXPECT_EQ(range.at("events").as_array().size(), 6u);
  auto none = body_of(c->post("/v1/replay/time-range", post_json({{"from", "2000-01-01T00:00:00Z"}, {"to", "2000-01-02T00:00:00Z"}})));
  EXPECT_EQ(none.at("events").as_array().size(), 0u);

  // createProjection over the log with a filter: totals of order-2 only.
  auto proj = body_of(c->post("/v1/replay/projection",
                              post_json({{"projector", sum_reducer}, {"filter", {{"aggregateIds", json::array{"order-2"}}}}})));
  EXPECT_EQ(proj.at("state").at("total").as_int64(), 100 + 101 + 102 + 103);
  EXPECT_EQ(proj.at("eventsApplied").as_int64(), 4);
}

TEST(Replay, BadInputIsRefusedNamingTheField) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  append_orders(*c, "order-1", 3);
  expect_problem(c->post("/v1/replay/events", "{}"), 400, "aggregateId");
  expect_problem(c->post("/v1/replay/events", post_json({{"aggregateId", "order-1"}, {"fromSequence", "x"}})), 400, "fromSequence");
  expect_problem(c->post("/v1/replay/events", post_json({{"aggregateId", "order-1"}, {"limit", 100001}})), 400, "limit");
  expect_problem(c->post("/v1/replay/time-range", post_json({{"from", "yesterday"}, {"to", "2100-01-01T00:00:00Z"}})), 400, "from");
  expect_problem(c->post("/v1/replay/time-range",
                         post_json({{"from", "2001-01-01T00:00:00Z"}, {"to", "2000-01-01T00:00:00Z"}})), 400, "to");
  expect_problem(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}})), 400, "reducer");
  // Lua that does not compile: refused with its line number.
  expect_problem(c->post("/v1/replay/state",
                         post_json({{"aggregateId", "order-1"}, {"reducer", "function reduce(s, e)\n  return s\n  end end\n"}})),
                 400, "reducer", ":3:");
  expect_problem(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", "x = 1"}})), 400, "reducer");
  // A reducer failing at run time: 400 naming the reducer, with the script's message.
  expect_problem(c->post("/v1/replay/state",
                         post_json({{"aggregateId", "order-1"}, {"reducer", "function reduce(s, e) error('boom') end"}})),
                 400, "reducer", "boom");
  expect_problem(c->post("/v1/replay/projection", post_json({{"projector", "handlers = {"}})), 400, "projector", ":1:");
  expect_problem(c->post("/v1/compaction/aggregates/order-1", "{}"), 400, "strategy");
  expect_problem(c->post("/v1/compaction/aggregates/order-1", post_json({{"strategy", {{"type", "shrink"}}}})), 400, "strategy.type");
  expect_problem(c->post("/v1/compaction/aggregates/order-1", post_json({{"strategy", {{"type", "snapshot"}}}})), 400, "reducer");
  expect_problem(c->post("/v1/compaction/aggregates/order-1",
                         post_json({{"strategy", {{"type", "eliminate_intermediates"}, {"config", json::object{}}}}})),
                 400, "strategy.config.eliminateTypes");
  expect_problem(c->post("/v1/compaction/time-window",
                         post_json({{"strategy", {{"type", "eliminate_intermediates"}, {"config", {{"eliminateTypes", json::array{"order.noted"}}}}}}})),
                 400, "from");
  expect_problem(c->get("/v1/compaction/archive/order-1?bogus=1"), 400, "bogus");
  expect_problem(c->post("/v1/projections", post_json({{"name", "p"}, {"source", "handlers = {\n ['x'] = function(s, e)\n"}})), 400,
                 "source", ":3:");
  expect_problem(c->post("/v1/projections", post_json({{"name", "bad name"}, {"source", sum_reducer}})), 400, "name");
  expect_problem(c->post("/v1/projections", post_json({{"name", "p"}, {"source", sum_reducer}, {"filter", {{"eventTypes", 3}}}})),
                 400, "filter.eventTypes");
  // Nothing was registered or compacted by the refused requests.
  EXPECT_EQ(body_of(c->get("/v1/projections")).at("projections").as_array().size(), 0u);
  EXPECT_FALSE(body_of(c->get("/v1/aggregates/order-1")).as_object().contains("compactedRanges"));
}

TEST(Compaction, CompactListRestoreOverHttp) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string());
  server.start();
  auto c = server.client();
  append_orders(*c, "order-1", 9);  // 3 of each type
  auto before = body_of(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}})));

  auto r = body_of(c->post("/v1/compaction/aggregates/order-1",
                           post_json({{"strategy", {{"type", "eliminate_intermediates"},
                                                    {"config", {{"eliminateTypes", json::array{"order.noted"}}}}}},
                                      {"reducer", sum_reducer}})));
  EXPECT_EQ(r.at("originalEventCount").as_int64(), 9);
  EXPECT_EQ(r.at("eventsEliminated").as_int64(), 3);
  EXPECT_EQ(r.at("compactedEventCount").as_int64(), 6);
  EXPECT_EQ(r.at("snapshotsCreated").as_int64(), 1);
  EXPECT_GT(r.at("spaceSaved").as_int64(), 0);
  ASSERT_EQ(r.at("compactionIds").as_array().size(), 1u);
  const std::string compaction_id(r.at("compactionIds").as_array()[0].as_string());

  auto meta = body_of(c->get("/v1/aggregates/order-1"));
  EXPECT_EQ(meta.at("version").as_int64(), 9);
  EXPECT_EQ(meta.at("eventCount").as_int64(), 6);
  EXPECT_FALSE(meta.at("compactedRanges").as_array().empty());
  // The state rebuilt from snapshot + remaining events equals the original one.
  auto after = body_of(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}})));
  EXPECT_EQ(after.at("state"), before.at("state"));
  EXPECT_EQ(body_of(c->post("/v1/replay/events", post_json({{"aggregateId", "order-1"}}))).at("events").as_array().size(), 6u);

  auto archived = body_of(c->get("/v1/compaction/archive/order-1?compactionId=" + compaction_id));
  ASSERT_EQ(archived.at("events").as_array().size(), 3u);
  for (const auto& e : archived.at("events").as_array()) {
    EXPECT_EQ(e.at("type").as_string(), "order.noted");
    EXPECT_EQ(e.at("compactionId").as_string(), compaction_id);
  }
  // Paging the archive: 2 then 1.
  auto page = body_of(c->get("/v1/compaction/archive/order-1?limit=2"));
  ASSERT_EQ(page.at("events").as_array().size(), 2u);
  EXPECT_TRUE(page.at("hasMore").as_bool());
  auto rest = body_of(c->get("/v1/compaction/archive/order-1?limit=2&after=" + std::to_string(page.at("after").as_int64())));
  EXPECT_EQ(rest.at("events").as_array().size(), 1u);
  EXPECT_FALSE(rest.at("hasMore").as_bool());

  // The audit trail is an event.
  auto audit = body_of(c->get("/v1/events?type=compaction.completed"));
  ASSERT_EQ(audit.at("events").as_array().size(), 1u);

  auto restored = body_of(c->post("/v1/compaction/archive/order-1/restore", post_json({{"compactionId", compaction_id}})));
  EXPECT_EQ(restored.at("restored").as_int64(), 3);
  EXPECT_EQ(body_of(c->post("/v1/replay/events", post_json({{"aggregateId", "order-1"}}))).at("events").as_array().size(), 9u);
  EXPECT_EQ(body_of(c->get("/v1/compaction/archive/order-1")).at("events").as_array().size(), 0u);

  // A time window: only order.noted events of every aggregate inside it.
  append_orders(*c, "order-2", 3);
  auto w = body_of(c->post("/v1/compaction/time-window",
                           post_json({{"from", "2000-01-01T00:00:00Z"},
                                      {"to", "2100-01-01T00:00:00Z"},
                                      {"strategy", {{"type", "eliminate_intermediates"},
                                                    {"config", {{"eliminateTypes", json::array{"order.noted"}}}}}}})));
  EXPECT_EQ(w.at("eventsEliminated").as_int64(), 4);  // 3 in order-1, 1 in order-2
  EXPECT_GE(w.at("aggregatesCompacted").as_int64(), 2);
}

TEST(Compaction, SchedulesAndBatchesOverHttp) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  append_orders(*c, "order-1", 6);
  append_orders(*c, "order-2", 3);
  const json::object strategy{{"type", "eliminate_intermediates"}, {"config", {{"eliminateTypes", json::array{"order.noted"}}}}};
  expect_problem(c->post("/v1/compaction/schedules",
                         post_json({{"id", "nightly"}, {"criteria", {{"aggregateTypes", json::array{"order"}}}}, {"strategy", strategy},
                                    {"intervalMs", 10}})),
                 400, "intervalMs");
  body_of(c->post("/v1/compaction/schedules",
                  post_json({{"id", "nightly"}, {"criteria", {{"aggregateTypes", json::array{"order"}}}}, {"strategy", strategy},
                             {"intervalMs", 3600000}})),
          201);
  auto list = body_of(c->get("/v1/compaction/schedules"));
  ASSERT_EQ(list.at("schedules").as_array().size(), 1u);
  EXPECT_EQ(list.at("schedules").as_array()[0].at("id").as_string(), "nightly");
  EXPECT_TRUE(list.at("schedules").as_array()[0].at("lastResult").is_null());  // an hour away: not run
  auto del = c->request("DELETE", "/v1/compaction/schedules/nightly");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 204u);
  EXPECT_EQ(body_of(c->get("/v1/compaction/schedules")).at("schedules").as_array().size(), 0u);

  // batchReplay: both aggregates, one unknown (an error, not a failure of the batch).
  auto rep = body_of(c->post("/v1/replay/batch", post_json({{"aggregateIds", json::array{"order-1", "order-2"}}, {"reducer", sum_reducer}})));
  EXPECT_EQ(rep.at("totalEvents").as_int64(), 9);
  EXPECT_EQ(rep.at("successfulEvents").as_int64(), 9);
  ASSERT_EQ(rep.at("states").as_array().size(), 2u);
  EXPECT_EQ(rep.at("states").as_array()[1].at("state").at("total").as_int64(), 6);
  expect_problem(c->post("/v1/replay/batch", post_json({{"aggregateIds", json::array{}}, {"reducer", sum_reducer}})), 400, "aggregateIds");

  // batchCompact by criteria: order.noted of both (2 in order-1, 1 in order-2).
  auto comp = body_of(c->post("/v1/compaction/batch",
                              post_json({{"criteria", {{"aggregateTypes", json::array{"order"}}}}, {"strategy", strategy}, {"batchSize", 1}})));
  EXPECT_EQ(comp.at("compaction").at("eventsEliminated").as_int64(), 3);
  EXPECT_EQ(comp.at("compaction").at("aggregatesCompacted").as_int64(), 2);
  EXPECT_EQ(comp.at("successfulEvents").as_int64(), 9);
  EXPECT_EQ(comp.at("failedEvents").as_int64(), 0);
  expect_problem(c->post("/v1/compaction/batch", post_json({{"criteria", json::object{}}, {"strategy", strategy}})), 400, "criteria");
}

TEST(SnapshotPolicies, EveryNEventsPerTypeOverHttp) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string());
  server.start();
  auto c = server.client();
  expect_problem(c->post("/v1/snapshot-policies", post_json({{"aggregateType", "order"}, {"everyEvents", 0}, {"reducer", sum_reducer}})),
                 400, "everyEvents");
  expect_problem(c->post("/v1/snapshot-policies", post_json({{"aggregateType", "order"}, {"everyEvents", 5}, {"reducer", "reduce = ("}})),
                 400, "reducer", ":1:");
  body_of(c->post("/v1/snapshot-policies",
                  post_json({{"aggregateType", "order"}, {"everyEvents", 5}, {"keepLast", 2}, {"reducer", sum_reducer}})),
          201);
  append_orders(*c, "order-1", 12);  // snapshots at 5 and 10
  json::value meta;
  for (int i = 0; i < 200; ++i) {
    meta = body_of(c->get("/v1/aggregates/order-1"));
    if (meta.as_object().contains("snapshotVersion") && meta.at("snapshotVersion").as_int64() == 10) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(meta.at("snapshotVersion").as_int64(), 10) << json::serialize(meta);
  auto snap = body_of(c->get("/v1/aggregates/order-1/snapshot"));
  EXPECT_EQ(snap.at("data").at("total").as_int64(), 55);  // 1 + ... + 10
  auto st = body_of(c->post("/v1/replay/state", post_json({{"aggregateId", "order-1"}, {"reducer", sum_reducer}})));
  EXPECT_EQ(st.at("snapshotSequence").as_int64(), 10);
  EXPECT_EQ(st.at("state").at("total").as_int64(), 78);
  auto list = body_of(c->get("/v1/snapshot-policies"));
  EXPECT_EQ(list.at("policies").as_array().size(), 1u);
  EXPECT_TRUE(list.at("owner").as_bool());
  auto del = c->request("DELETE", "/v1/snapshot-policies/order");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 204u);
  EXPECT_EQ(body_of(c->get("/v1/snapshot-policies")).at("policies").as_array().size(), 0u);
}

TEST(Projections, RunContinuouslyCheckpointRebuildAndSurviveARestart) {
  temp_dir dir;
  const std::string store = "sqlite:" + (dir.path() / "e.db").string();
  auto server = std::make_unique<server_process>(store);
  server->start();
  auto c = server->client();
  append_orders(*c, "order-1", 6);
  auto reg = body_of(c->post("/v1/projections", post_json({{"name", "order-totals"},
                                                           {"source", sum_reducer},
                                                           {"filter", {{"eventTypes", json::array{"order.*"}}}}})),
                     201);
  EXPECT_EQ(reg.at("name").as_string(), "order-totals");
  expect_problem(c->post("/v1/projections", post_json({{"name", "order-totals"}, {"source", sum_reducer}})), 409, "");
  append_orders(*c, "order-2", 3, 100);
  ASSERT_EQ(c->post("/v1/aggregates/form-1/events", append_body({event_json("form.created", "form", {{"amount", 5000}})}))->status, 201u);

  auto st = wait_projection(*c, "/v1/projections/order-totals/state",
                            [](const json::value& v) { return v.at("state").is_object() && v.at("state").as_object().contains("count") &&
                                                              v.at("state").at("count").as_int64() == 9; });
  EXPECT_EQ(st.at("state").at("total").as_int64(), 21 + 303);  // form.created (5000) is filtered out
  auto info = wait_projection(*c, "/v1/projections/order-totals", [](const json::value& v) { return v.at("lag").as_int64() == 0; });
  EXPECT_EQ(info.at("position").as_int64(), info.at("head").as_int64());
  EXPECT_EQ(info.at("eventsProcessed").as_int64(), 9);
  EXPECT_EQ(info.at("status").as_string(), "running");

  // A second projection whose handler fails on one event stops there, reported as failed.
  body_of(c->post("/v1/projections", post_json({{"name", "fragile"},
                                               {"source", "function reduce(s, e) if e.payload.amount == 3 then error('bad amount') end return s end"}})),
          201);
  auto failed = wait_projection(*c, "/v1/projections/fragile", [](const json::value& v) { return v.at("status").as_string() == "failed"; });
  EXPECT_NE(json::serialize(failed.at("error")).find("bad amount"), std::string::npos);
  EXPECT_EQ(body_of(c->get("/v1/projections")).at("projections").as_array().size(), 2u);

  // Restart: the state resumes from the checkpoint, and new events are folded on top.
  server->stop();
  server = std::make_unique<server_process>(store);
  server->start();
  c = server->client();
  auto resumed = wait_projection(*c, "/v1/projections/order-totals", [](const json::value& v) { return v.at("lag").as_int64() == 0; });
  EXPECT_GT(resumed.at("checkpointPosition").as_int64(), 0);
  append_orders(*c, "order-3", 1, 1000);
  st = wait_projection(*c, "/v1/projections/order-totals/state",
                       [](const json::value& v) { return v.at("state").is_object() && v.at("state").at("count").as_int64() == 10; });
  EXPECT_EQ(st.at("state").at("total").as_int64(), 21 + 303 + 1000);

  // Rebuild from scratch: same state, generation moves on.
  auto rebuilt = body_of(c->post("/v1/projections/order-totals/rebuild", ""), 202);
  EXPECT_GT(rebuilt.at("generation").as_int64(), reg.at("generation").as_int64());
  st = wait_projection(*c, "/v1/projections/order-totals/state", [](const json::value& v) {
    return v.at("state").is_object() && v.at("state").as_object().contains("count") && v.at("state").at("count").as_int64() == 10 && v.at("lag").as_int64() == 0;
  });
  EXPECT_EQ(st.at("state").at("total").as_int64(), 21 + 303 + 1000);

  auto del = c->request("DELETE", "/v1/projections/order-totals");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 204u);
  EXPECT_EQ(c->get("/v1/projections/order-totals")->status, 404u);
}

TEST(Cli, ReplayCompactProjections) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  append_orders(*c, "order-1", 6);
  const std::string bin = PLIERS_EVENTS_BINARY;
  temp_dir dir;
  const auto reducer = (dir.path() / "sum.lua").string();
  {
    std::ofstream(reducer) << sum_reducer;
  }
  int status = 0;
  auto out = run_command({bin, "replay", "state", "order-1", "--reducer", reducer, "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("state").at("total").as_int64(), 21);
  out = run_command({bin, "replay", "events", "order-1", "--from", "2", "--to", "3", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2);
  out = run_command({bin, "compact", "aggregate", "order-1", "--strategy",
                     R"({"type":"eliminate_intermediates","config":{"eliminateTypes":["order.updated"]}})", "--url", server.url()},
                    "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("eventsEliminated").as_int64(), 2);
  out = run_command({bin, "compact", "archive", "order-1", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2);
  out = run_command({bin, "compact", "restore", "order-1", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("restored").as_int64(), 2);
  // A reducer that does not compile: exit 1, nothing on stdout.
  const auto broken = (dir.path() / "broken.lua").string();
  {
    std::ofstream(broken) << "function reduce(s, e)\n";
  }
  out = run_command({bin, "replay", "state", "order-1", "--reducer", broken, "--url", server.url()}, "", status);
  EXPECT_NE(status, 0);
  EXPECT_TRUE(out.empty()) << out;
  const auto reg = (dir.path() / "p.json").string();
  {
    std::ofstream(reg) << json::serialize(json::object{{"name", "totals"}, {"source", sum_reducer}, {"filter", {{"aggregateTypes", json::array{"order"}}}}});
  }
  out = run_command({bin, "projections", "register", reg, "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  auto st = wait_projection(*c, "/v1/projections/totals/state",
                            [](const json::value& v) { return v.at("state").is_object() && v.at("state").as_object().contains("count") && v.at("lag").as_int64() == 0; });
  EXPECT_EQ(st.at("state").at("count").as_int64(), 6);
  out = run_command({bin, "projections", "state", "totals", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("state").at("total").as_int64(), 21);
  out = run_command({bin, "projections", "list", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("projections").as_array().size(), 1u);
}

}  // namespace pliers
