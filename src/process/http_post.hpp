// Outbound HTTP POST through libcurl for remote plugins and webhook targets: a total
// timeout, redirects never followed, the response body capped. One connection cache per
// thread (keep-alive to the same peer). Thread-safe.
// With `public_only`, the host is resolved here and every address is checked: loopback,
// private (RFC 1918, fc00::/7), link-local (incl. the cloud metadata address
// 169.254.169.254), CGNAT, multicast, unspecified and reserved ranges are refused
// (errc::forbidden) unless the URL's host or the address is in `allow`; curl is then pinned
// to the checked address (CURLOPT_RESOLVE), so a second lookup cannot swap it (DNS
// rebinding).
#pragma once

#include <chrono>
#include <map>
#include <optional>
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
  bool public_only = false;
  std::vector<std::string> allow;    // host names or literal addresses exempt from public_only
};

// The public_only check for any URL libcurl takes (http, https, smtp...): resolves its host
// and answers the CURLOPT_RESOLVE entry "host:port:address" pinning a permitted address;
// errc::forbidden when every address is refused, unavailable when the name does not resolve.
result<std::string> resolve_public(const std::string& url, const std::vector<std::string>& allow);

// Whether a literal IPv4/IPv6 address is one public_only refuses (nullopt: not an address).
std::optional<bool> is_private_address(const std::string& literal);

// errc::timeout when the deadline passed, errc::unavailable when the peer could not be
// reached, errc::invalid_argument for a URL curl refuses, payload_too_large over the cap.
result<outbound_response> http_post(const std::string& url, const std::string& body, const http_post_options& options);

}  // namespace pliers
