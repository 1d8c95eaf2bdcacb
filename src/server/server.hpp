// The HTTP server (v1 API of DESIGN). Beast and Asio stay behind this header.
//
// Threads: `io_threads` run the network (one strand per connection, the coroutine frame
// owns the connection); blocking store calls run on a pool of `worker_threads`; appends
// go to the store's group commit and complete asynchronously.
// Lifecycle: construct, start() (binds), run() (blocks until stopped), stop() from any
// thread or SIGINT/SIGTERM when handle_signals: stop accepting, let in-flight requests
// finish within shutdown_grace, close idle connections, return from run().
#pragma once

#include <memory>
#include <string>

#include "core/result.hpp"
#include "server/config.hpp"
#include "store/event_store.hpp"

namespace pliers {

class http_server {
 public:
  http_server(server_config config, event_store& store);  // `store` must outlive the server
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  // Binds the listener; returns the bound "host:port" (useful with port 0).
  result<std::string> start(bool handle_signals = false);
  void run();
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace pliers
