#include "process/route_targets.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>

#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <boost/json.hpp>

#include "core/event_codec.hpp"
#include "core/json_query.hpp"
#include "core/time_format.hpp"
#include "process/channel_hub.hpp"
#include "process/http_post.hpp"
#include "process/plugin_chain.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

delivery_outcome ok(std::string detail = {}) {
  delivery_outcome o;
  o.success = true;
  o.detail = std::move(detail);
  return o;
}

delivery_outcome fail(std::string type, std::string message) {
  delivery_outcome o;
  o.error = {std::move(type), std::move(message), std::nullopt, {}};
  return o;
}

std::chrono::milliseconds left(const delivery_context& ctx) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ctx.deadline - std::chrono::steady_clock::now());
  return std::max(ms, std::chrono::milliseconds(1));
}

// Maps a transport error from http_post / libcurl to a ProcessingError type.
delivery_outcome from_error(const error& e) {
  switch (e.code) {
    case errc::timeout: return fail("timeout", e.message);
    case errc::forbidden: return fail("forbidden_address", e.message);
    case errc::unavailable: return fail("connection_error", e.message);
    case errc::payload_too_large: return fail("response_too_large", e.message);
    default: return fail("delivery_error", e.message);
  }
}

std::string base64(const unsigned char* data, std::size_t n) {
  std::string out(4 * ((n + 2) / 3), '\0');
  const int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(n));
  out.resize(static_cast<std::size_t>(len));
  return out;
}

std::optional<std::string> unbase64(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  std::string out(3 * in.size() / 4, '\0');
  const int len = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (len < 0) return std::nullopt;
  std::size_t pad = 0;
  if (!in.empty() && in.back() == '=') ++pad;
  if (in.size() > 1 && in[in.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(len) - pad);
  return out;
}

result<std::chrono::milliseconds> timeout_of(const json::object& c, const std::string& field,
                                             std::chrono::milliseconds dflt) {
  const auto* t = c.if_contains("timeout");
  if (!t || t->is_null()) return dflt;
  if (!t->is_int64() || t->get_int64() < 1 || t->get_int64() > 120000)
    return error::invalid(field + ".timeout", "milliseconds from 1 to 120000");
  return std::chrono::milliseconds(t->get_int64());
}

result<std::string> required_string(const json::object& c, const char* name, const std::string& field) {
  const auto* v = c.if_contains(name);
  if (!v || !v->is_string() || v->get_string().empty() || v->get_string().size() > 2000)
    return error::invalid(field + "." + name, "required, a non-empty string");
  return std::string(v->get_string());
}

result<void> only_members(const json::object& c, std::initializer_list<const char*> names, const std::string& field) {
  for (const auto& kv : c)
    if (std::none_of(names.begin(), names.end(), [&](const char* n) { return kv.key() == n; }))
      return error::invalid(field + "." + std::string(kv.key()).substr(0, 100), "unknown member for this target");
  return {};
}

// Retry-After: seconds or an HTTP date (only seconds are understood; a date waits 60 s).
std::optional<timestamp> retry_after(const outbound_response& r) {
  auto it = r.headers.find("retry-after");
  if (it == r.headers.end()) return std::nullopt;
  std::int64_t secs = 60;
  try {
    std::size_t used = 0;
    secs = std::stoll(it->second, &used);
    if (used != it->second.size()) secs = 60;
  } catch (...) {
  }
  secs = std::clamp<std::int64_t>(secs, 0, 86400);
  return std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now()) +
         std::chrono::seconds(secs);
}

// ---- webhook ----

class webhook_target final : public route_target {
 public:
  webhook_target(std::string url, std::string secret, std::vector<std::string> headers, std::chrono::milliseconds timeout,
                 std::vector<std::string> allow)
      : url_(std::move(url)), secret_(std::move(secret)), headers_(std::move(headers)), timeout_(timeout),
        allow_(std::move(allow)) {}
  std::string kind() const override { return "webhook"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    std::string body;
    write_event_json(body, e);
    const std::int64_t ts =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    http_post_options o;
    o.timeout = left(ctx);
    o.max_response_bytes = 64 * 1024;
    o.public_only = true;
    o.allow = allow_;
    o.headers = headers_;
    o.headers.push_back("webhook-id: " + e.id);
    o.headers.push_back("webhook-timestamp: " + std::to_string(ts));
    if (!secret_.empty()) o.headers.push_back("webhook-signature: v1," + webhook_signature(secret_, e.id, ts, body));
    o.headers.push_back("X-Pliers-Route: " + ctx.rule_id);
    auto r = http_post(url_, body, o);
    if (!r) return from_error(r.error());
    if (r->status >= 200 && r->status < 300) return ok("HTTP " + std::to_string(r->status));
    auto out = fail("http_" + std::to_string(r->status),
                    "the webhook answered HTTP " + std::to_string(r->status) + (r->body.empty() ? "" : ": " + r->body.substr(0, 200)));
    if (r->status == 410) out.gone = true;
    if (r->status == 429 || r->status == 503) out.not_before = retry_after(*r);
    if (r->status >= 300 && r->status < 400) out.error.message = "redirects are not followed (HTTP " + std::to_string(r->status) + ")";
    return out;
  }

 private:
  const std::string url_, secret_;
  const std::vector<std::string> headers_;
  const std::chrono::milliseconds timeout_;
  const std::vector<std::string> allow_;
};

result<std::shared_ptr<route_target>> make_webhook(const json::object& c, const std::string& f, const route_target_options& o) {
  if (auto okm = only_members(c, {"url", "secret", "headers", "timeout"}, f); !okm) return std::move(okm).error();
  auto url = required_string(c, "url", f);
  if (!url) return std::move(url).error();
  if (!url->starts_with("http://") && !url->starts_with("https://"))
    return error::invalid(f + ".url", "must be an http:// or https:// URL");
  std::string secret;
  if (const auto* s = c.if_contains("secret"); s && !s->is_null()) {
    if (!s->is_string() || s->get_string().empty()) return error::invalid(f + ".secret", "must be a non-empty string");
    secret = std::string(s->get_string());
    if (secret.starts_with("whsec_")) {
      auto key = unbase64(std::string_view(secret).substr(6));
      if (!key || key->size() < 16)
        return error::invalid(f + ".secret", "a whsec_ secret must be base64 of 16 to 64 bytes");
    }
  }
  std::vector<std::string> headers;
  if (const auto* h = c.if_contains("headers"); h && !h->is_null()) {
    if (!h->is_object()) return error::invalid(f + ".headers", "must be an object {name: value}");
    for (const auto& kv : h->get_object()) {
      if (!kv.value().is_string()) return error::invalid(f + ".headers." + std::string(kv.key()).substr(0, 100), "must be a string");
      std::string v(kv.value().get_string());
      if (kv.key().find_first_of(":\r\n ") != std::string::npos || v.find_first_of("\r\n") != std::string::npos)
        return error::invalid(f + ".headers." + std::string(kv.key()).substr(0, 100), "not a valid header");
      headers.push_back(std::string(kv.key()) + ": " + v);
    }
  }
  auto t = timeout_of(c, f, o.default_timeout);
  if (!t) return std::move(t).error();
  return std::shared_ptr<route_target>(std::make_shared<webhook_target>(*url, secret, headers, *t, o.allow_private));
}

// ---- NATS JetStream ----

class nats_target final : public route_target {
 public:
  nats_target(std::string url, std::string subject, std::chrono::milliseconds timeout)
      : url_(std::move(url)), subject_(std::move(subject)), timeout_(timeout) {}
  ~nats_target() override { close(); }
  std::string kind() const override { return "queue"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    jsCtx* js = nullptr;
    if (auto err = connection(js, ctx); err) return *err;
    std::string body;
    write_event_json(body, e);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = e.id.c_str();
    po.MaxWait = left(ctx).count();
    jsPubAck* ack = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_Publish(&ack, js, subject_.c_str(), body.data(), static_cast<int>(body.size()), &po, &jerr);
    if (s != NATS_OK) {
      std::string what = std::string(natsStatus_GetText(s)) + (nats_GetLastError(nullptr) ? std::string(": ") + nats_GetLastError(nullptr) : "");
      if (s == NATS_NO_RESPONDERS) return fail("no_stream", "no JetStream stream captures subject '" + subject_ + "'");
      if (s == NATS_TIMEOUT) return fail("timeout", "no JetStream ack within the deadline: " + what);
      if (s == NATS_CONNECTION_CLOSED || s == NATS_CONNECTION_DISCONNECTED || s == NATS_NO_SERVER) {
        close();
        return fail("connection_error", what);
      }
      return fail("nats_error", what + (jerr ? " (JetStream error " + std::to_string(jerr) + ")" : ""));
    }
    std::string detail = std::string(ack->Stream ? ack->Stream : "") + ":" + std::to_string(ack->Sequence) +
                         (ack->Duplicate ? " (duplicate)" : "");
    jsPubAck_Destroy(ack);
    return ok(detail);
  }

 private:
  std::optional<delivery_outcome> connection(jsCtx*& js, const delivery_context& ctx) {
    std::lock_guard lock(mutex_);
    if (nc_ && natsConnection_Status(nc_) == NATS_CONN_STATUS_CLOSED) close_locked();
    if (!nc_) {
      natsOptions* opts = nullptr;
      natsOptions_Create(&opts);
      natsOptions_SetURL(opts, url_.c_str());
      natsOptions_SetTimeout(opts, left(ctx).count());
      natsOptions_SetAllowReconnect(opts, true);
      natsOptions_SetMaxReconnect(opts, -1);
      natsOptions_SetReconnectWait(opts, 250);
      natsStatus s = natsConnection_Connect(&nc_, opts);
      natsOptions_Destroy(opts);
      if (s != NATS_OK) {
        nc_ = nullptr;
        return fail("connection_error", "cannot connect to " + url_ + ": " + natsStatus_GetText(s));
      }
      s = natsConnection_JetStream(&js_, nc_, nullptr);
      if (s != NATS_OK) {
        close_locked();
        return fail("nats_error", std::string("JetStream context: ") + natsStatus_GetText(s));
      }
    }
    js = js_;
    return std::nullopt;
  }
  void close() {
    std::lock_guard lock(mutex_);
    close_locked();
  }
  void close_locked() {
    if (js_) jsCtx_Destroy(js_);
    if (nc_) natsConnection_Destroy(nc_);
    js_ = nullptr;
    nc_ = nullptr;
  }
  const std::string url_, subject_;
  const std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  natsConnection* nc_ = nullptr;  // GUARDED_BY(mutex_) (the connection itself is thread-safe)
  jsCtx* js_ = nullptr;
};

// ---- Redis Streams ----

const char* redis_xadd_script = R"(
local prev = redis.call('GET', KEYS[1])
if prev then return 'dup:' .. prev end
local args = {KEYS[2]}
if tonumber(ARGV[2]) > 0 then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return id
)";

class redis_target final : public route_target {
 public:
  redis_target(std::string host, int port, std::string password, int db, std::string stream, std::int64_t max_len,
               std::int64_t dedup_ms, std::chrono::milliseconds timeout)
      : host_(std::move(host)), port_(port), password_(std::move(password)), db_(db), stream_(std::move(stream)),
        max_len_(max_len), dedup_ms_(dedup_ms), timeout_(timeout) {}
  ~redis_target() override {
    for (auto* c : idle_) redisFree(c);
  }
  std::string kind() const override { return "queue"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    redisContext* c = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (!idle_.empty()) {
        c = idle_.back();
        idle_.pop_back();
      }
    }
    const auto ms = left(ctx);
    const timeval tv{static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
    if (!c) {
      c = redisConnectWithTimeout(host_.c_str(), port_, tv);
      if (!c || c->err) {
        std::string what = c ? c->errstr : "out of memory";
        if (c) redisFree(c);
        return fail("connection_error", "cannot connect to redis " + host_ + ":" + std::to_string(port_) + ": " + what);
      }
      if (!password_.empty() || db_ != 0) {
        if (auto err = setup(c)) {
          redisFree(c);
          return *err;
        }
      }
    }
    redisSetTimeout(c, tv);
    std::string body;
    write_event_json(body, e);
    const std::string tag = "{" + stream_ + "}";
    const std::string dedup = "pliers:dedup:" + tag + ":" + ctx.rule_id + ":" + std::to_string(ctx.target_index) + ":" + e.id;
    const std::string max_len = std::to_string(max_len_), window = std::to_string(dedup_ms_);
    std::vector<std::string> argv = {"EVAL", redis_xadd_script, "2", dedup, stream_, window, max_len,
                                     "eventId", e.id, "type", e.type, "aggregateId", e.aggregate_id, "event", body};
    std::vector<const char*> ptrs;
    std::vector<std::size_t> lens;
    for (const auto& a : argv) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data()));
    if (!reply) {
      std::string what = c->errstr;
      const bool timed_out = c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
      redisFree(c);
      return fail(timed_out ? "timeout" : "connection_error", "redis: " + what);
    }
    delivery_outcome out;
    if (reply->type == REDIS_REPLY_ERROR) out = fail("redis_error", std::string(reply->str, reply->len));
    else if (reply->type == REDIS_REPLY_STRING) out = ok(std::string(reply->str, reply->len));
    else out = fail("redis_error", "unexpected reply type " + std::to_string(reply->type));
    freeReplyObject(reply);
    std::lock_guard lock(mutex_);
    if (idle_.size() < 16) idle_.push_back(c);
    else redisFree(c);
    return out;
  }

 private:
  std::optional<delivery_outcome> setup(redisContext* c) {
    if (!password_.empty()) {
      auto* r = static_cast<redisReply*>(redisCommand(c, "AUTH %s", password_.c_str()));
      const bool bad = !r || r->type == REDIS_REPLY_ERROR;
      std::string what = r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply";
      if (r) freeReplyObject(r);
      if (bad) return fail("redis_error", "AUTH: " + what);
    }
    if (db_ != 0) {
      auto* r = static_cast<redisReply*>(redisCommand(c, "SELECT %d", db_));
      const bool bad = !r || r->type == REDIS_REPLY_ERROR;
      if (r) freeReplyObject(r);
      if (bad) return fail("redis_error", "SELECT " + std::to_string(db_) + " failed");
    }
    return std::nullopt;
  }
  const std::string host_;
  const int port_;
  const std::string password_;
  const int db_;
  const std::string stream_;
  const std::int64_t max_len_, dedup_ms_;
  const std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::vector<redisContext*> idle_;  // GUARDED_BY(mutex_)
};

struct curl_url_parts {
  std::string scheme, host, port, user, password, path;
};

result<curl_url_parts> parse_url(const std::string& url, const std::string& field) {
  CURLU* u = curl_url();
  auto done = [&] { curl_url_cleanup(u); };
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
    done();
    return error::invalid(field, "not a valid URL");
  }
  auto get = [&](CURLUPart p, unsigned flags = 0) {
    char* out = nullptr;
    std::string s;
    if (curl_url_get(u, p, &out, flags) == CURLUE_OK && out) s = out;
    curl_free(out);
    return s;
  };
  curl_url_parts parts{get(CURLUPART_SCHEME), get(CURLUPART_HOST), get(CURLUPART_PORT), get(CURLUPART_USER, CURLU_URLDECODE),
                       get(CURLUPART_PASSWORD, CURLU_URLDECODE), get(CURLUPART_PATH)};
  done();
  return parts;
}

result<std::shared_ptr<route_target>> make_queue(const json::object& c, const std::string& f, const route_target_options& o) {
  const auto* k = c.if_contains("kind");
  if (!k || !k->is_string() || (k->get_string() != "nats" && k->get_string() != "redis"))
    return error::invalid(f + ".kind", "required: nats (JetStream) or redis (Streams)");
  auto url = required_string(c, "url", f);
  if (!url) return std::move(url).error();
  auto t = timeout_of(c, f, o.default_timeout);
  if (!t) return std::move(t).error();
  if (k->get_string() == "nats") {
    if (auto okm = only_members(c, {"kind", "url", "subject", "timeout"}, f); !okm) return std::move(okm).error();
    if (!url->starts_with("nats://") && !url->starts_with("tls://")) return error::invalid(f + ".url", "must be a nats:// URL");
    auto subject = required_string(c, "subject", f);
    if (!subject) return std::move(subject).error();
    if (subject->find_first_of(" \t\r\n*>") != std::string::npos)
      return error::invalid(f + ".subject", "a NATS subject without spaces or wildcards");
    return std::shared_ptr<route_target>(std::make_shared<nats_target>(*url, *subject, *t));
  }
  if (auto okm = only_members(c, {"kind", "url", "stream", "maxLen", "dedupWindow", "timeout"}, f); !okm) return std::move(okm).error();
  auto parts = parse_url(*url, f + ".url");
  if (!parts) return std::move(parts).error();
  if (parts->scheme != "redis" || parts->host.empty()) return error::invalid(f + ".url", "must be redis://[:password@]host:port[/db]");
  int db = 0;
  if (parts->path.size() > 1) {
    try {
      db = std::stoi(parts->path.substr(1));
    } catch (...) {
      return error::invalid(f + ".url", "the path must be a database number");
    }
  }
  auto stream = required_string(c, "stream", f);
  if (!stream) return std::move(stream).error();
  std::int64_t max_len = 0, dedup = 86'400'000;
  if (const auto* m = c.if_contains("maxLen"); m && !m->is_null()) {
    if (!m->is_int64() || m->get_int64() < 1) return error::invalid(f + ".maxLen", "a positive integer");
    max_len = m->get_int64();
  }
  if (const auto* d = c.if_contains("dedupWindow"); d && !d->is_null()) {
    if (!d->is_int64() || d->get_int64() < 1) return error::invalid(f + ".dedupWindow", "positive milliseconds");
    dedup = d->get_int64();
  }
  const int port = parts->port.empty() ? 6379 : std::atoi(parts->port.c_str());
  return std::shared_ptr<route_target>(
      std::make_shared<redis_target>(parts->host, port, parts->password, db, *stream, max_len, dedup, *t));
}

// ---- email (SMTP) ----

struct upload {
  const std::string* data;
  std::size_t at = 0;
};

std::size_t on_read(char* buf, std::size_t size, std::size_t n, void* user) {
  auto* u = static_cast<upload*>(user);
  const std::size_t len = std::min(size * n, u->data->size() - u->at);
  std::memcpy(buf, u->data->data() + u->at, len);
  u->at += len;
  return len;
}

class email_target final : public route_target {
 public:
  email_target(std::string url, std::string from, std::vector<std::string> to, std::string subject, std::string body,
               std::string user, std::string password, std::chrono::milliseconds timeout, std::vector<std::string> allow)
      : url_(std::move(url)), from_(std::move(from)), to_(std::move(to)), subject_(std::move(subject)),
        body_(std::move(body)), user_(std::move(user)), password_(std::move(password)), timeout_(timeout),
        allow_(std::move(allow)) {}
  std::string kind() const override { return "email"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    auto pin = resolve_public(url_, allow_);
    if (!pin) return from_error(pin.error());
    std::string msg = "From: " + from_ + "\r\nTo: ";
    for (std::size_t i = 0; i < to_.size(); ++i) msg += (i ? ", " : "") + to_[i];
    msg += "\r\nSubject: " + render_template(subject_, e, true) + "\r\nMessage-ID: <" + e.id + "." + ctx.rule_id + "." +
           std::to_string(ctx.target_index) + "@pliers-events>\r\nX-Pliers-Event-Id: " + e.id +
           "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
    std::string text = render_template(body_, e, false);
    // Normalise line ends to CRLF; a line that is a lone "." is escaped by curl.
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) msg += "\r\n";
      else msg += text[i];
    }
    msg += "\r\n";
    CURL* c = curl_easy_init();
    if (!c) return fail("smtp_error", "libcurl could not start");
    curl_slist* rcpt = nullptr;
    for (const auto& t : to_) rcpt = curl_slist_append(rcpt, t.c_str());
    curl_slist* resolve = curl_slist_append(nullptr, pin->c_str());
    upload up{&msg, 0};
    curl_easy_setopt(c, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(c, CURLOPT_RESOLVE, resolve);
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, from_.c_str());
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(left(ctx).count()));
    if (!user_.empty()) {
      curl_easy_setopt(c, CURLOPT_USERNAME, user_.c_str());
      curl_easy_setopt(c, CURLOPT_PASSWORD, password_.c_str());
    }
    const CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(rcpt);
    curl_slist_free_all(resolve);
    curl_easy_cleanup(c);
    if (rc == CURLE_OK) return ok("SMTP " + std::to_string(code));
    if (rc == CURLE_OPERATION_TIMEDOUT) return fail("timeout", "SMTP: no answer in time");
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) return fail("connection_error", curl_easy_strerror(rc));
    return fail("smtp_error", std::string(curl_easy_strerror(rc)) + (code ? " (SMTP " + std::to_string(code) + ")" : ""));
  }

 private:
  const std::string url_, from_;
  const std::vector<std::string> to_;
  const std::string subject_, body_, user_, password_;
  const std::chrono::milliseconds timeout_;
  const std::vector<std::string> allow_;
};

bool bad_address(const std::string& a) {
  return a.empty() || a.size() > 254 || a.find('@') == std::string::npos || a.find_first_of("\r\n<>,; ") != std::string::npos;
}

result<std::shared_ptr<route_target>> make_email(const json::object& c, const std::string& f, const route_target_options& o) {
  if (auto okm = only_members(c, {"url", "from", "to", "subject", "body", "username", "password", "timeout"}, f); !okm)
    return std::move(okm).error();
  auto url = required_string(c, "url", f);
  if (!url) return std::move(url).error();
  if (!url->starts_with("smtp://") && !url->starts_with("smtps://")) return error::invalid(f + ".url", "must be smtp:// or smtps://");
  auto from = required_string(c, "from", f);
  if (!from) return std::move(from).error();
  if (bad_address(*from)) return error::invalid(f + ".from", "must be one e-mail address");
  std::vector<std::string> to;
  const auto* tv = c.if_contains("to");
  if (tv && tv->is_string()) to.emplace_back(tv->get_string());
  else if (tv && tv->is_array())
    for (const auto& x : tv->get_array()) to.push_back(x.is_string() ? std::string(x.get_string()) : std::string());
  if (to.empty() || to.size() > 50) return error::invalid(f + ".to", "required: an address or an array of 1 to 50 addresses");
  for (std::size_t i = 0; i < to.size(); ++i)
    if (bad_address(to[i])) return error::invalid(f + ".to", "'" + to[i].substr(0, 100) + "' is not an e-mail address");
  auto subject = required_string(c, "subject", f);
  if (!subject) return std::move(subject).error();
  auto body = required_string(c, "body", f);
  if (!body) return std::move(body).error();
  std::string user, password;
  if (const auto* u = c.if_contains("username"); u && u->is_string()) user = std::string(u->get_string());
  if (const auto* p = c.if_contains("password"); p && p->is_string()) password = std::string(p->get_string());
  auto t = timeout_of(c, f, o.default_timeout);
  if (!t) return std::move(t).error();
  return std::shared_ptr<route_target>(
      std::make_shared<email_target>(*url, *from, to, *subject, *body, user, password, *t, o.allow_private));
}

// ---- plugin, websocket ----

class plugin_target final : public route_target {
 public:
  plugin_target(plugin_chain& chain, std::string id, std::chrono::milliseconds timeout)
      : chain_(chain), id_(std::move(id)), timeout_(timeout) {}
  std::string kind() const override { return "plugin"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    // The chain's single-plugin run: the plugin with its timeout, its effects stored
    // (generated events, plugin.executed / .failed).
    auto r = chain_.run_plugin(id_, e, ctx.attempt);
    if (r.success) return ok("plugin " + id_);
    delivery_outcome out;
    out.error = std::move(r.error);
    return out;
  }

 private:
  plugin_chain& chain_;
  const std::string id_;
  const std::chrono::milliseconds timeout_;
};

class websocket_target final : public route_target {
 public:
  websocket_target(channel_hub& hub, std::string channel) : hub_(hub), channel_(std::move(channel)) {}
  std::string kind() const override { return "websocket"; }
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(1000); }
  // Hands the event to this node's subscribers of the channel; never blocks (each
  // subscriber's inbox is bounded and drops what does not fit). No subscriber is a success:
  // a channel is ephemeral, there is nobody to retry for.
  delivery_outcome deliver(const event& e, const delivery_context& ctx) override {
    auto msg = std::make_shared<channel_message>();
    msg->channel = channel_;
    msg->route_id = ctx.rule_id;
    write_event_json(msg->event_json, e);
    return ok(std::to_string(hub_.publish(msg)) + " subscribers");
  }

 private:
  channel_hub& hub_;
  const std::string channel_;
};

bool valid_channel(const std::string& s) {
  if (s.empty() || s.size() > 100) return false;
  return std::all_of(s.begin(), s.end(), [](unsigned char ch) { return std::isalnum(ch) || ch == '.' || ch == '_' || ch == '-'; });
}

}  // namespace

std::string webhook_signature(const std::string& secret, const std::string& id, std::int64_t unix_seconds,
                              const std::string& body) {
  std::string key = secret;
  if (secret.starts_with("whsec_")) key = unbase64(std::string_view(secret).substr(6)).value_or(secret);
  const std::string content = id + "." + std::to_string(unix_seconds) + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(content.data()),
       content.size(), mac, &len);
  return base64(mac, len);
}

std::string render_template(const std::string& tpl, const event& e, bool one_line) {
  std::string out;
  std::optional<json::value> doc;
  std::size_t i = 0;
  while (i < tpl.size()) {
    auto open = tpl.find("{{", i);
    if (open == std::string::npos) {
      out.append(tpl, i, std::string::npos);
      break;
    }
    auto close = tpl.find("}}", open + 2);
    if (close == std::string::npos) {
      out.append(tpl, i, std::string::npos);
      break;
    }
    out.append(tpl, i, open - i);
    std::string key = tpl.substr(open + 2, close - open - 2);
    key.erase(0, key.find_first_not_of(' '));
    key.erase(key.find_last_not_of(' ') + 1);
    if (!doc) doc = event_to_json(e);
    std::string value;
    if (key == "event") {
      value = json::serialize(*doc);
    } else if (key == "timestamp") {
      value = format_rfc3339(e.time);
    } else {
      auto p = json_path::parse("$." + key);
      const json::value* v = p ? p->resolve(*doc) : nullptr;
      if (v) value = v->is_string() ? std::string(v->get_string()) : json::serialize(*v);
    }
    out += value;
    i = close + 2;
  }
  if (one_line) std::replace_if(out.begin(), out.end(), [](char ch) { return ch == '\r' || ch == '\n'; }, ' ');
  return out;
}

route_target_factory make_route_target_factory(route_target_options opts) {
  return [opts](const std::string& type, const json::object& c, const std::string& field) -> result<std::shared_ptr<route_target>> {
    const std::string f = field + ".config";
    if (type == "webhook") return make_webhook(c, f, opts);
    if (type == "queue") return make_queue(c, f, opts);
    if (type == "email") return make_email(c, f, opts);
    if (type == "plugin") {
      if (!opts.plugins) return error::invalid(field + ".type", "plugin targets need the plugin chain (plugins.enabled)");
      if (auto okm = only_members(c, {"pluginId"}, f); !okm) return std::move(okm).error();
      auto id = required_string(c, "pluginId", f);
      if (!id) return std::move(id).error();
      return std::shared_ptr<route_target>(std::make_shared<plugin_target>(*opts.plugins, *id, opts.default_timeout));
    }
    if (type == "websocket") {
      if (!opts.channels) return error::invalid(field + ".type", "websocket targets are not available on this node");
      if (auto okm = only_members(c, {"channel"}, f); !okm) return std::move(okm).error();
      auto ch = required_string(c, "channel", f);
      if (!ch) return std::move(ch).error();
      if (!valid_channel(*ch)) return error::invalid(f + ".channel", "1 to 100 letters, digits, '.', '_', '-'");
      return std::shared_ptr<route_target>(std::make_shared<websocket_target>(*opts.channels, *ch));
    }
    return error::invalid(field + ".type", "unknown target type '" + type.substr(0, 50) +
                                               "' (webhook, queue, plugin, websocket, email)");
  };
}

}  // namespace pliers
