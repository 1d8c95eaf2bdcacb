#include "server/http_client.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

namespace pliers {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// A blocking stream whose every read and write waits at most `timeout_ms` for the socket
// (poll, then the actual call, which then cannot block). Asio's own synchronous calls
// ignore deadlines and SO_RCVTIMEO (they poll without a limit on EAGAIN).
struct deadline_socket {
  tcp::socket& socket;
  int timeout_ms;

  bool wait(short events, boost::system::error_code& ec) const {
    pollfd p{socket.native_handle(), events, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) return true;
    ec = r == 0 ? asio::error::timed_out : boost::system::error_code(errno, boost::system::system_category());
    return false;
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& b, boost::system::error_code& ec) {
    if (!wait(POLLIN, ec)) return 0;
    return socket.read_some(b, ec);
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& b) {
    boost::system::error_code ec;
    auto n = read_some(b, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& b, boost::system::error_code& ec) {
    if (!wait(POLLOUT, ec)) return 0;
    return socket.write_some(b, ec);
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& b) {
    boost::system::error_code ec;
    auto n = write_some(b, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
};

}  // namespace

struct http_client::impl {
  asio::io_context ioc;
  std::string host, port;
  std::chrono::milliseconds timeout;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  // Blocking I/O with deadlines: SO_SNDTIMEO bounds connect (Linux honours it there), and
  // deadline_socket bounds every read and write, so a stopped server cannot hang the caller.
  result<void> open() {
    boost::system::error_code ec;
    tcp::resolver resolver(ioc);
    auto eps = resolver.resolve(host, port, ec);
    if (ec) return error::make(errc::unavailable, "cannot resolve " + host + ":" + port + ": " + ec.message());
    stream.emplace(ioc);
    // Beast reads max(512, free capacity) bytes at a time: room up front reads a large
    // response in few calls instead of one per 512 bytes.
    buffer.reserve(64 * 1024);
    auto& sock = stream->socket();
    const timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ec = asio::error::host_not_found;
    for (const auto& entry : eps) {
      boost::system::error_code ignored;
      sock.close(ignored);
      sock.open(entry.endpoint().protocol(), ec);
      if (ec) continue;
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      sock.connect(entry.endpoint(), ec);
      if (!ec) break;
    }
    if (ec) {
      stream.reset();
      return error::make(errc::unavailable, "cannot connect to " + host + ":" + port + ": " + ec.message());
    }
    sock.set_option(tcp::no_delay(true), ec);
    buffer.clear();
    return {};
  }
};

http_client::http_client(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
http_client::~http_client() = default;

result<std::unique_ptr<http_client>> http_client::connect(std::string_view base_url, std::chrono::milliseconds timeout) {
  std::string_view u = base_url;
  if (u.starts_with("http://")) u.remove_prefix(7);
  else if (u.find("://") != std::string_view::npos)
    return error::invalid("url", "only http:// URLs are supported: '" + std::string(base_url) + "'");
  u = u.substr(0, u.find('/'));
  auto p = std::make_unique<impl>();
  auto colon = u.rfind(':');
  if (colon == std::string_view::npos) {
    p->host = u;
    p->port = "80";
  } else {
    p->host = u.substr(0, colon);
    p->port = u.substr(colon + 1);
  }
  if (p->host.size() >= 2 && p->host.front() == '[') p->host = p->host.substr(1, p->host.size() - 2);
  p->timeout = timeout;
  if (auto r = p->open(); !r) return std::move(r).error();
  return std::unique_ptr<http_client>(new http_client(std::move(p)));
}

result<http_response> http_client::request(std::string_view method, std::string_view target, std::string_view body,
                                           const std::vector<std::pair<std::string, std::string>>& headers) {
  auto& p = *impl_;
  http::request<http::string_body> req{http::string_to_verb(method), std::string(target), 11};
  req.set(http::field::host, p.host);
  req.keep_alive(true);
  for (const auto& [k, v] : headers) req.set(k, v);
  if (!body.empty() || method == "POST" || method == "PUT") {
    req.body() = body;
    if (req[http::field::content_type].empty()) req.set(http::field::content_type, "application/json");
    req.prepare_payload();
  }
  // Only a request that may safely be sent twice is retried on a reused connection that
  // the server had closed; an append (POST) that fails that way is reported as failed, its
  // outcome unknown, and the caller retries it with the same event ids if it wants to.
  const bool retryable = method == "GET" || method == "HEAD" || method == "PUT" || method == "DELETE";
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = p.stream.has_value();
    if (!p.stream) {
      if (auto r = p.open(); !r) return std::move(r).error();
    }
    boost::system::error_code ec;
    deadline_socket io{p.stream->socket(), static_cast<int>(p.timeout.count())};
    http::write(io, req, ec);
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::uint64_t{1} << 32);
    if (!ec) http::read(io, p.buffer, parser, ec);
    if (ec) {
      p.stream.reset();
      if (attempt == 0 && reused && retryable &&
          (ec == http::error::end_of_stream || ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
           ec == asio::error::eof))
        continue;
      return error::make(errc::unavailable, "request failed: " + ec.message());
    }
    auto res = parser.release();
    http_response out;
    out.status = res.result_int();
    out.content_type = std::string(res[http::field::content_type]);
    out.body = std::move(res.body());
    if (!res.keep_alive()) p.stream.reset();
    return out;
  }
  return error::make(errc::unavailable, "request failed");
}

std::string url_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    }
  }
  return out;
}

}  // namespace pliers
