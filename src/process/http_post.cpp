#include "process/http_post.hpp"

#include <algorithm>
#include <cctype>

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

}  // namespace

result<outbound_response> http_post(const std::string& url, const std::string& body, const http_post_options& options) {
  thread_local handle h;
  if (!h.curl) return error::make(errc::internal, "libcurl could not start");
  CURL* c = h.curl;
  curl_easy_reset(c);
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
