// Plugins and the dead-letter queue through the real server: Lua, remote (a Python
// endpoint on loopback) and native (a shared library) plugins; bad definitions refused;
// timeouts, memory hogs and failures dead-lettered and retried; registrations and dead
// letters surviving restarts, including kill -9 in the middle of processing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <fstream>
#include <set>
#include <thread>

#include "support/fixtures.hpp"
#include "support/peers.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

namespace {

const char* audit_lua = R"(
function process(event, context)
  pliers.emit({aggregateId = "audit-" .. event.aggregateId, type = "audit.recorded", aggregateType = "audit",
               payload = {of = event.id, type = event.type}})
  return {success = true, metadata = {seen = event.type, previous = #context.previousResults}}
end
)";

json::value body_of(const result<http_response>& r) {
  EXPECT_TRUE(r) << r.error().message;
  return r && !r->body.empty() ? json::parse(r->body) : json::value();
}

std::string lua_registration(const std::string& id, const std::string& source, const std::string& types = R"(["form.*"])",
                             const std::string& options = "{}") {
  return R"({"id":")" + id + R"(","name":")" + id + R"(","kind":"lua","eventTypes":)" + types + R"(,"options":)" + options +
         R"(,"source":)" + json::serialize(json::value(source)) + "}";
}

// Polls GET target until pred(body) holds (10 s at most).
json::value wait_for(http_client& c, const std::string& target, const std::function<bool(const json::value&)>& pred) {
  json::value last;
  for (int i = 0; i < 200; ++i) {
    auto r = c.get(target);
    if (r && r->status == 200) {
      last = json::parse(r->body);
      if (pred(last)) return last;
    }
    std::this_thread::sleep_for(50ms);
  }
  ADD_FAILURE() << "timed out waiting on " << target << ": " << json::serialize(last).substr(0, 400);
  return last;
}

void expect_created(const result<http_response>& r) {
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 201) << r->body;
}

std::size_t count_of(const json::value& page, const char* member = "events") {
  return page.at(member).as_array().size();
}

// A remote plugin endpoint (tests/support/plugin_receiver.py) on loopback.
class receiver {
 public:
  explicit receiver(const std::filesystem::path& log) : peer_({PLIERS_PLUGIN_RECEIVER, log.string()}) {}
  std::string url() const { return peer_.base_url() + "/plugin"; }

 private:
  python_peer peer_;
};

}  // namespace

TEST(Plugins, LuaPluginsRunOnMatchingEventsAndEmitEvents) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  auto reg = c->post("/v1/plugins", lua_registration("audit", audit_lua));
  ASSERT_TRUE(reg);
  ASSERT_EQ(reg->status, 201) << reg->body;
  EXPECT_EQ(json::parse(reg->body).at("kind").as_string(), "lua");
  auto a = c->post("/v1/aggregates/form-1/events", append_body({event_json("form.created"), event_json("form.updated")}));
  ASSERT_EQ(a->status, 201) << a->body;
  expect_created(c->post("/v1/aggregates/s-1/events", append_body({event_json("submission.created", "submission")})));
  auto audit = wait_for(*c, "/v1/events?type=audit.recorded", [](const json::value& p) { return count_of(p) == 2; });
  ASSERT_EQ(count_of(audit), 2u);
  const auto& first = audit.at("events").as_array()[0];
  auto trigger = json::parse(a->body).at("events").as_array()[0].at("id").as_string();
  EXPECT_EQ(first.at("causationId").as_string(), trigger);
  EXPECT_EQ(first.at("aggregateId").as_string(), "audit-form-1");
  EXPECT_EQ(first.at("metadata").at("pluginHops").as_int64(), 1);
  auto executed = wait_for(*c, "/v1/events?type=plugin.executed", [](const json::value& p) { return count_of(p) == 2; });
  EXPECT_EQ(executed.at("events").as_array()[0].at("payload").at("result").at("seen").as_string(), "form.created");
  // The listing shows the plugin with its counters.
  auto list = body_of(c->get("/v1/plugins"));
  ASSERT_EQ(list.at("plugins").as_array().size(), 1u);
  EXPECT_EQ(list.at("plugins").as_array()[0].at("executions").as_int64(), 2);
  // Dry run: which plugins would run on an example event, without storing anything.
  auto sample = json::parse(first.as_object().contains("id") ? json::serialize(first) : "{}");
  sample.as_object()["type"] = "form.deleted";
  sample.as_object()["aggregateType"] = "form";
  auto dry = c->post("/v1/plugins/dry-run", json::serialize(sample));
  ASSERT_EQ(dry->status, 200) << dry->body;
  EXPECT_EQ(json::parse(dry->body).at("results").as_array().size(), 1u);
}

TEST(Plugins, BadDefinitionsAreRefusedAtRegistrationWithTheReason) {
  server_process server("memory:");
  server.start();
  auto c = server.client();
  struct bad {
    std::string body;
    std::string field;
    std::string detail;
  };
  for (const auto& b : std::vector<bad>{
           {lua_registration("x", "function process(e, c) return {success = true end"), "definition.source", ":1:"},
           {lua_registration("x", "local y = 1"), "definition.source", "process(event, context)"},
           {lua_registration("x", audit_lua, R"(["form.**x"])"), "eventTypes[0]", ""},
           {lua_registration("x", audit_lua, R"([])"), "eventTypes", ""},
           {lua_registration("x", audit_lua, R"(["form.*"])", R"({"timeout":-5})"), "options.timeout", ""},
           {lua_registration("x", audit_lua, R"(["form.*"])", R"({"retry":{"backoffStrategy":"random"}})"),
            "options.retry.backoffStrategy", ""},
           {lua_registration("bad id", audit_lua), "id", ""},
           {R"({"id":"r","kind":"remote","eventTypes":["a"],"url":"ftp://x"})", "definition.url", ""},
           {R"({"id":"r","kind":"python","eventTypes":["a"]})", "kind", ""},
       }) {
    auto r = c->post("/v1/plugins", b.body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << b.body << " -> " << r->body;
    auto p = json::parse(r->body);
    EXPECT_EQ(p.at("field").as_string(), b.field) << r->body;
    if (!b.detail.empty()) {
      EXPECT_NE(p.at("detail").as_string().find(b.detail), std::string::npos) << r->body;
    }
  }
  EXPECT_EQ(count_of(body_of(c->get("/v1/plugins")), "plugins"), 0u);
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("dup", audit_lua))->status, 201);
  EXPECT_EQ(c->post("/v1/plugins", lua_registration("dup", audit_lua))->status, 409);
}

TEST(Plugins, RunawayPluginsAreStoppedDeadLetteredAndTheChainGoesOn) {
  server_process server("memory:", {}, {"", {{"PLIERS_RETRY_BASE_DELAY_MS", "200"}, {"PLIERS_RETRY_MAX_DELAY_MS", "200"},
                                             {"PLIERS_RETRY_JITTER", "false"}, {"PLIERS_RETRY_MAX_ATTEMPTS", "2"}}});
  server.start();
  auto c = server.client();
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("spin", "function process(e, c) while true do end end", R"(["form.*"])",
                                                    R"({"priority":30,"timeout":200})"))->status, 201);
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("hog", R"(
function process(e, c)
  local t = {}
  while true do t[#t + 1] = string.rep("x", 4096) .. #t end
end)", R"(["form.*"])", R"({"priority":20})"))->status, 201);
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("thrower", "function process(e, c) error('no way') end",
                                                    R"(["form.*"])", R"({"priority":10})"))->status, 201);
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("audit", audit_lua))->status, 201);
  ASSERT_EQ(c->post("/v1/aggregates/form-9/events", append_body({event_json("form.created")}))->status, 201);
  auto audit = wait_for(*c, "/v1/events?type=audit.recorded", [](const json::value& p) { return count_of(p) == 1; });
  ASSERT_EQ(count_of(audit), 1u);
  auto dl = wait_for(*c, "/v1/dead-letters", [](const json::value& p) { return p.at("totalCount").as_int64() == 3; });
  std::map<std::string, std::string> kinds;
  for (const auto& d : dl.at("deadLetters").as_array())
    kinds[std::string(d.at("consumer").as_string())] = std::string(d.at("error").at("type").as_string());
  EXPECT_EQ(kinds["plugin:spin"], "timeout");
  EXPECT_EQ(kinds["plugin:hog"], "memory_limit");
  EXPECT_EQ(kinds["plugin:thrower"], "script_error");
  // Retried by policy (2 attempts in all), then permanent.
  auto done = wait_for(*c, "/v1/dead-letters?status=permanent_failure",
                       [](const json::value& p) { return p.at("totalCount").as_int64() == 3; });
  for (const auto& d : done.at("deadLetters").as_array()) {
    EXPECT_EQ(d.at("attempts").as_int64(), 2);
    EXPECT_EQ(d.at("history").as_array().size(), 2u);
  }
  // The server still serves: the chain was not stuck.
  EXPECT_EQ(c->get("/health")->status, 200);
}

TEST(Plugins, RemoteAndNativePluginsShareTheChain) {
  temp_dir dir;
  receiver remote(dir.path() / "received.jsonl");
  server_process server("memory:", {}, {"", {{"PLIERS_PLUGINS_NATIVE", PLIERS_NATIVE_TEST_PLUGIN},
                                             {"PLIERS_RETRY_BASE_DELAY_MS", "100"}, {"PLIERS_RETRY_JITTER", "false"}}});
  server.start();
  auto c = server.client();
  auto native = body_of(c->get("/v1/plugins/native-echo"));
  EXPECT_EQ(native.at("kind").as_string(), "native");
  EXPECT_EQ(native.at("version").as_string(), "1.2.3");
  auto reg = c->post("/v1/plugins", R"({"id":"remote","name":"Remote","kind":"remote","eventTypes":["form.*"],
      "options":{"priority":1,"timeout":1000},"url":")" + remote.url() + R"("})");
  ASSERT_EQ(reg->status, 201) << reg->body;
  ASSERT_EQ(c->post("/v1/aggregates/form-r/events", append_body({event_json("form.created")}))->status, 201);
  auto noted = wait_for(*c, "/v1/events?type=remote.noted", [](const json::value& p) { return count_of(p) == 1; });
  ASSERT_EQ(count_of(noted), 1u);
  auto executed = wait_for(*c, "/v1/events?type=plugin.executed", [](const json::value& p) { return count_of(p) == 2; });
  std::map<std::string, json::value> by_plugin;
  for (const auto& e : executed.at("events").as_array())
    by_plugin[std::string(e.at("payload").at("pluginId").as_string())] = e.at("payload").at("result");
  EXPECT_EQ(by_plugin["native-echo"].at("nativeSaw").as_string(), "form.created");
  // The remote plugin ran after the native one (priority 50 > 1) and saw its result.
  EXPECT_EQ(by_plugin["remote"].at("previous").as_array()[0].as_string(), "native-echo");

  // Failures: 500, a timeout and garbage are dead-lettered with their kinds.
  for (const char* mode : {"fail", "slow", "garbage"})
    expect_created(c->post("/v1/aggregates/form-" + std::string(mode) + "/events",
            append_body({event_json("form.created", "form", {{"mode", mode}})})));
  expect_created(c->post("/v1/aggregates/form-n/events", append_body({event_json("form.created", "form", {{"fail", true}})})));
  auto dl = wait_for(*c, "/v1/dead-letters", [](const json::value& p) { return p.at("totalCount").as_int64() >= 4; });
  std::map<std::string, std::string> types;
  for (const auto& d : dl.at("deadLetters").as_array())
    types[std::string(d.at("originalEvent").at("aggregateId").as_string())] = std::string(d.at("error").at("type").as_string());
  EXPECT_EQ(types["form-fail"], "http_500");
  EXPECT_EQ(types["form-slow"], "timeout");
  EXPECT_EQ(types["form-garbage"], "invalid_result");
  EXPECT_EQ(types["form-n"], "native_refused");
}

TEST(Plugins, DeadLetterOperationsOverHttpAndTheCli) {
  server_process server("memory:", {}, {"", {{"PLIERS_RETRY_MAX_ATTEMPTS", "1"}}});
  server.start();
  auto c = server.client();
  // Fails its first two attempts of every event; an operator's retry runs it again.
  ASSERT_EQ(c->post("/v1/plugins", lua_registration("gate", R"(
function process(e, c)
  if c.attempt < 3 then return {success = false, errorType = "closed", error = "gate closed"} end
  return true
end)"))->status, 201);
  for (int i = 0; i < 3; ++i)
    expect_created(c->post("/v1/aggregates/form-" + std::to_string(i) + "/events", append_body({event_json("form.created")})));
  auto dl = wait_for(*c, "/v1/dead-letters?status=permanent_failure&consumer=plugin:gate",
                     [](const json::value& p) { return p.at("totalCount").as_int64() == 3; });
  ASSERT_EQ(dl.at("totalCount").as_int64(), 3);
  auto entries = dl.at("deadLetters").as_array();
  const std::string id0(entries[0].at("id").as_string()), id1(entries[1].at("id").as_string()),
      id2(entries[2].at("id").as_string());
  EXPECT_EQ(entries[0].at("error").at("type").as_string(), "closed");
  // Pagination.
  auto page = body_of(c->get("/v1/dead-letters?limit=2"));
  EXPECT_EQ(count_of(page, "deadLetters"), 2u);
  EXPECT_TRUE(page.at("hasMore").as_bool());
  auto rest = body_of(c->get("/v1/dead-letters?limit=2&cursor=" + std::string(page.at("cursor").as_string())));
  EXPECT_EQ(count_of(rest, "deadLetters"), 1u);
  EXPECT_EQ(c->get("/v1/dead-letters?status=weird")->status, 400);
  EXPECT_EQ(c->get("/v1/dead-letters?eventType=form.**x")->status, 400);
  EXPECT_EQ(c->get("/v1/dead-letters/" + std::string("00000000-0000-4000-8000-000000000000"))->status, 404);
  // Still failing: a manual retry reports failure and the entry stays permanent.
  auto r = body_of(c->post("/v1/dead-letters/" + id0 + "/retry", ""));
  EXPECT_FALSE(r.at("success").as_bool());
  EXPECT_EQ(r.at("status").as_string(), "permanent_failure");
  // The third attempt succeeds: retry two in a batch (the second one's second attempt
  // fails), and give up the third entry.
  ASSERT_FALSE(body_of(c->post("/v1/dead-letters/" + id1 + "/retry", "")).at("success").as_bool());
  auto batch = body_of(c->post("/v1/dead-letters/retry", R"({"ids":[")" + id0 + R"(",")" + id1 + R"("]})"));
  for (const auto& res : batch.at("results").as_array()) {
    EXPECT_TRUE(res.at("success").as_bool()) << json::serialize(res);
    EXPECT_EQ(res.at("status").as_string(), "resolved");
  }
  const std::string bin = PLIERS_EVENTS_BINARY;
  int status = 0;
  auto out = run_command({bin, "dlq", "fail", id2, "--reason", "obsolete", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(json::parse(out).at("permanentReason").as_string(), "obsolete");
  out = run_command({bin, "dlq", "list", "--status", "resolved", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2);
  out = run_command({bin, "dlq", "get", id2, "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(json::parse(out).at("history").as_array().size(), 1u);
  out = run_command({bin, "plugins", "disable", "gate", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_FALSE(json::parse(out).at("enabled").as_bool());
  EXPECT_EQ(c->post("/v1/dead-letters/" + id2 + "/permanent-failure", R"({"reason":""})")->status, 400);
}

TEST(Plugins, RegistrationsAndDeadLettersSurviveRestarts) {
  temp_dir dir;
  const std::string store = "sqlite:" + (dir.path() / "e.db").string();
  std::string dead_id;
  {
    server_process server(store, {}, {"", {{"PLIERS_RETRY_MAX_ATTEMPTS", "1"}}});
    server.start();
    auto c = server.client();
    ASSERT_EQ(c->post("/v1/plugins", lua_registration("audit", audit_lua))->status, 201);
    ASSERT_EQ(c->post("/v1/plugins", lua_registration("never", "function process(e, c) return false end"))->status, 201);
    ASSERT_EQ(c->post("/v1/plugins/never/disable", "")->status, 200);
    ASSERT_EQ(c->post("/v1/plugins", lua_registration("no", "function process(e, c) return false end"))->status, 201);
    expect_created(c->post("/v1/aggregates/form-1/events", append_body({event_json("form.created")})));
    auto dl = wait_for(*c, "/v1/dead-letters", [](const json::value& p) { return p.at("totalCount").as_int64() == 1; });
    dead_id = std::string(dl.at("deadLetters").as_array()[0].at("id").as_string());
    wait_for(*c, "/v1/events?type=audit.recorded", [](const json::value& p) { return count_of(p) == 1; });
    EXPECT_EQ(server.stop(SIGTERM), 0);  // a clean stop hands its partitions back at once
  }
  server_process server(store);
  server.start();
  auto c = server.client();
  auto list = body_of(c->get("/v1/plugins"));
  ASSERT_EQ(count_of(list, "plugins"), 3u);
  EXPECT_FALSE(body_of(c->get("/v1/plugins/never")).at("enabled").as_bool());
  EXPECT_EQ(body_of(c->get("/v1/dead-letters/" + dead_id)).at("status").as_string(), "permanent_failure");
  expect_created(c->post("/v1/aggregates/form-2/events", append_body({event_json("form.created")})));
  auto audit = wait_for(*c, "/v1/events?type=audit.recorded", [](const json::value& p) { return count_of(p) == 2; });
  EXPECT_EQ(count_of(audit), 2u);  // the trigger before the restart is not processed twice
  ASSERT_EQ(c->request("DELETE", "/v1/plugins/audit")->status, 204);
  EXPECT_EQ(c->get("/v1/plugins/audit")->status, 404);
}

TEST(Plugins, KillNineDuringProcessingLosesNoTriggerAndNoDeadLetter) {
  temp_dir dir;
  const std::string store = "sqlite:" + (dir.path() / "e.db").string();
  int triggers = 0;
  // Every server here dies by kill -9 (the first one too, when it goes out of scope): a
  // restarted node is a new consumer-group member and takes over the dead one's partitions
  // when their leases run out (1.5 s here).
  const server_launch fast_lease{"", {{"PLIERS_PLUGINS_LEASE_MS", "1500"}}};
  {
    server_process server(store, {}, fast_lease);
    server.start();
    auto c = server.client();
    ASSERT_EQ(c->post("/v1/plugins", lua_registration("audit", audit_lua))->status, 201);
    ASSERT_EQ(c->post("/v1/plugins", lua_registration("odd", R"(
function process(e, c)
  if e.payload.n % 2 == 1 then return {success = false, errorType = "odd", error = "odd number"} end
  return true
end)"))->status, 201);
  }
  for (int round = 0; round < 4; ++round) {
    server_process server(store, {}, fast_lease);
    server.start();
    auto c = server.client();
    for (int i = 0; i < 150; ++i, ++triggers) {
      auto r = c->post("/v1/aggregates/form-" + std::to_string(triggers % 7) + "/events",
                       append_body({event_json("form.created", "form", {{"n", triggers}})}));
      ASSERT_EQ(r->status, 201);
    }
    server.stop(SIGKILL);  // in the middle of processing: the plugins lag the appends
  }
  server_process server(store, {}, fast_lease);
  server.start();
  auto c = server.client();
  auto audit = wait_for(*c, "/v1/events?type=audit.recorded&limit=1000",
                        [&](const json::value& p) { return count_of(p) == static_cast<std::size_t>(triggers); });
  // Every trigger processed, its generated event stored once.
  std::set<std::string> of;
  for (const auto& e : audit.at("events").as_array()) of.insert(std::string(e.at("payload").at("of").as_string()));
  EXPECT_EQ(of.size(), static_cast<std::size_t>(triggers));
  EXPECT_EQ(count_of(audit), static_cast<std::size_t>(triggers));
  // Every odd trigger has its dead letter, once.
  auto dl = wait_for(*c, "/v1/dead-letters?consumer=plugin:odd&limit=1000",
                     [&](const json::value& p) { return p.at("totalCount").as_int64() == triggers / 2; });
  EXPECT_EQ(dl.at("totalCount").as_int64(), triggers / 2);
}

}  // namespace pliers
