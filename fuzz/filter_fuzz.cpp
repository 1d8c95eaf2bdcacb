// Event filters and condition trees (WebSocket/SSE subscriptions, DESIGN "Distribution"):
// parse_json -> event_filter::from_json and condition::from_json, then evaluated against a
// few events so every operator (regex, in, prefix, gt, ...) runs on fuzzed values.
#include <boost/json.hpp>
#include <string_view>

#include "core/event_codec.hpp"
#include "core/event_filter.hpp"
#include "fuzz_check.hpp"

namespace {

const std::vector<pliers::event>& sample_events() {
  static const std::vector<pliers::event> events = [] {
    std::vector<pliers::event> out;
    const char* payloads[] = {R"({"a":1,"b":[1,2,{"c":"x"}],"s":"hello","n":null,"t":true})",
                              R"({"items":[{"sku":"x1","qty":2.5}],"big":18446744073709551615,"neg":-9223372036854775808})",
                              R"({})"};
    std::int64_t pos = 1;
    for (const char* p : payloads) {
      pliers::event e;
      e.id = "00000000-0000-4000-8000-00000000000" + std::to_string(pos);
      e.type = pos == 1 ? "form.created" : "submission.item.added";
      e.aggregate_id = "agg-" + std::to_string(pos);
      e.aggregate_type = "form";
      e.sequence = pliers::sequence_number(pos);
      e.position = pliers::log_position(pos++);
      e.payload = boost::json::parse(p).as_object();
      e.metadata = boost::json::object{{"sourceSystem", "fuzz"}, {"routingKey", "eu.forms"}, {"tags", boost::json::array{"a"}}};
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
  if (auto f = pliers::event_filter::from_json(*v, "filter"); f)
    for (const auto& e : sample_events()) (void)f->matches(e);
  if (auto c = pliers::condition::from_json(*v, "conditions"); c)
    for (const auto& e : sample_events()) (void)c->matches(e);
  return 0;
}
