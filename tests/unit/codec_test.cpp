#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/event_codec.hpp"
#include "core/time_format.hpp"
#include "store/dead_letter_codec.hpp"

namespace pliers {

namespace json = boost::json;

event sample_event() {
  event e;
  e.id = "123e4567-e89b-42d3-a456-426614174000";
  e.type = "form.\"quoted\"\n";
  e.version = 2;
  e.time = *parse_rfc3339("2025-06-01T12:00:00.000123Z");
  e.aggregate_id = "form-1";
  e.aggregate_type = "form";
  e.sequence = sequence_number(3);
  e.position = log_position(42);
  e.correlation_id = "223e4567-e89b-42d3-a456-426614174000";
  e.metadata = json::parse(R"({"sourceSystem":"forms","sourceVersion":"1.0","tags":["a"]})").as_object();
  e.payload = json::parse(R"({"title":"héllo","n":1,"deep":{"x":[1,2,{"y":null}]}})").as_object();
  return e;
}

TEST(EventCodec, RoundTripsEveryField) {
  auto e = sample_event();
  std::string text;
  write_event_json(text, e);
  auto v = json::parse(text);
  EXPECT_EQ(v.at("timestamp").as_string(), "2025-06-01T12:00:00.000123Z");
  EXPECT_EQ(v.at("position").as_int64(), 42);
  EXPECT_EQ(v.at("sequenceNumber").as_int64(), 3);
  EXPECT_FALSE(v.as_object().contains("causationId"));
  auto back = event_from_json(v);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->id, e.id);
  EXPECT_EQ(back->type, e.type);
  EXPECT_EQ(back->version, 2);
  EXPECT_EQ(back->time, e.time);
  EXPECT_EQ(back->aggregate_id, e.aggregate_id);
  EXPECT_EQ(back->sequence, e.sequence);
  EXPECT_EQ(back->position, e.position);
  EXPECT_EQ(back->correlation_id, e.correlation_id);
  EXPECT_FALSE(back->causation_id);
  EXPECT_EQ(back->metadata, e.metadata);
  EXPECT_EQ(back->payload, e.payload);
}

TEST(EventCodec, EscapesControlCharacters) {
  std::string out;
  append_json_string(out, std::string("a\x01\"\\\t", 5));
  EXPECT_EQ(out, R"("a\u0001\"\\\t")");
  EXPECT_EQ(json::parse(out).as_string(), std::string("a\x01\"\\\t", 5));
}

// parse_json builds the value in one pass: it must give what json::parse gives for every
// valid document, and refuse duplicate keys (at any depth, however the key is spelled),
// numbers beyond a double, and trailing data, naming the problem.
TEST(EventCodec, ParseJsonAgreesWithBoostAndRefusesWhatBoostWouldAccept) {
  std::string wide = "{";
  for (int i = 0; i < 300; ++i) wide += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
  wide += "}";
  for (std::string doc : {std::string(R"({"a":{"b":[1,-2,3.5,1e300,null,true,false,"x\u00e9\n"]},"c":{},"d":[]})"),
                          std::string(R"([{"a":1},{"a":2},{"a":{"a":{"a":3}}}])"), std::string("  \"just a string\" "),
                          std::string("18446744073709551615"), std::string("-9223372036854775808"),
                          std::string(R"({"a long key that does not fit a short string buffer at all":1,"b":2})"), wide}) {
    auto mine = parse_json(doc, {});
    ASSERT_TRUE(mine) << doc << ": " << mine.error().message;
    EXPECT_EQ(*mine, json::parse(doc)) << doc;
  }
  for (auto [doc, why] : {std::pair<const char*, const char*>{R"({"a":1,"a":2})", "duplicate key"},
                          {R"({"a":1,"\u0061":2})", "duplicate key"},
                          {R"({"x":{"a":1,"b":{"c":1},"a":2}})", "duplicate key"},
                          {R"([{"a":1},{"b":1,"b":2}])", "duplicate key"},
                          {R"({"n":1e400})", "number out of range"},
                          {R"({"a":1} {"b":2})", "extra"},
                          {R"({"a":1}x)", "extra"}}) {
    auto r = parse_json(doc, {});
    ASSERT_FALSE(r) << doc;
    EXPECT_EQ(r.error().field, "body");
    EXPECT_NE(r.error().message.find(why), std::string::npos) << doc << ": " << r.error().message;
  }
  // The same key in sibling and nested objects is not a duplicate.
  EXPECT_TRUE(parse_json(R"({"a":{"a":1},"b":{"a":2},"c":[{"a":3}]})", {}));
  std::string wide_dup = wide;
  wide_dup.insert(wide_dup.size() - 1, ",\"k150\":1");
  EXPECT_FALSE(parse_json(wide_dup, {}));
}

TEST(EventCodec, ParseJsonEnforcesDepth) {
  std::string deep(65, '[');
  deep += std::string(65, ']');
  auto r = parse_json(deep, {64});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "body");
  EXPECT_NE(r.error().message.find("deeper than 64"), std::string::npos);
  EXPECT_TRUE(parse_json(std::string(64, '[') + std::string(64, ']'), {64}));
  EXPECT_FALSE(parse_json("{\"a\":1", {}));
  EXPECT_FALSE(parse_json("\"\xff\"", {}));  // invalid UTF-8
}

result<append_request> body(const char* text) { return append_request_from_json(json::parse(text), "agg-1"); }

TEST(EventCodec, AppendRequestShapeErrorsNameTheField) {
  struct bad_case {
    const char* body;
    const char* field;
  };
  const bad_case cases[] = {
      {R"([])", "body"},
      {R"({"events":{}})", "events"},
      {R"({})", "events"},
      {R"({"expectedVersion":-1,"events":[]})", "expectedVersion"},
      {R"({"expectedVersion":1.5,"events":[]})", "expectedVersion"},
      {R"({"expectedVersion":"1","events":[]})", "expectedVersion"},
      {R"({"events":[],"extra":1})", "extra"},
      {R"({"events":[5]})", "events[0]"},
      {R"({"events":[{"aggregateType":"f","payload":{},"metadata":{}}]})", "events[0].type"},
      {R"({"events":[{"type":1,"aggregateType":"f","payload":{},"metadata":{}}]})", "events[0].type"},
      {R"({"events":[{"type":"t","payload":{},"metadata":{}}]})", "events[0].aggregateType"},
      {R"({"events":[{"type":"t","aggregateType":"f","metadata":{}}]})", "events[0].payload"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":[],"metadata":{}}]})", "events[0].payload"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{}}]})", "events[0].metadata"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{},"metadata":{},"version":0}]})", "events[0].version"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{},"metadata":{},"id":7}]})", "events[0].id"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{},"metadata":{},"sequenceNumber":1}]})",
       "events[0].sequenceNumber"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{},"metadata":{},"aggregateId":"other"}]})",
       "events[0].aggregateId"},
      {R"({"events":[{"type":"t","aggregateType":"f","payload":{},"metadata":{},"colour":"red"}]})",
       "events[0].colour"},
  };
  for (const auto& c : cases) {
    auto r = body(c.body);
    ASSERT_FALSE(r) << c.body;
    EXPECT_EQ(r.error().code, errc::invalid_argument) << c.body;
    EXPECT_EQ(r.error().field, c.field) << c.body;
  }
}

TEST(EventCodec, AppendRequestAcceptsNullsAndOptionalFields) {
  auto r = body(R"({"expectedVersion":null,"events":[{"type":"t","aggregateType":"f","payload":{},
                  "metadata":{"sourceSystem":"s","sourceVersion":"1"},"id":null,"causationId":null,"version":3,
                  "aggregateId":"agg-1"}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->expected_version);
  EXPECT_EQ(r->events[0].version, 3);
  EXPECT_FALSE(r->events[0].id);
}

TEST(EventCodec, EventQueryFromJson) {
  auto q = event_query_from_json(json::parse(R"({"eventTypes":["form.*","submission.created"],"aggregateTypes":["form"],
      "aggregateIds":["a","b"],"timestampRange":{"from":"2025-01-01T00:00:00Z","to":"2025-02-01"},
      "sequenceRange":{"from":2,"to":9},"payloadQuery":{"path":"$.a","operator":"exists"},
      "metadataQuery":[{"path":"$.userId","operator":"equals","value":"u"}]})"),
                                 "query");
  ASSERT_TRUE(q) << q.error().message;
  EXPECT_EQ(q->event_types.size(), 2u);
  EXPECT_EQ(q->aggregate_ids.size(), 2u);
  EXPECT_EQ(format_rfc3339(*q->to), "2025-02-01T00:00:00.000000Z");
  EXPECT_EQ(*q->sequence_from, 2);
  EXPECT_EQ(q->payload_query.size(), 1u);
  EXPECT_EQ(q->metadata_query.size(), 1u);

  auto bad = [](const char* text) { return event_query_from_json(json::parse(text), "query").error().field; };
  EXPECT_EQ(bad(R"({"eventTypes":["form..x"]})"), "query.eventTypes[0]");
  EXPECT_EQ(bad(R"({"timestampRange":{"from":"nope"}})"), "query.timestampRange.from");
  EXPECT_EQ(bad(R"({"sequenceRange":{"to":-1}})"), "query.sequenceRange.to");
  EXPECT_EQ(bad(R"({"payloadQuery":{"path":"$.a","operator":"regex","value":"("}})"), "query.payloadQuery.value");
  EXPECT_EQ(bad(R"({"evenTypes":["x"]})"), "query.evenTypes");
}

TEST(EventCodec, Cursor) {
  for (std::int64_t p : std::initializer_list<std::int64_t>{0, 1, 35, 36, 123456789, INT64_MAX}) {
    auto c = encode_cursor(log_position(p));
    auto back = decode_cursor(c);
    ASSERT_TRUE(back) << c;
    EXPECT_EQ(back->value, p);
  }
  for (const char* bad : {"", "p", "x12", "p-1", "pZZ", "p1 ", "p!!", "pzzzzzzzzzzzzzzzzzz"}) {
    auto r = decode_cursor(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().field, "cursor");
  }
  auto page = pagination_from_json(json::parse(R"({"limit":5,"cursor":"p9"})"), "pagination");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->limit, 5u);
  EXPECT_EQ(page->after.value, 9);
  EXPECT_FALSE(pagination_from_json(json::parse(R"({"limit":0})"), "pagination"));
  EXPECT_FALSE(pagination_from_json(json::parse(R"({"limit":10001})"), "pagination"));
}

dead_letter sample_dead_letter() {
  dead_letter d;
  d.id = "323e4567-e89b-42d3-a456-426614174000";
  d.seq = 17;
  d.original_event = sample_event();
  d.consumer = "route:rule-1:0";
  d.error = {"http_500", "upstream said \"no\"\n\x01", std::string("at f()\nat g()"), {{"status", 500}}};
  d.attempts = 3;
  d.max_attempts = 5;
  d.first_failed_at = *parse_rfc3339("2025-06-01T12:00:00.000001Z");
  d.failed_at = *parse_rfc3339("2025-06-01T12:05:00.5Z");
  d.next_retry_at = *parse_rfc3339("2025-06-01T12:10:00Z");
  d.status = "retrying";
  d.permanent_reason = "none yet";
  d.resolved_at = *parse_rfc3339("2025-06-02T00:00:00Z");
  d.lease_until = *parse_rfc3339("2025-06-01T12:10:30Z");
  d.retry_config = json::parse(R"({"maxAttempts":5,"backoff":{"kind":"exponential","baseMs":1000}})").as_object();
  d.history.push_back({1, d.first_failed_at, false, processing_error{"timeout", "slow", std::nullopt, {}}, 5000, false});
  d.history.push_back({2, d.failed_at, true, std::nullopt, 12, true});
  return d;
}

TEST(DeadLetterCodec, RoundTripsEveryFieldWithTheSpecNames) {
  const auto d = sample_dead_letter();
  const auto o = to_json(d);
  // The spec's camelCase names and RFC 3339 times (the HTTP API sends this shape).
  EXPECT_EQ(o.at("originalEvent").at("position").as_int64(), 42);
  EXPECT_EQ(o.at("maxAttempts").as_int64(), 5);
  EXPECT_EQ(o.at("firstFailedAt").as_string(), "2025-06-01T12:00:00.000001Z");
  EXPECT_EQ(o.at("failedAt").as_string(), "2025-06-01T12:05:00.500000Z");
  EXPECT_EQ(o.at("nextRetryAt").as_string(), "2025-06-01T12:10:00.000000Z");
  EXPECT_EQ(o.at("leaseUntil").as_string(), "2025-06-01T12:10:30.000000Z");
  EXPECT_EQ(o.at("permanentReason").as_string(), "none yet");
  EXPECT_EQ(o.at("error").at("stack").as_string(), "at f()\nat g()");
  EXPECT_EQ(o.at("history").at(1).at("durationMs").as_int64(), 12);
  EXPECT_TRUE(o.at("history").at(1).at("manual").as_bool());
  EXPECT_FALSE(o.at("history").at(1).as_object().contains("error"));

  auto back = dead_letter_from_text(json::serialize(o));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->id, d.id);
  EXPECT_EQ(back->seq, d.seq);
  EXPECT_EQ(back->original_event.id, d.original_event.id);
  EXPECT_EQ(back->original_event.type, d.original_event.type);
  EXPECT_EQ(back->original_event.time, d.original_event.time);
  EXPECT_EQ(back->original_event.position, d.original_event.position);
  EXPECT_EQ(back->original_event.payload, d.original_event.payload);
  EXPECT_EQ(back->consumer, d.consumer);
  EXPECT_EQ(back->error.type, d.error.type);
  EXPECT_EQ(back->error.message, d.error.message);
  EXPECT_EQ(back->error.stack, d.error.stack);
  EXPECT_EQ(back->error.context, d.error.context);
  EXPECT_EQ(back->attempts, 3);
  EXPECT_EQ(back->max_attempts, 5);
  EXPECT_EQ(back->first_failed_at, d.first_failed_at);
  EXPECT_EQ(back->failed_at, d.failed_at);
  EXPECT_EQ(back->next_retry_at, d.next_retry_at);
  EXPECT_EQ(back->status, d.status);
  EXPECT_EQ(back->permanent_reason, d.permanent_reason);
  EXPECT_EQ(back->resolved_at, d.resolved_at);
  EXPECT_EQ(back->lease_until, d.lease_until);
  EXPECT_EQ(back->retry_config, d.retry_config);
  ASSERT_EQ(back->history.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back->history[i].attempt, d.history[i].attempt);
    EXPECT_EQ(back->history[i].at, d.history[i].at);
    EXPECT_EQ(back->history[i].success, d.history[i].success);
    EXPECT_EQ(back->history[i].duration_ms, d.history[i].duration_ms);
    EXPECT_EQ(back->history[i].manual, d.history[i].manual);
    EXPECT_EQ(back->history[i].error.has_value(), d.history[i].error.has_value());
  }
  EXPECT_EQ(back->history[0].error->type, "timeout");
  EXPECT_EQ(json::serialize(to_json(*back)), json::serialize(o));
}

TEST(DeadLetterCodec, AbsentOptionalsAreOmittedAndComeBackAbsent) {
  auto d = sample_dead_letter();
  d.next_retry_at.reset();
  d.permanent_reason.reset();
  d.resolved_at.reset();
  d.error.stack.reset();
  d.history.clear();
  const auto o = to_json(d);
  for (const char* key : {"nextRetryAt", "permanentReason", "resolvedAt"}) EXPECT_FALSE(o.contains(key)) << key;
  EXPECT_FALSE(o.at("error").as_object().contains("stack"));
  auto back = dead_letter_from_json(o);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_FALSE(back->next_retry_at);
  EXPECT_FALSE(back->permanent_reason);
  EXPECT_FALSE(back->resolved_at);
  EXPECT_FALSE(back->error.stack);
  EXPECT_TRUE(back->history.empty());

  auto pe = processing_error_from_json(to_json(d.error));
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->type, "http_500");
  EXPECT_EQ(pe->context, d.error.context);
}

TEST(DeadLetterCodec, CorruptInputIsAnInternalErrorNeverACrash) {
  const auto good = to_json(sample_dead_letter());
  auto corrupt = [](const json::value& v) {
    auto r = dead_letter_from_json(v);
    return !r && r.error().code == errc::internal;
  };
  EXPECT_TRUE(corrupt(json::value(nullptr)));
  EXPECT_TRUE(corrupt(json::array{}));
  EXPECT_TRUE(corrupt(json::object{}));
  for (const char* key : {"id", "seq", "originalEvent", "consumer", "error", "attempts", "maxAttempts", "firstFailedAt",
                          "failedAt", "status", "leaseUntil", "retryConfig", "history"}) {
    auto o = good;
    o.erase(key);
    EXPECT_TRUE(corrupt(o)) << "without " << key;
    o[key] = json::array{1};
    EXPECT_TRUE(corrupt(o)) << "wrong type for " << key;
  }
  auto o = good;
  o["nextRetryAt"] = "yesterday";
  EXPECT_TRUE(corrupt(o));
  o = good;
  o["seq"] = 1.5;
  EXPECT_TRUE(corrupt(o));
  o = good;
  o["history"].as_array()[0].as_object()["error"] = 3;
  EXPECT_TRUE(corrupt(o));
  o = good;
  o["history"].as_array()[1].as_object().erase("at");
  EXPECT_TRUE(corrupt(o));
  o = good;
  o["originalEvent"].as_object().erase("payload");
  EXPECT_TRUE(corrupt(o));
  o = good;
  o["error"].as_object()["context"] = "text";
  EXPECT_TRUE(corrupt(o));
  for (const char* text : {"", "{", "[1,2]", "null", "{\"id\":1}"}) {
    auto r = dead_letter_from_text(text);
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(r.error().code, errc::internal);
  }
  EXPECT_EQ(processing_error_from_json(json::value(2)).error().code, errc::internal);
}

}  // namespace pliers
