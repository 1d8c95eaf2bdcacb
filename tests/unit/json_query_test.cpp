#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/json_query.hpp"

namespace pliers {

namespace json = boost::json;

json::value doc() {
  return json::parse(R"({"a":{"b":5,"s":"hello world"},"items":[{"sku":"x1","qty":2},{"sku":"y2"}],
                         "tags":["red","blue"],"n":1.0,"weird key":{"k":true},"nul":null})");
}

bool q(const char* path, json_operator op, json::value v = nullptr) {
  auto query = json_query::make(path, op, std::move(v));
  EXPECT_TRUE(query) << path;
  return query && query->matches(doc());
}

TEST(JsonPath, ResolvesKeysIndexesAndQuotedKeys) {
  auto d = doc();
  EXPECT_EQ(json_path::parse("$.a.b")->resolve(d)->as_int64(), 5);
  EXPECT_EQ(json_path::parse("$.items[0].sku")->resolve(d)->as_string(), "x1");
  EXPECT_EQ(json_path::parse("items[1].sku")->resolve(d)->as_string(), "y2");
  EXPECT_EQ(json_path::parse("$['weird key'].k")->resolve(d)->as_bool(), true);
  EXPECT_EQ(json_path::parse("$[\"a\"][\"b\"]")->resolve(d)->as_int64(), 5);
  EXPECT_EQ(json_path::parse("$")->resolve(d), &d);
  EXPECT_EQ(json_path::parse("$.items[5]")->resolve(d), nullptr);
  EXPECT_EQ(json_path::parse("$.a.b.c")->resolve(d), nullptr);
  EXPECT_EQ(json_path::parse("$.items.sku")->resolve(d), nullptr);
}

TEST(JsonPath, RejectsMalformedWithField) {
  for (const char* bad : {"", "$.", "$..a", "$.a[", "$.a[x]", "$.a[-1]", "$['a", "$a", "$.a]"}) {
    auto p = json_path::parse(bad, "payloadQuery.path");
    ASSERT_FALSE(p) << bad;
    EXPECT_EQ(p.error().field, "payloadQuery.path");
  }
}

TEST(JsonQuery, Equals) {
  EXPECT_TRUE(q("$.a.b", json_operator::equals, 5));
  EXPECT_TRUE(q("$.a.b", json_operator::equals, 5.0));  // numbers by value
  EXPECT_TRUE(q("$.n", json_operator::equals, 1));
  EXPECT_FALSE(q("$.a.b", json_operator::equals, "5"));
  EXPECT_TRUE(q("$.items[0]", json_operator::equals, json::parse(R"({"qty":2,"sku":"x1"})")));
  EXPECT_FALSE(q("$.missing", json_operator::equals, nullptr));
  EXPECT_TRUE(q("$.nul", json_operator::equals, nullptr));
}

TEST(JsonQuery, Contains) {
  EXPECT_TRUE(q("$.a.s", json_operator::contains, "lo wo"));
  EXPECT_FALSE(q("$.a.s", json_operator::contains, "xyz"));
  EXPECT_TRUE(q("$.tags", json_operator::contains, "red"));
  EXPECT_TRUE(q("$.tags", json_operator::contains, json::parse(R"(["blue","red"])")));
  EXPECT_FALSE(q("$.tags", json_operator::contains, json::parse(R"(["blue","green"])")));
  EXPECT_TRUE(q("$.items", json_operator::contains, json::parse(R"({"sku":"y2"})")));
  EXPECT_TRUE(q("$", json_operator::contains, json::parse(R"({"a":{"b":5}})")));
  EXPECT_FALSE(q("$", json_operator::contains, json::parse(R"({"a":{"b":6}})")));
  EXPECT_FALSE(q("$.missing", json_operator::contains, "x"));
}

TEST(JsonQuery, ExistsAndMissingFields) {
  EXPECT_TRUE(q("$.a.b", json_operator::exists));
  EXPECT_TRUE(q("$.nul", json_operator::exists));
  EXPECT_FALSE(q("$.a.zzz", json_operator::exists));
}

TEST(JsonQuery, RegexIsRe2AndLinear) {
  EXPECT_TRUE(q("$.a.s", json_operator::regex, "^hel+o\\s"));
  EXPECT_FALSE(q("$.a.s", json_operator::regex, "^world"));
  EXPECT_FALSE(q("$.a.b", json_operator::regex, "5"));  // not a string
  // Catastrophic in backtracking engines, linear in RE2.
  auto query = json_query::make("$.s", json_operator::regex, "(a+)+$");
  ASSERT_TRUE(query);
  json::object o;
  o["s"] = std::string(50000, 'a') + "!";
  EXPECT_FALSE(query->matches(o));
}

TEST(JsonQuery, FromJsonNamesBadFields) {
  auto bad_regex = json_query::from_json(json::parse(R"({"path":"$.a","operator":"regex","value":"(("})"), "payloadQuery");
  ASSERT_FALSE(bad_regex);
  EXPECT_EQ(bad_regex.error().field, "payloadQuery.value");
  auto bad_op = json_query::from_json(json::parse(R"({"path":"$.a","operator":"like","value":1})"), "q");
  ASSERT_FALSE(bad_op);
  EXPECT_EQ(bad_op.error().field, "q.operator");
  auto no_value = json_query::from_json(json::parse(R"({"path":"$.a","operator":"equals"})"), "q");
  ASSERT_FALSE(no_value);
  EXPECT_EQ(no_value.error().field, "q.value");
  auto extra = json_query::from_json(json::parse(R"({"path":"$.a","operator":"exists","x":1})"), "q");
  ASSERT_FALSE(extra);
  EXPECT_EQ(extra.error().field, "q.x");
  auto ok = json_query::from_json(json::parse(R"({"path":"$.a","operator":"exists"})"), "q");
  ASSERT_TRUE(ok);
  EXPECT_EQ(json::serialize(ok->to_json()), R"({"path":"$.a","operator":"exists"})");
}

}  // namespace pliers
