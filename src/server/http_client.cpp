#include "server/http_client.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace pliers {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct http_client::impl {
  asio::io_context ioc;
  std::string host, port;
  std::chrono::milliseconds timeout;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  // Runs one asynchronous operation to completion: tcp_stream deadlines apply only to
  // asynchronous operations, so this is how a blocking call gets a timeout.
  template <class Start>
  boost::system::error_code run(Start start) {
    boost::system::error_code result = asio::error::would_block;
    start([&](boost::system::error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  result<void> open() {
    boost::system::error_code ec;
    tcp::resolver resolver(ioc);
    auto eps = resolver.resolve(host, port, ec);
    if (ec) return error::make(errc::unavailable, "cannot resolve " + host + ":" + port + ": " + ec.message());
    stream.emplace(ioc);
    stream->expires_after(timeout);
    ec = run([&](auto handler) { stream->async_connect(eps, std::move(handler)); });
    if (ec) {
      stream.reset();
      return error::make(errc::unavailable, "cannot connect to " + host + ":" + port + ": " + ec.message());
    }
    stream->socket().set_option(tcp::no_delay(true), ec);
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
    p.stream->expires_after(p.timeout);
    auto ec = p.run([&](auto handler) { http::async_write(*p.stream, req, std::move(handler)); });
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::uint64_t{1} << 32);
    if (!ec) {
      p.stream->expires_after(p.timeout);
      ec = p.run([&](auto handler) { http::async_read(*p.stream, p.buffer, parser, std::move(handler)); });
    }
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
