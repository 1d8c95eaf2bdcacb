// Test support: HTTP over a raw TCP socket, byte for byte, for hostile input that a real
// client library would refuse to send (broken framing, slow writers, pipelining).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <cctype>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pliers::testing {

struct raw_response {
  unsigned status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;
  std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return v;
    return {};
  }
};

class raw_connection {
 public:
  // url: "http://127.0.0.1:PORT"
  explicit raw_connection(const std::string& url) {
    auto hostport = url.substr(url.find("//") + 2);
    auto colon = hostport.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(hostport.substr(colon + 1))));
    ::inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &a.sin_addr);
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw std::runtime_error("cannot connect to " + url);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~raw_connection() {
    if (fd_ >= 0) ::close(fd_);
  }
  raw_connection(const raw_connection&) = delete;
  raw_connection& operator=(const raw_connection&) = delete;

  // False once the peer has closed or reset the connection.
  bool send(std::string_view bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }

  // The next complete response, or nullopt when the connection closed (or nothing came
  // within `timeout`; timed_out() tells which).
  std::optional<raw_response> read_response(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    timed_out_ = false;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(deadline)) return std::nullopt;
    raw_response r;
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    auto line_end = head.find("\r\n");
    auto status_line = head.substr(0, line_end);
    if (status_line.size() < 12) return std::nullopt;
    r.status = static_cast<unsigned>(std::stoul(status_line.substr(9, 3)));
    std::size_t at = line_end == std::string::npos ? head.size() : line_end + 2;
    while (at < head.size()) {
      auto e = head.find("\r\n", at);
      if (e == std::string::npos) e = head.size();
      auto line = head.substr(at, e - at);
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string k = line.substr(0, colon), v = line.substr(colon + 1);
        std::transform(k.begin(), k.end(), k.begin(), [](unsigned char c) { return std::tolower(c); });
        v.erase(0, v.find_first_not_of(' '));
        r.headers.emplace_back(k, v);
      }
      at = e + 2;
    }
    if (r.header("transfer-encoding").find("chunked") != std::string::npos) {
      while (true) {
        std::size_t eol;
        while ((eol = buf_.find("\r\n")) == std::string::npos)
          if (!fill(deadline)) return std::nullopt;
        const auto size = std::stoul(buf_.substr(0, eol), nullptr, 16);
        while (buf_.size() < eol + 2 + size + 2)
          if (!fill(deadline)) return std::nullopt;
        r.body += buf_.substr(eol + 2, size);
        buf_.erase(0, eol + 2 + size + 2);
        if (size == 0) break;
      }
    } else {
      const auto cl = r.header("content-length");
      const std::size_t n = cl.empty() ? 0 : std::stoul(cl);
      while (buf_.size() < n)
        if (!fill(deadline)) return std::nullopt;
      r.body = buf_.substr(0, n);
      buf_.erase(0, n);
    }
    return r;
  }

  // Waits until the peer closes; true if it did within `timeout`.
  bool wait_closed(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (fill(deadline)) {
    }
    return !timed_out_;
  }
  bool timed_out() const { return timed_out_; }
  int fd() const { return fd_; }

 private:
  // Reads more into buf_; false on close, reset or deadline.
  bool fill(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out_ = true;
      return false;
    }
    pollfd p{fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc == 0) {
      timed_out_ = true;
      return false;
    }
    char tmp[65536];
    auto n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string buf_;
  bool timed_out_ = false;
};

// A whole request with Content-Length.
inline std::string http_request(std::string_view method, std::string_view target, std::string_view body = {},
                                std::string_view content_type = "application/json", std::string_view extra_headers = {}) {
  std::string s = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  if (!body.empty() || method == "POST" || method == "PUT") {
    s += "Content-Type: " + std::string(content_type) + "\r\n";
    s += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  s += extra_headers;
  s += "\r\n";
  s += body;
  return s;
}

}  // namespace pliers::testing

namespace pliers::testing {

// A blocking keep-alive client whose every request really has a deadline (connect, send
// and the whole response), unlike http_client today. For fault tests, where the server may
// be paused or dead. Not thread-safe: one per thread.
class timed_http {
 public:
  timed_http(std::string url, std::chrono::milliseconds timeout) : url_(std::move(url)), timeout_(timeout) {}

  // The response, or nullopt with `error` set (connection refused, closed, timed out).
  std::optional<raw_response> request(std::string_view method, std::string_view target, std::string_view body = {}) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool reused = conn_ != nullptr;
      if (!conn_) {
        try {
          conn_ = std::make_unique<raw_connection>(url_);
        } catch (const std::exception& e) {
          error = e.what();
          return std::nullopt;
        }
      }
      if (!conn_->send(http_request(method, target, body))) {
        conn_.reset();
        if (reused && method == "GET") continue;  // the server closed an idle connection
        error = "send failed";
        return std::nullopt;
      }
      auto r = conn_->read_response(timeout_);
      if (!r) {
        error = conn_->timed_out() ? "timed out" : "connection closed";
        conn_.reset();
        if (reused && method == "GET" && error == "connection closed") continue;
        return std::nullopt;
      }
      if (r->header("connection") == "close") conn_.reset();
      return r;
    }
    return std::nullopt;
  }
  std::string error;

 private:
  std::string url_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<raw_connection> conn_;
};

}  // namespace pliers::testing
