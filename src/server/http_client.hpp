// A small blocking HTTP/1.1 client with keep-alive, for the CLI, tests and benchmarks.
// Not thread-safe: one client per thread. When the server has closed a reused idle
// connection, GET/HEAD/PUT/DELETE are sent once more on a new one; POST never is.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hpp"

namespace pliers {

struct http_response {
  unsigned status = 0;
  std::string body;
  std::string content_type;
};

class http_client {
 public:
  // base_url: "http://HOST:PORT" (a path, if any, is ignored).
  static result<std::unique_ptr<http_client>> connect(std::string_view base_url,
                                                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~http_client();
  result<http_response> request(std::string_view method, std::string_view target, std::string_view body = {},
                                const std::vector<std::pair<std::string, std::string>>& headers = {});
  result<http_response> get(std::string_view target) { return request("GET", target); }
  result<http_response> post(std::string_view target, std::string_view body) { return request("POST", target, body); }

 private:
  struct impl;
  explicit http_client(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// Percent-encodes a path segment or query value.
std::string url_encode(std::string_view s);

}  // namespace pliers
