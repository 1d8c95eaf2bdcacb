// The client subcommands against a running server.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <sstream>

#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;

std::vector<json::value> json_lines(const std::string& text) {
  std::vector<json::value> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

TEST(Cli, AppendReadGetQuery) {
  server_process server("memory:");
  server.start();
  const std::string bin = PLIERS_EVENTS_BINARY;
  int status = 0;
  std::string events =
      R"({"type":"form.created","aggregateType":"form","payload":{"title":"A"},"metadata":{"sourceSystem":"cli","sourceVersion":"1"}}
{"type":"form.updated","aggregateType":"form","payload":{"title":"B"},"metadata":{"sourceSystem":"cli","sourceVersion":"1"}}
)";
  auto out = run_command({bin, "append", "form-1", "--url", server.url(), "--expected-version", "0"}, events, status);
  ASSERT_EQ(status, 0) << out;
  auto appended = json::parse(out);
  EXPECT_EQ(appended.at("version").as_int64(), 2);

  // A conflicting append exits 1.
  run_command({bin, "append", "form-1", "--url", server.url(), "--expected-version", "0"}, events, status);
  EXPECT_NE(status, 0);

  out = run_command({bin, "read", "form-1", "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0);
  auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1].at("payload").at("title").as_string(), "B");

  auto id = std::string(lines[0].at("id").as_string());
  out = run_command({bin, "get", id, "--url", server.url()}, "", status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(json::parse(out).at("type").as_string(), "form.created");

  for (int i = 0; i < 5; ++i)
    run_command({bin, "append", "sub-" + std::to_string(i), "--url", server.url()},
                R"([{"type":"submission.created","aggregateType":"submission","payload":{"i":)" + std::to_string(i) +
                    R"(},"metadata":{"sourceSystem":"cli","sourceVersion":"1"}}])",
                status);
  out = run_command({bin, "query", "--url", server.url(), "--type", "submission.*", "--limit", "2", "--all"}, "", status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(json_lines(out).size(), 5u);
  out = run_command({bin, "query", "--url", server.url(), "--payload", R"({"path":"$.i","operator":"equals","value":3})"},
                    "", status);
  ASSERT_EQ(status, 0);
  ASSERT_EQ(json_lines(out).size(), 1u);
  EXPECT_EQ(json_lines(out)[0].at("aggregateId").as_string(), "sub-3");
  run_command({bin, "query", "--url", server.url(), "--type", "bad..type"}, "", status);
  EXPECT_NE(status, 0);
}

}  // namespace pliers
