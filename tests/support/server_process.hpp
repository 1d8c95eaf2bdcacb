// Test support: runs the real `pliers-events serve` binary as a child process on
// 127.0.0.1:0 and tells its address. Stops it with SIGTERM (or a chosen signal) when done.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "server/http_client.hpp"

namespace pliers::testing {

// A fresh temporary directory, removed when the object goes away.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// How to run the server beyond its store and flags (defaults: the real binary, inherited
// environment).
struct server_launch {
  std::string binary;                                       // "" = PLIERS_EVENTS_BINARY
  std::vector<std::pair<std::string, std::string>> env;     // set in the child (e.g. PLIERS_*, LD_PRELOAD)
};

class server_process {
 public:
  // store: "memory:", "sqlite:PATH" or a postgres URL; extra: more `serve` flags.
  explicit server_process(std::string store, std::vector<std::string> extra = {}, server_launch launch = {});
  ~server_process();
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;

  // Starts and waits until it listens (throws on failure).
  void start();
  const std::string& url() const { return url_; }  // http://127.0.0.1:PORT
  std::unique_ptr<http_client> client() const;
  pid_t pid() const { return pid_; }
  // Sends the signal; returns the exit status (as from waitpid) after the process ends.
  int stop(int signal = 15, std::chrono::seconds timeout = std::chrono::seconds(20));
  bool running() const { return pid_ > 0; }
  std::string stderr_text() const;
  // SIGSTOP / SIGCONT.
  void pause();
  void resume();

 private:
  std::string store_;
  std::vector<std::string> extra_;
  server_launch launch_;
  temp_dir dir_;
  pid_t pid_ = -1;
  std::string url_;
};

// Runs a command line (argv) and captures stdout; exit code in `status`.
std::string run_command(const std::vector<std::string>& argv, const std::string& stdin_text, int& status);

}  // namespace pliers::testing
