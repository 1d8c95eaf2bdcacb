// Benchmarks' HTTP peer: a minimal HTTP/1.1 keep-alive endpoint on 127.0.0.1 (a thread per
// connection) answering every request with the same 200 and a small PluginResult body.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>

namespace pliers::bench {

class loopback_endpoint {
 public:
  loopback_endpoint() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 64) != 0)
      throw std::runtime_error("endpoint: bind/listen failed");
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~loopback_endpoint() {
    stopping_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/plugin"; }

 private:
  void accept_loop() {
    while (!stopping_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) break;
      std::thread([c] { serve(c); }).detach();
    }
  }
  static void serve(int c) {
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static const std::string body = R"({"success":true,"metadata":{"remote":true}})";
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string buf;
    char chunk[65536];
    while (true) {
      auto header_end = buf.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::size_t length = 0;
        auto cl = buf.find("Content-Length:");
        if (cl == std::string::npos) cl = buf.find("content-length:");
        if (cl != std::string::npos && cl < header_end) length = std::stoul(buf.substr(cl + 15));
        if (buf.size() >= header_end + 4 + length) {
          buf.erase(0, header_end + 4 + length);
          if (write(c, answer.data(), answer.size()) < 0) break;
          continue;
        }
      }
      auto n = read(c, chunk, sizeof chunk);
      if (n <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(n));
    }
    close(c);
  }
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace pliers::bench
