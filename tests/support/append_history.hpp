// Test support: a history of concurrent appends and the check that the log kept it.
// Clients append batches with their own event ids; a request whose outcome is unknown
// (connection lost, 5xx) is retried with the same ids, so it must end up stored once.
// check_log() then reads the whole log back and verifies: every acknowledged event present
// exactly once, nothing present that was never sent, positions 1..N gap-free, sequence
// numbers per aggregate gap-free.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/uuid.hpp"
#include "server/http_client.hpp"
#include "support/fixtures.hpp"

namespace pliers::testing {

class append_history {
 public:
  // url_of(client index) chooses the server each client talks to.
  append_history(std::function<std::string(int)> url_of, int clients, int aggregates_per_client = 3)
      : url_of_(std::move(url_of)), clients_(clients), aggregates_(aggregates_per_client) {}
  ~append_history() { stop(); }

  void start() {
    stop_ = false;
    for (int c = 0; c < clients_; ++c) threads_.emplace_back([this, c] { run(c); });
  }
  void stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  std::size_t acknowledged_count() {
    std::lock_guard lock(m_);
    return acknowledged_.size();
  }
  std::size_t unknown_count() const { return unknown_.load(); }

  // Reads the log through `url` and checks it against the history (positions and sequences
  // over the whole log; ids over the events of aggregate type "history").
  void check_log(const std::string& url) {
    auto client = http_client::connect(url);
    ASSERT_TRUE(client) << client.error().message;
    std::map<std::string, int> seen;
    std::map<std::string, std::int64_t> last_sequence;
    std::int64_t expected_position = 1;
    std::string cursor;
    while (true) {
      std::string body = R"({"query":{},"pagination":{"limit":5000)" +
                         (cursor.empty() ? std::string() : ",\"cursor\":\"" + cursor + "\"") + "}}";
      auto r = (*client)->post("/v1/events/query", body);
      ASSERT_TRUE(r) << r.error().message;
      ASSERT_EQ(r->status, 200u) << r->body;
      auto page = boost::json::parse(r->body);
      for (const auto& e : page.at("events").as_array()) {
        ASSERT_EQ(e.at("position").as_int64(), expected_position++) << "gap or disorder in the global log";
        auto agg = std::string(e.at("aggregateId").as_string());
        ASSERT_EQ(e.at("sequenceNumber").as_int64(), ++last_sequence[agg]) << "sequence gap in " << agg;
        if (e.at("aggregateType").as_string() == "history") ++seen[std::string(e.at("id").as_string())];
      }
      if (!page.at("hasMore").as_bool()) break;
      cursor = std::string(page.at("cursor").as_string());
    }
    std::lock_guard lock(m_);
    for (const auto& [id, count] : seen) {
      EXPECT_EQ(count, 1) << id << " stored twice";
      EXPECT_TRUE(attempted_.count(id)) << id << " was never sent";
    }
    std::size_t lost = 0;
    for (const auto& id : acknowledged_) lost += seen.count(id) ? 0 : 1;
    EXPECT_EQ(lost, 0u) << "acknowledged events lost";
  }

 private:
  void run(int c) {
    std::unique_ptr<http_client> client;
    int n = 0;
    while (!stop_) {
      std::vector<std::string> ids, events;
      const int batch = 1 + (n % 4);
      for (int i = 0; i < batch; ++i) {
        auto e = boost::json::parse(event_json("history.append", "history", {{"client", c}, {"n", n}})).as_object();
        ids.push_back(new_uuid_v4());
        e["id"] = ids.back();
        events.push_back(boost::json::serialize(e));
      }
      {
        std::lock_guard lock(m_);
        attempted_.insert(ids.begin(), ids.end());
      }
      const std::string target = "/v1/aggregates/h-" + std::to_string(c) + "-" + std::to_string(n % aggregates_) + "/events";
      const std::string body = append_body(events);
      // Until this append's outcome is known: retry with the same ids.
      for (int attempt = 0; attempt < 200; ++attempt) {
        if (!client) {
          auto made = http_client::connect(url_of_(c), std::chrono::seconds(10));
          if (!made) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            if (stop_) return;
            continue;
          }
          client = std::move(*made);
        }
        auto r = client->post(target, body);
        if (r && (r->status == 201 || r->status == 200)) {
          std::lock_guard lock(m_);
          acknowledged_.insert(ids.begin(), ids.end());
          break;
        }
        if (r && r->status < 500) {
          ADD_FAILURE() << "append refused: " << r->status << " " << r->body;
          return;
        }
        ++unknown_;
        client.reset();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (stop_ && attempt > 50) return;  // server gone for good: outcome stays unknown
      }
      ++n;
    }
  }

  std::function<std::string(int)> url_of_;
  int clients_, aggregates_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> unknown_{0};
  std::vector<std::thread> threads_;
  std::mutex m_;
  std::set<std::string> acknowledged_, attempted_;
};

}  // namespace pliers::testing
