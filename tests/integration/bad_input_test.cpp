// Bad input over HTTP: every case gets a problem+json 4xx naming the field, nothing is
// written, and the server keeps serving.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "support/fixtures.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;

struct bad_request {
  const char* name;
  std::string method;
  std::string target;
  std::string body;
  unsigned status;
  std::string field;  // expected "field" member ("" = not checked)
};

std::string with(const char* key, const char* value_json) {
  auto e = json::parse(event_json("form.created")).as_object();
  e[key] = json::parse(value_json);
  return append_body({json::serialize(e)});
}

std::string without(const char* key) {
  auto e = json::parse(event_json("form.created")).as_object();
  e.erase(key);
  return append_body({json::serialize(e)});
}

std::string metadata_without(const char* key) {
  auto e = json::parse(event_json("form.created")).as_object();
  e["metadata"].as_object().erase(key);
  return append_body({json::serialize(e)});
}

std::vector<bad_request> cases() {
  const std::string agg = "/v1/aggregates/a1/events";
  std::string deep = append_body({event_json("form.created")});
  std::string nested(70, '[');
  nested += std::string(70, ']');
  std::string deep_payload = R"({"events":[{"type":"t","aggregateType":"f","metadata":{"sourceSystem":"s","sourceVersion":"1"},"payload":{"a":)" +
                             nested + "}}]}";
  return {
      {"malformed json", "POST", agg, R"({"events":[)", 400, "body"},
      {"not an object", "POST", agg, R"([1,2])", 400, "body"},
      {"empty body", "POST", agg, "", 400, "body"},
      {"events not array", "POST", agg, R"({"events":{}})", 400, "events"},
      {"empty event list", "POST", agg, R"({"events":[]})", 400, "events"},
      {"negative expectedVersion", "POST", agg, R"({"expectedVersion":-1,"events":[]})", 400, "expectedVersion"},
      {"string expectedVersion", "POST", agg, R"({"expectedVersion":"3","events":[]})", 400, "expectedVersion"},
      {"missing type", "POST", agg, without("type"), 400, "events[0].type"},
      {"type wrong type", "POST", agg, with("type", "42"), 400, "events[0].type"},
      {"missing aggregateType", "POST", agg, without("aggregateType"), 400, "events[0].aggregateType"},
      {"payload not object", "POST", agg, with("payload", "\"x\""), 400, "events[0].payload"},
      {"missing payload", "POST", agg, without("payload"), 400, "events[0].payload"},
      {"missing sourceSystem", "POST", agg, metadata_without("sourceSystem"), 400, "events[0].metadata.sourceSystem"},
      {"missing sourceVersion", "POST", agg, metadata_without("sourceVersion"), 400, "events[0].metadata.sourceVersion"},
      {"id not uuid", "POST", agg, with("id", "\"1234\""), 400, "events[0].id"},
      {"causationId not uuid", "POST", agg, with("causationId", "\"zz\""), 400, "events[0].causationId"},
      {"type too long", "POST", agg, with("type", ("\"" + std::string(101, 't') + "\"").c_str()), 400, "events[0].type"},
      {"aggregateType too long", "POST", agg, with("aggregateType", ("\"" + std::string(51, 'a') + "\"").c_str()), 400,
       "events[0].aggregateType"},
      {"aggregateId too long", "POST", "/v1/aggregates/" + std::string(256, 'x') + "/events",
       append_body({event_json("form.created")}), 400, "aggregateId"},
      {"server-assigned field", "POST", agg, with("position", "5"), 400, "events[0].position"},
      {"too deep", "POST", agg, deep_payload, 400, "body"},
      {"invalid utf-8", "POST", agg, "{\"events\":[{\"type\":\"\xff\xfe\"}]}", 400, "body"},
      {"wrong content type", "POST", agg, deep, 400, "Content-Type"},
      {"bad cursor", "GET", "/v1/events?cursor=zzz", "", 400, "cursor"},
      {"bad limit", "GET", "/v1/events?limit=0", "", 400, "limit"},
      {"huge limit", "GET", "/v1/events?limit=99999999", "", 400, "limit"},
      {"bad type pattern", "GET", "/v1/events?type=form..x", "", 400, "type"},
      {"bad timestamp", "GET", "/v1/events?from=yesterday", "", 400, "from"},
      {"unknown parameter", "GET", "/v1/events?tpye=x", "", 400, "tpye"},
      {"bad fromVersion", "GET", "/v1/aggregates/a1/events?fromVersion=-3", "", 400, "fromVersion"},
      {"event id not uuid", "GET", "/v1/events/12345", "", 400, "id"},
      {"query unknown member", "POST", "/v1/events/query", R"({"query":{"evntTypes":[]}})", 400, "query.evntTypes"},
      {"query bad regex", "POST", "/v1/events/query",
       R"({"query":{"payloadQuery":{"path":"$.a","operator":"regex","value":"(("}}})", 400, "query.payloadQuery.value"},
      {"query bad operator", "POST", "/v1/events/query",
       R"({"query":{"payloadQuery":{"path":"$.a","operator":"like","value":1}}})", 400, "query.payloadQuery.operator"},
      {"query bad path", "POST", "/v1/events/query",
       R"({"query":{"payloadQuery":{"path":"$..a","operator":"exists"}}})", 400, "query.payloadQuery.path"},
  };
}

TEST(BadInput, EveryCaseIsA4xxNamingTheFieldAndNothingIsWritten) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string());
  server.start();
  auto http = server.client();
  for (const auto& c : cases()) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (std::string(c.name) == "wrong content type") headers.emplace_back("Content-Type", "text/plain");
    auto r = http->request(c.method, c.target, c.body, headers);
    ASSERT_TRUE(r) << c.name << ": " << r.error().message;
    EXPECT_EQ(r->status, c.status) << c.name << ": " << r->body;
    EXPECT_EQ(r->content_type, "application/problem+json") << c.name;
    boost::system::error_code ec;
    auto p = json::parse(r->body, ec);
    ASSERT_FALSE(ec) << c.name << ": " << r->body;
    EXPECT_EQ(p.at("status").as_int64(), c.status) << c.name;
    EXPECT_FALSE(p.at("detail").as_string().empty()) << c.name;
    if (!c.field.empty()) {
      ASSERT_TRUE(p.as_object().contains("field")) << c.name << ": " << r->body;
      EXPECT_EQ(p.at("field").as_string(), c.field) << c.name;
    }
  }
  // One invalid event refuses the whole batch.
  auto mixed = append_body({event_json("ok.one"), R"({"type":"bad"})", event_json("ok.two")});
  EXPECT_EQ(http->post("/v1/aggregates/a1/events", mixed)->status, 400u);
  auto health = json::parse(http->get("/health")->body);
  EXPECT_EQ(health.at("headPosition").as_int64(), 0) << "a refused request wrote something";
}

TEST(BadInput, OversizedBodyIs413AndTheServerStaysUp) {
  temp_dir dir;
  server_process server("sqlite:" + (dir.path() / "e.db").string(), {"--max-body-bytes", "65536"});
  server.start();
  auto http = server.client();
  std::string huge = R"({"events":[{"type":"t","aggregateType":"f","metadata":{"sourceSystem":"s","sourceVersion":"1"},"payload":{"x":")" +
                     std::string(70000, 'x') + "\"}}]}";
  auto r = http->post("/v1/aggregates/a/events", huge);
  if (r) {  // the server may close before reading the whole body; then the client sees an error
    EXPECT_EQ(r->status, 413u) << r->body;
    EXPECT_EQ(r->content_type, "application/problem+json");
  }
  auto again = server.client();
  auto ok = again->post("/v1/aggregates/a/events", append_body({event_json("t.small")}));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 201u);
  EXPECT_EQ(json::parse(again->get("/health")->body).at("headPosition").as_int64(), 1);
}

TEST(BadInput, DepthLimitIsConfigurable) {
  temp_dir dir;
  server_process server("memory:", {"--max-json-depth", "8"});
  server.start();
  auto http = server.client();
  std::string body = R"({"events":[{"type":"t","aggregateType":"f","metadata":{"sourceSystem":"s","sourceVersion":"1"},"payload":{"a":{"b":{"c":{"d":{"e":{}}}}}}}]})";
  auto r = http->post("/v1/aggregates/a/events", body);
  EXPECT_EQ(r->status, 400u);
  EXPECT_NE(r->body.find("deeper than 8"), std::string::npos) << r->body;
}

TEST(BadInput, GarbageHttpGetsA400AndOthersAreServed) {
  temp_dir dir;
  server_process server("memory:");
  server.start();
  auto garbage = server.client();
  auto r = garbage->request("GET", "/health", "", {{"Content-Length", "-5"}});
  if (r) {
    EXPECT_EQ(r->status, 400u);
  }
  auto http = server.client();
  EXPECT_EQ(http->get("/health")->status, 200u);
}

}  // namespace pliers
