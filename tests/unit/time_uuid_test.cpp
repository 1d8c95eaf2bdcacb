#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <set>
#include <vector>

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

// rfc3339_writer caches the date per day; it must write what format_rfc3339 writes for any
// sequence of timestamps: across midnight, back and forth between days, before 1970, and
// outside years 0000-9999 (the fallback).
TEST(TimeFormat, CachingWriterMatchesTheGeneralFormatter) {
  rfc3339_writer w;
  std::vector<std::int64_t> micros = {0, 1, -1, 86'400'000'000 - 1, 86'400'000'000, -86'400'000'000,
                                      -86'400'000'001, 1'735'689'599'999'999, 1'735'689'600'000'000,
                                      1'709'164'800'123'456 /* 2024-02-29 */, 253'402'300'799'999'999 /* 9999-12-31 */,
                                      253'402'300'800'000'000 /* 10000-01-01 */, -62'167'219'200'000'001 /* year -1 */};
  std::uint64_t x = 88172645463325252ull;
  for (int i = 0; i < 2000; ++i) {  // xorshift: reproducible spread over +-300 years
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    micros.push_back(static_cast<std::int64_t>(x % 19'000'000'000'000'000ull) - 9'500'000'000'000'000);
  }
  for (auto us : micros) {
    auto t = from_micros(us);
    EXPECT_EQ(w.write(t), format_rfc3339(t)) << us;
    EXPECT_EQ(w.write(t), format_rfc3339(t)) << us;  // second time from the cached date
  }
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

// Stored ids are derived from these (plugin effects, routing deliveries): they must never
// change, whatever computes the SHA-1. Expected values from Python's uuid and hashlib.
TEST(Uuid, NameBasedIdsAreStable) {
  EXPECT_EQ(uuid_v5("pliers/plugin/x/y/0"), "876a8775-29c6-5c12-98d8-f934dd26485f");
  EXPECT_EQ(uuid_v8_ordered(12345, "pliers/plugin.executed/p/t"), "00000000-3039-8c81-94bf-fcb3568a139e");
  EXPECT_EQ(uuid_v5("pliers/plugin/x/y/0"), uuid_v5("pliers/plugin/x/y/0"));  // the context is reused
}

// The PostgreSQL store's generated ids: the position can be read back, only under the
// store's own tag. (That the write statement's SQL builds the same text is checked by
// Postgres.GeneratedIdsNameTheirPositionAndOnlyChosenIdsAreIndexed: stored ids equal the
// ids the append answered.)
TEST(Uuid, PositionalIdsCarryTheirPositionUnderTheirTag) {
  constexpr std::uint64_t tag = 0x0123456789abcdeULL;
  EXPECT_EQ(uuid_v8_positional(tag, 1), "01234567-89ab-8cde-8000-000000000001");
  EXPECT_EQ(uuid_v8_positional_prefix(tag), "01234567-89ab-8cde-");
  const std::int64_t big = (std::int64_t{1} << 62) - 1;
  EXPECT_EQ(uuid_v8_positional(tag, big), "01234567-89ab-8cde-bfff-ffffffffffff");
  for (std::int64_t p : {std::int64_t{0}, std::int64_t{1}, std::int64_t{4096}, std::int64_t{123456789012}, big}) {
    const auto id = uuid_v8_positional(tag, p);
    EXPECT_TRUE(is_uuid(id));
    EXPECT_EQ(id.substr(0, 19), uuid_v8_positional_prefix(tag));
    EXPECT_EQ(uuid_v8_position(id, tag), p) << id;
    std::string upper = id;
    for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_EQ(uuid_v8_position(upper, tag), p) << upper;
    EXPECT_EQ(uuid_v8_position(id, tag ^ 1), -1) << "another store's id";
  }
  EXPECT_EQ(uuid_v8_position("01234567-89ab-8cde-c000-000000000001", tag), -1) << "not the RFC variant";
  EXPECT_EQ(uuid_v8_position("01234567-89ab-7cde-8000-000000000001", tag), -1) << "version 7";
  EXPECT_EQ(uuid_v8_position(new_uuid_v7(), tag), -1);
  EXPECT_EQ(uuid_v8_position("not a uuid", tag), -1);
  EXPECT_EQ(uuid_v8_position("", tag), -1);
}

}  // namespace pliers
