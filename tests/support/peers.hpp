// Test support: the routing targets' real peers that scripts/test-peers starts (NATS
// JetStream, Redis, an SMTP sink) reached through PLIERS_TEST_*_URL, and Python helper
// processes on loopback. A missing peer skips the test with its reason, except under
// CI=true where it fails it (tests/support/postgres.hpp in_ci()).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "support/postgres.hpp"

namespace pliers::testing {

inline std::optional<std::string> env_text(const char* name) {
  const char* v = std::getenv(name);
  if (v && *v) return std::string(v);
  return std::nullopt;
}

// Binds `var` to the peer's URL, or skips (fails under CI) naming the variable.
#define PLIERS_REQUIRE_PEER(var, env_name)                                                              \
  auto var##_opt = ::pliers::testing::env_text(env_name);                                                \
  if (!var##_opt) {                                                                                      \
    if (::pliers::testing::in_ci()) FAIL() << env_name " is not set: run scripts/test (scripts/test-peers)"; \
    GTEST_SKIP() << env_name " is not set: the peer is not running (scripts/test-peers start)";         \
  }                                                                                                      \
  const std::string var = *var##_opt

// A Python script that prints its port on stdout and serves until killed. The pipe stays
// open until then: closing it right after reading the port made the script's own flush of
// that line fail with BrokenPipeError now and then, killing the peer.
class python_peer {
 public:
  explicit python_peer(const std::vector<std::string>& args) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>("python3"));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execvp("python3", argv.data());
      _exit(127);
    }
    close(out[1]);
    out_ = out[0];
    std::string line;
    char ch = 0;
    while (line.size() < 32 && read(out_, &ch, 1) == 1 && ch != '\n') line += ch;
    if (line.empty()) throw std::runtime_error("python peer did not start");
    port_ = std::atoi(line.c_str());
  }
  ~python_peer() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(out_);
  }
  python_peer(const python_peer&) = delete;
  python_peer& operator=(const python_peer&) = delete;
  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int port_ = 0;
};

}  // namespace pliers::testing
