// Test support: the PostgreSQL the test run started (scripts/test-postgres), reached through
// PLIERS_TEST_POSTGRES_URL. Without it, PostgreSQL tests skip — except under CI=true, where
// a missing PostgreSQL is a failure.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "store/postgres/pg_db.hpp"

namespace pliers::testing {

inline std::optional<std::string> postgres_url() {
  const char* url = std::getenv("PLIERS_TEST_POSTGRES_URL");
  if (url && *url) return std::string(url);
  return std::nullopt;
}

inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// A schema of its own for one test, dropped at the end; `url()` points the store at it.
class postgres_schema {
 public:
  explicit postgres_schema(std::string base) : base_(std::move(base)) {
    std::random_device rd;
    name_ = "t_" + std::to_string(rd()) + std::to_string(rd() % 1000);
    auto c = pg::connection::open(base_);
    if (!c) throw std::runtime_error(c.error().message);
    if (auto r = (*c)->exec("CREATE SCHEMA " + name_); !r) throw std::runtime_error(r.error().message);
  }
  ~postgres_schema() {
    auto c = pg::connection::open(base_);
    if (c) (void)(*c)->exec("DROP SCHEMA " + name_ + " CASCADE");
  }
  // The store URL for this schema; its connections carry the schema name as
  // application_name, so a test can find (and terminate) exactly them.
  std::string url() const {
    return base_ + (base_.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" + name_ +
           "&application_name=" + name_;
  }
  const std::string& name() const { return name_; }

 private:
  std::string base_;
  std::string name_;
};

// The store URL of a conformance suite's backend parameter: "memory", "sqlite" (a file in
// `dir`) or "postgres" (a schema of its own, kept alive in `schema`). nullopt when
// PostgreSQL is not configured: the caller calls missing_postgres() and returns.
inline std::optional<std::string> backend_url(const std::string& backend, const std::filesystem::path& dir,
                                              std::unique_ptr<postgres_schema>& schema) {
  if (backend == "sqlite") return "sqlite:" + (dir / "e.db").string();
  if (backend != "postgres") return "memory:";
  auto base = postgres_url();
  if (!base) return std::nullopt;
  schema = std::make_unique<postgres_schema>(*base);
  return schema->url();
}

// Called from SetUp when backend_url() found no PostgreSQL: a failure under CI=true, a
// skip otherwise (either way the test body does not run).
inline void missing_postgres() {
  if (in_ci()) GTEST_FAIL() << "CI=true but PLIERS_TEST_POSTGRES_URL is not set";
  GTEST_SKIP() << "no PostgreSQL configured (PLIERS_TEST_POSTGRES_URL); scripts/test starts one";
}

}  // namespace pliers::testing
