#include "process/http_post.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <curl/curl.h>

namespace pliers {

namespace {

struct curl_global {
  curl_global() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

struct handle {
  CURL* curl = nullptr;
  handle() {
    static curl_global init;
    curl = curl_easy_init();
  }
  ~handle() {
    if (curl) curl_easy_cleanup(curl);
  }
};

struct sink {
  outbound_response* response;
  std::size_t cap;
  bool overflow = false;
};

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* s = static_cast<sink*>(user);
  const std::size_t len = size * n;
  if (s->response->body.size() + len > s->cap) {
    s->overflow = true;
    return 0;  // aborts the transfer
  }
  s->response->body.append(data, len);
  return len;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* s = static_cast<sink*>(user);
  const std::size_t len = size * n;
  std::string line(data, len);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = line.substr(colon + 1);
    auto b = value.find_first_not_of(" \t"), e = value.find_last_not_of(" \t\r\n");
    s->response->headers[name] = b == std::string::npos ? "" : value.substr(b, e - b + 1);
  }
  return len;
}

bool private_v4(std::uint32_t a) {  // host order
  auto in = [&](std::uint32_t net, int bits) { return (a >> (32 - bits)) == (net >> (32 - bits)); };
  return in(0x00000000, 8) || in(0x0A000000, 8) || in(0x64400000, 10) || in(0x7F000000, 8) || in(0xA9FE0000, 16) ||
         in(0xAC100000, 12) || in(0xC0000000, 24) || in(0xC0000200, 24) || in(0xC0A80000, 16) || in(0xC6120000, 15) ||
         in(0xC6336400, 24) || in(0xCB007100, 24) || in(0xE0000000, 4) || in(0xF0000000, 4);
}

bool private_v6(const unsigned char* b) {
  static const unsigned char zero[16] = {};
  if (std::memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1)) return true;  // :: and ::1
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, mapped, 12) == 0 || (b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b))  // v4-mapped, NAT64
    return private_v4((std::uint32_t(b[12]) << 24) | (std::uint32_t(b[13]) << 16) | (std::uint32_t(b[14]) << 8) | b[15]);
  if ((b[0] & 0xfe) == 0xfc) return true;                   // fc00::/7 unique local
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return true;   // fe80::/10 link-local
  if (b[0] == 0xff) return true;                            // multicast
  if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return true;  // documentation
  return false;
}

struct curl_url_handle {
  CURLU* u = curl_url();
  ~curl_url_handle() { curl_url_cleanup(u); }
  std::string get(CURLUPart part, unsigned flags = 0) const {
    char* out = nullptr;
    if (curl_url_get(u, part, &out, flags) != CURLUE_OK || !out) return {};
    std::string s(out);
    curl_free(out);
    return s;
  }
};

// The "host:port:address" pin for CURLOPT_RESOLVE, or the reason the URL is refused.
result<std::string> checked_resolve(const std::string& url, const std::vector<std::string>& allow) {
  curl_url_handle h;
  if (curl_url_set(h.u, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return error::invalid("url", "not a valid URL");
  std::string host = h.get(CURLUPART_HOST);
  const std::string port = h.get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if (host.empty() || port.empty()) return error::invalid("url", "needs a host");
  std::string bare = host;
  if (bare.size() > 2 && bare.front() == '[' && bare.back() == ']') bare = bare.substr(1, bare.size() - 2);
  const bool host_allowed = std::find(allow.begin(), allow.end(), bare) != allow.end();
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(bare.c_str(), port.c_str(), &hints, &res); rc != 0)
    return error::make(errc::unavailable, "cannot resolve '" + bare + "': " + gai_strerror(rc));
  std::string chosen, refused;
  for (auto* ai = res; ai && chosen.empty(); ai = ai->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    bool priv = false;
    if (ai->ai_family == AF_INET) {
      auto* sa = reinterpret_cast<sockaddr_in*>(ai->ai_addr);
      inet_ntop(AF_INET, &sa->sin_addr, text, sizeof text);
      priv = private_v4(ntohl(sa->sin_addr.s_addr));
    } else if (ai->ai_family == AF_INET6) {
      auto* sa = reinterpret_cast<sockaddr_in6*>(ai->ai_addr);
      inet_ntop(AF_INET6, &sa->sin6_addr, text, sizeof text);
      priv = private_v6(sa->sin6_addr.s6_addr);
    } else {
      continue;
    }
    const std::string addr(text);
    if (!priv || host_allowed || std::find(allow.begin(), allow.end(), addr) != allow.end())
      chosen = ai->ai_family == AF_INET6 ? "[" + addr + "]" : addr;
    else if (refused.empty())
      refused = addr;
  }
  freeaddrinfo(res);
  if (chosen.empty())
    return error::make(errc::forbidden, "'" + bare + "' resolves to " + (refused.empty() ? "no usable address" : refused) +
                                            ", a private, loopback, link-local or reserved address (allow-list it to deliver there)");
  return bare + ":" + port + ":" + chosen;
}

}  // namespace

result<std::string> resolve_public(const std::string& url, const std::vector<std::string>& allow) {
  return checked_resolve(url, allow);
}

std::optional<bool> is_private_address(const std::string& literal) {
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, literal.c_str(), &v4) == 1) return private_v4(ntohl(v4.s_addr));
  if (inet_pton(AF_INET6, literal.c_str(), &v6) == 1) return private_v6(v6.s6_addr);
  return std::nullopt;
}

result<outbound_response> http_post(const std::string& url, const std::string& body, const http_post_options& options) {
  thread_local handle h;
  if (!h.curl) return error::make(errc::internal, "libcurl could not start");
  CURL* c = h.curl;
  curl_easy_reset(c);
  curl_slist* pin = nullptr;
  if (options.public_only) {
    auto r = checked_resolve(url, options.allow);
    if (!r) return std::move(r).error();
    pin = curl_slist_append(nullptr, r->c_str());
    curl_easy_setopt(c, CURLOPT_RESOLVE, pin);
  }
  outbound_response response;
  sink s{&response, options.max_response_bytes};
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  for (const auto& hd : options.headers) headers = curl_slist_append(headers, hd.c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<std::int64_t>(options.timeout.count(), 1)));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &s);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "pliers-events/0.1");
  const CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (pin) {
    curl_easy_setopt(c, CURLOPT_RESOLVE, nullptr);
    curl_slist_free_all(pin);
  }
  if (s.overflow)
    return error::make(errc::payload_too_large, "response larger than " + std::to_string(options.max_response_bytes) + " bytes");
  if (rc == CURLE_OPERATION_TIMEDOUT)
    return error::make(errc::timeout, "no answer within " + std::to_string(options.timeout.count()) + " ms");
  if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL)
    return error::invalid("url", std::string("refused: ") + curl_easy_strerror(rc));
  if (rc != CURLE_OK) return error::make(errc::unavailable, std::string(curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

}  // namespace pliers
