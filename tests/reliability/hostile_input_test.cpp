// Hostile input over HTTP (issue 8), sent byte for byte over raw TCP sockets: malformed and
// truncated JSON, invalid UTF-8 and lone surrogates, duplicate keys, numbers beyond 2^53 and
// beyond int64/double, 100,000-deep nesting, strings near the body limit, slowloris
// headers and bodies, header floods, conflicting Content-Length/Transfer-Encoding, broken
// chunked encoding, pipelining. Each gets a clear 4xx (problem+json whenever a response is
// possible) or the connection is closed; nothing refused is written; and throughout, a
// second, well-behaved client is served promptly (a probe asserts its latency).
//
// The server runs with a 2 s idle (header) timeout and a 3 s request (body) timeout.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

#include "support/fixtures.hpp"
#include "support/raw_http.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t max_body = 4 * 1024 * 1024;

const std::string metadata = R"("metadata":{"sourceSystem":"hostile","sourceVersion":"1"})";

std::string event_with_payload(const std::string& payload_json, const std::string& type = "hostile.test") {
  return R"({"events":[{"type":")" + type + R"(","aggregateType":"hostile","payload":)" + payload_json + "," +
         metadata + "}]}";
}

// Polls /health over a keep-alive connection (and every 8th time over a new one) every
// 50 ms and records the slowest answer and any failure.
class probe {
 public:
  explicit probe(std::string url) : url_(std::move(url)) {
    thread_ = std::thread([this] { run(); });
  }
  ~probe() {
    stop_ = true;
    thread_.join();
  }
  void reset() {
    max_ms_ = 0;
    failures_ = 0;
    count_ = 0;
  }
  long max_ms() const { return max_ms_; }
  int failures() const { return failures_; }
  int count() const { return count_; }

 private:
  void run() {
    std::unique_ptr<http_client> c;
    int i = 0;
    while (!stop_) {
      const auto t0 = std::chrono::steady_clock::now();
      bool ok = false;
      if (!c || ++i % 8 == 0) {
        auto made = http_client::connect(url_, 5s);
        if (made) c = std::move(*made);
      }
      if (c) {
        auto r = c->get("/health");
        ok = r && r->status == 200;
        if (!ok) c.reset();
      }
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      if (!ok) ++failures_;
      max_ms_ = std::max<long>(max_ms_, ms);
      ++count_;
      std::this_thread::sleep_for(50ms);
    }
  }
  std::string url_;
  std::atomic<bool> stop_{false};
  std::atomic<long> max_ms_{0};
  std::atomic<int> failures_{0}, count_{0};
  std::thread thread_;
};

class Hostile : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new temp_dir;
    server_ = new server_process("sqlite:" + (dir_->path() / "events.db").string(), {},
                                 server_launch{"", {{"PLIERS_IDLE_TIMEOUT_SECONDS", "2"},
                                                    {"PLIERS_REQUEST_TIMEOUT_SECONDS", "3"}}});
    server_->start();
    probe_ = new probe(server_->url());
  }
  static void TearDownTestSuite() {
    delete probe_;
    delete server_;
    delete dir_;
  }
  void SetUp() override {
    probe_->reset();
    head_before_ = head();
  }
  void TearDown() override {
    ASSERT_EQ(::waitpid(server_->pid(), nullptr, WNOHANG), 0) << "the server died: " << server_->stderr_text();
    std::this_thread::sleep_for(120ms);  // at least one probe after the last case
    EXPECT_EQ(probe_->failures(), 0) << "the well-behaved client was not served";
    EXPECT_LT(probe_->max_ms(), 1000) << "the well-behaved client waited too long";
    EXPECT_GT(probe_->count(), 0);
  }
  static std::int64_t head() {
    auto r = server_->client()->get("/health");
    return json::parse(r->body).at("headPosition").as_int64();
  }
  static std::string url() { return server_->url(); }

  // Sends one request on a new connection; the answer must be one of `allowed` (a problem
  // document) or, when `close_ok`, the connection may be closed without an answer.
  static void expect_refused(const std::string& name, const std::string& request, std::vector<unsigned> allowed = {400},
                             bool close_ok = false) {
    raw_connection c(url());
    const bool sent = c.send(request);
    auto r = c.read_response(10s);
    if (!r) {
      EXPECT_TRUE(close_ok) << name << ": no response (" << (c.timed_out() ? "timed out" : "closed") << ")";
      EXPECT_FALSE(c.timed_out()) << name << ": the server neither answered nor closed";
      return;
    }
    (void)sent;
    const bool expected = std::find(allowed.begin(), allowed.end(), r->status) != allowed.end();
    EXPECT_TRUE(expected) << name << ": status " << r->status << " " << r->body.substr(0, 300);
    if (!expected) return;
    EXPECT_EQ(r->header("content-type"), "application/problem+json") << name;
    boost::system::error_code ec;
    auto p = json::parse(r->body, ec);
    ASSERT_FALSE(ec) << name << ": problem is not JSON: " << r->body.substr(0, 300);
    EXPECT_EQ(p.at("status").as_int64(), r->status) << name;
    EXPECT_FALSE(p.at("detail").as_string().empty()) << name;
    EXPECT_LT(r->body.size(), 2048u) << name << ": the problem echoes too much of the input";
  }

  static void expect_nothing_written(std::int64_t before) { EXPECT_EQ(head(), before) << "a refused request wrote"; }

  static temp_dir* dir_;
  static server_process* server_;
  static probe* probe_;
  std::int64_t head_before_ = 0;
};

temp_dir* Hostile::dir_ = nullptr;
server_process* Hostile::server_ = nullptr;
probe* Hostile::probe_ = nullptr;

const std::string agg = "/v1/aggregates/hostile-1/events";

}  // namespace

TEST_F(Hostile, TruncatedJsonAtEveryCut) {
  const std::string good = event_with_payload(R"({"a":[1,2.5,{"b":"c\u00e9"}],"t":true,"n":null})");
  raw_connection c(url());  // all on one keep-alive connection: each 400 leaves it usable
  for (std::size_t cut = 0; cut < good.size(); cut += 3) {
    ASSERT_TRUE(c.send(http_request("POST", agg, good.substr(0, cut)))) << cut;
    auto r = c.read_response();
    ASSERT_TRUE(r) << "cut at " << cut << ": no response";
    EXPECT_EQ(r->status, 400u) << "cut at " << cut << ": " << r->body;
    EXPECT_EQ(r->header("content-type"), "application/problem+json");
  }
  expect_nothing_written(head_before_);
  // Malformed, not only truncated.
  for (std::string bad : {"{", "}", "[", "nul", "{\"events\":[}", "{\"events\" [] }", "{'events':[]}",
                          "{\"events\":[],}", "{\"events\":[]} trailing", "\x00\x01\x02", "{\"a\":01}", "{\"a\":.5}",
                          "{\"a\":1e}", "{\"a\":\"\\x41\"}", "{\"a\":\"tab\tin string\"}", "/* c */ {}"})
    expect_refused("malformed " + bad, http_request("POST", agg, bad));
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, InvalidUtf8AndLoneSurrogates) {
  const std::vector<std::pair<std::string, std::string>> strings = {
      {"0xff byte", "\xff"},
      {"overlong NUL", "\xc0\x80"},
      {"overlong slash", "\xe0\x80\xaf"},
      {"UTF-8 encoded surrogate", "\xed\xa0\x80"},
      {"beyond U+10FFFF", "\xf4\x90\x80\x80"},
      {"5-byte form", "\xf8\x88\x80\x80\x80"},
      {"truncated sequence", "\xe2\x82"},
      {"lone continuation", "\x80"},
      {"lone high surrogate escape", "\\ud800"},
      {"lone low surrogate escape", "\\udc00"},
      {"high surrogate then letter", "\\ud800\\u0041"},
      {"reversed pair", "\\udc00\\ud800"},
      {"high surrogate at end", "abc\\ud83d"},
  };
  for (const auto& [name, s] : strings) {
    expect_refused(name + " in payload value", http_request("POST", agg, event_with_payload("{\"s\":\"" + s + "\"}")));
    expect_refused(name + " in payload key", http_request("POST", agg, event_with_payload("{\"" + s + "\":1}")));
    expect_refused(name + " in type", http_request("POST", agg, event_with_payload("{}", "t" + s)));
    expect_refused(name + " in query", http_request("POST", "/v1/events/query",
                                                    R"({"query":{"eventTypes":["x)" + s + R"("]}})"));
  }
  expect_nothing_written(head_before_);
  // A valid pair is fine and reads back as the same character.
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("POST", "/v1/aggregates/hostile-pair/events", event_with_payload(R"({"s":"\ud83d\ude00"})"))));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201u) << r->body;
  ASSERT_TRUE(c.send(http_request("GET", "/v1/aggregates/hostile-pair/events")));
  auto back = c.read_response();
  ASSERT_TRUE(back);
  EXPECT_EQ(json::parse(back->body).at("events").at(0).at("payload").at("s").as_string(), "\xf0\x9f\x98\x80");
}

TEST_F(Hostile, InvalidUtf8InTheQueryString) {
  // Percent-decoding can produce bytes that are not UTF-8: refused or answered, always with
  // valid JSON.
  expect_refused("NUL in aggregate id", http_request("POST", "/v1/aggregates/a%00b/events", event_with_payload("{}")));
  expect_nothing_written(head_before_);
  raw_connection c(url());
  for (std::string q : {"/v1/events?type=%FF", "/v1/events?aggregateId=%C0%80", "/v1/events?aggregateType=%ED%A0%80",
                        "/v1/events?type=a%00b", "/v1/events?cursor=%FF"}) {
    ASSERT_TRUE(c.send(http_request("GET", q)));
    auto r = c.read_response();
    ASSERT_TRUE(r) << q;
    EXPECT_TRUE(r->status == 200 || r->status == 400) << q << ": " << r->status;
    boost::system::error_code ec;
    json::parse(r->body, ec);
    EXPECT_FALSE(ec) << q << ": the answer is not valid JSON: " << r->body.substr(0, 200);
  }
}

TEST_F(Hostile, InvalidUtf8AggregateIdIsRefused) {
  // Regression test (was a known bug, fixed).
  expect_refused("invalid UTF-8 aggregate id", http_request("POST", "/v1/aggregates/a%FFb/events", event_with_payload("{}")));
  expect_refused("overlong aggregate id", http_request("POST", "/v1/aggregates/a%C0%80b/events", event_with_payload("{}")));
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, ProblemsAboutInvalidUtf8AreValidJson) {
  // Regression test (was a known bug, fixed).
  raw_connection c(url());
  for (std::string q : {"/v1/aggregates/%FF", "/v1/aggregates/%FF/snapshot", "/v1/events/%FF", "/v1/events?from=%FF"}) {
    ASSERT_TRUE(c.send(http_request("GET", q)));
    auto r = c.read_response();
    ASSERT_TRUE(r) << q;
    boost::system::error_code ec;
    json::parse(r->body, ec);
    EXPECT_FALSE(ec) << q << ": the answer is not valid JSON: " << r->body.substr(0, 200);
  }
}

TEST_F(Hostile, DuplicateKeysAreRefused) {
  // Regression test (was a known bug, fixed).
  expect_refused("duplicate events", http_request("POST", agg, R"({"events":[],"events":[{"type":"a"}]})"));
  expect_refused("duplicate type",
                 http_request("POST", agg, R"({"events":[{"type":"a","type":"b","aggregateType":"hostile","payload":{},)" +
                                               metadata + "}]}"));
  expect_refused("duplicate payload key", http_request("POST", agg, event_with_payload(R"({"k":1,"k":2})")));
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, DuplicateKeysNeverChangeMeaningSilentlyForIdentity) {
  // Whatever the verdict on duplicate keys, a duplicated "id" must not let one request
  // store an event under an id other than the one an idempotent retry would carry: the
  // event is stored under exactly one of the ids, and a retry of the same bytes is a
  // replay (200), not a second event.
  const std::string a = "11111111-1111-4111-8111-111111111111", b = "22222222-2222-4222-8222-222222222222";
  const std::string body = R"({"events":[{"id":")" + a + R"(","id":")" + b +
                           R"(","type":"t","aggregateType":"hostile","payload":{},)" + metadata + "}]}";
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("POST", "/v1/aggregates/hostile-dup/events", body)));
  auto first = c.read_response();
  ASSERT_TRUE(first);
  if (first->status >= 400) return;  // refused: the better answer
  ASSERT_TRUE(c.send(http_request("POST", "/v1/aggregates/hostile-dup/events", body)));
  auto second = c.read_response();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 200u) << "a retry of the same bytes must be an idempotent replay: " << second->body;
  EXPECT_EQ(head(), head_before_ + 1);
}

TEST_F(Hostile, BigNumbers) {
  raw_connection c(url());
  auto roundtrip = [&](const std::string& literal, const std::string& expect_back) {
    const std::string agg_id = "/v1/aggregates/hostile-num-" + std::to_string(head()) + "/events";
    ASSERT_TRUE(c.send(http_request("POST", agg_id, event_with_payload("{\"n\":" + literal + "}"))));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 201u) << literal << ": " << r->body;
    ASSERT_TRUE(c.send(http_request("GET", agg_id)));
    auto back = c.read_response();
    ASSERT_TRUE(back);
    ASSERT_EQ(back->status, 200u);
    EXPECT_NE(back->body.find("\"n\":" + expect_back + "}"), std::string::npos) << literal << " came back as " << back->body;
  };
  roundtrip("9007199254740993", "9007199254740993");        // 2^53 + 1: exact, not rounded
  roundtrip("-9007199254740993", "-9007199254740993");
  roundtrip("9223372036854775807", "9223372036854775807");  // int64 max
  roundtrip("-9223372036854775808", "-9223372036854775808");
  roundtrip("18446744073709551615", "18446744073709551615");  // uint64 max
  // Beyond uint64: kept as the nearest double (JSON allows it; documented in docs/api.md?).
  roundtrip("18446744073709551616", "1.8446744073709552E19");
  roundtrip("1e-400", "0E0");
  // Integers the engine reads must be refused when out of range, never wrapped.
  for (std::string v : {"9223372036854775808", "18446744073709551616", "1e400", "-1", "1.5", "1e2", "\"1\""})
    expect_refused("expectedVersion " + v, http_request("POST", agg, R"({"expectedVersion":)" + v + R"(,"events":[]})"));
  for (std::string v : {"2147483648", "9223372036854775808", "0", "1.0e400"})
    expect_refused("version " + v, http_request("POST", agg, R"({"events":[{"type":"t","aggregateType":"hostile","version":)" +
                                                                 v + R"(,"payload":{},)" + metadata + "}]}"));
  expect_refused("limit beyond int64", http_request("POST", "/v1/events/query",
                                                     R"({"pagination":{"limit":99999999999999999999999}})"));
  expect_refused("sequenceRange beyond int64", http_request("POST", "/v1/events/query",
                                                             R"({"query":{"sequenceRange":{"from":1e400}}})"));
}

TEST_F(Hostile, SnapshotSequenceBeyondInt64Is400) {
  // Regression test (was a known bug, fixed).
  expect_refused("snapshot sequence beyond int64",
                 http_request("PUT", "/v1/aggregates/hostile-1/snapshot", R"({"sequenceNumber":18446744073709551615,"data":{}})"),
                 {400, 404});
}

TEST_F(Hostile, NumbersBeyondDoubleRangeDoNotPoisonTheLog) {
  // Regression test (was a known bug, fixed).
  for (std::string v : {"1e400", "-1e400", "1e99999"}) {
    expect_refused("payload number " + v, http_request("POST", "/v1/aggregates/hostile-inf/events", event_with_payload("{\"n\":" + v + "}")));
    expect_refused("snapshot number " + v,
                   http_request("PUT", "/v1/aggregates/hostile-inf/snapshot", R"({"sequenceNumber":1,"data":{"n":)" + v + "}}"),
                   {400, 404});
  }
  auto r = server_->client()->post("/v1/events/query", R"({"query":{}})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u) << "the log is no longer readable: " << r->body;
}

TEST_F(Hostile, DeepNesting) {
  const std::size_t depth = 100000;
  const std::string arrays = std::string(depth, '[') + std::string(depth, ']');
  std::string objects;
  for (std::size_t i = 0; i < depth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(depth, '}');
  expect_refused("100,000 nested arrays in payload", http_request("POST", agg, event_with_payload("{\"x\":" + arrays + "}")));
  expect_refused("100,000 nested objects in payload", http_request("POST", agg, event_with_payload(objects)));
  expect_refused("100,000 nested arrays as body", http_request("POST", agg, arrays));
  expect_refused("100,000 unclosed arrays", http_request("POST", agg, std::string(depth, '[')));
  expect_refused("nested query value", http_request("POST", "/v1/events/query",
                                                    R"({"query":{"payloadQuery":{"path":"$.a","operator":"equals","value":)" +
                                                        arrays + "}}}"));
  expect_refused("deep snapshot", http_request("PUT", "/v1/aggregates/hostile-1/snapshot",
                                               R"({"sequenceNumber":1,"data":{"x":)" + arrays + "}}"),
                 {400, 404});
  // A path of 100,000 steps: refused or answered, quickly and without a crash.
  std::string path = "$";
  for (int i = 0; i < 100000; ++i) path += ".a";
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("POST", "/v1/events/query",
                                  R"({"query":{"payloadQuery":{"path":")" + path + R"(","operator":"exists"}}})")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 200 || r->status == 400) << r->status;
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, HugeStringsNearTheBodyLimit) {
  const std::string envelope = event_with_payload(R"({"s":""})");
  const std::size_t room = max_body - envelope.size();
  // Just under the limit: accepted, stored and read back whole.
  {
    const std::string body = event_with_payload("{\"s\":\"" + std::string(room - 64, 'x') + "\"}");
    ASSERT_LE(body.size(), max_body);
    raw_connection c(url());
    ASSERT_TRUE(c.send(http_request("POST", "/v1/aggregates/hostile-big/events", body)));
    auto r = c.read_response(30s);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 201u) << r->body;
    ASSERT_TRUE(c.send(http_request("GET", "/v1/aggregates/hostile-big/events")));
    auto back = c.read_response(30s);
    ASSERT_TRUE(back);
    EXPECT_EQ(json::parse(back->body).at("events").at(0).at("payload").at("s").as_string().size(), room - 64);
  }
  const auto before = head();
  // One byte over: 413 (or the connection closes before the body is read).
  expect_refused("body one byte over the limit",
                 http_request("POST", agg, event_with_payload("{\"s\":\"" + std::string(room + 1, 'x') + "\"}")), {413}, true);
  // Huge strings where short ones belong: refused, and the problem does not echo them.
  const std::string huge(max_body - 4096, 'y');
  expect_refused("huge type", http_request("POST", agg, event_with_payload("{}", huge)));
  expect_refused("huge unknown member", http_request("POST", agg, "{\"" + huge + "\":1}"));
  expect_refused("huge aggregate type",
                 http_request("POST", agg, R"({"events":[{"type":"t","aggregateType":")" + huge + R"(","payload":{},)" + metadata + "}]}"));
  expect_refused("10,001 events", http_request("POST", agg, [] {
                   std::string s = "{\"events\":[";
                   for (int i = 0; i < 10001; ++i)
                     s += std::string(i ? "," : "") + R"({"type":"t","aggregateType":"hostile","payload":{},)" + metadata + "}";
                   return s + "]}";
                 }()));
  expect_nothing_written(before);
}

TEST_F(Hostile, ProblemsDoNotEchoHugeInput) {
  // Regression test (was a known bug, fixed).
  expect_refused("huge regex", http_request("POST", "/v1/events/query",
                                            R"({"query":{"payloadQuery":{"path":"$.a","operator":"regex","value":")" +
                                                std::string(1 << 20, '(') + R"("}}})"));
}

TEST_F(Hostile, SlowlorisHeadersAreCutOffByTheIdleTimeout) {
  // 40 clients each send the request line and headers one byte per second. The server
  // (idle timeout 2 s) must close them long before they finish, while the probe is served.
  const std::string req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + std::string(40, 's') + "\r\n\r\n";
  std::vector<std::unique_ptr<raw_connection>> conns;
  for (int i = 0; i < 40; ++i) conns.push_back(std::make_unique<raw_connection>(url()));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<bool> open(conns.size(), true);
  std::size_t sent = 0;
  while (std::chrono::steady_clock::now() - t0 < 8s && sent < req.size()) {
    for (std::size_t i = 0; i < conns.size(); ++i)
      if (open[i]) open[i] = conns[i]->send(req.substr(sent, 1));
    ++sent;
    if (std::none_of(open.begin(), open.end(), [](bool b) { return b; })) break;
    std::this_thread::sleep_for(1s);
  }
  // Every slow connection ends closed (a 4xx before closing is fine too).
  for (auto& c : conns) {
    auto r = c->read_response(3s);
    if (r) {
      EXPECT_GE(r->status, 400u) << "a slowloris request was served";
    }
    EXPECT_TRUE(c->wait_closed(3s)) << "a slowloris connection is still open";
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 9s);
  EXPECT_LT(sent, req.size()) << "the whole slow request got through";
}

TEST_F(Hostile, SlowBodyIsCutOffByTheRequestTimeout) {
  // Headers at once, then a body one byte per second: the request timeout (3 s) ends it.
  const std::string body = event_with_payload("{}");
  raw_connection c(url());
  ASSERT_TRUE(c.send("POST " + agg + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n"));
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t i = 0;
  for (; i < body.size() && std::chrono::steady_clock::now() - t0 < 8s; ++i) {
    if (!c.send(body.substr(i, 1))) break;
    std::this_thread::sleep_for(1s);
  }
  auto r = c.read_response(3s);
  if (r) {
    EXPECT_GE(r->status, 400u);
  }
  EXPECT_TRUE(c.wait_closed(3s));
  EXPECT_LT(i, body.size()) << "the slow body was read to the end";
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, IdleConnectionFlood) {
  // 300 connections that say nothing: the probe is still served, and they are closed by
  // the idle timeout.
  std::vector<std::unique_ptr<raw_connection>> conns;
  for (int i = 0; i < 300; ++i) conns.push_back(std::make_unique<raw_connection>(url()));
  std::this_thread::sleep_for(500ms);
  auto r = server_->client()->get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  for (auto& c : conns) EXPECT_TRUE(c->wait_closed(5s)) << "an idle connection outlived the idle timeout";
}

TEST_F(Hostile, HeaderFloods) {
  std::string many;
  for (int i = 0; i < 3000; ++i) many += "X-Flood-" + std::to_string(i) + ": v\r\n";
  // docs/api.md promises 431 beyond 16 KiB; today these get 400 (see HeadersUpTo16KiB).
  expect_refused("3,000 headers", http_request("GET", "/health", {}, {}, many), {400, 431}, true);
  expect_refused("one 20 KiB header", http_request("GET", "/health", {}, {}, "X-Big: " + std::string(20 * 1024, 'h') + "\r\n"),
                 {400, 431}, true);
  expect_refused("20 KiB request target", http_request("GET", "/v1/events?type=" + std::string(20 * 1024, 'a')),
                 {400, 414, 431}, true);
  expect_refused("header without a colon", "GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", {400}, true);
  expect_refused("header name with a space", "GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", {400}, true);
  expect_refused("bare LF line ends", "GET /health HTTP/1.1\nHost: x\n\n", {400}, true);
  expect_refused("NUL in a header", std::string("GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 43), {400}, true);
  // Many headers still under 8 KiB are fine. (Obsolete line folding is accepted as a
  // space, which RFC 9112 allows.)
  std::string some;
  for (int i = 0; i < 300; ++i) some += "X-Ok-" + std::to_string(i) + ": v\r\n";
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("GET", "/health", {}, {}, some)));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
}

TEST_F(Hostile, HeadersUpTo16KiBAreServedAndBeyondAre431) {
  // Regression test (was a known bug, fixed).
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("GET", "/health", {}, {}, "X-Twelve: " + std::string(12 * 1024, 't') + "\r\n")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u) << "a 12 KiB header is within the documented 16 KiB: " << r->body;
  expect_refused("one 20 KiB header", http_request("GET", "/health", {}, {}, "X-Big: " + std::string(20 * 1024, 'h') + "\r\n"),
                 {431});
}

TEST_F(Hostile, ConflictingFraming) {
  const std::string body = event_with_payload("{}");
  const std::string cl = "Content-Length: " + std::to_string(body.size()) + "\r\n";
  const std::string start = "POST " + agg + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
  // Content-Length and Transfer-Encoding together (request smuggling): refused, and the
  // request hidden behind the framing is never answered.
  {
    raw_connection c(url());
    ASSERT_TRUE(c.send(start + cl + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"));
    auto r = c.read_response();
    if (r) {
      EXPECT_EQ(r->status, 400u) << r->body;
      auto second = c.read_response(3s);
      EXPECT_FALSE(second) << "the smuggled request was answered: " << second->status;
    }
    EXPECT_TRUE(c.wait_closed(3s));
  }
  expect_refused("TE then CL", start + "Transfer-Encoding: chunked\r\n" + cl + "\r\n0\r\n\r\n", {400}, true);
  expect_refused("two different Content-Lengths", start + cl + "Content-Length: 3\r\n\r\n" + body, {400}, true);
  expect_refused("Content-Length list", start + "Content-Length: 5, 6\r\n\r\n" + body, {400}, true);
  expect_refused("negative Content-Length", start + "Content-Length: -1\r\n\r\n", {400}, true);
  expect_refused("Content-Length not a number", start + "Content-Length: abc\r\n\r\n", {400}, true);
  expect_refused("Content-Length beyond 2^64", start + "Content-Length: 99999999999999999999999\r\n\r\n", {400, 413}, true);
  expect_refused("Content-Length beyond the body limit", start + "Content-Length: 99999999\r\n\r\n", {413}, true);
  expect_refused("unknown transfer coding", start + "Transfer-Encoding: gzip\r\n\r\n" + body, {400, 411, 501}, true);
  expect_refused("chunked not last", start + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", {400, 501}, true);
  expect_refused("POST without a length", start + "\r\n", {400, 411}, true);
  expect_nothing_written(head_before_);
}

TEST_F(Hostile, BadChunkedEncoding) {
  const std::string start =
      "POST " + agg + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  expect_refused("chunk size not hex", start + "zz\r\nabc\r\n0\r\n\r\n", {400}, true);
  expect_refused("chunk size overflow", start + "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", {400, 413}, true);
  expect_refused("chunk longer than its size", start + "2\r\nabcdef\r\n0\r\n\r\n", {400}, true);
  expect_refused("missing CRLF after chunk", start + "3\r\nabc0\r\n\r\n", {400}, true);
  expect_refused("negative chunk size", start + "-3\r\nabc\r\n0\r\n\r\n", {400}, true);
  expect_refused("chunk extension flood", start + "3;" + std::string(20000, 'e') + "\r\nabc\r\n0\r\n\r\n", {400, 413}, true);
  // Chunks adding up to more than the body limit: 413 (or closed).
  {
    raw_connection c(url());
    bool ok = c.send(start);
    const std::string chunk = "100000\r\n" + std::string(0x100000, 'z') + "\r\n";
    for (int i = 0; i < 5 && ok; ++i) ok = c.send(chunk);
    auto r = c.read_response();
    if (r) {
      EXPECT_EQ(r->status, 413u) << r->body;
    }
    EXPECT_TRUE(c.wait_closed(5s));
  }
  // Truncated chunked body, then the client goes away: nothing stored, nothing stuck.
  {
    raw_connection c(url());
    ASSERT_TRUE(c.send(start + "5\r\n{\"eve"));
  }
  expect_nothing_written(head_before_);
  // Valid chunked framing is understood (body split at awkward places).
  const std::string body = event_with_payload("{\"chunked\":true}");
  std::string chunked = start;
  for (std::size_t at = 0; at < body.size(); at += 7) {
    const auto part = body.substr(at, 7);
    char size[16];
    std::snprintf(size, sizeof size, "%zx", part.size());
    chunked += std::string(size) + "\r\n" + part + "\r\n";
  }
  chunked += "0\r\n\r\n";
  raw_connection c(url());
  ASSERT_TRUE(c.send(chunked));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201u) << r->body;
  EXPECT_EQ(head(), head_before_ + 1);
}

TEST_F(Hostile, PipelinedRequests) {
  const std::string append = http_request("POST", "/v1/aggregates/hostile-pipe/events", event_with_payload("{}"));
  raw_connection c(url());
  ASSERT_TRUE(c.send(http_request("GET", "/health") + append + http_request("GET", "/v1/aggregates/hostile-pipe") +
                     http_request("POST", agg, "{bad") + http_request("GET", "/nowhere") + append +
                     http_request("GET", "/v1/aggregates/hostile-pipe/events")));
  std::vector<unsigned> statuses;
  for (int i = 0; i < 7; ++i) {
    auto r = c.read_response();
    ASSERT_TRUE(r) << "response " << i << " missing";
    statuses.push_back(r->status);
    if (i == 6) {
      EXPECT_EQ(json::parse(r->body).at("events").as_array().size(), 2u);
    }
  }
  EXPECT_EQ(statuses, (std::vector<unsigned>{200, 201, 200, 400, 404, 201, 200}));
  // A request that breaks the framing ends the pipeline: what follows is not answered.
  raw_connection d(url());
  ASSERT_TRUE(d.send("GARBAGE\r\n\r\n" + http_request("GET", "/health")));
  auto r = d.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400u);
  EXPECT_FALSE(d.read_response(2s)) << "a request after a broken one was answered";
}

TEST_F(Hostile, GarbageRequestLines) {
  for (std::string bad : {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),  // a TLS hello
                          std::string("GET\r\n\r\n"), std::string("GET / HTTP/9.9\r\n\r\n"),
                          std::string("GET /health HTTP/1.1 extra\r\n\r\n"), std::string(" / HTTP/1.1\r\n\r\n"),
                          std::string("G\x01T /health HTTP/1.1\r\n\r\n"), std::string(5000, '\x7f') + "\r\n\r\n"})
    expect_refused("garbage", bad, {400, 505}, true);
  expect_refused("unknown method", http_request("FOO", "/health"), {400, 404, 405, 501});
  expect_refused("absolute-form target", "GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404});
  expect_refused("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404, 405});
  expect_refused("dot segments", http_request("GET", "/v1/../../etc/passwd"), {400, 404});
  expect_refused("wrong content type", http_request("POST", agg, event_with_payload("{}"), "text/plain"));
  expect_nothing_written(head_before_);
}

}  // namespace pliers
