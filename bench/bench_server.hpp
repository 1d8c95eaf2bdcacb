// The pliers-events server as the benchmarks run it: a child process per scenario.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/types.h>

#include "bench.hpp"

namespace pliers::bench {

// One pliers-events process: `serve --store STORE --listen 127.0.0.1:0 --ready-file
// DIR/ready`, STORE = sqlite:DIR/events.db unless given; stdout and stderr go to
// DIR/server.log; the environment is inherited (PLIERS_* settings apply).
class server_process {
 public:
  server_process(const std::filesystem::path& binary, const std::filesystem::path& dir,
                 const std::string& store_url = {});
  ~server_process();
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;

  std::string url() const { return "http://" + hostport_; }
  const std::string& hostport() const { return hostport_; }
  boost::asio::ip::tcp::endpoint endpoint() const;
  int pid() const { return pid_; }
  std::optional<double> cpu_seconds() const { return process_cpu_seconds(pid_); }
  long rss_kb() const;
  long hwm_kb() const;
  long threads() const;
  // SIGTERM, then wait (SIGKILL after 15 s). Throws when the server did not exit cleanly.
  void stop();
  std::string log_text() const;

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  std::string hostport_;
};

// A "Name:   value kB" line of /proc/PID/status ("self" for this process), in kB (-1 when absent).
long status_kb(const std::string& pid, const std::string& name);

}  // namespace pliers::bench
