// HTTP request handling without the network: the bytes go through Beast's request_parser
// with the server's limits (16 KiB of headers, a body limit), pipelined requests one after
// another, each delivered in two pieces split where the input says; every complete request
// is routed the way src/server routes it (origin-form target, path segments, query
// parameters, JSON body) into the same parse functions the handlers call. The handlers
// themselves are coroutines bound to a live server (server.cpp) and are not driven here.
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url.hpp>
#include <charconv>
#include <string_view>

#include "core/event_codec.hpp"
#include "core/event_query.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "core/validation.hpp"
#include "fuzz_check.hpp"

namespace http = boost::beast::http;

namespace {

void route(const http::request<http::string_body>& req) {
  auto parsed = boost::urls::parse_origin_form(req.target());
  if (!parsed) return;
  std::vector<std::string> segs;
  for (auto seg : parsed->segments()) segs.push_back(std::string(seg));
  if (!segs.empty() && segs.back().empty()) segs.pop_back();
  auto json_body = [&]() -> pliers::result<boost::json::value> {
    auto ct = req[http::field::content_type];
    if (!ct.empty() && ct.find("json") == std::string_view::npos) return pliers::error::invalid("Content-Type", "x");
    if (req.body().empty()) return pliers::error::invalid("body", "x");
    return pliers::parse_json(req.body(), pliers::json_limits{64});
  };
  if (segs.size() >= 3 && segs[0] == "v1" && segs[1] == "aggregates") {
    if (!pliers::validate_aggregate_id(segs[2])) return;
    for (auto p : parsed->params()) {
      std::string v = p.value;
      std::int64_t n = 0;
      (void)std::from_chars(v.data(), v.data() + v.size(), n);
    }
    if (segs.size() == 4 && segs[3] == "events" && req.method() == http::verb::post) {
      auto body = json_body();
      if (!body) return;
      auto ar = pliers::append_request_from_json(std::move(*body), segs[2]);
      if (ar) (void)pliers::validate_append(*ar);
    }
    return;
  }
  if (segs.size() == 2 && segs[0] == "v1" && segs[1] == "events") {
    for (auto p : parsed->params()) {
      const std::string key = p.key, value = p.has_value ? std::string(p.value) : std::string();
      if (key == "type") (void)pliers::type_pattern::parse(value, "type");
      else if (key == "from" || key == "to") (void)pliers::parse_rfc3339(value);
      else if (key == "limit") (void)pliers::parse_limit(value, "limit");
      else if (key == "cursor") (void)pliers::decode_cursor(value);
    }
    return;
  }
  if (segs.size() == 3 && segs[0] == "v1" && segs[1] == "events") {
    if (segs[2] == "query") {
      auto body = json_body();
      if (!body || !body->is_object()) return;
      const auto& o = body->get_object();
      if (const auto* q = o.if_contains("query")) (void)pliers::event_query_from_json(*q, "query");
      if (const auto* p = o.if_contains("pagination")) (void)pliers::pagination_from_json(*p, "pagination");
    } else if (pliers::is_uuid(segs[2])) {
      FUZZ_CHECK(pliers::is_uuid(pliers::canonical_uuid(segs[2])), "canonical_uuid of a UUID is not a UUID");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t split = data[0];
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int request = 0; request < 8 && !in.empty(); ++request) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(64 * 1024);
    parser.eager(true);
    boost::beast::error_code ec;
    std::size_t used = 0;
    // Two deliveries: the first `split` bytes, then the rest (as a socket might).
    for (std::size_t avail : {std::min(split, in.size()), in.size()}) {
      while (!ec && used < avail && !parser.is_done()) {
        auto n = parser.put(boost::asio::buffer(in.data() + used, avail - used), ec);
        if (ec == http::error::need_more) {
          ec = {};
          if (n == 0) break;
        }
        used += n;
      }
      if (ec || parser.is_done()) break;
    }
    if (!ec && !parser.is_done() && parser.got_some()) parser.put_eof(ec);
    if (ec || !parser.is_done()) return 0;
    FUZZ_CHECK(used <= in.size(), "the parser consumed more than it was given");
    route(parser.get());
    in.remove_prefix(used);
  }
  return 0;
}
