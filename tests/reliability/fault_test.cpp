// Fault runs (issue 8): the server killed with SIGKILL at random moments, paused with
// SIGSTOP/SIGCONT, its SQLite volume filled up, and power lost — all under concurrent
// clients, then the whole log checked against what the clients were told
// (tests/support/append_history.hpp). A negative control runs the same checker against a
// server that acknowledges before fsync and must see the loss.
//
// PostgreSQL restarted mid-run and terminated backends: tests/integration/postgres_fault_test.cpp.
//
// Knobs for the long versions (docs/reliability.md):
//   PLIERS_RELIABILITY_KILLS   kills per backend (default 20)
//   PLIERS_RELIABILITY_SEED    random seed (default: random, printed)
//   PLIERS_RELIABILITY_CLIENTS concurrent clients (default 8)
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <cstdlib>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "core/uuid.hpp"
#include "support/append_history.hpp"
#include "support/postgres.hpp"
#include "support/power_loss.hpp"
#include "support/raw_http.hpp"
#include "store/postgres/pg_db.hpp"
#include "support/server_process.hpp"
#include "support/ws_client.hpp"

#ifndef PLIERS_POWER_LOSS_SHIM
#error "PLIERS_POWER_LOSS_SHIM must name the LD_PRELOAD library"
#endif
#ifndef PLIERS_UNSAFE_SERVER
#error "PLIERS_UNSAFE_SERVER must name the unsafe test server"
#endif

namespace pliers {

using namespace pliers::testing;
using namespace std::chrono_literals;

namespace {


int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::uint32_t seed() {
  static const std::uint32_t s = [] {
    const char* v = std::getenv("PLIERS_RELIABILITY_SEED");
    return v && *v ? static_cast<std::uint32_t>(std::strtoul(v, nullptr, 10)) : std::random_device{}();
  }();
  return s;
}

// A store the fault tests run against: SQLite in a temporary directory, or a PostgreSQL
// schema of its own.
class backend {
 public:
  static std::unique_ptr<backend> make(const std::string& kind) {
    auto b = std::unique_ptr<backend>(new backend);
    if (kind == "sqlite") {
      b->url_ = "sqlite:" + (b->dir_.path() / "events.db").string();
    } else {
      auto url = postgres_url();
      if (!url) return nullptr;
      b->schema_ = std::make_unique<postgres_schema>(*url);
      b->url_ = b->schema_->url();
    }
    return b;
  }
  const std::string& url() const { return url_; }

 private:
  backend() = default;
  temp_dir dir_;
  std::unique_ptr<postgres_schema> schema_;
  std::string url_;
};

// The URL clients use, switched when the server restarts on a new port.
class current_url {
 public:
  void set(std::string u) {
    std::lock_guard lock(m_);
    url_ = std::move(u);
  }
  std::string get() {
    std::lock_guard lock(m_);
    return url_;
  }

 private:
  std::mutex m_;
  std::string url_;
};

// A WebSocket subscriber that lives through server kills: on every disconnect it
// reconnects to the current server and resumes with fromPosition = the last position it
// received. It records every position delivered; they must be 1, 2, 3, ... exactly once.
class resilient_subscriber {
 public:
  explicit resilient_subscriber(std::function<std::string()> url) : url_(std::move(url)) {
    thread_ = std::thread([this] { run(); });
  }
  ~resilient_subscriber() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::int64_t last() const { return last_.load(); }
  std::vector<std::int64_t> positions() {
    std::lock_guard lock(m_);
    return positions_;
  }

 private:
  void run() {
    while (!stop_) {
      try {
        ws_client ws(url_());
        ws.send_json({{"type", "subscribe"}, {"filter", boost::json::object{}},
                      {"options", {{"fromPosition", last_.load()}, {"heartbeatInterval", 200}}}});
        while (!stop_) {
          auto m = ws.read(std::chrono::milliseconds(1000));
          if (!m) break;  // killed server or timeout: reconnect
          if (m->at("type").as_string() != "event") continue;
          auto p = m->at("data").at("position").as_int64();
          std::lock_guard lock(m_);
          positions_.push_back(p);
          last_ = std::max(last_.load(), p);
        }
      } catch (const std::exception&) {
        std::this_thread::sleep_for(20ms);  // no server right now
      }
    }
  }
  std::function<std::string()> url_;
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> last_{0};
  std::mutex m_;
  std::vector<std::int64_t> positions_;
  std::thread thread_;
};

class Faults : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    store_ = backend::make(GetParam());
    if (!store_) {
      if (in_ci()) FAIL() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set";
      GTEST_SKIP() << "no PostgreSQL configured (scripts/test starts one)";
    }
    std::cout << "seed " << seed() << " (PLIERS_RELIABILITY_SEED)" << std::endl;
  }
  std::unique_ptr<backend> store_;
};

}  // namespace

// SIGKILL at random moments — mid-append, mid-commit, right after start-up — at least 20
// times; every unknown outcome is retried with the same ids against the next server.
TEST_P(Faults, Kill9AtRandomMoments) {
  const int kills = env_int("PLIERS_RELIABILITY_KILLS", 20);
  std::mt19937 rng(seed());
  current_url url;
  history_options opts;
  opts.clients = env_int("PLIERS_RELIABILITY_CLIENTS", 8);
  opts.conflict_every = 7;
  opts.request_timeout = 5s;
  append_history history([&](int) { return url.get(); }, opts);
  std::unique_ptr<server_process> server;
  std::unique_ptr<resilient_subscriber> subscriber;
  std::size_t acknowledged_before = 0;
  int rounds_with_progress = 0;
  for (int k = 0; k < kills; ++k) {
    server = std::make_unique<server_process>(store_->url());
    server->start();
    url.set(server->url());
    if (k == 0) {
      history.start();
      subscriber = std::make_unique<resilient_subscriber>([&] { return url.get(); });
    }
    // Mostly mid-traffic; one time in eight during recovery and reconnection.
    std::uniform_int_distribution<int> early(0, 7);
    std::uniform_int_distribution<int> late_ms(150, 600), early_ms(0, 40);
    std::this_thread::sleep_for(std::chrono::milliseconds(early(rng) == 0 ? early_ms(rng) : late_ms(rng)));
    ASSERT_EQ(::waitpid(server->pid(), nullptr, WNOHANG), 0) << "the server died by itself: " << server->stderr_text();
    server->stop(SIGKILL);
    const auto now = history.acknowledged_count();
    rounds_with_progress += now > acknowledged_before ? 1 : 0;
    acknowledged_before = now;
  }
  server = std::make_unique<server_process>(store_->url());
  server->start();
  url.set(server->url());
  std::this_thread::sleep_for(500ms);  // clients resolve their unknown outcomes
  history.stop();
  const auto rep = history.check_log(server->url());
  std::cout << kills << " kills: " << rep.summary() << ", unknown outcomes retried " << history.unknown_count()
            << ", refused " << history.refused_count() << std::endl;
  EXPECT_GT(history.acknowledged_count(), 200u) << "too little traffic to mean anything";
  EXPECT_GT(history.unknown_count(), 0u) << "no append was interrupted: the test proved nothing";
  EXPECT_GT(history.refused_count(), 0u) << "no conflicting append was tried";
  EXPECT_GE(rounds_with_progress, kills / 2) << "most rounds made no progress";
  EXPECT_EQ(rep.unresolved, 0u) << "an append's outcome stayed unknown after the final restart";

  // The subscriber, reconnecting after every kill, received the whole log in order.
  auto health = boost::json::parse(server->client()->get("/health")->body);
  const auto head = health.at("headPosition").as_int64();
  for (int i = 0; i < 400 && subscriber->last() < head; ++i) std::this_thread::sleep_for(25ms);
  subscriber->stop();
  const auto got = subscriber->positions();
  ASSERT_EQ(static_cast<std::int64_t>(got.size()), head) << "the subscriber missed or repeated events";
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], static_cast<std::int64_t>(i + 1)) << "gap, duplicate or disorder at delivery " << i;
}

// SIGSTOP/SIGCONT: requests stall, clients time out and retry with the same ids while the
// original request is still queued in the paused server; after SIGCONT both complete and
// the log holds each event once. The server serves promptly again after each pause.
TEST_P(Faults, PausedServerResumes) {
  std::mt19937 rng(seed() + 1);
  server_process server(store_->url());
  server.start();
  history_options opts;
  opts.clients = 6;
  opts.conflict_every = 9;
  opts.request_timeout = 700ms;  // shorter than most pauses: some requests time out while queued
  append_history history([&](int) { return server.url(); }, opts);
  history.start();
  std::uniform_int_distribution<int> pause_ms(300, 1500), run_ms(200, 500);
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(run_ms(rng)));
    server.pause();
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    server.resume();
    auto probe = http_client::connect(server.url(), 2s);
    ASSERT_TRUE(probe) << probe.error().message;
    const auto t0 = std::chrono::steady_clock::now();
    auto health = (*probe)->get("/health");
    ASSERT_TRUE(health) << "not served after SIGCONT: " << health.error().message;
    EXPECT_EQ(health->status, 200u);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "slow to serve after SIGCONT";
  }
  std::this_thread::sleep_for(300ms);
  history.stop();
  auto rep = history.analyze(server.url());
  std::cout << rep.summary() << ", timeouts/retries " << history.unknown_count() << std::endl;
  EXPECT_TRUE(rep.clean()) << rep.summary();
  EXPECT_EQ(history.unexpected_count(), 0u);
  EXPECT_GT(history.unknown_count(), 0u) << "no request timed out during a pause: the test proved nothing";
  EXPECT_EQ(rep.unresolved, 0u);
  EXPECT_EQ(::waitpid(server.pid(), nullptr, WNOHANG), 0) << "the server exited";
}

// A client that timed out retries while its original request is still queued: both land in
// one group commit. Both answers must carry the positions the events are stored at.
TEST_P(Faults, ConcurrentRetriesGetTheStoredPositions) {
  // Regression: on PostgreSQL a retry planned in the same group commit as its original was
  // answered with batch-relative positions.
  server_process server(store_->url());
  server.start();
  append_history history([&](int) { return server.url(); }, 0);
  for (int round = 0; round < 40; ++round) {
    auto e = boost::json::parse(event_json("retry.race", "history", {{"round", round}})).as_object();
    std::vector<std::string> ids{new_uuid_v4()};
    e["id"] = ids[0];
    history.record_attempt(ids);
    const std::string body = append_body({boost::json::serialize(e)});
    const std::string target = "/v1/aggregates/race-" + std::to_string(round) + "/events";
    std::vector<std::thread> racers;
    std::mutex m;
    std::vector<std::string> answers;
    for (int k = 0; k < 4; ++k)
      racers.emplace_back([&] {
        timed_http c(server.url(), 5s);
        auto r = c.request("POST", target, body);
        std::lock_guard lock(m);
        answers.push_back(r ? std::to_string(r->status) + " " + r->body : "no answer: " + c.error);
      });
    for (auto& t : racers) t.join();
    for (const auto& a : answers) {
      ASSERT_TRUE(a.rfind("201 ", 0) == 0 || a.rfind("200 ", 0) == 0) << a;
      // Each answer is recorded as an acknowledgement: any one with another position shows.
      history.record_acknowledged(ids, a.substr(4));
      auto rep = history.analyze(server.url());
      ASSERT_TRUE(rep.clean()) << "round " << round << ", answer " << a << "\n" << rep.summary();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, Faults, ::testing::Values("sqlite", "postgres"),
                         [](const auto& p) { return p.param; });

namespace {

// Power loss rounds: run the server with the page-cache shim, let clients append, SIGKILL
// it and drop every write it had not fsynced, restart. Returns the final report.
history_report power_loss_run(const std::string& binary, int rounds, std::uint32_t s, std::size_t* undone_total) {
  temp_dir dir;
  power_loss pl(dir.path() / "data", dir.path() / "journal");
  const std::string store = "sqlite:" + (dir.path() / "data" / "events.db").string();
  server_launch launch{binary, pl.env(PLIERS_POWER_LOSS_SHIM)};
  std::mt19937 rng(s);
  std::uniform_int_distribution<int> run_ms(300, 700);
  current_url url;
  history_options opts;
  opts.clients = 6;
  opts.request_timeout = 5s;
  append_history history([&](int) { return url.get(); }, opts);
  std::unique_ptr<server_process> server;
  *undone_total = 0;
  for (int r = 0; r < rounds; ++r) {
    server = std::make_unique<server_process>(store, std::vector<std::string>{}, launch);
    server->start();
    url.set(server->url());
    if (r == 0) history.start();
    std::this_thread::sleep_for(std::chrono::milliseconds(run_ms(rng)));
    server->stop(SIGKILL);
    *undone_total += pl.apply();
  }
  server = std::make_unique<server_process>(store, std::vector<std::string>{}, launch);
  server->start();
  url.set(server->url());
  std::this_thread::sleep_for(400ms);
  history.stop();
  return history.analyze(server->url());
}

}  // namespace

// The durable configuration (synchronous=FULL) under simulated power loss: nothing
// acknowledged may be lost. Also shows that the simulation itself does not invent losses.
TEST(PowerLoss, SqliteSynchronousFullLosesNothing) {
  std::size_t undone = 0;
  auto rep = power_loss_run(PLIERS_EVENTS_BINARY, 5, seed() + 2, &undone);
  std::cout << "undo records applied " << undone << "; " << rep.summary() << std::endl;
  EXPECT_TRUE(rep.clean()) << rep.summary();
  EXPECT_GT(rep.acknowledged, 100u);
  EXPECT_GT(undone, 0u) << "no unsynced write was ever dropped: the power losses were not simulated";
}

// Negative control: the same run against a server that acknowledges before fsync
// (synchronous=OFF) must be reported as losing acknowledged events. If this test fails,
// the checker (or the power-loss simulation) cannot see a loss, and the tests above prove
// nothing.
TEST(NegativeControl, UnsafeNoFsyncLossIsReported) {
  std::size_t undone = 0;
  auto rep = power_loss_run(PLIERS_UNSAFE_SERVER, 3, seed() + 3, &undone);
  std::cout << "undo records applied " << undone << "; " << rep.summary() << std::endl;
  EXPECT_FALSE(rep.clean()) << "the checker did not notice the unsafe configuration losing events";
  EXPECT_GT(rep.lost, 0u) << rep.summary();
  EXPECT_GT(rep.acknowledged, 100u);
}

// Disk full: the SQLite store on an 8 MiB tmpfs, partly taken by a ballast file. Appends
// must fail with a 503 problem (never a 201 that is not stored), reads and /health keep
// working, and appends succeed again once the ballast is deleted. Finally a kill -9 and a
// restart on the same file: everything acknowledged is there once, nothing refused is.
TEST(DiskFull, SqliteOnSmallTmpfs) {
  temp_dir dir;
  const auto mnt = dir.path() / "volume";
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8m") != 0) {
    const std::string why = std::strerror(errno);
    if (in_ci()) FAIL() << "CI=true but mounting a tmpfs failed: " << why;
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why << "); needs root or CAP_SYS_ADMIN";
  }
  struct unmount {
    std::filesystem::path p;
    ~unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmounter{mnt};
  {
    std::ofstream ballast(mnt / "ballast", std::ios::binary);
    std::string mb(1 << 20, 'b');
    for (int i = 0; i < 3; ++i) ballast << mb;
  }
  const std::string store = "sqlite:" + (mnt / "events.db").string();
  auto server = std::make_unique<server_process>(store);
  server->start();
  append_history history([](int) { return std::string(); }, 0);
  auto http = server->client();
  const std::string big(100 * 1024, 'x');
  auto append_one = [&](std::size_t bytes) {
    auto e = boost::json::parse(event_json("disk.fill", "history", {{"fill", big.substr(0, bytes)}})).as_object();
    std::vector<std::string> ids{new_uuid_v4()};
    e["id"] = ids[0];
    history.record_attempt(ids);
    auto r = http->post("/v1/aggregates/disk-1/events", append_body({boost::json::serialize(e)}));
    if (!r) {
      ADD_FAILURE() << "append failed without an answer: " << r.error().message;
      history.record_unresolved(ids);
      return 0u;
    }
    if (r->status == 201) history.record_acknowledged(ids, r->body);
    else history.record_unresolved(ids);  // a 503 must leave nothing behind (checked at the end)
    return r->status;
  };
  int acknowledged = 0, full = 0;
  for (int i = 0; i < 200 && full < 5; ++i) {
    auto status = append_one(big.size());
    if (status == 201) {
      ++acknowledged;
      full = 0;
      continue;
    }
    ASSERT_EQ(status, 503u) << "a full disk must give 503";
    ++full;
  }
  ASSERT_EQ(full, 5) << "the disk never filled up";
  ASSERT_GT(acknowledged, 5);
  // The answer while full is a clear problem.
  {
    auto e = boost::json::parse(event_json("disk.fill", "history", {{"fill", big}})).as_object();
    auto r = http->post("/v1/aggregates/disk-2/events", append_body({boost::json::serialize(e)}));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 503u) << r->body;
    EXPECT_EQ(r->content_type, "application/problem+json");
    auto p = boost::json::parse(r->body);
    EXPECT_EQ(p.at("type").as_string(), "https://pliers.dev/problems/unavailable") << r->body;
    EXPECT_NE(p.at("detail").as_string().find("full"), std::string::npos) << "detail should say the disk is full: " << r->body;
  }
  // Reads and health still work while the disk is full.
  auto health = server->client()->get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200u);
  auto page = server->client()->get("/v1/events?limit=1");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200u) << page->body;
  // Space returns: appends succeed again, without a restart.
  std::filesystem::remove(mnt / "ballast");
  int recovered = 0;
  for (int i = 0; i < 20 && recovered < 5; ++i) {
    auto status = append_one(big.size());
    if (status == 201) ++recovered;
    else if (recovered == 0) std::this_thread::sleep_for(100ms);
    else ADD_FAILURE() << "an append failed after recovery: " << status;
  }
  EXPECT_EQ(recovered, 5) << "appends did not succeed again after space was freed: " << server->stderr_text();
  // Crash after the episode: the file is intact and tells the truth.
  server->stop(SIGKILL);
  server = std::make_unique<server_process>(store);
  server->start();
  auto rep = history.analyze(server->url());
  EXPECT_TRUE(rep.clean()) << rep.summary();
  EXPECT_EQ(rep.unresolved_present, 0u) << "an append answered 503 was stored anyway";
  EXPECT_EQ(rep.acknowledged, static_cast<std::size_t>(acknowledged + recovered));
  std::cout << acknowledged << " appends of 100 KiB before the disk was full, 503 while full, " << recovered
            << " after space returned; " << rep.summary() << std::endl;
  server->stop(SIGTERM);
}

// The HTTP client (CLI, benchmarks) promises a timeout; against a paused server it must
// give up instead of hanging.
// PostgreSQL whose data directory lives on a small tmpfs: filling it makes appends fail
// with 503 (PostgreSQL reports disk_full, or panics and restarts when WAL cannot grow),
// never a false acknowledgement; once space returns appends succeed again, without
// restarting the engine.
TEST(DiskFull, PostgresOnSmallTmpfs) {
  const std::string bin = "/usr/lib/postgresql/15/bin/";
  if (!std::filesystem::exists(bin + "initdb")) {
    if (in_ci()) FAIL() << "CI=true but PostgreSQL 15 is not installed";
    GTEST_SKIP() << "PostgreSQL 15 is not installed";
  }
  temp_dir dir;
  const auto mnt = dir.path() / "pgvolume";
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=96m,mode=0777") != 0) {
    const std::string why = std::strerror(errno);
    if (in_ci()) FAIL() << "CI=true but mounting a tmpfs failed: " << why;
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why << ")";
  }
  const bool root = ::geteuid() == 0;
  const std::string as_pg = root ? "runuser -u postgres -- " : "";
  const std::string data = (mnt / "data").string();
  const std::string port = std::to_string(55000 + ::getpid() % 4000);  // clear of the suite's own cluster
  struct cleanup {
    std::string stop;
    std::filesystem::path p;
    ~cleanup() {
      (void)std::system(stop.c_str());
      ::umount2(p.c_str(), MNT_DETACH);
    }
  } cleaner{as_pg + bin + "pg_ctl -D " + data + " -m immediate -w stop >/dev/null 2>&1", mnt};
  ASSERT_EQ(std::system((as_pg + bin + "initdb -D " + data + " -U postgres --auth=trust --wal-segsize=1 >/dev/null 2>&1").c_str()), 0);
  ASSERT_EQ(std::system((as_pg + bin + "pg_ctl -D " + data + " -l " + (mnt / "pg.log").string() + " -w -t 60 start -o \"-p " +
                         port + " -k " + mnt.string() +
                         " -c listen_addresses=127.0.0.1 -c shared_buffers=16MB -c min_wal_size=2MB -c max_wal_size=8MB\" >/dev/null")
                            .c_str()),
            0);
  const std::string store = "postgres://postgres@127.0.0.1:" + port + "/postgres";
  // Fill the volume, leaving a few MiB.
  {
    std::ofstream ballast(mnt / "ballast", std::ios::binary);
    std::string mb(1 << 20, 'b');
    const auto space = std::filesystem::space(mnt);
    const auto fill = static_cast<int>(space.available / (1 << 20)) - 6;
    for (int i = 0; i < fill; ++i) ballast << mb;
  }
  auto server = std::make_unique<server_process>(store);
  server->start();
  append_history history([](int) { return std::string(); }, 0);
  // Incompressible payloads: PostgreSQL would shrink repeated characters (TOAST).
  std::mt19937 rng(seed());
  auto random_text = [&](std::size_t n) {
    static constexpr char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    std::string out(n, 'a');
    for (auto& c : out) c = alphabet[rng() % 62];
    return out;
  };
  auto append_one = [&]() -> unsigned {
    auto client = http_client::connect(server->url(), 5s);
    if (!client) return 0u;
    auto& http = *client;
    auto e = boost::json::parse(event_json("disk.fill", "history", {{"fill", random_text(100 * 1024)}})).as_object();
    std::vector<std::string> ids{new_uuid_v4()};
    e["id"] = ids[0];
    history.record_attempt(ids);
    auto r = http->post("/v1/aggregates/disk-pg/events", append_body({boost::json::serialize(e)}));
    if (!r) {
      history.record_unresolved(ids);  // no answer: the engine may still commit it later
      return 0u;
    }
    if (r->status == 201) history.record_acknowledged(ids, r->body);
    else history.record_refused(ids);  // a 503 means it is not stored, ever
    return r->status;
  };
  int acknowledged = 0, full = 0;
  for (int i = 0; i < 400 && full < 3; ++i) {
    auto status = append_one();
    if (status == 201) {
      ++acknowledged;
      full = 0;
      continue;
    }
    ASSERT_TRUE(status == 503u || status == 0u) << "a full disk must give 503 (or no answer), got " << status;
    ++full;
  }
  ASSERT_EQ(full, 3) << "the disk never filled up";
  ASSERT_GT(acknowledged, 3);
  EXPECT_EQ(server->client()->get("/health")->status, 200u) << "the engine must stay up";
  std::filesystem::remove(mnt / "ballast");
  const std::string pg_ctl = as_pg + bin + "pg_ctl -D " + data;
  if (std::system((pg_ctl + " status >/dev/null 2>&1").c_str()) != 0) {
    ASSERT_EQ(std::system((pg_ctl + " -l " + (mnt / "pg.log").string() + " -w -t 60 start -o \"-p " + port + " -k " +
                           mnt.string() + " -c listen_addresses=127.0.0.1 -c shared_buffers=16MB\" >/dev/null")
                              .c_str()),
              0);
  }
  int recovered = 0;
  for (int i = 0; i < 60 && recovered < 3; ++i) {
    if (append_one() == 201) ++recovered;
    else std::this_thread::sleep_for(500ms);
  }
  EXPECT_EQ(recovered, 3) << "appends did not succeed again after space was freed";
  auto rep = history.analyze(server->url());
  EXPECT_TRUE(rep.clean()) << rep.summary();  // includes: nothing answered 503 is stored
  std::cout << acknowledged << " appends of 100 KiB before PostgreSQL's volume was full, 503 while full, " << recovered
            << " after space returned; " << rep.summary() << std::endl;
  server->stop(SIGTERM);
}

TEST(PausedServer, HttpClientTimesOut) {
  // Regression: the client used synchronous Beast calls, which ignore the stream's deadline.
  server_process server("memory:");
  server.start();
  auto client = http_client::connect(server.url(), 500ms);
  ASSERT_TRUE(client);
  server.pause();
  auto done = std::async(std::launch::async, [&] { return (*client)->get("/health"); });
  const bool timed_out = done.wait_for(5s) == std::future_status::ready;
  server.resume();
  auto r = done.get();
  EXPECT_TRUE(timed_out) << "the request did not give up within 5 s (timeout 500 ms)";
  EXPECT_FALSE(r) << "the request waited for the paused server";
}

}  // namespace pliers

namespace pliers {

namespace {

long proc_rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

long proc_fds(pid_t pid) {
  std::error_code ec;
  long n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return ec ? -1 : n;
}

long long dir_bytes(const std::filesystem::path& dir) {
  long long total = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) total += static_cast<long long>(e.file_size(ec));
  return total;
}

}  // namespace

// Soak mode (scripts/soak; skipped unless PLIERS_SOAK_SECONDS is set): throttled clients
// append for the given duration while a fault hits the server every
// PLIERS_SOAK_FAULT_EVERY seconds (default 180), cycling kill -9, SIGSTOP for 3 s, and a
// graceful SIGTERM restart. Every PLIERS_SOAK_SAMPLE_EVERY seconds (default 10) it prints a
// CSV line: elapsed s, server RSS KiB, open fds, store bytes (SQLite files; PostgreSQL
// schema relations), head position, acknowledged, unknown outcomes, faults so far. At the
// end the whole log is checked, and RSS and fds must not have grown without bound.
// PLIERS_SOAK_BACKEND=sqlite|postgres (default sqlite); PLIERS_SOAK_CSV=FILE also writes the CSV.
TEST(Soak, FaultEveryFewMinutes) {
  const int seconds = env_int("PLIERS_SOAK_SECONDS", 0);
  if (seconds <= 0) GTEST_SKIP() << "soak mode: run scripts/soak DURATION (PLIERS_SOAK_SECONDS)";
  const int fault_every = env_int("PLIERS_SOAK_FAULT_EVERY", 180), sample_every = env_int("PLIERS_SOAK_SAMPLE_EVERY", 10);
  const char* kind_env = std::getenv("PLIERS_SOAK_BACKEND");
  const std::string kind = kind_env && *kind_env ? kind_env : "sqlite";
  temp_dir dir;
  std::unique_ptr<postgres_schema> schema;
  std::string store = "sqlite:" + (dir.path() / "events.db").string();
  if (kind == "postgres") {
    auto base = postgres_url();
    ASSERT_TRUE(base) << "PLIERS_SOAK_BACKEND=postgres needs PLIERS_TEST_POSTGRES_URL (scripts/soak sets it)";
    schema = std::make_unique<postgres_schema>(*base);
    store = schema->url();
  }
  auto store_bytes = [&]() -> long long {
    if (!schema) return dir_bytes(dir.path());
    auto c = pg::connection::open(*postgres_url());
    if (!c) return -1;
    auto r = (*c)->exec("SELECT coalesce(sum(pg_total_relation_size(c.oid)),0)::bigint FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r','p')",
                        {schema->name()});
    return r && r->rows() > 0 ? static_cast<long long>(r->int64(0, 0)) : -1;
  };
  std::ofstream csv;
  if (const char* f = std::getenv("PLIERS_SOAK_CSV"); f && *f) csv.open(f);
  current_url url;
  history_options opts;
  opts.clients = env_int("PLIERS_RELIABILITY_CLIENTS", 8);
  opts.conflict_every = 11;
  opts.think_time = std::chrono::milliseconds(env_int("PLIERS_SOAK_THINK_MS", 20));
  append_history history([&](int) { return url.get(); }, opts);
  auto server = std::make_unique<server_process>(store);
  server->start();
  url.set(server->url());
  history.start();
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - t0).count(); };
  long first_rss = -1, first_fds = -1, max_rss = 0, max_fds = 0, last_rss = 0, last_fds = 0;
  int faults = 0;
  long next_fault = fault_every, next_sample = 0;
  const std::string header = "elapsed_s,rss_kib,fds,store_bytes,head,acknowledged,unknown,faults";
  std::cout << header << std::endl;
  if (csv) csv << header << std::endl;
  while (elapsed() < seconds) {
    if (elapsed() >= next_sample) {
      next_sample += sample_every;
      const long rss = proc_rss_kib(server->pid()), fds = proc_fds(server->pid());
      std::int64_t head = -1;
      if (auto c = http_client::connect(server->url(), 5s); c)
        if (auto h = (*c)->get("/health"); h && h->status == 200) head = boost::json::parse(h->body).at("headPosition").as_int64();
      std::ostringstream line;
      line << elapsed() << "," << rss << "," << fds << "," << store_bytes() << "," << head << ","
           << history.acknowledged_count() << "," << history.unknown_count() << "," << faults;
      std::cout << line.str() << std::endl;
      if (csv) csv << line.str() << std::endl;
      // The first minute warms caches up; growth is judged from then on.
      if (first_rss < 0 && elapsed() >= 60) first_rss = rss, first_fds = fds;
      max_rss = std::max(max_rss, rss), max_fds = std::max(max_fds, fds);
      last_rss = rss, last_fds = fds;
    }
    if (elapsed() >= next_fault) {
      next_fault += fault_every;
      switch (faults++ % 3) {
        case 0:
          server->stop(SIGKILL);
          server = std::make_unique<server_process>(store);
          server->start();
          url.set(server->url());
          break;
        case 1:
          server->pause();
          std::this_thread::sleep_for(3s);
          server->resume();
          break;
        default:
          EXPECT_EQ(server->stop(SIGTERM), 0) << "graceful stop failed: " << server->stderr_text();
          server = std::make_unique<server_process>(store);
          server->start();
          url.set(server->url());
      }
    }
    std::this_thread::sleep_for(200ms);
  }
  history.stop();
  const auto rep = history.check_log(server->url());
  std::cout << "soak " << seconds << " s, " << faults << " faults: " << rep.summary() << "\nRSS KiB after warm-up "
            << first_rss << ", last " << last_rss << ", max " << max_rss << "; fds after warm-up " << first_fds << ", last "
            << last_fds << ", max " << max_fds << std::endl;
  if (first_fds > 0) {
    EXPECT_LE(last_fds, first_fds + 32) << "file descriptors keep growing";
  }
  if (first_rss > 0) {
    EXPECT_LE(last_rss, first_rss * 3 + 65536) << "memory keeps growing";
  }
}

}  // namespace pliers
