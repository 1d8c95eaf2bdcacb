// PostgreSQL-specific guarantees (issue 3): positions under a held transaction, several
// server processes on one database, a writer whose known aggregate versions went stale,
// generated ids that name their position, the answer to a commit lost on the way back,
// partition rollover.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <boost/json.hpp>
#include <thread>

#include "core/clock.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "store/postgres/pg_db.hpp"
#include "store/postgres/postgres_store.hpp"
#include "support/append_history.hpp"
#include "support/fixtures.hpp"
#include "support/postgres.hpp"
#include "support/server_process.hpp"

namespace pliers {

namespace json = boost::json;
using namespace pliers::testing;
using namespace std::chrono_literals;

class Postgres : public ::testing::Test {
 protected:
  void SetUp() override {
    auto url = postgres_url();
    if (!url) {
      if (in_ci()) FAIL() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set";
      GTEST_SKIP() << "no PostgreSQL configured (PLIERS_TEST_POSTGRES_URL); scripts/test starts one";
    }
    schema_ = std::make_unique<postgres_schema>(*url);
  }
  std::unique_ptr<event_store> open(const clock* c = nullptr) {
    store_options o;
    o.time_source = c;
    auto s = open_store(schema_->url(), o);
    if (!s) throw std::runtime_error(s.error().message);
    return std::move(*s);
  }
  static new_event make(std::string type) {
    new_event e;
    e.type = std::move(type);
    e.aggregate_type = "pg";
    e.metadata = json::object{{"sourceSystem", "tests"}, {"sourceVersion", "1"}};
    return e;
  }
  std::unique_ptr<postgres_schema> schema_;
};

// Reads decode rows as they arrive (single-row mode). A query that fails after sending
// rows, or a row the caller refuses, is an error with no partial result, and the
// connection answers the next query.
TEST_F(Postgres, RowByRowReadsFailWholeAndLeaveTheConnectionUsable) {
  auto raw = pg::connection::open(schema_->url());
  ASSERT_TRUE(raw) << raw.error().message;
  auto& db = **raw;
  std::vector<std::int64_t> seen;
  auto collect = [&](const pg::query_result& row) -> result<void> {
    seen.push_back(row.int64(0, 0));
    return {};
  };
  ASSERT_TRUE(db.exec_rows("SELECT g FROM generate_series(1, $1::int) g", {std::string("2500")}, collect));
  ASSERT_EQ(seen.size(), 2500u);
  EXPECT_EQ(seen.front(), 1);
  EXPECT_EQ(seen.back(), 2500);

  // Division by zero at the 2000th row: rows came before it, the call still fails.
  seen.clear();
  auto failed = db.exec_rows("SELECT 10 / (2000 - g) FROM generate_series(1, 3000) g", {}, collect);
  ASSERT_FALSE(failed);
  EXPECT_EQ(seen.size(), 1999u) << "the rows before the failing one reach the caller as they arrive";
  EXPECT_NE(failed.error().message.find("division by zero"), std::string::npos) << failed.error().message;
  EXPECT_EQ(db.last_sqlstate(), "22012");

  // The caller refuses row 7: its error comes back, the other rows are read and dropped.
  int calls = 0;
  auto refused = db.exec_rows("SELECT g FROM generate_series(1, 100) g", {}, [&](const pg::query_result& row) -> result<void> {
    ++calls;
    if (row.int64(0, 0) == 7) return error::invalid("row", "seven");
    return {};
  });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message, "seven");
  EXPECT_EQ(calls, 7);

  auto next = db.exec("SELECT 42");
  ASSERT_TRUE(next) << next.error().message;
  EXPECT_EQ(next->int64(0, 0), 42);
}

TEST_F(Postgres, AHeldAppendTransactionNeverShowsReadersAGap) {
  auto store = open();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->append({"before", std::nullopt, {make("t.before")}}));
  // A transaction that has taken its position and written its event, then waits: an append
  // committing late.
  auto raw = pg::connection::open(schema_->url());
  ASSERT_TRUE(raw);
  auto& db = **raw;
  ASSERT_TRUE(db.exec("BEGIN"));
  auto pos = db.exec("UPDATE log_head SET position = position + 1 RETURNING position");
  ASSERT_TRUE(pos);
  const auto held = pos->int64(0, 0);
  ASSERT_EQ(held, 6);
  ASSERT_TRUE(db.exec("INSERT INTO events (position, id, type, timestamp, aggregate_id, aggregate_type, sequence_number, "
                      "metadata, payload) VALUES ($1, gen_random_uuid(), 'held.event', now(), 'held', 'pg', 1, "
                      "'{\"sourceSystem\":\"t\",\"sourceVersion\":\"1\"}', '{}')",
                      {std::to_string(held)}));

  // Meanwhile another engine instance (its own connections, like another process) appends,
  // and a reader follows the global log.
  auto other = open();
  std::atomic<int> appended{0};
  std::thread writer([&] {
    for (int i = 0; i < 20; ++i)
      if (other->append({"after-" + std::to_string(i % 4), std::nullopt, {make("t.after")}})) ++appended;
  });
  std::atomic<bool> stop{false};
  std::vector<std::int64_t> seen;
  std::thread reader([&] {
    std::int64_t last = 0;
    while (!stop || last < 26) {
      auto page = store->read_all(log_position(last), 100);
      ASSERT_TRUE(page);
      for (const auto& e : *page) {
        ASSERT_EQ(e.position.value, last + 1) << "the reader saw a position beyond a gap";
        last = e.position.value;
        seen.push_back(last);
      }
      std::this_thread::sleep_for(2ms);
    }
  });
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(appended.load(), 0) << "appends must wait behind the held positions";
  ASSERT_TRUE(db.exec("COMMIT"));
  writer.join();
  EXPECT_EQ(appended.load(), 20);
  stop = true;
  reader.join();
  ASSERT_EQ(seen.size(), 26u);
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<std::int64_t>(i + 1));
}

TEST_F(Postgres, TwoServerProcessesShareOneGapFreeLog) {
  server_process a(schema_->url());
  server_process b(schema_->url());
  a.start();
  b.start();
  // 32 writers across both processes race for each version of one aggregate.
  std::atomic<int> created{0}, conflicts{0}, other{0};
  std::vector<std::thread> racers;
  constexpr int writers = 32, versions = 8;
  for (int w = 0; w < writers; ++w) {
    racers.emplace_back([&, w] {
      auto http = (w % 2 ? a : b).client();
      for (int v = 0; v < versions; ++v) {
        auto r = http->post("/v1/aggregates/race/events", append_body({event_json("race.won", "race", {{"w", w}})}, v));
        if (r && r->status == 201) ++created;
        else if (r && r->status == 409) ++conflicts;
        else ++other;
      }
    });
  }
  for (auto& t : racers) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(created.load(), versions);
  EXPECT_EQ(created.load() + conflicts.load(), writers * versions);

  append_history history([&](int c) { return c % 2 ? a.url() : b.url(); }, 8);
  history.start();
  std::this_thread::sleep_for(1500ms);
  history.stop();
  EXPECT_GT(history.acknowledged_count(), 100u);
  history.check_log(a.url());
}

// Each store's writer plans an append to an aggregate it committed to last with the version
// it left it at, in one round trip, and checks that version when it locks (ADR 0005).
// Another engine on the same database moves the aggregate on: the check fails and the
// batch is planned again from the locked row, so expectedVersion is still exact. An id the
// caller chose is planned as new in that round trip; a retry finds it stored (event_ids'
// primary key) and is answered from the stored event.
TEST_F(Postgres, AWriterWhoseKnownVersionsWentStalePlansAgain) {
  auto a = open();
  auto b = open();
  auto expect_version = [](const result<append_result>& r, std::int64_t v) {
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->version, v);
  };
  expect_version(a->append({"shared", 0, {make("t.one")}}), 1);
  expect_version(b->append({"shared", 1, {make("t.two")}}), 2);
  expect_version(a->append({"shared", 2, {make("t.three")}}), 3);  // a knew version 1
  expect_version(a->append({"shared", 3, {make("t.four")}}), 4);   // a knows version 3
  auto stale = b->append({"shared", 2, {make("t.late")}});         // b knew version 2
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().code, errc::conflict);
  EXPECT_EQ(stale.error().current_version, 4);
  expect_version(b->append({"shared", std::nullopt, {make("t.five"), make("t.six")}}), 6);
  auto conflicting = a->append({"shared", 5, {make("t.lost")}});  // a knew 4; the aggregate is at 6
  ASSERT_FALSE(conflicting);
  EXPECT_EQ(conflicting.error().current_version, 6);

  // Chosen ids: stored by a, retried through b (which does not know the aggregate), then
  // through a (which does: the round trip plans the id as new and finds it stored).
  auto with_id = [&](std::string id) {
    auto e = make("t.chosen");
    e.id = std::move(id);
    return e;
  };
  const std::string id = new_uuid_v4();
  auto first = a->append({"chosen", std::nullopt, {with_id(id)}});
  ASSERT_TRUE(first) << first.error().message;
  ASSERT_TRUE(a->append({"chosen", std::nullopt, {make("t.after")}}));
  for (auto* store : {b.get(), a.get()}) {
    auto again = store->append({"chosen", std::nullopt, {with_id(id)}});
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_TRUE(again->idempotent_replay);
    EXPECT_EQ(again->events.at(0).position, first->events.at(0).position);
    EXPECT_EQ(again->events.at(0).time, first->events.at(0).time);
  }
  // The same id with another event first is no retry: a conflict, and only for that append.
  auto elsewhere = a->append({"chosen", std::nullopt, {make("t.new"), with_id(id)}});
  ASSERT_FALSE(elsewhere);
  EXPECT_EQ(elsewhere.error().code, errc::conflict);
  EXPECT_EQ(elsewhere.error().field, "events[1].id");

  auto log = a->read_all(log_position(0), 100);
  ASSERT_TRUE(log);
  ASSERT_EQ(log->size(), 8u);
  for (std::size_t i = 0; i < log->size(); ++i) EXPECT_EQ((*log)[i].position.value, static_cast<std::int64_t>(i + 1));
  auto shared = a->read_aggregate("shared", 1, std::nullopt, 100);
  ASSERT_TRUE(shared);
  ASSERT_EQ(shared->size(), 6u);
  EXPECT_EQ(shared->back().type, "t.six");
  auto meta = b->get_aggregate_metadata("shared");
  ASSERT_TRUE(meta);
  EXPECT_EQ(meta->version, 6);
  EXPECT_EQ(meta->event_count, 6);
}

// Generated ids name their position under the database's tag (docs/adr/0007): they are
// found by position, retried like any id, and never get an event_ids row; ids callers
// choose do. A chosen id of the generated form must name a stored event: one that names
// a future position (or a position whose event has another id) is refused, since the
// store could hand it out later.
TEST_F(Postgres, GeneratedIdsNameTheirPositionAndOnlyChosenIdsAreIndexed) {
  auto store = open();
  auto sql = pg::connection::open(schema_->url());
  ASSERT_TRUE(sql) << sql.error().message;
  auto count = [&](const std::string& query) {
    auto r = (*sql)->exec(query);
    EXPECT_TRUE(r) << query;
    return r ? r->int64(0, 0) : -1;
  };
  auto tag_row = (*sql)->exec("SELECT value FROM pliers_settings WHERE key = 'id_tag'");
  ASSERT_TRUE(tag_row);
  ASSERT_EQ(tag_row->rows(), 1);
  const auto tag = std::stoull(std::string(tag_row->text(0, 0)), nullptr, 16);

  auto generated = store->append({"gen", std::nullopt, {make("t.a"), make("t.b"), make("t.c")}});
  ASSERT_TRUE(generated) << generated.error().message;
  auto chosen_event = make("t.chosen");
  const std::string chosen = new_uuid_v4();
  chosen_event.id = chosen;
  auto with_chosen = store->append_group({{"gen", std::nullopt, {make("t.d")}}, {"other", std::nullopt, {chosen_event}}});
  ASSERT_TRUE(with_chosen) << with_chosen.error().message;
  const auto chosen_position = with_chosen->at(1).events.at(0).position.value;

  for (const auto& e : generated->events) {
    EXPECT_EQ(uuid_v8_position(e.id, tag), e.position.value) << e.id;
    auto stored = store->get_event(e.id);
    ASSERT_TRUE(stored) << stored.error().message;
    EXPECT_EQ(stored->position, e.position);
    EXPECT_EQ(stored->id, e.id);
  }
  auto log = store->read_all(log_position(0), 100);
  ASSERT_TRUE(log);
  ASSERT_EQ(log->size(), 5u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ((*log)[i].id, generated->events[i].id);
  EXPECT_EQ((*log)[3].id, with_chosen->at(0).events.at(0).id);
  EXPECT_EQ((*log)[4].id, chosen);
  EXPECT_EQ(store->get_event(chosen)->position.value, chosen_position);
  EXPECT_EQ(count("SELECT count(*) FROM event_ids"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM event_ids WHERE id = '" + chosen + "'"), 1);

  // A retry with the ids the first answer carried: the original outcome, nothing written.
  std::vector<new_event> retried;
  for (const auto& e : generated->events) {
    retried.push_back(make("t.retry"));
    retried.back().id = e.id;
  }
  for (int i = 0; i < 2; ++i) {  // the second time the writer knows the aggregate
    auto again = store->append({"gen", 0, retried});
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_TRUE(again->idempotent_replay);
    ASSERT_EQ(again->events.size(), 3u);
    for (std::size_t k = 0; k < 3; ++k) EXPECT_EQ(again->events[k].position, generated->events[k].position);
  }
  // One of them first in another append: a conflict, as for any stored id.
  auto reused = store->append({"gen", std::nullopt, {make("t.new"), retried[1]}});
  ASSERT_FALSE(reused);
  EXPECT_EQ(reused.error().code, errc::conflict);

  // Generated-form ids that name no stored event: a future position, and the position of
  // the event with a chosen id. Refused with the field, and nothing else of the group written.
  for (const auto position : {std::int64_t{6}, std::int64_t{1000}, chosen_position}) {
    auto forged = make("t.forged");
    forged.id = uuid_v8_positional(tag, position);
    auto refused = store->append({"forged", std::nullopt, {forged}});
    ASSERT_FALSE(refused) << position;
    EXPECT_EQ(refused.error().code, errc::invalid_argument) << refused.error().message;
    EXPECT_EQ(refused.error().field, "events[0].id");
    EXPECT_NE(refused.error().message.find("position " + std::to_string(position)), std::string::npos)
        << refused.error().message;
    auto in_group = store->append_group({{"fine", std::nullopt, {make("t.fine")}}, {"forged", std::nullopt, {forged}}});
    ASSERT_FALSE(in_group);
    EXPECT_EQ(in_group.error().field, "appends[1].events[0].id");
  }
  // Another database's generated id is just a chosen id here.
  auto foreign = make("t.foreign");
  foreign.id = uuid_v8_positional(tag ^ 1, 7);
  auto taken = store->append({"foreign", std::nullopt, {foreign}});
  ASSERT_TRUE(taken) << taken.error().message;
  EXPECT_EQ(taken->events.at(0).id, *foreign.id);
  auto after = store->read_all(log_position(0), 100);
  ASSERT_TRUE(after);
  ASSERT_EQ(after->size(), 6u);
  for (std::size_t i = 0; i < after->size(); ++i) EXPECT_EQ((*after)[i].position.value, static_cast<std::int64_t>(i + 1));
  EXPECT_EQ(count("SELECT count(*) FROM event_ids"), 2);
  // A generated id that is not stored is not found (and not confused with another event).
  EXPECT_EQ(store->get_event(uuid_v8_positional(tag, chosen_position)).error().code, errc::not_found);
  EXPECT_EQ(store->get_event(uuid_v8_positional(tag, 999)).error().code, errc::not_found);
}

// A TCP proxy between the store and PostgreSQL that loses what one write round says. Armed,
// it picks the first connection that sends the store's prepared write statement (the name
// "pliers_write" in a Bind message). From then on that connection forwards nothing more
// from the server, and:
// - answer (default): 300 ms later it closes the connection. The server has committed and
//   the store never hears of it.
// - drop_request: not even the round carrying the write is forwarded. The server never saw it.
// - late_request: the store's side is closed at once, and the round carrying the write
//   reaches the server only a second later, then the server's side is closed. Meanwhile
//   the server process still holds the batch's locks and will commit it when the round
//   arrives, unless the store ends that process before asking what became of the batch.
class lossy_proxy {
 public:
  explicit lossy_proxy(int target_port) : target_port_(target_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 64) != 0)
      throw std::runtime_error("lossy_proxy: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    threads_.emplace_back([this] { accept_loop(); });
  }
  ~lossy_proxy() {
    stopping_ = true;
    {
      std::lock_guard lock(m_);
      for (int fd : sockets_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : threads_) t.join();  // accept_loop adds no thread once stopping_ is seen
    for (int fd : sockets_) ::close(fd);
    ::close(listener_);
  }
  int port() const { return port_; }
  enum class loss { answer, drop_request, late_request };
  void arm(loss how) {
    drop_request_ = how == loss::drop_request;
    late_request_ = how == loss::late_request;
    fired_ = false;
    armed_ = true;
  }
  bool fired() const { return fired_; }

 private:
  void accept_loop() {
    while (!stopping_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<std::uint16_t>(target_port_));
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(client), ::close(server);
        continue;
      }
      auto victim = std::make_shared<std::atomic<bool>>(false);
      std::lock_guard lock(m_);
      sockets_.push_back(client), sockets_.push_back(server);
      threads_.emplace_back([=, this] { pump_requests(client, server, victim); });
      threads_.emplace_back([=, this] { pump_answers(server, client, victim); });
    }
  }
  void pump_requests(int from, int to, std::shared_ptr<std::atomic<bool>> victim) {
    char buf[65536];
    std::string tail;  // the end of the previous chunk: the name may straddle two
    while (true) {
      const auto n = ::recv(from, buf, sizeof buf, 0);
      if (n <= 0) break;
      std::string seen = tail + std::string(buf, static_cast<std::size_t>(n));
      bool drop = false;
      if (armed_ && !*victim && seen.find("pliers_write") != std::string::npos && armed_.exchange(false)) {
        *victim = true;
        fired_ = true;
        drop = drop_request_ || late_request_;
        if (late_request_) {
          ::shutdown(from, SHUT_RDWR);
          std::thread([to, held = std::string(buf, static_cast<std::size_t>(n))] {
            std::this_thread::sleep_for(1s);
            (void)::send(to, held.data(), held.size(), MSG_NOSIGNAL);
            std::this_thread::sleep_for(300ms);
            ::shutdown(to, SHUT_RDWR);
          }).detach();
        } else {
          std::thread([from, to] {
            std::this_thread::sleep_for(300ms);
            ::shutdown(from, SHUT_RDWR);
            ::shutdown(to, SHUT_RDWR);
          }).detach();
        }
      }
      tail = seen.substr(seen.size() > 16 ? seen.size() - 16 : 0);
      if (drop || (*victim && (drop_request_ || late_request_))) continue;
      if (::send(to, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    if (!(*victim && late_request_)) ::shutdown(to, SHUT_WR);  // a late round is still to come
  }
  void pump_answers(int from, int to, std::shared_ptr<std::atomic<bool>> victim) {
    char buf[65536];
    while (true) {
      const auto n = ::recv(from, buf, sizeof buf, 0);
      if (n <= 0) break;
      if (*victim) continue;
      if (::send(to, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    ::shutdown(to, SHUT_WR);
  }

  int target_port_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false}, armed_{false}, drop_request_{false}, late_request_{false}, fired_{false};
  std::mutex m_;
  std::vector<int> sockets_;  // GUARDED_BY(m_)
  std::vector<std::thread> threads_;
};

// The connection breaks while a batch's commit is on its way. The writer cannot know
// whether it committed: on a new connection it ends the old server process (which may
// still be at work on the batch), then reads its own record of the batch in
// pliers_writers, and answers with the stored positions when it committed, or writes the
// batch again when it did not. Either way each event is stored once, where the append
// says. Both ways of writing are covered: one round trip (an aggregate the writer knows)
// and two (one it does not). With a late request, a writer that asked without ending the
// old process would find no record, write again, and the old process would then commit
// the batch a second time.
TEST_F(Postgres, ACommitWhoseAnswerIsLostIsNeitherLostNorWrittenTwice) {
  auto base = postgres_url();
  const auto at = base->rfind(':');
  const int pg_port = std::stoi(base->substr(at + 1));
  lossy_proxy proxy(pg_port);
  store_options o;
  o.connect_timeout = 10s;
  auto opened = open_store(schema_->url() + "&sslmode=disable&port=" + std::to_string(proxy.port()), o);
  ASSERT_TRUE(opened) << opened.error().message;
  auto& store = **opened;
  ASSERT_TRUE(store.append({"known", std::nullopt, {make("t.first")}}));
  using loss = lossy_proxy::loss;
  struct step {
    std::string aggregate;
    loss how;
  };
  const std::vector<step> steps = {{"known", loss::answer},       {"new-1", loss::answer},
                                   {"known", loss::drop_request}, {"new-2", loss::drop_request},
                                   {"known", loss::late_request}, {"new-3", loss::late_request}};
  std::vector<append_result> acknowledged;
  for (const auto& s : steps) {
    proxy.arm(s.how);
    auto r = store.append({s.aggregate, std::nullopt, {make("t.lossy"), make("t.lossy")}});
    ASSERT_TRUE(r) << s.aggregate << ": " << r.error().message;
    EXPECT_TRUE(proxy.fired()) << s.aggregate << ": the write round was not interrupted";
    acknowledged.push_back(*r);
  }
  ASSERT_TRUE(store.append({"known", std::nullopt, {make("t.last")}}));
  auto log = store.read_all(log_position(0), 100);
  ASSERT_TRUE(log);
  ASSERT_EQ(log->size(), 1u + 2 * steps.size() + 1u);
  for (std::size_t i = 0; i < log->size(); ++i) EXPECT_EQ((*log)[i].position.value, static_cast<std::int64_t>(i + 1));
  for (const auto& r : acknowledged)
    for (const auto& e : r.events) {
      const auto& stored = (*log)[static_cast<std::size_t>(e.position.value - 1)];
      EXPECT_EQ(stored.id, e.id);
      EXPECT_EQ(stored.aggregate_id, r.aggregate_id);
      EXPECT_EQ(stored.sequence, e.sequence);
      EXPECT_EQ(stored.time, e.time);
    }
  EXPECT_EQ(store.get_aggregate_metadata("known")->version, 8);
  // Both late rounds were written once, by the retry: the held rounds came too late.
  std::this_thread::sleep_for(1500ms);
  auto after = store.read_all(log_position(0), 100);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->size(), log->size());
}

TEST_F(Postgres, TwoServersFireEachScheduledEventOnce) {
  server_process a(schema_->url());
  server_process b(schema_->url());
  a.start();
  b.start();
  auto http = a.client();
  const auto at = format_rfc3339(default_clock().now() + 400ms);
  for (int i = 0; i < 30; ++i) {
    auto r = http->post("/v1/scheduled-events",
                        json::serialize(json::object{{"aggregateId", "sched-" + std::to_string(i % 3)},
                                                     {"publishAt", at},
                                                     {"event", json::parse(event_json("sched.fired", "s", {{"i", i}}))}}));
    ASSERT_EQ(r->status, 201u) << r->body;
  }
  json::array published;
  for (int i = 0; i < 100; ++i) {
    published = json::parse(b.client()->get("/v1/scheduled-events?status=published")->body).at("scheduledEvents").as_array();
    if (published.size() == 30) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(published.size(), 30u);
  auto all = json::parse(http->get("/v1/events?type=sched.fired&limit=100")->body);
  EXPECT_EQ(all.at("totalCount").as_int64(), 30) << "a scheduled event was published twice or not at all";
}

TEST_F(Postgres, PartitionsRollOverAndAreCreatedOnDemand) {
  fake_clock clk(*parse_rfc3339("2025-01-31T23:59:59.500000Z"));
  auto store = open(&clk);
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.jan")}}));
  clk.advance(1s);  // February
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.feb")}}));
  clk.set(*parse_rfc3339("2025-09-15T12:00:00Z"));  // beyond the partitions made ahead
  ASSERT_TRUE(store->append({"roll", std::nullopt, {make("t.sep")}}));

  auto raw = pg::connection::open(schema_->url());
  ASSERT_TRUE(raw);
  auto r = (*raw)->exec("SELECT tableoid::regclass::text, type FROM events ORDER BY position");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->rows(), 3);
  EXPECT_EQ(r->text(0, 0), "events_p20250101");
  EXPECT_EQ(r->text(1, 0), "events_p20250201");
  EXPECT_EQ(r->text(2, 0), "events_p20250901");
  EXPECT_EQ(*store->read_aggregate("roll", 1, std::nullopt, 10)->at(1).type.data(), 't');

  auto* pg_store = dynamic_cast<postgres_store*>(store.get());
  ASSERT_NE(pg_store, nullptr);
  auto parts = pg_store->list_partitions();
  ASSERT_TRUE(parts);
  EXPECT_GE(parts->size(), 5u);  // Jan..Apr made ahead, Sep on demand
  ASSERT_TRUE(pg_store->detach_partition("events_p20250101", false));
  EXPECT_EQ(pg_store->read_aggregate("roll", 1, std::nullopt, 10)->size(), 2u);  // January left the log
  auto still = (*raw)->exec("SELECT count(*) FROM events_p20250101");
  ASSERT_TRUE(still);
  EXPECT_EQ(still->int64(0, 0), 1);  // kept as a standalone table
  EXPECT_EQ(pg_store->detach_partition("events; DROP TABLE x", true).error().code, errc::invalid_argument);
}

}  // namespace pliers
