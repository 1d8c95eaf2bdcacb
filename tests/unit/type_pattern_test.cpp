#include <gtest/gtest.h>

#include "core/type_pattern.hpp"

namespace pliers {

bool matches(const char* pattern, const char* type) { return type_pattern::parse(pattern)->matches(type); }

TEST(TypePattern, LiteralMatchesOnlyItself) {
  EXPECT_TRUE(matches("form.created", "form.created"));
  EXPECT_FALSE(matches("form.created", "form.created.v2"));
  EXPECT_FALSE(matches("form.created", "form"));
}

TEST(TypePattern, StarMatchesExactlyOneToken) {
  EXPECT_TRUE(matches("form.*", "form.created"));
  EXPECT_FALSE(matches("form.*", "form"));
  EXPECT_FALSE(matches("form.*", "form.field.added"));
  EXPECT_TRUE(matches("*.created", "submission.created"));
  EXPECT_TRUE(matches("*", "x"));
  EXPECT_FALSE(matches("*", "x.y"));
}

TEST(TypePattern, DoubleStarMatchesZeroOrMoreTokens) {
  EXPECT_TRUE(matches("submission.**", "submission"));
  EXPECT_TRUE(matches("submission.**", "submission.created"));
  EXPECT_TRUE(matches("submission.**", "submission.a.b.c"));
  EXPECT_FALSE(matches("submission.**", "form.created"));
  EXPECT_TRUE(matches("**.failed", "plugin.run.failed"));
  EXPECT_TRUE(matches("**.failed", "failed"));
  EXPECT_TRUE(matches("a.**.z", "a.z"));
  EXPECT_TRUE(matches("a.**.z", "a.b.c.z"));
  EXPECT_FALSE(matches("a.**.z", "a.b.c"));
  EXPECT_TRUE(matches("**", "anything.at.all"));
  EXPECT_TRUE(matches("a.**.*.z", "a.b.z"));
  EXPECT_FALSE(matches("a.**.*.z", "a.z"));
}

TEST(TypePattern, ManyDoubleStarsStayFast) {
  // Backtracking over many ** must not explode: this finishes instantly.
  std::string pattern, type;
  for (int i = 0; i < 15; ++i) pattern += "**.a.";
  pattern += "b";  // 76 characters, within the type length limit
  for (int i = 0; i < 40; ++i) type += "a.";
  type += "c";
  auto p = type_pattern::parse(pattern);
  ASSERT_TRUE(p);
  EXPECT_FALSE(p->matches(type));
}

TEST(TypePattern, RejectsMalformed) {
  for (const char* bad : {"", ".form", "form.", "form..created", "form*", "fo*rm.created", "***"}) {
    auto p = type_pattern::parse(bad);
    ASSERT_FALSE(p) << bad;
    EXPECT_EQ(p.error().code, errc::invalid_argument);
    EXPECT_EQ(p.error().field, "type");
  }
  EXPECT_FALSE(type_pattern::parse(std::string(101, 'a')));
}

}  // namespace pliers
