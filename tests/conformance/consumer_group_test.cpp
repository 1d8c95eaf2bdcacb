// Consumer groups on every store: members join and leave while events arrive; every
// event is processed exactly once (all members healthy), the events of an aggregate in
// order, and a restarted group resumes from its checkpoints.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "bus/consumer_group.hpp"
#include "core/uuid.hpp"
#include "support/postgres.hpp"

namespace pliers {

namespace json = boost::json;
using namespace std::chrono_literals;

class ConsumerGroup : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("pliers-group-" + new_uuid_v4().substr(0, 8));
    std::filesystem::create_directories(dir_);
    const auto url = testing::backend_url(GetParam(), dir_, schema_);
    if (!url) return testing::missing_postgres();
    auto s = open_store(*url);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    tailer_ = std::make_unique<log_tailer>(*store_, log_tailer::options{.poll_interval = 50ms});
  }
  void TearDown() override {
    tailer_.reset();
    store_.reset();
    schema_.reset();
    std::filesystem::remove_all(dir_);
  }
  void append(int n, int from) {
    for (int i = from; i < from + n; ++i) {
      new_event e;
      e.type = "work.item";
      e.aggregate_type = "job";
      e.metadata = json::object{{"sourceSystem", "t"}, {"sourceVersion", "1"}};
      e.payload = json::object{{"i", i}};
      ASSERT_TRUE(store_->append({"job-" + std::to_string(i % 23), std::nullopt, {std::move(e)}}));
    }
  }
  std::unique_ptr<consumer_group_member> member(const std::string& name) {
    consumer_group_member::options o;
    o.partitions = 8;
    o.heartbeat = 50ms;
    o.lease = 2s;
    return std::make_unique<consumer_group_member>(*store_, *tailer_, default_clock(), "billing", name, event_filter{},
                                                   [this, name](const event& e) {
                                                     std::lock_guard lock(m_);
                                                     seen_[e.id] += 1;
                                                     order_[e.aggregate_id].push_back(e.sequence.value);
                                                     by_member_[name] += 1;
                                                   },
                                                   o);
  }
  std::size_t seen_count() {
    std::lock_guard lock(m_);
    return seen_.size();
  }
  static void wait_until(const std::function<bool()>& done) {
    for (int i = 0; i < 400 && !done(); ++i) std::this_thread::sleep_for(25ms);
  }
  void wait_for(std::size_t n) {
    for (int i = 0; i < 400 && seen_count() < n; ++i) std::this_thread::sleep_for(25ms);
  }

  std::filesystem::path dir_;
  std::unique_ptr<testing::postgres_schema> schema_;
  std::unique_ptr<event_store> store_;
  std::unique_ptr<log_tailer> tailer_;
  std::mutex m_;
  std::map<std::string, int> seen_;
  std::map<std::string, std::vector<std::int64_t>> order_;
  std::map<std::string, int> by_member_;
};

TEST_P(ConsumerGroup, MembersShareTheWorkByAggregateAndProcessEachEventOnce) {
  append(200, 0);
  auto a = member("a");
  wait_for(200);
  auto b = member("b");
  wait_until([&] { return !b->owned_partitions().empty(); });  // b takes its share
  append(200, 200);
  auto c = member("c");
  wait_until([&] { return !c->owned_partitions().empty(); });
  append(200, 400);
  wait_for(600);
  a.reset();  // leaves: b and c take over its partitions from its checkpoints
  wait_until([&] { return b->owned_partitions().size() + c->owned_partitions().size() == 8; });
  EXPECT_EQ(b->owned_partitions().size() + c->owned_partitions().size(), 8u);
  append(200, 600);
  wait_for(800);
  b.reset();
  c.reset();
  {
    std::lock_guard lock(m_);
    ASSERT_EQ(seen_.size(), 800u);
    for (const auto& [id, count] : seen_) EXPECT_EQ(count, 1) << id << " processed " << count << " times";
    for (const auto& [agg, seqs] : order_)
      for (std::size_t i = 0; i < seqs.size(); ++i) ASSERT_EQ(seqs[i], static_cast<std::int64_t>(i + 1)) << agg;
    EXPECT_GT(by_member_["b"], 0);
    EXPECT_GT(by_member_["c"], 0);
  }
  // A restarted group resumes from its checkpoints: only new events.
  append(50, 800);
  auto again = member("d");
  wait_for(850);
  again.reset();
  std::lock_guard lock(m_);
  EXPECT_EQ(seen_.size(), 850u);
  for (const auto& [id, count] : seen_) EXPECT_EQ(count, 1) << id;
}

TEST_P(ConsumerGroup, APipelinedBatchThatFailsIsRewoundAndComesAgain) {
  // The handler's work becomes durable only when its wait function returns; the first time
  // a batch holding event #150 is waited on, it fails. That batch (and the one started on
  // top of it) must come again, nothing may be lost, and the checkpoints must end at the
  // head (a new member after a restart gets nothing old).
  append(300, 0);
  std::atomic<bool> failed_once{false};
  std::mutex m;
  std::map<int, int> runs;  // payload i -> times handled
  consumer_group_member::options o;
  o.partitions = 4;
  o.heartbeat = 50ms;
  o.lease = 2s;
  o.batch = 40;
  o.retry_delay = 20ms;
  auto handler = consumer_group_member::async_batch_handler([&](std::span<const event* const> batch) {
    bool poisoned = false;
    {
      std::lock_guard lock(m);
      for (const event* e : batch) {
        const int i = static_cast<int>(e->payload.at("i").as_int64());
        runs[i] += 1;
        poisoned |= i == 150;
      }
    }
    return std::function<void()>([&, poisoned] {
      if (poisoned && !failed_once.exchange(true)) throw std::runtime_error("not durable");
    });
  });
  auto count = [&] {
    std::lock_guard lock(m);
    return runs.size();
  };
  {
    consumer_group_member a(*store_, *tailer_, default_clock(), "pipelined", "a", event_filter{}, handler, o);
    wait_until([&] { return count() == 300 && failed_once.load(); });
    append(20, 300);
    wait_until([&] { return count() == 320; });
    EXPECT_EQ(a.handler_failures(), 1u);
  }
  {
    std::lock_guard lock(m);
    ASSERT_EQ(runs.size(), 320u);
    EXPECT_GE(runs[150], 2);  // came again
    for (const auto& [i, n] : runs) EXPECT_GE(n, 1) << i;
    runs.clear();
  }
  append(10, 320);
  consumer_group_member b(*store_, *tailer_, default_clock(), "pipelined", "b", event_filter{}, handler, o);
  wait_until([&] { return count() == 10; });
  std::this_thread::sleep_for(100ms);
  std::lock_guard lock(m);
  EXPECT_EQ(runs.size(), 10u);  // only the new ones: everything before was checkpointed
  for (const auto& [i, n] : runs) EXPECT_GE(i, 320);
}

INSTANTIATE_TEST_SUITE_P(Stores, ConsumerGroup, ::testing::Values("memory", "sqlite", "postgres"));

}  // namespace pliers
