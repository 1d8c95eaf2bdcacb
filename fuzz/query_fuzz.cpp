// Query bodies: parse_json -> event_query_from_json / pagination_from_json (the POST
// /v1/events/query path: type patterns, JSON queries and their paths, RE2 regexes,
// timestamps, cursors), then the compiled query is evaluated against a few events so
// json_query::matches (equals, contains, exists, regex) runs on fuzzed values.
#include <boost/json.hpp>
#include <string_view>

#include "core/event_codec.hpp"
#include "core/event_query.hpp"
#include "fuzz_check.hpp"

namespace {

const std::vector<pliers::event>& sample_events() {
  static const std::vector<pliers::event> events = [] {
    std::vector<pliers::event> out;
    const char* payloads[] = {R"({"a":1,"b":[1,2,{"c":"x"}],"s":"hello","n":null,"t":true})",
                              R"({"items":[{"sku":"x1","qty":2.5}],"key with spaces":{"deep":[[[]]]}})",
                              R"({})"};
    std::int64_t pos = 1;
    for (const char* p : payloads) {
      pliers::event e;
      e.id = "00000000-0000-4000-8000-00000000000" + std::to_string(pos);
      e.type = pos == 1 ? "form.created" : "submission.item.added";
      e.aggregate_id = "agg-" + std::to_string(pos);
      e.aggregate_type = "form";
      e.sequence = pliers::sequence_number(1);
      e.position = pliers::log_position(pos++);
      e.payload = boost::json::parse(p).as_object();
      e.metadata = boost::json::object{{"sourceSystem", "fuzz"}, {"userId", "u1"}, {"tags", boost::json::array{"a", "b"}}};
      out.push_back(std::move(e));
    }
    return out;
  }();
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto v = pliers::parse_json(text, pliers::json_limits{64});
  if (!v) return 0;
  const auto* o = v->if_object();
  const boost::json::value* qv = o ? o->if_contains("query") : nullptr;
  const boost::json::value* pv = o ? o->if_contains("pagination") : nullptr;
  auto q = pliers::event_query_from_json(qv ? *qv : *v, "query");
  if (pv) (void)pliers::pagination_from_json(*pv, "pagination");
  if (!q) return 0;
  for (const auto& e : sample_events()) (void)q->matches(e);
  for (const auto& jq : q->payload_query) {
    // A compiled query describes itself as JSON that compiles to the same query.
    auto again = pliers::json_query::from_json(boost::json::value(jq.to_json()), "again");
    FUZZ_CHECK(again.has_value(), "json_query::to_json does not compile back");
  }
  for (const auto& p : q->event_types) {
    auto again = pliers::type_pattern::parse(p.text());
    FUZZ_CHECK(again.has_value(), "a type pattern's text does not parse back");
    if (p.is_literal()) FUZZ_CHECK(p.matches(p.text()), "a literal type pattern does not match itself");
  }
  return 0;
}
