// Outbound HTTP POST through libcurl for remote plugins and webhook targets: a total
// timeout, redirects never followed, the response body capped. One connection cache per
// thread (keep-alive to the same peer). Thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace pliers {

struct outbound_response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

struct http_post_options {
  std::chrono::milliseconds timeout{5000};
  std::size_t max_response_bytes = 1 << 20;
  std::vector<std::string> headers;  // "Name: value"
};

// errc::timeout when the deadline passed, errc::unavailable when the peer could not be
// reached, errc::invalid_argument for a URL curl refuses, payload_too_large over the cap.
result<outbound_response> http_post(const std::string& url, const std::string& body, const http_post_options& options);

}  // namespace pliers
