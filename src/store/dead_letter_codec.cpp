#include "store/dead_letter_codec.hpp"

#include <boost/json.hpp>
#include <limits>

#include "core/event_codec.hpp"
#include "core/time_format.hpp"
#include "core/uuid.hpp"
#include "core/validation.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

// Every decoding failure is the same: our own row does not have the shape we wrote.
error corrupt(std::string_view what) {
  return error::make(errc::internal, "corrupt dead-letter entry in store: " + std::string(what));
}

std::optional<std::int64_t> as_int64(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return static_cast<std::int64_t>(v.get_uint64());
  return std::nullopt;
}

// A small reader over one JSON object that remembers the first problem, so decoders read
// straight through and check once.
class reader {
 public:
  explicit reader(const json::object& o) : o_(o) {}

  std::string str(std::string_view key) {
    const auto* v = o_.if_contains(key);
    if (!v || !v->is_string()) return fail(key), std::string();
    return std::string(v->get_string());
  }
  std::optional<std::string> opt_str(std::string_view key) {
    const auto* v = o_.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) return fail(key), std::nullopt;
    return std::string(v->get_string());
  }
  std::int64_t int64(std::string_view key) {
    const auto* v = o_.if_contains(key);
    auto n = v ? as_int64(*v) : std::nullopt;
    if (!n) return fail(key), 0;
    return *n;
  }
  bool boolean(std::string_view key) {
    const auto* v = o_.if_contains(key);
    if (!v || !v->is_bool()) return fail(key), false;
    return v->get_bool();
  }
  timestamp time(std::string_view key) {
    auto t = opt_time(key);
    if (!t) return fail(key), timestamp{};
    return *t;
  }
  std::optional<timestamp> opt_time(std::string_view key) {
    const auto* v = o_.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    std::optional<timestamp> t;
    if (v->is_string()) t = parse_rfc3339(v->get_string());
    if (!t) fail(key);
    return t;
  }
  json::object object(std::string_view key) {
    const auto* v = o_.if_contains(key);
    if (!v || !v->is_object()) return fail(key), json::object();
    return v->get_object();
  }
  const json::value* raw(std::string_view key) { return o_.if_contains(key); }

  void fail(std::string_view key) {
    if (problem_.empty()) problem_ = std::string(key);
  }
  const std::string& problem() const noexcept { return problem_; }

 private:
  const json::object& o_;
  std::string problem_;
};

json::object attempt_to_json(const delivery_attempt& a) {
  json::object o{{"attempt", a.attempt},
                 {"at", format_rfc3339(a.at)},
                 {"success", a.success},
                 {"durationMs", a.duration_ms},
                 {"manual", a.manual}};
  if (a.error) o["error"] = to_json(*a.error);
  return o;
}

result<delivery_attempt> attempt_from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o) return corrupt("history entry is not an object");
  reader r(*o);
  delivery_attempt a;
  a.attempt = r.int64("attempt");
  a.at = r.time("at");
  a.success = r.boolean("success");
  a.duration_ms = r.int64("durationMs");
  a.manual = r.boolean("manual");
  if (const auto* e = r.raw("error"); e && !e->is_null()) {
    auto pe = processing_error_from_json(*e);
    if (!pe) return std::move(pe).error();
    a.error = std::move(*pe);
  }
  if (!r.problem().empty()) return corrupt("history." + r.problem());
  return a;
}

// Failure text comes from outside (a plugin's exception, an HTTP body): bytes that are not
// UTF-8 become U+FFFD here, or the stored JSON would not parse again (and PostgreSQL would
// refuse it).
std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len && i + len <= s.size() && is_valid_utf8(s.substr(i, len))) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

void make_valid(std::string& s) {
  if (!is_valid_utf8(s)) s = valid_utf8(s);
}

void make_valid(json::value& v);

void make_valid(json::object& o) {
  bool bad_key = false;
  for (const auto& kv : o) bad_key = bad_key || !is_valid_utf8(kv.key());
  if (bad_key) {
    json::object fixed;
    for (auto& kv : o) fixed[valid_utf8(kv.key())] = std::move(kv.value());
    o = std::move(fixed);
  }
  for (auto& kv : o) make_valid(kv.value());
}

void make_valid(json::value& v) {
  if (auto* s = v.if_string()) {
    if (!is_valid_utf8(*s)) *s = valid_utf8(*s);
  } else if (auto* a = v.if_array()) {
    for (auto& x : *a) make_valid(x);
  } else if (auto* o = v.if_object()) {
    make_valid(*o);
  }
}

void make_valid(processing_error& e) {
  make_valid(e.type);
  make_valid(e.message);
  if (e.stack) make_valid(*e.stack);
  make_valid(e.context);
}

// The caller-supplied text of an entry (the failure, not the stored event).
void make_valid(dead_letter& d) {
  make_valid(d.error);
  if (d.permanent_reason) make_valid(*d.permanent_reason);
  for (auto& a : d.history)
    if (a.error) make_valid(*a.error);
}

}  // namespace

json::object to_json(const processing_error& e) {
  json::object o{{"type", e.type}, {"message", e.message}};
  if (e.stack) o["stack"] = *e.stack;
  o["context"] = e.context;
  return o;
}

result<processing_error> processing_error_from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o) return corrupt("error is not an object");
  reader r(*o);
  processing_error e;
  e.type = r.str("type");
  e.message = r.str("message");
  e.stack = r.opt_str("stack");
  if (const auto* c = r.raw("context"); c && !c->is_null()) e.context = r.object("context");
  if (!r.problem().empty()) return corrupt("error." + r.problem());
  return e;
}

json::object to_json(const dead_letter& d) {
  json::object o;
  o["id"] = d.id;
  o["seq"] = d.seq;
  o["originalEvent"] = event_to_json(d.original_event);
  o["consumer"] = d.consumer;
  o["error"] = to_json(d.error);
  o["attempts"] = d.attempts;
  o["maxAttempts"] = d.max_attempts;
  o["firstFailedAt"] = format_rfc3339(d.first_failed_at);
  o["failedAt"] = format_rfc3339(d.failed_at);
  if (d.next_retry_at) o["nextRetryAt"] = format_rfc3339(*d.next_retry_at);
  o["status"] = d.status;
  if (d.permanent_reason) o["permanentReason"] = *d.permanent_reason;
  if (d.resolved_at) o["resolvedAt"] = format_rfc3339(*d.resolved_at);
  o["leaseUntil"] = format_rfc3339(d.lease_until);
  o["retryConfig"] = d.retry_config;
  json::array history;
  history.reserve(d.history.size());
  for (const auto& a : d.history) history.push_back(attempt_to_json(a));
  o["history"] = std::move(history);
  return o;
}

result<dead_letter> dead_letter_from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o) return corrupt("not an object");
  reader r(*o);
  dead_letter d;
  d.id = r.str("id");
  d.seq = r.int64("seq");
  d.consumer = r.str("consumer");
  d.attempts = r.int64("attempts");
  d.max_attempts = r.int64("maxAttempts");
  d.first_failed_at = r.time("firstFailedAt");
  d.failed_at = r.time("failedAt");
  d.next_retry_at = r.opt_time("nextRetryAt");
  d.status = r.str("status");
  d.permanent_reason = r.opt_str("permanentReason");
  d.resolved_at = r.opt_time("resolvedAt");
  d.lease_until = r.time("leaseUntil");
  d.retry_config = r.object("retryConfig");
  if (!r.problem().empty()) return corrupt(r.problem());

  const auto* ev = r.raw("originalEvent");
  if (!ev) return corrupt("originalEvent");
  auto e = event_from_json(*ev);
  if (!e) return corrupt("originalEvent: " + e.error().message);
  d.original_event = std::move(*e);

  const auto* err = r.raw("error");
  if (!err) return corrupt("error");
  auto pe = processing_error_from_json(*err);
  if (!pe) return std::move(pe).error();
  d.error = std::move(*pe);

  const auto* h = r.raw("history");
  if (!h || !h->is_array()) return corrupt("history");
  d.history.reserve(h->get_array().size());
  for (const auto& item : h->get_array()) {
    auto a = attempt_from_json(item);
    if (!a) return std::move(a).error();
    d.history.push_back(std::move(*a));
  }
  return d;
}

result<dead_letter> dead_letter_from_text(std::string_view text) {
  boost::system::error_code ec;
  auto v = json::parse(json::string_view(text.data(), text.size()), ec);
  if (ec) return corrupt("not JSON");
  return dead_letter_from_json(v);
}

bool is_dead_letter_status(std::string_view s) noexcept {
  return s == "pending_retry" || s == "retrying" || s == "permanent_failure" || s == "resolved";
}

result<void> check_dead_letter_update(const dead_letter& entry) {
  if (!is_dead_letter_status(entry.status))
    return error::invalid("status", "must be pending_retry, retrying, permanent_failure or resolved");
  return {};
}

result<void> prepare_dead_letter(dead_letter& entry) {
  if (entry.consumer.empty()) return error::invalid("consumer", "required");
  if (entry.original_event.id.empty()) return error::invalid("originalEvent.id", "required");
  if (auto ok = check_dead_letter_update(entry); !ok) return ok;
  if (entry.id.empty()) entry.id = new_uuid_v4();
  else if (!is_uuid(entry.id)) return error::invalid("id", "must be a UUID");
  else entry.id = canonical_uuid(entry.id);
  entry.seq = 0;
  make_valid(entry);
  return {};
}

void apply_dead_letter_update(dead_letter& to, const dead_letter& from) {
  to.error = from.error;
  to.attempts = from.attempts;
  to.first_failed_at = from.first_failed_at;
  to.failed_at = from.failed_at;
  to.next_retry_at = from.next_retry_at;
  to.status = from.status;
  to.permanent_reason = from.permanent_reason;
  to.resolved_at = from.resolved_at;
  to.lease_until = from.lease_until;
  to.history = from.history;
  make_valid(to);
}

result<dead_letter_matcher> dead_letter_matcher::make(const dead_letter_filter& filter) {
  dead_letter_matcher m;
  m.filter_ = filter;
  if (filter.event_type) {
    auto p = type_pattern::parse(*filter.event_type, "eventType");
    if (!p) return std::move(p).error();
    m.pattern_ = std::move(*p);
  }
  if (filter.status && !is_dead_letter_status(*filter.status))
    return error::invalid("status", "must be pending_retry, retrying, permanent_failure or resolved");
  return m;
}

bool dead_letter_matcher::matches(std::string_view consumer, std::string_view event_type, std::string_view status,
                                  timestamp failed_at) const {
  if (filter_.consumer && consumer != *filter_.consumer) return false;
  if (filter_.status && status != *filter_.status) return false;
  if (filter_.from && failed_at < *filter_.from) return false;
  if (filter_.to && failed_at > *filter_.to) return false;
  return !pattern_ || pattern_->matches(event_type);
}

bool dead_letter_matcher::matches(const dead_letter& d) const {
  return matches(d.consumer, d.original_event.type, d.status, d.failed_at);
}

}  // namespace pliers
