// Writers racing over HTTP for the same aggregate version: exactly one wins each version.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

#include "support/fixtures.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;

class RacingWriters : public ::testing::TestWithParam<std::string> {};

TEST_P(RacingWriters, ExactlyOneOf24WinsEachVersion) {
  temp_dir dir;
  std::string store = GetParam() == "sqlite" ? "sqlite:" + (dir.path() / "e.db").string() : "memory:";
  server_process server(store);
  server.start();
  constexpr int writers = 24, versions = 15;
  std::atomic<int> created{0}, conflicts{0}, other{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      auto http = server.client();
      for (int v = 0; v < versions; ++v) {
        auto r = http->post("/v1/aggregates/race/events",
                            append_body({event_json("race.won", "race", {{"writer", w}, {"v", v}})}, v));
        if (!r) ++other;
        else if (r->status == 201) ++created;
        else if (r->status == 409) ++conflicts;
        else ++other;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(created.load(), versions);
  EXPECT_EQ(created.load() + conflicts.load(), writers * versions);
  auto http = server.client();
  auto events = json::parse(http->get("/v1/aggregates/race/events")->body).at("events").as_array();
  ASSERT_EQ(events.size(), static_cast<std::size_t>(versions));
  for (int i = 0; i < versions; ++i) {
    EXPECT_EQ(events[i].at("sequenceNumber").as_int64(), i + 1);
    EXPECT_EQ(events[i].at("payload").at("v").as_int64(), i);
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, RacingWriters, ::testing::Values("memory", "sqlite"));

}  // namespace pliers
