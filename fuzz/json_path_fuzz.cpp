// JSONQuery paths: json_path::parse on arbitrary text, then resolve against documents.
// Invariants: a parsed path's text parses again to the same steps.
#include <boost/json.hpp>
#include <string_view>

#include "core/json_query.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const boost::json::value doc = boost::json::parse(
      R"({"a":{"b":[0,1,{"c":"x"}]},"items":[{"sku":"x1"}],"key with spaces":1,"":{"":2},"0":[[[3]]]})");
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto p = pliers::json_path::parse(text);
  if (!p) return 0;
  (void)p->resolve(doc);
  (void)p->resolve(boost::json::value(nullptr));
  auto again = pliers::json_path::parse(p->text());
  FUZZ_CHECK(again.has_value(), "a parsed path's text does not parse again");
  FUZZ_CHECK(again->steps() == p->steps(), "a path's text parses to other steps");
  return 0;
}
