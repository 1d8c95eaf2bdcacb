// Test support: a history of concurrent appends and the check that the log kept it.
//
// Clients append batches with their own event ids and record each request's outcome:
// acknowledged (201/200, with the sequence numbers and positions the server returned),
// refused (a definite 4xx, e.g. a deliberately wrong expectedVersion), or unknown
// (connection lost, timeout, 5xx). An unknown outcome is retried with the same ids until it
// becomes known, so a retried append must end up stored at most once.
//
// analyze() then reads the whole global log and every aggregate back and reports:
//   - acknowledged events missing (lost), or stored at another sequence/position than acknowledged
//   - events stored twice, events stored that were never sent, refused events stored
//   - positions not 1..N gap-free, sequence numbers per aggregate not 1..n gap-free,
//     positions not increasing along each aggregate
//   - an aggregate read (GET /v1/aggregates/{id}/events) that differs from the global log
// check_log() turns any of these into a test failure; a negative control asserts on the
// report instead (the checker must see a loss when one is staged).
// Not covered yet: subscribers (WebSocket streaming does not exist yet).
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/uuid.hpp"
#include "server/http_client.hpp"
#include "support/fixtures.hpp"
#include "support/raw_http.hpp"

namespace pliers::testing {

struct history_options {
  int clients = 6;
  int aggregates_per_client = 3;
  int conflict_every = 0;  // every Nth append of a client carries a wrong expectedVersion (0 = never)
  std::chrono::milliseconds request_timeout{5000};
  std::chrono::milliseconds resolve_grace{8000};  // after stop(): time to resolve an unknown outcome
  std::size_t payload_bytes = 0;                  // filler in each event's payload
  std::chrono::milliseconds think_time{0};        // pause between a client's appends (soak)
};

struct history_report {
  std::size_t stored = 0;            // events of the history found in the log
  std::size_t log_events = 0;        // all events in the log
  std::size_t acknowledged = 0;
  std::size_t lost = 0;              // acknowledged, absent
  std::size_t misplaced = 0;         // acknowledged, present at another position or sequence number
  std::size_t duplicated = 0;        // an id present more than once
  std::size_t never_sent = 0;        // a history event nobody sent
  std::size_t refused_present = 0;   // a definitely refused append that was stored anyway
  std::size_t unresolved = 0;        // outcome still unknown at the end (present at most once)
  std::size_t unresolved_present = 0;
  std::size_t position_errors = 0;   // positions not 1..N in order
  std::size_t sequence_errors = 0;   // per-aggregate sequence gaps, or positions not increasing along it
  std::size_t aggregate_read_errors = 0;
  std::string read_error;            // the log could not be read at all
  std::vector<std::string> examples;  // the first problems, for the failure message

  bool clean() const {
    return read_error.empty() && lost == 0 && misplaced == 0 && duplicated == 0 && never_sent == 0 &&
           refused_present == 0 && position_errors == 0 && sequence_errors == 0 && aggregate_read_errors == 0;
  }
  std::string summary() const {
    std::ostringstream s;
    s << "log " << log_events << " events, history " << stored << " stored / " << acknowledged
      << " acknowledged; lost " << lost << ", misplaced " << misplaced << ", duplicated " << duplicated
      << ", never sent " << never_sent << ", refused but stored " << refused_present << ", unresolved "
      << unresolved << " (" << unresolved_present << " present), position errors " << position_errors
      << ", sequence errors " << sequence_errors << ", aggregate read errors " << aggregate_read_errors;
    if (!read_error.empty()) s << "; read error: " << read_error;
    for (const auto& e : examples) s << "\n  " << e;
    return s.str();
  }
};

class append_history {
 public:
  struct ack {
    std::string aggregate;
    std::int64_t sequence = 0, position = 0;
  };

  // url_of(client index) chooses the server each client talks to.
  append_history(std::function<std::string(int)> url_of, history_options options)
      : url_of_(std::move(url_of)), o_(options) {}
  append_history(std::function<std::string(int)> url_of, int clients, int aggregates_per_client = 3)
      : append_history(std::move(url_of), history_options{clients, aggregates_per_client}) {}
  ~append_history() { stop(); }

  void start() {
    stop_ = false;
    for (int c = 0; c < o_.clients; ++c) threads_.emplace_back([this, c] { run(c); });
  }
  // Clients finish the append in hand (resolving an unknown outcome within resolve_grace).
  void stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  std::size_t acknowledged_count() {
    std::lock_guard lock(m_);
    return acknowledged_.size();
  }
  std::size_t refused_count() {
    std::lock_guard lock(m_);
    return refused_.size();
  }
  std::size_t unknown_count() const { return unknown_.load(); }
  std::size_t unexpected_count() const { return unexpected_.load(); }

  // For tests that drive their own requests: record what was sent and what came back.
  void record_attempt(const std::vector<std::string>& ids) {
    std::lock_guard lock(m_);
    attempted_.insert(ids.begin(), ids.end());
  }
  // body: the 201/200 response of the append.
  void record_acknowledged(const std::vector<std::string>& ids, const std::string& body) {
    auto v = boost::json::parse(body);
    std::lock_guard lock(m_);
    const auto& events = v.at("events").as_array();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      ack a{std::string(v.at("aggregateId").as_string()), 0, 0};
      if (i < events.size()) {
        a.sequence = events[i].at("sequenceNumber").as_int64();
        a.position = events[i].at("position").as_int64();
      }
      acknowledged_[ids[i]] = a;
      unresolved_.erase(ids[i]);
    }
  }
  void record_refused(const std::vector<std::string>& ids) {
    std::lock_guard lock(m_);
    refused_.insert(ids.begin(), ids.end());
    for (const auto& id : ids) unresolved_.erase(id);
  }
  void record_unresolved(const std::vector<std::string>& ids) {
    std::lock_guard lock(m_);
    unresolved_.insert(ids.begin(), ids.end());
  }

  // Reads the log through `url` and compares it with the history (positions and sequences
  // over the whole log; ids over the events of aggregate type "history").
  history_report analyze(const std::string& url) {
    history_report rep;
    auto note = [&](const std::string& s) {
      if (rep.examples.size() < 10) rep.examples.push_back(s);
    };
    auto client = http_client::connect(url, std::chrono::seconds(60));
    if (!client) {
      rep.read_error = client.error().message;
      return rep;
    }
    struct stored_event {
      std::string id;
      std::int64_t sequence, position;
    };
    std::map<std::string, std::vector<stored_event>> by_aggregate;
    std::map<std::string, int> seen;
    std::map<std::string, ack> where;
    std::int64_t expected_position = 1;
    std::string cursor;
    while (true) {
      std::string body = R"({"query":{},"pagination":{"limit":5000)" +
                         (cursor.empty() ? std::string() : ",\"cursor\":\"" + cursor + "\"") + "}}";
      auto r = (*client)->post("/v1/events/query", body);
      if (!r || r->status != 200) {
        rep.read_error = r ? std::to_string(r->status) + " " + r->body.substr(0, 300) : r.error().message;
        return rep;
      }
      auto page = boost::json::parse(r->body);
      for (const auto& e : page.at("events").as_array()) {
        ++rep.log_events;
        const auto pos = e.at("position").as_int64();
        if (pos != expected_position) {
          ++rep.position_errors;
          note("position " + std::to_string(pos) + " where " + std::to_string(expected_position) + " was due");
        }
        expected_position = pos + 1;
        auto agg = std::string(e.at("aggregateId").as_string());
        auto id = std::string(e.at("id").as_string());
        auto& list = by_aggregate[agg];
        const auto seq = e.at("sequenceNumber").as_int64();
        if (seq != static_cast<std::int64_t>(list.size()) + 1 || (!list.empty() && list.back().position >= pos)) {
          ++rep.sequence_errors;
          note("aggregate " + agg + ": sequence " + std::to_string(seq) + " after " + std::to_string(list.size()));
        }
        list.push_back({id, seq, pos});
        if (e.at("aggregateType").as_string() == "history") {
          ++seen[id];
          where[id] = {agg, seq, pos};
        }
      }
      if (!page.at("hasMore").as_bool()) break;
      cursor = std::string(page.at("cursor").as_string());
    }
    // Each aggregate read on its own must show exactly its part of the global log.
    for (const auto& [agg, list] : by_aggregate) {
      auto r = (*client)->get("/v1/aggregates/" + url_encode(agg) + "/events");
      if (!r || r->status != 200) {
        ++rep.aggregate_read_errors;
        note("GET aggregate " + agg + " failed: " + (r ? std::to_string(r->status) + " " + r->body.substr(0, 200) : r.error().message));
        continue;
      }
      boost::system::error_code ec;
      auto v = boost::json::parse(r->body, ec);
      if (ec) {
        ++rep.aggregate_read_errors;
        note("GET aggregate " + agg + ": unparsable body");
        continue;
      }
      const auto& events = v.at("events").as_array();
      bool same = events.size() == list.size();
      for (std::size_t i = 0; same && i < events.size(); ++i)
        same = events[i].at("id").as_string() == list[i].id && events[i].at("position").as_int64() == list[i].position;
      if (!same) {
        ++rep.aggregate_read_errors;
        note("aggregate " + agg + " read differs from the global log");
      }
    }
    std::lock_guard lock(m_);
    rep.acknowledged = acknowledged_.size();
    rep.stored = seen.size();
    rep.unresolved = unresolved_.size();
    for (const auto& [id, count] : seen) {
      if (count > 1) {
        ++rep.duplicated;
        note(id + " stored " + std::to_string(count) + " times");
      }
      if (!attempted_.count(id)) {
        ++rep.never_sent;
        note(id + " stored but never sent");
      }
      if (refused_.count(id)) {
        ++rep.refused_present;
        note(id + " was refused but is stored");
      }
      if (unresolved_.count(id)) ++rep.unresolved_present;
    }
    for (const auto& [id, a] : acknowledged_) {
      auto it = where.find(id);
      if (it == where.end()) {
        ++rep.lost;
        note(id + " acknowledged at position " + std::to_string(a.position) + " is lost");
      } else if (a.position != 0 && (it->second.position != a.position || it->second.sequence != a.sequence ||
                                     it->second.aggregate != a.aggregate)) {
        ++rep.misplaced;
        note(id + " acknowledged at position " + std::to_string(a.position) + " is stored at " +
             std::to_string(it->second.position));
      }
    }
    return rep;
  }

  // analyze() and fail the test on any problem.
  history_report check_log(const std::string& url) {
    auto rep = analyze(url);
    EXPECT_TRUE(rep.clean()) << rep.summary();
    EXPECT_EQ(unexpected_.load(), 0u) << "appends got an unexpected answer (see the failures above)";
    return rep;
  }

 private:
  void run(int c) {
    std::unique_ptr<timed_http> client;
    std::string client_url;
    int n = 0;
    while (!stop_) {
      std::vector<std::string> ids, events;
      const int batch = 1 + (n % 4);
      const bool wrong_version = o_.conflict_every > 0 && n % o_.conflict_every == o_.conflict_every - 1;
      for (int i = 0; i < batch; ++i) {
        boost::json::object payload{{"client", c}, {"n", n}};
        if (o_.payload_bytes) payload["fill"] = std::string(o_.payload_bytes, 'x');
        auto e = boost::json::parse(event_json("history.append", "history", payload)).as_object();
        ids.push_back(new_uuid_v4());
        e["id"] = ids.back();
        events.push_back(boost::json::serialize(e));
      }
      record_attempt(ids);
      const std::string target =
          "/v1/aggregates/h-" + std::to_string(c) + "-" + std::to_string(n % o_.aggregates_per_client) + "/events";
      // A version no aggregate of this test reaches: must be refused with 409, never stored.
      const std::string body = append_body(events, wrong_version ? std::optional<long long>(1000000000) : std::nullopt);
      bool known = false;
      auto give_up_at = std::chrono::steady_clock::time_point::max();
      // Until this append's outcome is known: retry with the same ids.
      while (!known) {
        if (stop_ && give_up_at == std::chrono::steady_clock::time_point::max())
          give_up_at = std::chrono::steady_clock::now() + o_.resolve_grace;
        if (std::chrono::steady_clock::now() > give_up_at) break;
        if (!client || client_url != url_of_(c)) {
          client_url = url_of_(c);
          client = std::make_unique<timed_http>(client_url, o_.request_timeout);
        }
        auto r = client->request("POST", target, body);
        if (r && (r->status == 201 || r->status == 200)) {
          if (wrong_version) {
            ++unexpected_;
            ADD_FAILURE() << "an append with a wrong expectedVersion was acknowledged: " << r->body;
          }
          record_acknowledged(ids, r->body);
          known = true;
        } else if (r && r->status == 409 && wrong_version) {
          record_refused(ids);
          known = true;
        } else if (r && r->status < 500) {
          ++unexpected_;
          ADD_FAILURE() << "append refused: " << r->status << " " << r->body;
          record_refused(ids);
          known = true;
        } else {
          ++unknown_;
          std::this_thread::sleep_for(std::chrono::milliseconds(r ? 20 : 30));
        }
      }
      if (!known) record_unresolved(ids);
      ++n;
      if (o_.think_time.count() > 0) std::this_thread::sleep_for(o_.think_time);
    }
  }

  std::function<std::string(int)> url_of_;
  history_options o_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> unknown_{0}, unexpected_{0};
  std::vector<std::thread> threads_;
  std::mutex m_;
  std::map<std::string, ack> acknowledged_;
  std::set<std::string> attempted_, refused_, unresolved_;
};

}  // namespace pliers::testing
