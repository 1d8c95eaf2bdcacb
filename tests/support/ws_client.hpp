// Test support: a blocking WebSocket client for GET /v1/stream. Reads time out (the test
// fails instead of hanging).
#pragma once

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace pliers::testing {

class ws_client {
 public:
  // url: http://HOST:PORT
  explicit ws_client(const std::string& url, const std::string& target = "/v1/stream") : ws_(ioc_) {
    auto hostport = url.substr(url.find("//") + 2);
    auto colon = hostport.rfind(':');
    boost::asio::ip::tcp::resolver resolver(ioc_);
    auto eps = resolver.resolve(hostport.substr(0, colon), hostport.substr(colon + 1));
    boost::asio::connect(ws_.next_layer(), eps);
    set_timeout(std::chrono::seconds(10));
    ws_.handshake(hostport, target);
  }
  ~ws_client() {
    boost::system::error_code ec;
    ws_.next_layer().close(ec);
  }

  void send(const std::string& text) {
    ws_.text(true);
    ws_.write(boost::asio::buffer(text));
  }
  void send_binary(const std::string& bytes) {
    ws_.binary(true);
    ws_.write(boost::asio::buffer(bytes));
  }
  void send_json(const boost::json::value& v) { send(boost::json::serialize(v)); }
  // One frame of a fragmented text message; `last` ends the message.
  void send_fragment(const std::string& part, bool last) {
    ws_.text(true);
    ws_.write_some(last, boost::asio::buffer(part));
  }

  // The next message as JSON; nullopt on close or timeout (close code in close_code()).
  // A timeout shuts the socket down (asio turns SO_RCVTIMEO's EAGAIN into an endless poll,
  // so a watchdog does it): the client is unusable afterwards.
  std::optional<boost::json::value> read(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    boost::beast::flat_buffer buffer;
    boost::system::error_code ec;
    {
      std::mutex m;
      std::condition_variable cv;
      bool finished = false;
      const int fd = ws_.next_layer().native_handle();
      std::thread watchdog([&] {
        std::unique_lock lock(m);
        if (!cv.wait_for(lock, timeout, [&] { return finished; })) ::shutdown(fd, SHUT_RDWR);
      });
      ws_.read(buffer, ec);
      {
        std::lock_guard lock(m);
        finished = true;
      }
      cv.notify_all();
      watchdog.join();
    }
    if (ec) {
      last_error_ = ec;
      return std::nullopt;
    }
    return boost::json::parse(boost::beast::buffers_to_string(buffer.data()));
  }
  // Reads until a message of `type` arrives (skipping heartbeats unless asked for).
  std::optional<boost::json::value> read_type(const std::string& type,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    while (auto m = read(timeout))
      if (m->at("type").as_string() == type) return m;
    return std::nullopt;
  }
  int close_code() const { return static_cast<int>(ws_.reason().code); }
  boost::system::error_code last_error() const { return last_error_; }
  std::string subscribe(const boost::json::object& filter, const boost::json::object& options = {}) {
    send_json(boost::json::object{{"type", "subscribe"}, {"filter", filter}, {"options", options}});
    auto confirmed = read_type("subscription_confirmed");
    if (!confirmed) throw std::runtime_error("no subscription_confirmed");
    return std::string(confirmed->at("streamId").as_string());
  }

 private:
  void set_timeout(std::chrono::milliseconds t) {
    timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
    ::setsockopt(ws_.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  boost::asio::io_context ioc_;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws_;
  boost::system::error_code last_error_;
};

}  // namespace pliers::testing
