// event_router matching without a peer: the router's indexes (by type, by field value),
// its per-event field cache and its contains/regex prefilter (RE2::Set) must decide
// exactly what core/event_filter's condition::matches decides, condition by condition.
// The differential tests build many rules over a pool of fields, operators and values,
// route events carrying a pool of values, and compare the matched rule ids (and the dry
// run's verdicts) with the reference evaluation. Also: incremental load().
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "core/event_filter.hpp"
#include "process/event_router.hpp"

namespace pliers {
namespace {

namespace json = boost::json;

class noop_target final : public route_target {
 public:
  std::string kind() const override { return "noop"; }
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(1000); }
  delivery_outcome deliver(const event&, const delivery_context&) override {
    delivery_outcome o;
    o.success = true;
    return o;
  }
};

route_target_factory noop_factory() {
  return [](const std::string& type, const json::object&, const std::string& field)
             -> result<std::shared_ptr<route_target>> {
    if (type != "noop") return error::invalid(field + ".type", "noop only");
    return std::shared_ptr<route_target>(std::make_shared<noop_target>());
  };
}

struct fixture {
  std::unique_ptr<event_store> store;
  std::unique_ptr<retry_engine> retries;
  std::unique_ptr<event_router> router;
  explicit fixture(event_store* shared = nullptr) {
    if (!shared) {
      auto st = open_store("memory:");
      EXPECT_TRUE(st);
      store = std::move(*st);
      shared = store.get();
    }
    retries = std::make_unique<retry_engine>(*shared, default_clock(), retry_engine::options{});
    router = std::make_unique<event_router>(*shared, default_clock(), *retries, noop_factory(),
                                            event_router::options{.max_concurrent_deliveries = 2});
  }
};

// One routing condition as the rule gives it.
struct cond {
  std::string type;   // event_type, aggregate_type, metadata, payload
  std::string field;  // metadata / payload
  std::string op;
  std::optional<json::value> value;

  json::object to_json() const {
    json::object o{{"type", type}, {"operator", op}};
    if (!field.empty()) o["field"] = field;
    if (value) o["value"] = *value;
    return o;
  }
  // The same condition as a core/event_filter leaf: the reference evaluation.
  std::optional<condition> reference() const {
    std::string f = type == "event_type" ? "type" : type == "aggregate_type" ? "aggregateType" : "";
    if (f.empty()) {
      std::string path = field;
      if (path.starts_with("$.")) path = path.substr(2);
      else if (path.starts_with("$")) path = path.substr(1);
      f = type + (path.starts_with("[") ? "" : ".") + path;
    }
    json::object leaf{{"field", f}, {"operator", op}};
    if (value) leaf["value"] = *value;
    auto c = condition::from_json(leaf, "c");
    if (!c) return std::nullopt;
    return std::move(*c);
  }
};

json::object rule_json(const std::string& id, const std::vector<cond>& cs, std::int64_t priority = 0) {
  json::array conditions;
  for (const auto& c : cs) conditions.push_back(c.to_json());
  return {{"id", id},
          {"priority", priority},
          {"conditions", std::move(conditions)},
          {"targets", json::array{json::object{{"type", "noop"}}}}};
}

// Rules that never match the tests' events, so that a field has enough contains and
// regex conditions for the router to prefilter them (it does from 8 of a kind).
void add_fillers(event_router& router, const std::string& field, int n = 12) {
  for (int i = 0; i < n; ++i) {
    const std::string v = "zz-filler-" + std::to_string(i);
    const std::string suffix = field + std::to_string(i);
    ASSERT_TRUE(router.add_route(rule_json("zz-c-" + suffix, {{"payload", field, "contains", json::value(v)}}, -1)));
    ASSERT_TRUE(router.add_route(rule_json("zz-r-" + suffix, {{"payload", field, "regex", json::value("^" + v)}}, -1)));
  }
}

std::vector<std::string> ids_of(const std::vector<json::object>& routes) {
  std::vector<std::string> out;
  for (const auto& r : routes) out.emplace_back(r.at("id").as_string());
  return out;
}

// Values an event's fields take, and condition values: strings with regex metacharacters,
// case variants, UTF-8, empty; numbers of each JSON kind; arrays, objects, null, bools.
std::vector<json::value> value_pool() {
  return {json::value("abc"),
          json::value("aXc"),
          json::value("a.c"),
          json::value("ABC"),
          json::value(""),
          json::value("caf\xc3\xa9"),
          json::value("x(ab)|*+?{2}[^$]\\.y"),
          json::value("vip"),
          json::value("b"),
          json::value("aaaaaaaaaaaaaaaaaaab"),
          json::value("aaaa"),
          json::value("c-12!"),
          json::value("line\nbreak"),
          json::value(12),
          json::value(12.0),
          json::value(-1),
          json::value(std::numeric_limits<std::uint64_t>::max()),
          json::value(13.5),
          json::value(true),
          json::value(nullptr),
          json::array{"vip", "abc"},
          json::array{"x"},
          json::array{},
          json::array{12, json::object{{"k", 1}, {"j", 2}}},
          json::object{{"k", 1}},
          json::object{{"k", 1}, {"j", 2}}};
}

// Operator and value pairs for the conditions.
std::vector<std::pair<std::string, std::optional<json::value>>> operator_pool() {
  std::vector<std::pair<std::string, std::optional<json::value>>> out;
  for (const auto& v : {json::value("abc"), json::value(12), json::value(12.0), json::value(true), json::value(nullptr),
                        json::value(json::array{"x"}), json::value(json::object{{"k", 1}})}) {
    out.emplace_back("equals", v);
    out.emplace_back("not_equals", v);
  }
  // contains: metacharacters must be literal, case matters, "" is in every string, a
  // string is in an array that holds it, non-string values are not substrings.
  for (const char* s : {"b", "", "a.c", ".", "ABC", "abc", "vip", "vi", "x(ab)|*+?{2}[^$]\\.y", "(ab)", "[^$]", "\\",
                        "{2}", "$", "^", "|", "*", "caf\xc3\xa9", "\xc3\xa9", "\xc3", "c-1", "c-12!", "\n", "aaab"})
    out.emplace_back("contains", json::value(s));
  for (const auto& v : {json::value(12), json::value(json::array{"vip"}), json::value(json::array{"vip", "abc"}),
                        json::value(json::object{{"k", 1}}), json::value(json::array{json::object{{"k", 1}}}),
                        json::value(true), json::value(nullptr)})
    out.emplace_back("contains", v);
  for (const char* re : {"^a", "b$", "(?i)ABC", "a.c", "a\\.c", "^(a+)+$", "\xc3\xa9", "caf.$", "^$", "", "x\\(ab\\)",
                         "[0-9]+!", "^c-1", "(?s)line.break", "line.break", "\\bvip\\b", "^.{3}$"})
    out.emplace_back("regex", json::value(re));
  out.emplace_back("in", json::value(json::array{"abc", 12}));
  out.emplace_back("in", json::value(json::array{}));
  out.emplace_back("in", json::value(json::array{"vip", "b"}));
  out.emplace_back("in", json::value(json::array{nullptr, true}));
  out.emplace_back("in", json::value(json::array{"abc", 12, "vip"}));  // a non-string between strings
  out.emplace_back("not_in", json::value(json::array{"abc"}));
  out.emplace_back("not_in", json::value(json::array{}));
  out.emplace_back("not_in", json::value(json::array{"abc", 12, "vip"}));
  out.emplace_back("exists", std::nullopt);
  out.emplace_back("prefix", json::value("ab"));
  out.emplace_back("prefix", json::value(""));
  out.emplace_back("suffix", json::value("bc"));
  out.emplace_back("suffix", json::value("\xa9"));
  for (const auto& v : {json::value(10), json::value(12), json::value(13.5), json::value("abc"), json::value("b"),
                        json::value(-2)}) {
    out.emplace_back("gt", v);
    out.emplace_back("gte", v);
    out.emplace_back("lt", v);
    out.emplace_back("lte", v);
  }
  return out;
}

// Where conditions look: {type, field}; events put the pool's value at each of these.
std::vector<std::pair<std::string, std::string>> field_pool() {
  return {{"payload", "s"},        {"payload", "$.s"},   {"payload", "a.b"},      {"payload", "items[0].sku"},
          {"payload", "['x'].y"},  {"payload", "['k.l']"}, {"payload", "missing"}, {"payload", "[0]"},
          {"metadata", "region"},  {"metadata", "$.deep.er"}, {"event_type", ""},   {"aggregate_type", ""}};
}

// An event whose every field above holds `v` (type and aggregate type only when a string).
event event_with(const json::value& v, int n) {
  event e;
  e.id = "00000000-0000-4000-8000-" + std::string(12 - std::to_string(n).size(), '0') + std::to_string(n);
  e.type = v.is_string() ? std::string(v.get_string()) : "t";
  e.aggregate_id = "a-1";
  e.aggregate_type = v.is_string() ? std::string(v.get_string()) : "order";
  e.position = log_position(n);
  e.sequence = sequence_number(1);
  e.payload = {{"s", v},
               {"a", json::object{{"b", v}}},
               {"items", json::array{json::object{{"sku", v}}}},
               {"x", json::object{{"y", v}}},
               {"k.l", v}};
  e.metadata = {{"region", v}, {"deep", json::object{{"er", v}}}};
  return e;
}

std::vector<event> event_pool() {
  std::vector<event> out;
  int n = 1;
  for (const auto& v : value_pool()) out.push_back(event_with(v, n++));
  event bare;  // every field missing
  bare.id = "00000000-0000-4000-8000-999999999999";
  bare.type = "t";
  bare.aggregate_id = "a-1";
  bare.aggregate_type = "order";
  out.push_back(bare);
  event odd = event_with(json::value("ok"), n++);  // a payload whose fields have other kinds
  odd.payload = {{"s", json::array{"abc", "vip"}}, {"a", 5}, {"items", json::object{{"0", "x"}}}, {"x", "y"}};
  odd.metadata = {{"region", json::object{{"k", 1}}}, {"deep", json::array{"er"}}};
  out.push_back(odd);
  return out;
}

struct expected_rule {
  std::string id;
  std::vector<condition> conditions;
  bool matches(const event& e) const {
    for (const auto& c : conditions)
      if (!c.matches(e)) return false;
    return true;
  }
};

// Adds the rule when the router accepts it; then the reference must accept every condition.
void add(event_router& router, std::vector<expected_rule>& expected, const std::string& id, const std::vector<cond>& cs,
         std::int64_t priority = 0) {
  auto added = router.add_route(rule_json(id, cs, priority));
  if (!added) return;
  expected_rule x{id, {}};
  for (const auto& c : cs) {
    auto ref = c.reference();
    ASSERT_TRUE(ref) << id << ": " << json::serialize(c.to_json());
    x.conditions.push_back(std::move(*ref));
  }
  expected.push_back(std::move(x));
}

// Every event through routes_for_event, process_batch's matcher and the dry run agrees
// with the reference, rule by rule.
void expect_same_matches(event_router& router, const std::vector<expected_rule>& expected, const std::vector<event>& events) {
  for (const auto& e : events) {
    std::set<std::string> want;
    for (const auto& r : expected)
      if (r.matches(e)) want.insert(r.id);
    auto got_list = ids_of(router.routes_for_event(e));
    std::set<std::string> got(got_list.begin(), got_list.end());
    EXPECT_EQ(got.size(), got_list.size()) << "a rule listed twice";
    std::vector<std::string> missing, extra;
    std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(missing));
    std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(extra));
    EXPECT_TRUE(missing.empty() && extra.empty())
        << "event payload " << json::serialize(e.payload) << " type " << e.type << ": missed "
        << ::testing::PrintToString(missing) << ", wrongly matched " << ::testing::PrintToString(extra);
    std::set<std::string> explained;
    for (const auto& x : router.explain(e))
      if (x.matched) explained.insert(x.rule_id);
    EXPECT_EQ(explained, want) << "dry run of " << json::serialize(e.payload);
  }
}

TEST(EventRouter, EveryOperatorOnEveryFieldMatchesLikeTheFilterCondition) {
  fixture f;
  std::vector<expected_rule> expected;
  int n = 0;
  for (const auto& [type, field] : field_pool())
    for (const auto& [op, value] : operator_pool()) add(*f.router, expected, "r" + std::to_string(n++), {{type, field, op, value}});
  ASSERT_EQ(expected.size(), field_pool().size() * operator_pool().size());  // every one accepted
  expect_same_matches(*f.router, expected, event_pool());
}

TEST(EventRouter, RulesMixingIndexedAndUnindexedConditionsMatchLikeTheFilterConditions) {
  fixture f;
  std::vector<expected_rule> expected;
  const auto fields = field_pool();
  const auto ops = operator_pool();
  const auto values = value_pool();
  std::mt19937 rng(6);
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  for (int i = 0; i < 600; ++i) {
    std::vector<cond> cs;
    const std::size_t k = 1 + pick(4);
    for (std::size_t j = 0; j < k; ++j) {
      const auto& [type, field] = fields[pick(fields.size())];
      if (pick(4) == 0) {  // an indexable equality / in on a string of the pool
        const auto& v = values[pick(13)];
        cs.push_back({type, field, pick(2) ? "equals" : "in", pick(2) ? v : json::value(json::array{v, "vip"})});
      } else {
        const auto& [op, value] = ops[pick(ops.size())];
        cs.push_back({type, field, op, value});
      }
    }
    add(*f.router, expected, "m" + std::to_string(i), cs, static_cast<std::int64_t>(pick(3)));
  }
  ASSERT_GT(expected.size(), 400u);
  expect_same_matches(*f.router, expected, event_pool());
}

// The prefilter takes `contains` values as literals: "a.c" is not a pattern matching "aXc".
TEST(EventRouter, ContainsValuesWithRegexMetacharactersAreLiterals) {
  fixture f;
  add_fillers(*f.router, "s");
  int n = 0;
  for (const char* v : {"a.c", "(ab)", "[^$]", "\\", "a+", "x|y", "^abc", "abc$", ".*"})
    ASSERT_TRUE(f.router->add_route(rule_json("lit" + std::to_string(n++), {{"payload", "s", "contains", json::value(v)}})));
  auto matched = [&](const char* s) {
    event e = event_with(json::value(s), 1);
    return ids_of(f.router->routes_for_event(e));
  };
  EXPECT_EQ(matched("aXc"), std::vector<std::string>{});
  EXPECT_EQ(matched("abc"), std::vector<std::string>{});
  EXPECT_EQ(matched("xy"), std::vector<std::string>{});
  EXPECT_EQ(matched("a.c"), std::vector<std::string>{"lit0"});
  EXPECT_EQ(matched("1(ab)2"), std::vector<std::string>{"lit1"});
  EXPECT_EQ(matched("[^$]"), std::vector<std::string>{"lit2"});
  EXPECT_EQ(matched("a\\b"), std::vector<std::string>{"lit3"});
  EXPECT_EQ(matched("aa+"), std::vector<std::string>{"lit4"});
  EXPECT_EQ(matched("x|y"), std::vector<std::string>{"lit5"});
  EXPECT_EQ(matched("0^abc$.*"), (std::vector<std::string>{"lit6", "lit7", "lit8"}));
}

TEST(EventRouter, ContainsIsCaseSensitiveAndRegexFlagsApply) {
  fixture f;
  add_fillers(*f.router, "s");
  ASSERT_TRUE(f.router->add_route(rule_json("lower", {{"payload", "s", "contains", json::value("vip")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("upper", {{"payload", "s", "contains", json::value("VIP")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("any-case", {{"payload", "s", "regex", json::value("(?i)^vip")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("exact", {{"payload", "s", "regex", json::value("^vip$")}})));
  auto matched = [&](const char* s) {
    auto ids = ids_of(f.router->routes_for_event(event_with(json::value(s), 1)));
    return std::set<std::string>(ids.begin(), ids.end());
  };
  EXPECT_EQ(matched("vip"), (std::set<std::string>{"lower", "any-case", "exact"}));
  EXPECT_EQ(matched("VIP customer"), (std::set<std::string>{"upper", "any-case"}));
  EXPECT_EQ(matched("Vip"), (std::set<std::string>{"any-case"}));
  EXPECT_EQ(matched("a vip"), (std::set<std::string>{"lower"}));
}

// contains on an array holds an element equal to the value; on a number, an object, null
// or a missing field nothing: the prefilter (a string search) must not decide those.
TEST(EventRouter, ContainsAndRegexOnNonStringAndMissingFields) {
  fixture f;
  add_fillers(*f.router, "s");
  for (const char* v : {"vip", "vi", "12", "k"})
    ASSERT_TRUE(f.router->add_route(rule_json(std::string("c-") + v, {{"payload", "s", "contains", json::value(v)}})));
  ASSERT_TRUE(f.router->add_route(rule_json("re-vip", {{"payload", "s", "regex", json::value("vip")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("re-12", {{"payload", "s", "regex", json::value("12")}})));
  auto matched = [&](json::value v) {
    auto ids = ids_of(f.router->routes_for_event(event_with(v, 1)));
    return std::set<std::string>(ids.begin(), ids.end());
  };
  EXPECT_EQ(matched(json::array{"vip", "x"}), (std::set<std::string>{"c-vip"}));
  EXPECT_EQ(matched(json::array{"12"}), (std::set<std::string>{"c-12"}));
  EXPECT_EQ(matched(json::value(12)), (std::set<std::string>{}));
  EXPECT_EQ(matched(json::value(112.5)), (std::set<std::string>{}));
  EXPECT_EQ(matched(json::object{{"k", "vip"}}), (std::set<std::string>{}));
  EXPECT_EQ(matched(json::value(nullptr)), (std::set<std::string>{}));
  EXPECT_EQ(matched(json::value("a vip 12")), (std::set<std::string>{"c-vip", "c-vi", "c-12", "re-vip", "re-12"}));
  event bare = event_with(json::value("x"), 1);
  bare.payload = {};
  EXPECT_TRUE(f.router->routes_for_event(bare).empty());
}

TEST(EventRouter, NotInAndNotEqualsOnMissingFieldsDoNotMatch) {
  fixture f;
  ASSERT_TRUE(f.router->add_route(rule_json("not-in", {{"payload", "tier", "not_in", json::value(json::array{"gold"})}})));
  ASSERT_TRUE(f.router->add_route(rule_json("not-eq", {{"payload", "tier", "not_equals", json::value("gold")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("in", {{"payload", "tier", "in", json::value(json::array{"gold", 1})}})));
  event e = event_with(json::value("x"), 1);
  EXPECT_TRUE(f.router->routes_for_event(e).empty());
  e.payload["tier"] = "silver";
  EXPECT_EQ(ids_of(f.router->routes_for_event(e)), (std::vector<std::string>{"not-eq", "not-in"}));
  e.payload["tier"] = 1.0;
  EXPECT_EQ(ids_of(f.router->routes_for_event(e)), (std::vector<std::string>{"in", "not-eq", "not-in"}));
}

// Rules sharing one contains value all match; results are by priority then id; a disabled
// rule is never matched but explained.
TEST(EventRouter, PrefilteredRulesSharingAValueAllMatchInPriorityOrder) {
  fixture f;
  add_fillers(*f.router, "s");
  ASSERT_TRUE(f.router->add_route(rule_json("b", {{"payload", "s", "contains", json::value("vip")}}, 1)));
  ASSERT_TRUE(f.router->add_route(rule_json("a", {{"payload", "s", "contains", json::value("vip")}}, 1)));
  ASSERT_TRUE(f.router->add_route(rule_json("c", {{"payload", "s", "contains", json::value("vip")}}, 5)));
  ASSERT_TRUE(f.router->add_route(rule_json("d", {{"payload", "s", "contains", json::value("vip")},
                                                  {"payload", "a.b", "contains", json::value("nope")}}, 9)));
  auto off = rule_json("off", {{"payload", "s", "contains", json::value("vip")}}, 9);
  off["enabled"] = false;
  ASSERT_TRUE(f.router->add_route(off));
  const event e = event_with(json::value("vip"), 1);
  EXPECT_EQ(ids_of(f.router->routes_for_event(e)), (std::vector<std::string>{"c", "a", "b"}));
  auto why = f.router->explain(e);
  ASSERT_EQ(why.size(), 5u + 24u);
  EXPECT_EQ(why[0].rule_id, "d");
  EXPECT_FALSE(why[0].matched);
  EXPECT_EQ(why[0].reasons, (std::vector<std::string>{"conditions[0] (payload contains s): true",
                                                      "conditions[1] (payload contains a.b): false"}));
  EXPECT_EQ(why[1].rule_id, "off");
  EXPECT_FALSE(why[1].matched);
  EXPECT_EQ(why[1].reasons, (std::vector<std::string>{"the rule is disabled", "conditions[0] (payload contains s): true"}));
}

// Before 2026-12-03 a rule indexed by a string equality on a field whose path has a
// bracketed key followed by a dot ("['x'].y") was looked up at the wrong path (payload.y)
// and never matched.
TEST(EventRouter, RegressionIndexedEqualityOnABracketedPathResolvesTheConditionsPath) {
  fixture f;
  ASSERT_TRUE(f.router->add_route(rule_json("bracket", {{"payload", "['x'].y", "equals", json::value("v")}})));
  ASSERT_TRUE(f.router->add_route(rule_json("meta", {{"metadata", "['x'].y", "in", json::value(json::array{"v"})}})));
  event e = event_with(json::value("v"), 1);
  e.metadata["x"] = json::object{{"y", "v"}};
  EXPECT_EQ(ids_of(f.router->routes_for_event(e)), (std::vector<std::string>{"bracket", "meta"}));
  e.payload["y"] = "v";  // the path the old lookup used
  e.metadata["y"] = "v";
  e.payload["x"] = json::object{{"y", "w"}};
  e.metadata["x"] = json::object{{"y", "w"}};
  EXPECT_TRUE(f.router->routes_for_event(e).empty());
}

// Matching threads share a snapshot whose prefilter is built by the first of them.
TEST(EventRouter, ConcurrentMatchingOnAFreshSnapshotAgrees) {
  fixture f;
  for (int i = 0; i < 200; ++i)
    ASSERT_TRUE(f.router->add_route(
        rule_json("c" + std::to_string(i), {{"payload", "s", "contains", json::value("c-" + std::to_string(i) + "!")}})));
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const int k = (i * 7 + t) % 200;
        auto ids = ids_of(f.router->routes_for_event(event_with(json::value("c-" + std::to_string(k) + "!"), 1)));
        if (ids != std::vector<std::string>{"c" + std::to_string(k)}) ++wrong;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  // process_batch delivers each event to its one rule.
  std::vector<event> events;
  for (int i = 0; i < 300; ++i) events.push_back(event_with(json::value("c-" + std::to_string(i) + "!"), i + 1));
  std::vector<const event*> ptrs;
  for (const auto& e : events) ptrs.push_back(&e);
  const auto before = f.router->delivered();
  ASSERT_TRUE(f.router->process_batch(ptrs));
  EXPECT_EQ(f.router->delivered() - before, 200u);
}

// load() reads only the lifecycle events after the last position it read, and still sees
// every change another node makes.
TEST(EventRouter, LoadIsIncrementalAndSeesOtherNodesChanges) {
  fixture a;
  fixture b(a.store.get());
  auto append_other = [&] {
    append_request req;
    req.aggregate_id = "order-1";
    new_event ne;
    ne.type = "order.placed";
    ne.aggregate_type = "order";
    ne.payload = {{"s", "vip"}};
    ne.metadata = {{"sourceSystem", "test"}, {"sourceVersion", "1"}};
    req.events.push_back(std::move(ne));
    auto ok = a.store->append(std::move(req));
    ASSERT_TRUE(ok) << ok.error().message;
  };
  EXPECT_EQ(b.router->loaded_through(), log_position(0));
  ASSERT_TRUE(b.router->load());
  EXPECT_TRUE(b.router->empty());
  ASSERT_TRUE(a.router->add_route(rule_json("one", {{"payload", "s", "contains", json::value("vip")}})));
  ASSERT_TRUE(a.router->add_route(rule_json("two", {{"payload", "s", "contains", json::value("vi")}})));
  append_other();
  ASSERT_TRUE(b.router->load());
  EXPECT_EQ(b.router->loaded_through(), a.store->head());
  const event e = event_with(json::value("vip"), 1);
  EXPECT_EQ(ids_of(b.router->routes_for_event(e)), (std::vector<std::string>{"one", "two"}));
  // Nothing new: the position still moves to the head, past events that are not rules'.
  append_other();
  ASSERT_TRUE(b.router->load());
  EXPECT_EQ(b.router->loaded_through(), a.store->head());
  ASSERT_TRUE(a.router->update_route("one", rule_json("one", {{"payload", "s", "contains", json::value("zzz")}})));
  ASSERT_TRUE(a.router->remove_route("two"));
  ASSERT_TRUE(a.router->add_route(rule_json("three", {{"payload", "s", "regex", json::value("^v")}})));
  ASSERT_TRUE(b.router->load());
  EXPECT_EQ(ids_of(b.router->routes_for_event(e)), (std::vector<std::string>{"three"}));
  EXPECT_EQ(ids_of(b.router->list()), (std::vector<std::string>{"one", "three"}));
  // Its own changes come back through load() once and change nothing.
  ASSERT_TRUE(b.router->add_route(rule_json("four", {{"event_type", "", "equals", json::value("t")}})));
  ASSERT_TRUE(b.router->load());
  ASSERT_TRUE(b.router->load());
  EXPECT_EQ(b.router->list().size(), 3u);
  // A router started later replays everything on its first load.
  fixture c(a.store.get());
  ASSERT_TRUE(c.router->load());
  EXPECT_EQ(ids_of(c.router->list()), (std::vector<std::string>{"four", "one", "three"}));
  EXPECT_EQ(c.router->loaded_through(), a.store->head());
}

}  // namespace
}  // namespace pliers
