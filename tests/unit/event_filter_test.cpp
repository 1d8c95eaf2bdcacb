#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/event_filter.hpp"
#include "core/time_format.hpp"

namespace pliers {

namespace json = boost::json;

event sample() {
  event e;
  e.id = "123e4567-e89b-42d3-a456-426614174000";
  e.type = "submission.created";
  e.aggregate_id = "sub-7";
  e.aggregate_type = "submission";
  e.sequence = sequence_number(3);
  e.position = log_position(42);
  e.time = *parse_rfc3339("2025-06-01T12:00:00Z");
  e.metadata = json::parse(R"({"sourceSystem":"forms","sourceVersion":"1","userId":"u-9","routingKey":"eu"})").as_object();
  e.payload = json::parse(R"({"score":87,"form":{"id":"f-1"},"tags":["a","b"],"email":"x@example.com"})").as_object();
  return e;
}

bool filter_matches(const char* text) {
  auto f = event_filter::from_json(json::parse(text), "filter");
  EXPECT_TRUE(f) << text << ": " << (f ? "" : f.error().field + " " + f.error().message);
  return f && f->matches(sample());
}

TEST(EventFilter, SimpleMembers) {
  EXPECT_TRUE(filter_matches(R"({})"));
  EXPECT_TRUE(filter_matches(R"({"eventTypes":["submission.*"]})"));
  EXPECT_FALSE(filter_matches(R"({"eventTypes":["form.**"]})"));
  EXPECT_TRUE(filter_matches(R"({"aggregateTypes":["submission"],"aggregateIds":["sub-7","sub-8"]})"));
  EXPECT_FALSE(filter_matches(R"({"aggregateIds":["sub-8"]})"));
  EXPECT_TRUE(filter_matches(R"({"routingKeys":["eu"]})"));
  EXPECT_FALSE(filter_matches(R"({"routingKeys":["us"]})"));
  EXPECT_TRUE(filter_matches(R"({"metadataFilters":{"userId":"u-9"},"payloadFilters":{"form.id":"f-1","score":87.0}})"));
  EXPECT_FALSE(filter_matches(R"({"payloadFilters":{"form.id":"f-2"}})"));
  EXPECT_TRUE(filter_matches(R"({"timestampRange":{"from":"2025-06-01T12:00:00Z","to":"2025-06-01T12:00:00Z"}})"));
  EXPECT_FALSE(filter_matches(R"({"timestampRange":{"from":"2025-06-01T12:00:01Z"}})"));
}

TEST(EventFilter, ConditionTree) {
  EXPECT_TRUE(filter_matches(R"({"conditions":{"all":[
      {"field":"payload.score","operator":"gte","value":80},
      {"field":"payload.score","operator":"lt","value":90},
      {"field":"type","operator":"prefix","value":"submission."},
      {"field":"aggregateId","operator":"suffix","value":"-7"},
      {"field":"payload.email","operator":"regex","value":"@example\\.com$"},
      {"field":"payload.tags","operator":"contains","value":"b"},
      {"field":"routingKey","operator":"in","value":["eu","uk"]},
      {"field":"metadata.userId","operator":"not_in","value":["u-1"]},
      {"field":"payload.form","operator":"exists"},
      {"not":{"field":"payload.missing","operator":"exists"}},
      {"any":[{"field":"aggregateType","operator":"equals","value":"form"},
              {"field":"sequenceNumber","operator":"equals","value":3}]}]}})"));
  EXPECT_FALSE(filter_matches(R"({"conditions":{"field":"payload.score","operator":"gt","value":87}})"));
  // A missing field makes value operators false, and not_equals too.
  EXPECT_FALSE(filter_matches(R"({"conditions":{"field":"payload.nope","operator":"not_equals","value":1}})"));
  EXPECT_TRUE(filter_matches(R"({"conditions":{"not":{"field":"payload.nope","operator":"equals","value":1}}})"));
  EXPECT_FALSE(filter_matches(R"({"conditions":{"field":"payload.email","operator":"gt","value":5}})"));
  EXPECT_TRUE(filter_matches(R"({"conditions":{"field":"position","operator":"gt","value":41}})"));
}

TEST(EventFilter, ErrorsNameTheField) {
  auto field_of = [](const char* text) {
    json::parse_options deep_ok;
    deep_ok.max_depth = 500;
    auto f = event_filter::from_json(json::parse(text, {}, deep_ok), "filter");
    return f ? std::string("<valid>") : f.error().field;
  };
  EXPECT_EQ(field_of(R"({"eventTypes":["a..b"]})"), "filter.eventTypes[0]");
  EXPECT_EQ(field_of(R"({"colour":"red"})"), "filter.colour");
  EXPECT_EQ(field_of(R"({"conditions":{"field":"payload.a","operator":"like","value":1}})"), "filter.conditions.operator");
  EXPECT_EQ(field_of(R"({"conditions":{"field":"nope","operator":"equals","value":1}})"), "filter.conditions.field");
  EXPECT_EQ(field_of(R"({"conditions":{"all":[{"field":"type","operator":"regex","value":"(("}]}})"),
            "filter.conditions.all[0].value");
  EXPECT_EQ(field_of(R"({"conditions":{"field":"type","operator":"in","value":"x"}})"), "filter.conditions.value");
  EXPECT_EQ(field_of(R"({"conditions":{"all":[]}})"), "filter.conditions.all");
  EXPECT_EQ(field_of(R"({"timestampRange":{"from":"soon"}})"), "filter.timestampRange.from");
  std::string deep = R"({"conditions":)";
  for (int i = 0; i < 40; ++i) deep += R"({"not":)";
  deep += R"({"field":"type","operator":"exists"})";
  deep += std::string(40, '}') + "}";
  EXPECT_EQ(field_of(deep.c_str()).substr(0, 17), "filter.conditions");
}

}  // namespace pliers
