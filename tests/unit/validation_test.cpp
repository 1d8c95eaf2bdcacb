#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/validation.hpp"

namespace pliers {

new_event valid_event() {
  new_event e;
  e.type = "form.created";
  e.aggregate_type = "form";
  e.metadata = boost::json::parse(R"({"sourceSystem":"forms","sourceVersion":"1.0"})").as_object();
  return e;
}

append_request request_with(new_event e) {
  append_request r;
  r.aggregate_id = "form-1";
  r.events.push_back(std::move(e));
  return r;
}

std::string field_of(append_request r) {
  auto v = validate_append(r);
  return v ? std::string("<valid>") : v.error().field;
}

TEST(Validation, AcceptsAMinimalEventAndNormalizesIds) {
  auto e = valid_event();
  e.id = "123E4567-E89B-42D3-A456-426614174000";
  auto r = request_with(e);
  ASSERT_TRUE(validate_append(r));
  EXPECT_EQ(*r.events[0].id, "123e4567-e89b-42d3-a456-426614174000");
}

TEST(Validation, ColumnLimitsFromTheSpec) {
  auto e = valid_event();
  e.type = std::string(100, 't');
  EXPECT_EQ(field_of(request_with(e)), "<valid>");
  e.type = std::string(101, 't');
  EXPECT_EQ(field_of(request_with(e)), "events[0].type");
  e = valid_event();
  e.aggregate_type = std::string(51, 'a');
  EXPECT_EQ(field_of(request_with(e)), "events[0].aggregateType");
  auto r = request_with(valid_event());
  r.aggregate_id = std::string(256, 'x');
  EXPECT_EQ(field_of(r), "aggregateId");
  r.aggregate_id = std::string(255, 'x');
  EXPECT_EQ(field_of(r), "<valid>");
  r.aggregate_id = "";
  EXPECT_EQ(field_of(r), "aggregateId");
}

TEST(Validation, RequiredMetadataAndIds) {
  auto e = valid_event();
  e.metadata.erase("sourceSystem");
  EXPECT_EQ(field_of(request_with(e)), "events[0].metadata.sourceSystem");
  e = valid_event();
  e.metadata["sourceVersion"] = 1;
  EXPECT_EQ(field_of(request_with(e)), "events[0].metadata.sourceVersion");
  e = valid_event();
  e.metadata["tags"] = "x";
  EXPECT_EQ(field_of(request_with(e)), "events[0].metadata.tags");
  e = valid_event();
  e.id = "nope";
  EXPECT_EQ(field_of(request_with(e)), "events[0].id");
  e = valid_event();
  e.causation_id = "123";
  EXPECT_EQ(field_of(request_with(e)), "events[0].causationId");
  e = valid_event();
  e.type = "form.*";
  EXPECT_EQ(field_of(request_with(e)), "events[0].type");
  e = valid_event();
  e.type = "bad\ntype";
  EXPECT_EQ(field_of(request_with(e)), "events[0].type");
}

TEST(Validation, BatchRules) {
  append_request empty;
  empty.aggregate_id = "a";
  EXPECT_EQ(field_of(empty), "events");
  auto r = request_with(valid_event());
  r.expected_version = -1;
  EXPECT_EQ(field_of(r), "expectedVersion");
  r = request_with(valid_event());
  auto second = valid_event();
  second.aggregate_type = "other";
  r.events.push_back(second);
  EXPECT_EQ(field_of(r), "events[1].aggregateType");
  r = request_with(valid_event());
  r.events[0].id = "123e4567-e89b-42d3-a456-426614174000";
  r.events.push_back(r.events[0]);
  EXPECT_EQ(field_of(r), "events[1].id");
  r = request_with(valid_event());
  for (int i = 0; i < 10000; ++i) r.events.push_back(valid_event());
  EXPECT_EQ(field_of(r), "events");
}

}  // namespace pliers
