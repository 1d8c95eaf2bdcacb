// The in-process subscriber API over every store: history then live, in position order,
// no gap, no duplicate, while appends continue; a throwing handler does not stop delivery.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <filesystem>
#include <mutex>
#include <thread>

#include "bus/event_bus.hpp"
#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "support/postgres.hpp"

namespace pliers {

namespace json = boost::json;

class EventBus : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("pliers-bus-" + new_uuid_v4().substr(0, 8));
    std::filesystem::create_directories(dir_);
    const auto url = testing::backend_url(GetParam(), dir_, schema_);
    if (!url) return testing::missing_postgres();
    auto s = open_store(*url);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    tailer_ = std::make_unique<log_tailer>(*store_, log_tailer::options{.ring_capacity = 256});
    bus_ = std::make_unique<event_bus>(*store_, *tailer_);
  }
  void TearDown() override {
    bus_.reset();
    tailer_.reset();
    store_.reset();
    schema_.reset();
    std::filesystem::remove_all(dir_);
  }
  static new_event make(std::string type, int n) {
    new_event e;
    e.type = std::move(type);
    e.aggregate_type = "bus";
    e.metadata = json::object{{"sourceSystem", "t"}, {"sourceVersion", "1"}};
    e.payload = json::object{{"n", n}};
    return e;
  }
  std::filesystem::path dir_;
  std::unique_ptr<testing::postgres_schema> schema_;
  std::unique_ptr<event_store> store_;
  std::unique_ptr<log_tailer> tailer_;
  std::unique_ptr<event_bus> bus_;
};

TEST_P(EventBus, HistoryThenLiveWithNoGapOrDuplicate) {
  // History larger than the ring, so the subscriber reads old events from the store.
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(bus_->publish("a-" + std::to_string(i % 5), make(i % 2 ? "odd.one" : "even.one", i)));
  std::mutex m;
  std::vector<std::int64_t> all_positions, even_positions;
  auto everything = bus_->subscribe_with_filter({}, [&](const event& e) {
    std::lock_guard lock(m);
    all_positions.push_back(e.position.value);
  }, subscription_start::beginning());
  auto evens = bus_->subscribe({"even.*"}, [&](const event& e) {
    std::lock_guard lock(m);
    even_positions.push_back(e.position.value);
  }, subscription_start::beginning());
  std::thread writer([&] {
    for (int i = 600; i < 1200; ++i) ASSERT_TRUE(bus_->publish("a-" + std::to_string(i % 5), make(i % 2 ? "odd.one" : "even.one", i)));
  });
  writer.join();
  for (int i = 0; i < 500 && everything->position().value < 1200; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (int i = 0; i < 500 && evens->position().value < 1200; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::lock_guard lock(m);
  ASSERT_EQ(all_positions.size(), 1200u);
  for (std::size_t i = 0; i < all_positions.size(); ++i) ASSERT_EQ(all_positions[i], static_cast<std::int64_t>(i + 1));
  ASSERT_EQ(even_positions.size(), 600u);
  for (std::size_t i = 0; i < even_positions.size(); ++i) ASSERT_EQ(even_positions[i], static_cast<std::int64_t>(2 * i + 1));
}

// The tailer's events carry their API JSON (what streams send), made once and shared:
// from the ring and from the store alike, it is write_event_json of the event.
TEST_P(EventBus, TailedEventsCarryTheirApiJson) {
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(bus_->publish("j-" + std::to_string(i % 3), make("json.one", i)));
  auto sub = bus_->subscribe_with_filter({}, [](const event&) {}, subscription_start::beginning());
  for (int i = 0; i < 500 && sub->position().value < 300; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (auto after : {0, 100, 290}) {  // 0 and 100 are older than the 256-event ring
    auto batch = tailer_->read_after(log_position(after), 20);
    ASSERT_TRUE(batch);
    ASSERT_FALSE(batch->empty());
    for (const auto& e : *batch) {
      std::string want;
      write_event_json(want, *e);
      EXPECT_EQ(e->json(), want);
      EXPECT_EQ(&e->json(), &e->json());  // made once
    }
  }
}

// This process's commits reach the tailer with the store's wake-up: SQLite and PostgreSQL
// hand the stored events over, and the tailer adds them to its ring without reading them
// back. What subscribers get is exactly what a read returns: on PostgreSQL the payload as
// jsonb gives it back (keys reordered, whole doubles as integers).
TEST_P(EventBus, LiveEventsAreWhatAReadReturnsAndOwnCommitsAreNotReadBack) {
  bus_.reset();
  tailer_.reset();  // first: a tailer's destructor removes the store's (one) commit observer
  tailer_ = std::make_unique<log_tailer>(*store_, log_tailer::options{.poll_interval = std::chrono::hours(1)});
  bus_ = std::make_unique<event_bus>(*store_, *tailer_);
  std::atomic<std::int64_t> seen{0};
  auto sub = bus_->subscribe_with_filter({}, [&](const event& e) { seen = e.position.value; }, subscription_start::now());
  // The catch-up reads of a new listener (and, on PostgreSQL, of the LISTEN connection
  // coming up) settle first.
  for (int i = 0; i < 200 && tailer_->store_reads() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  for (auto last = tailer_->store_reads(), quiet = std::uint64_t{0}; quiet < 4; last = tailer_->store_reads()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    quiet = tailer_->store_reads() == last ? quiet + 1 : 0;
  }
  const auto reads_before = tailer_->store_reads();
  auto tricky = [](int i) {
    new_event e = make("live.one", i);
    e.payload = json::parse(R"({"zeta":1,"a":2.0,"mm":{"b":[{"yy":1,"x":-0.0}],"a":"\u00e9"},"big":12345678901234567890,)"
                            R"("f":0.1,"e":1e300,"neg":-3.0,"s":"x"})")
                    .as_object();
    e.payload["i"] = i;
    return e;
  };
  constexpr int appends = 20;
  for (int i = 0; i < appends; ++i) {
    std::vector<new_event> events = {tricky(i), make("live.two", i)};
    ASSERT_TRUE(store_->append({"live-" + std::to_string(i % 3), std::nullopt, events}));
  }
  for (int i = 0; i < 500 && seen.load() < 2 * appends; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(seen.load(), 2 * appends);
  if (GetParam() != "memory") {
    EXPECT_EQ(tailer_->store_reads(), reads_before) << "own commits were read back";
  }
  auto live = tailer_->read_after(log_position(0), 100);
  ASSERT_TRUE(live);
  auto stored = store_->read_all(log_position(0), 100);
  ASSERT_TRUE(stored);
  ASSERT_EQ(live->size(), stored->size());
  for (std::size_t i = 0; i < stored->size(); ++i) {
    std::string want;
    write_event_json(want, (*stored)[i]);
    EXPECT_EQ((*live)[i]->json(), want);
  }
}

// A tailer thread held up (here: in a listener) while commits keep coming keeps at most a
// ring's worth of handed-over events waiting; past that it drops them and reads the store
// from its head when it can: nothing is lost or repeated.
TEST_P(EventBus, ABusyTailerDropsWhatWaitsAndReadsItFromTheStore) {
  bus_.reset();
  tailer_.reset();
  tailer_ = std::make_unique<log_tailer>(
      *store_, log_tailer::options{.ring_capacity = 16, .poll_interval = std::chrono::hours(1)});
  std::mutex gate;
  std::unique_lock hold(gate);
  std::atomic<bool> blocked{false};
  std::atomic<std::int64_t> last{0};
  const auto id = tailer_->add_listener([&](log_position head) {
    blocked = true;
    std::lock_guard pass(gate);
    last = head.value;
  });
  ASSERT_TRUE(store_->append({"busy", std::nullopt, {make("busy.one", 0)}}));
  for (int i = 0; i < 500 && !blocked; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(blocked.load());
  const auto reads_before = tailer_->store_reads();
  for (int i = 0; i < 10; ++i) {
    std::vector<new_event> five;
    for (int k = 0; k < 5; ++k) five.push_back(make("busy.more", 5 * i + k));
    ASSERT_TRUE(store_->append({"busy", std::nullopt, five}));
  }
  hold.unlock();
  for (int i = 0; i < 500 && last.load() < 51; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(last.load(), 51);
  EXPECT_GT(tailer_->store_reads(), reads_before);
  auto recent = tailer_->read_after(log_position(35), 100);  // from the ring
  ASSERT_TRUE(recent);
  ASSERT_EQ(recent->size(), 16u);
  for (std::size_t i = 0; i < recent->size(); ++i) EXPECT_EQ((*recent)[i]->position.value, static_cast<std::int64_t>(36 + i));
  auto all = tailer_->read_after(log_position(0), 100);  // older ones from the store
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 51u);
  for (std::size_t i = 0; i < all->size(); ++i) EXPECT_EQ((*all)[i]->position.value, static_cast<std::int64_t>(i + 1));
  tailer_->remove_listener(id);
}

TEST_P(EventBus, AThrowingHandlerIsCountedAndOthersStillReceive) {
  std::atomic<int> good{0}, reported{0};
  bus_->on_handler_error = [&](const event&, const std::string&) { ++reported; };
  auto bad = bus_->subscribe({"t.*"}, [](const event&) { throw std::runtime_error("handler bug"); });
  auto fine = bus_->subscribe({"t.*"}, [&](const event&) { ++good; });
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(bus_->publish("x", make("t.x", i)));
  for (int i = 0; i < 500 && (good < 20 || bad->position().value < 20); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(good.load(), 20);
  EXPECT_EQ(bad->handler_failures(), 20u);
  EXPECT_EQ(reported.load(), 20);
  fine->close();
  ASSERT_TRUE(bus_->publish("x", make("t.x", 99)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(good.load(), 20) << "a closed subscription received an event";
  EXPECT_FALSE(bus_->subscribe_to_pattern("t..x", [](const event&) {}));
}

TEST_P(EventBus, PublishToCarriesTheRoutingKeyIntoFilters) {
  event_filter f;
  f.routing_keys = {"eu"};
  std::atomic<int> got{0};
  auto s = bus_->subscribe_with_filter(f, [&](const event& e) {
    EXPECT_EQ(e.metadata.at("routingKey").as_string(), "eu");
    ++got;
  });
  ASSERT_TRUE(bus_->publish_to("r", make("t.r", 1), "eu"));
  ASSERT_TRUE(bus_->publish_to("r", make("t.r", 2), "us"));
  ASSERT_TRUE(bus_->publish("r", make("t.r", 3)));
  for (int i = 0; i < 300 && s->position().value < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(got.load(), 1);
}

TEST_P(EventBus, StartsNowAtAPositionOrAtATime) {
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(bus_->publish("t", make("t.old", i)));
  const auto cut = default_clock().now();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  for (int i = 10; i < 15; ++i) ASSERT_TRUE(bus_->publish("t", make("t.new", i)));
  std::atomic<int> from_time{0}, from_pos{0}, from_now{0};
  auto a = bus_->subscribe_with_filter({}, [&](const event&) { ++from_time; }, subscription_start::at(cut));
  auto b = bus_->subscribe_with_filter({}, [&](const event&) { ++from_pos; }, subscription_start::after(log_position(12)));
  auto c = bus_->subscribe_with_filter({}, [&](const event&) { ++from_now; }, subscription_start::now());
  for (int i = 0; i < 300 && (a->position().value < 15 || b->position().value < 15); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(from_time.load(), 5);
  EXPECT_EQ(from_pos.load(), 3);
  ASSERT_TRUE(bus_->publish("t", make("t.live", 16)));
  for (int i = 0; i < 300 && c->position().value < 16; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(from_now.load(), 1);
}

INSTANTIATE_TEST_SUITE_P(Stores, EventBus, ::testing::Values("memory", "sqlite", "postgres"));

}  // namespace pliers
