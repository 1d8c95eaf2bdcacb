#include <gtest/gtest.h>

#include <set>

#include "core/time_format.hpp"
#include "core/uuid.hpp"

namespace pliers {

TEST(TimeFormat, FormatsUtcWithMicroseconds) {
  auto t = parse_rfc3339("2025-01-31T23:59:58.123456Z");
  ASSERT_TRUE(t);
  EXPECT_EQ(format_rfc3339(*t), "2025-01-31T23:59:58.123456Z");
  EXPECT_EQ(format_rfc3339(from_micros(0)), "1970-01-01T00:00:00.000000Z");
}

TEST(TimeFormat, ParsesOffsetsFractionsAndDates) {
  EXPECT_EQ(format_rfc3339(*parse_rfc3339("2025-03-01T02:00:00+02:00")), "2025-03-01T00:00:00.000000Z");
  EXPECT_EQ(format_rfc3339(*parse_rfc3339("2025-03-01T00:00:00.5-01:30")), "2025-03-01T01:30:00.500000Z");
  EXPECT_EQ(format_rfc3339(*parse_rfc3339("2024-02-29")), "2024-02-29T00:00:00.000000Z");
  EXPECT_EQ(format_rfc3339(*parse_rfc3339("2025-03-01T00:00:00.123456789Z")), "2025-03-01T00:00:00.123456Z");
}

TEST(TimeFormat, RejectsMalformed) {
  for (const char* bad : {"", "2025", "2025-13-01", "2023-02-29", "2025-01-01T25:00:00Z", "2025-01-01T00:00:00",
                          "2025-01-01T00:00:00Zjunk", "2025-01-01T00:00:00.Z", "yesterday", "2025-01-01T00:00:00+2"})
    EXPECT_FALSE(parse_rfc3339(bad)) << bad;
}

TEST(Uuid, GeneratesDistinctVersion4Ids) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    auto id = new_uuid_v4();
    ASSERT_TRUE(is_uuid(id)) << id;
    EXPECT_EQ(id[14], '4');
    EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos) << id;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(Uuid, ValidatesLayout) {
  EXPECT_TRUE(is_uuid("123E4567-E89B-12D3-A456-426614174000"));
  EXPECT_EQ(canonical_uuid("123E4567-E89B-12D3-A456-426614174000"), "123e4567-e89b-12d3-a456-426614174000");
  for (const char* bad : {"", "not-a-uuid", "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g",
                          "123e4567-e89b-12d3-a456-4266141740001"})
    EXPECT_FALSE(is_uuid(bad)) << bad;
}

}  // namespace pliers
