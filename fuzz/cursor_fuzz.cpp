// Query cursors: decode_cursor on arbitrary text. Invariants: what decodes is a position
// >= 0, and encoding it gives a cursor that decodes to the same position.
#include <cstring>
#include <string_view>

#include "core/event_query.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = pliers::decode_cursor(text);
  if (c) {
    FUZZ_CHECK(c->value >= 0, "a cursor decoded to a negative position");
    auto again = pliers::decode_cursor(pliers::encode_cursor(*c));
    FUZZ_CHECK(again && again->value == c->value, "encode/decode do not round-trip");
  }
  if (size >= 8) {  // any position encodes to a cursor that decodes back to it
    std::int64_t v;
    std::memcpy(&v, data, 8);
    if (v < 0) v = -(v + 1);
    auto back = pliers::decode_cursor(pliers::encode_cursor(pliers::log_position(v)));
    FUZZ_CHECK(back && back->value == v, "encode_cursor output is refused by decode_cursor");
  }
  return 0;
}
