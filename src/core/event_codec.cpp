#include "core/event_codec.hpp"

#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <unordered_set>
#include <limits>

#include "core/time_format.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

// One pass over untrusted JSON that builds the value (as json::parser does, with a
// value_stack) and refuses what json::parse would silently accept: duplicate keys in one
// object (the last would win) and numbers outside the range of a double (stored as
// infinity, they would make the event unreadable). Each open object's keys are kept in a
// list that is reused from object to object, so checking costs no allocation per key
// (short keys fit the strings' own buffers) and no hash table per small object.
struct strict_json_handler {
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);
  json::value_stack st;
  // [depth]: keys of the open object there. Up to 32 keys are searched in a list; a
  // larger object moves them into a hash set (no quadratic cost for hostile input).
  struct open_object {
    std::vector<std::string> few;
    std::unordered_set<std::string> many;
    bool insert(const std::string& k) {
      if (many.empty() && few.size() < 32) {
        if (std::find(few.begin(), few.end(), k) != few.end()) return false;
        few.push_back(k);
        return true;
      }
      if (many.empty()) many.insert(few.begin(), few.end());
      return many.insert(k).second;
    }
    void clear() {
      few.clear();
      if (!many.empty()) many = {};
    }
  };
  std::vector<open_object> keys;
  std::size_t depth = 0;
  std::string key;
  std::string problem;

  bool fail(const char* why, json::error_code& ec) {
    problem = why;
    ec = json::error::syntax;
    return false;
  }
  bool on_document_begin(json::error_code&) {
    st.reset();
    return true;
  }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    if (++depth > keys.size()) keys.emplace_back();
    keys[depth - 1].clear();
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code&) {
    --depth;
    st.push_object(n);
    return true;
  }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t n, json::error_code&) {
    st.push_array(n);
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key.append(s.data(), s.size());
    if (!keys[depth - 1].insert(key)) return fail("duplicate key", ec);
    st.push_key(key);
    key.clear();
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    st.push_chars(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    st.push_string(s);
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t v, json::string_view, json::error_code&) {
    st.push_int64(v);
    return true;
  }
  bool on_uint64(std::uint64_t v, json::string_view, json::error_code&) {
    st.push_uint64(v);
    return true;
  }
  bool on_double(double d, json::string_view, json::error_code& ec) {
    if (!std::isfinite(d)) return fail("number out of range", ec);
    st.push_double(d);
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    st.push_bool(b);
    return true;
  }
  bool on_null(json::error_code&) {
    st.push_null();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }
};

}  // namespace

result<json::object> parse_stored_object(std::string_view text, std::string_view what) {
  boost::system::error_code ec;
  auto v = json::parse(json::string_view(text.data(), text.size()), ec);
  if (ec || !v.is_object()) return error::make(errc::internal, "corrupt " + std::string(what) + " JSON in store");
  return std::move(v.get_object());
}

result<json::value> parse_json(std::string_view text, const json_limits& limits) {
  json::parse_options opts;
  opts.max_depth = limits.max_depth;
  boost::system::error_code ec;
  json::basic_parser<strict_json_handler> p(opts);
  const auto used = p.write_some(false, text.data(), text.size(), ec);
  if (!ec && used < text.size()) ec = json::error::extra_data;
  if (!ec && !p.done()) ec = json::error::incomplete;
  if (ec) {
    std::string why = !p.handler().problem.empty() ? "malformed JSON: " + p.handler().problem
                      : ec == json::error::too_deep
                          ? "JSON nested deeper than " + std::to_string(limits.max_depth) + " levels"
                          : "malformed JSON: " + ec.message();
    return error::invalid("body", why);
  }
  return p.handler().st.release();
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 0xF]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

namespace {

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  out.append(buf, ptr);
}

result<std::string> get_string(const json::object& o, std::string_view key, const std::string& field,
                               bool required) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) {
    if (required) return error::invalid(field, "required");
    return std::string();
  }
  if (!v->is_string()) return error::invalid(field, "must be a string");
  return std::string(v->get_string());
}

result<std::optional<std::string>> get_optional_string(const json::object& o, std::string_view key,
                                                       const std::string& field) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return error::invalid(field, "must be a string or null");
  return std::optional<std::string>(std::string(v->get_string()));
}

// An integral JSON number (no fraction, within int64).
std::optional<std::int64_t> as_int64(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return static_cast<std::int64_t>(v.get_uint64());
  return std::nullopt;
}

result<std::optional<timestamp>> time_member(const json::object& o, std::string_view key, const std::string& field) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::optional<timestamp>();
  if (!v->is_string()) return error::invalid(field, "must be an RFC 3339 timestamp string");
  auto t = parse_rfc3339(v->get_string());
  if (!t) return error::invalid(field, "not an RFC 3339 timestamp: '" + std::string(v->get_string()).substr(0, 64) + "'");
  return std::optional<timestamp>(*t);
}

result<std::vector<json_query>> json_queries(const json::value& v, const std::string& field) {
  std::vector<json_query> out;
  if (v.is_null()) return out;
  if (v.is_array()) {
    const auto& a = v.get_array();
    if (a.size() > 32) return error::invalid(field, "more than 32 conditions");
    for (std::size_t i = 0; i < a.size(); ++i) {
      auto q = json_query::from_json(a[i], field + "[" + std::to_string(i) + "]");
      if (!q) return std::move(q).error();
      out.push_back(std::move(*q));
    }
    return out;
  }
  auto q = json_query::from_json(v, field);
  if (!q) return std::move(q).error();
  out.push_back(std::move(*q));
  return out;
}

}  // namespace

result<std::vector<std::string>> string_list(const json::value& v, const std::string& field) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.emplace_back(v.get_string());
    return out;
  }
  if (!v.is_array()) return error::invalid(field, "must be an array of strings");
  const auto& a = v.get_array();
  if (a.size() > 1000) return error::invalid(field, "more than 1000 entries");
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_string()) return error::invalid(field + "[" + std::to_string(i) + "]", "must be a string");
    out.emplace_back(a[i].get_string());
  }
  return out;
}

namespace {

// Everything of an event's JSON before "metadata"; both writers below share it.
template <class Event>
void write_event_head(std::string& out, const Event& e) {
  thread_local rfc3339_writer time_writer;
  out += "{\"id\":";
  append_json_string(out, e.id);
  out += ",\"type\":";
  append_json_string(out, e.type);
  out += ",\"version\":";
  append_int(out, e.version);
  out += ",\"timestamp\":\"";
  out += time_writer.write(e.time);
  out += "\",\"aggregateId\":";
  append_json_string(out, e.aggregate_id);
  out += ",\"aggregateType\":";
  append_json_string(out, e.aggregate_type);
  out += ",\"sequenceNumber\":";
  append_int(out, e.sequence.value);
  out += ",\"position\":";
  append_int(out, e.position.value);
  if (e.causation_id) {
    out += ",\"causationId\":";
    append_json_string(out, *e.causation_id);
  }
  if (e.correlation_id) {
    out += ",\"correlationId\":";
    append_json_string(out, *e.correlation_id);
  }
}

template <class Event>
void add_event_to_page(event_json_page& page, const Event& e) {
  if (page.count++) page.json += ',';
  write_event_json(page.json, e);
  page.last_sequence = e.sequence;
  page.last_position = e.position;
}

void write_query_tail(std::string& out, std::int64_t total_count, bool has_more, const std::optional<std::string>& cursor) {
  out += "],\"totalCount\":";
  append_int(out, total_count);
  out += ",\"hasMore\":";
  out += has_more ? "true" : "false";
  if (cursor) {
    out += ",\"cursor\":";
    append_json_string(out, *cursor);
  }
  out += '}';
}

}  // namespace

namespace {

// json::serialize onto the end of out, without a temporary string.
void append_serialized(std::string& out, const json::object& o) {
  thread_local json::serializer sr;
  sr.reset(&o);
  char buf[2048];
  while (!sr.done()) out += sr.read(buf);
}

}  // namespace

void write_event_json(std::string& out, const event& e) {
  write_event_head(out, e);
  out += ",\"metadata\":";
  append_serialized(out, e.metadata);
  out += ",\"payload\":";
  append_serialized(out, e.payload);
  out += '}';
}

void write_event_json(std::string& out, const event_json_view& e) {
  write_event_head(out, e);
  out += ",\"metadata\":";
  out += e.metadata_json;
  out += ",\"payload\":";
  out += e.payload_json;
  out += '}';
}

void add_to_page(event_json_page& page, const event& e) { add_event_to_page(page, e); }
void add_to_page(event_json_page& page, const event_json_view& e) { add_event_to_page(page, e); }

json::object event_to_json(const event& e) {
  std::string s;
  write_event_json(s, e);
  return json::parse(s).as_object();
}

result<event> event_from_json(const json::value& v) {
  const auto* o = v.if_object();
  if (!o) return error::invalid("event", "must be an object");
  event e;
  auto str = [&](std::string_view key, std::string& out) -> result<void> {
    auto s = get_string(*o, key, std::string(key), true);
    if (!s) return std::move(s).error();
    out = std::move(*s);
    return {};
  };
  for (auto [key, dst] : {std::pair<std::string_view, std::string*>{"id", &e.id},
                          {"type", &e.type},
                          {"aggregateId", &e.aggregate_id},
                          {"aggregateType", &e.aggregate_type}})
    if (auto r = str(key, *dst); !r) return std::move(r).error();
  auto num = [&](std::string_view key) -> std::optional<std::int64_t> {
    const auto* x = o->if_contains(key);
    return x ? as_int64(*x) : std::nullopt;
  };
  auto version = num("version");
  auto seq = num("sequenceNumber");
  auto pos = num("position");
  if (!version || !seq || !pos) return error::invalid("event", "version, sequenceNumber and position must be integers");
  e.version = static_cast<std::int32_t>(*version);
  e.sequence = sequence_number(*seq);
  e.position = log_position(*pos);
  auto ts = time_member(*o, "timestamp", "timestamp");
  if (!ts) return std::move(ts).error();
  if (!*ts) return error::invalid("timestamp", "required");
  e.time = **ts;
  auto c = get_optional_string(*o, "causationId", "causationId");
  auto r = get_optional_string(*o, "correlationId", "correlationId");
  if (!c) return std::move(c).error();
  if (!r) return std::move(r).error();
  e.causation_id = std::move(*c);
  e.correlation_id = std::move(*r);
  const auto* md = o->if_contains("metadata");
  const auto* pl = o->if_contains("payload");
  if (!md || !md->is_object()) return error::invalid("metadata", "must be an object");
  if (!pl || !pl->is_object()) return error::invalid("payload", "must be an object");
  e.metadata = md->get_object();
  e.payload = pl->get_object();
  return e;
}

result<new_event> new_event_from_json(json::value& v, const std::string& field) {
  auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object");
  for (const auto& kv : *o) {
    std::string_view k = kv.key();
    if (k == "id" || k == "type" || k == "aggregateType" || k == "version" || k == "causationId" ||
        k == "correlationId" || k == "metadata" || k == "payload" || k == "aggregateId")
      continue;
    if (k == "sequenceNumber" || k == "position" || k == "timestamp")
      return error::invalid(field + "." + std::string(k), "is assigned by the server and must not be sent");
    return error::invalid(field + "." + std::string(k).substr(0, 100), "unknown member");
  }
  new_event e;
  // Error paths ("events[12].aggregateType") are built only on failure: an append of 100
  // events would otherwise build 500 strings nobody reads.
  auto path = [&](std::string_view key) { return field + "." + std::string(key); };
  for (auto [key, dst] : {std::pair<std::string_view, std::string*>{"type", &e.type}, {"aggregateType", &e.aggregate_type}}) {
    const auto* m = o->if_contains(key);
    if (!m || m->is_null()) return error::invalid(path(key), "required");
    if (!m->is_string()) return error::invalid(path(key), "must be a string");
    dst->assign(m->get_string().data(), m->get_string().size());
  }
  for (auto [key, dst] : {std::pair<std::string_view, std::optional<std::string>*>{"id", &e.id},
                          {"causationId", &e.causation_id},
                          {"correlationId", &e.correlation_id}}) {
    const auto* m = o->if_contains(key);
    if (!m || m->is_null()) continue;
    if (!m->is_string()) return error::invalid(path(key), "must be a string or null");
    dst->emplace(m->get_string().data(), m->get_string().size());
  }
  if (const auto* ver = o->if_contains("version"); ver && !ver->is_null()) {
    auto n = as_int64(*ver);
    if (!n || *n < 1 || *n > std::numeric_limits<std::int32_t>::max())
      return error::invalid(path("version"), "must be an integer >= 1");
    e.version = static_cast<std::int32_t>(*n);
  }
  auto* md = o->if_contains("metadata");
  if (!md) return error::invalid(path("metadata"), "required");
  if (!md->is_object()) return error::invalid(path("metadata"), "must be an object");
  auto* pl = o->if_contains("payload");
  if (!pl) return error::invalid(path("payload"), "required");
  if (!pl->is_object()) return error::invalid(path("payload"), "must be an object");
  e.metadata = std::move(md->get_object());
  e.payload = std::move(pl->get_object());
  return e;
}

result<append_request> append_request_from_json(json::value&& body, std::string aggregate_id) {
  auto* o = body.if_object();
  if (!o) return error::invalid("body", "must be a JSON object {\"expectedVersion\", \"events\"}");
  for (const auto& kv : *o)
    if (kv.key() != "expectedVersion" && kv.key() != "events")
      return error::invalid(std::string(kv.key()).substr(0, 100), "unknown member");
  append_request req;
  req.aggregate_id = std::move(aggregate_id);
  if (const auto* ev = o->if_contains("expectedVersion"); ev && !ev->is_null()) {
    auto n = as_int64(*ev);
    if (!n || *n < 0) return error::invalid("expectedVersion", "must be null or an integer >= 0");
    req.expected_version = *n;
  }
  auto* events = o->if_contains("events");
  if (!events) return error::invalid("events", "required");
  if (!events->is_array()) return error::invalid("events", "must be an array");
  auto& arr = events->get_array();
  req.events.reserve(arr.size());
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const std::string field = "events[" + std::to_string(i) + "]";
    auto e = new_event_from_json(arr[i], field);
    if (!e) return std::move(e).error();
    if (const auto* aid = arr[i].as_object().if_contains("aggregateId");
        aid && !(aid->is_string() && aid->get_string() == req.aggregate_id))
      return error::invalid(field + ".aggregateId", "differs from the aggregate id in the path");
    req.events.push_back(std::move(*e));
  }
  return req;
}

result<event_query> event_query_from_json(const json::value& v, const std::string& field) {
  event_query q;
  if (v.is_null()) return q;
  const auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object");
  for (const auto& kv : *o) {
    const std::string key(kv.key());
    const std::string f = field.empty() ? key : field + "." + key;
    const auto& val = kv.value();
    if (key == "eventTypes") {
      auto list = string_list(val, f);
      if (!list) return std::move(list).error();
      for (std::size_t i = 0; i < list->size(); ++i) {
        auto p = type_pattern::parse((*list)[i], f + "[" + std::to_string(i) + "]");
        if (!p) return std::move(p).error();
        q.event_types.push_back(std::move(*p));
      }
    } else if (key == "aggregateTypes" || key == "aggregateIds") {
      auto list = string_list(val, f);
      if (!list) return std::move(list).error();
      (key == "aggregateTypes" ? q.aggregate_types : q.aggregate_ids) = std::move(*list);
    } else if (key == "timestampRange" || key == "sequenceRange") {
      if (val.is_null()) continue;
      const auto* r = val.if_object();
      if (!r) return error::invalid(f, "must be an object {from, to}");
      for (const auto& m : *r)
        if (m.key() != "from" && m.key() != "to")
          return error::invalid(f + "." + std::string(m.key()).substr(0, 100), "unknown member");
      if (key == "timestampRange") {
        auto from = time_member(*r, "from", f + ".from");
        if (!from) return std::move(from).error();
        auto to = time_member(*r, "to", f + ".to");
        if (!to) return std::move(to).error();
        q.from = *from;
        q.to = *to;
      } else {
        for (auto [k, dst] : {std::pair<std::string_view, std::optional<std::int64_t>*>{"from", &q.sequence_from},
                              {"to", &q.sequence_to}}) {
          const auto* x = r->if_contains(k);
          if (!x || x->is_null()) continue;
          auto n = as_int64(*x);
          if (!n || *n < 0) return error::invalid(f + "." + std::string(k), "must be an integer >= 0");
          *dst = *n;
        }
      }
    } else if (key == "metadataQuery" || key == "payloadQuery") {
      auto qs = json_queries(val, f);
      if (!qs) return std::move(qs).error();
      (key == "metadataQuery" ? q.metadata_query : q.payload_query) = std::move(*qs);
    } else {
      return error::invalid(f.substr(0, 120), "unknown member");
    }
  }
  return q;
}

result<std::size_t> parse_limit(std::string_view text, const std::string& field) {
  std::size_t n = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || ptr != text.data() + text.size() || n < 1 || n > max_page_limit)
    return error::invalid(field, "must be an integer from 1 to " + std::to_string(max_page_limit));
  return n;
}

result<pagination> pagination_from_json(const json::value& v, const std::string& field) {
  pagination p;
  if (v.is_null()) return p;
  const auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object {limit, cursor}");
  for (const auto& kv : *o) {
    const std::string f = field + "." + std::string(kv.key()).substr(0, 100);
    if (kv.key() == "limit") {
      auto n = as_int64(kv.value());
      if (!n || *n < 1 || *n > static_cast<std::int64_t>(max_page_limit))
        return error::invalid(f, "must be an integer from 1 to " + std::to_string(max_page_limit));
      p.limit = static_cast<std::size_t>(*n);
    } else if (kv.key() == "cursor") {
      if (kv.value().is_null()) continue;
      if (!kv.value().is_string()) return error::invalid(f, "must be a string");
      auto c = decode_cursor(kv.value().get_string(), f);
      if (!c) return std::move(c).error();
      p.after = *c;
    } else {
      return error::invalid(f, "unknown member");
    }
  }
  return p;
}

json::object to_json(const new_event& e) {
  json::object o{{"type", e.type}, {"aggregateType", e.aggregate_type}, {"version", e.version},
                 {"metadata", e.metadata}, {"payload", e.payload}};
  if (e.id) o["id"] = *e.id;
  if (e.causation_id) o["causationId"] = *e.causation_id;
  if (e.correlation_id) o["correlationId"] = *e.correlation_id;
  return o;
}

void write_append_result_json(std::string& out, const append_result& r) {
  thread_local rfc3339_writer time_writer;
  out.reserve(out.size() + 64 + r.events.size() * 128);
  out += "{\"aggregateId\":";
  append_json_string(out, r.aggregate_id);
  out += ",\"version\":";
  append_int(out, r.version);
  out += ",\"events\":[";
  for (std::size_t i = 0; i < r.events.size(); ++i) {
    const auto& e = r.events[i];
    out += i ? ",{\"id\":" : "{\"id\":";
    append_json_string(out, e.id);
    out += ",\"sequenceNumber\":";
    append_int(out, e.sequence.value);
    out += ",\"position\":";
    append_int(out, e.position.value);
    out += ",\"timestamp\":\"";
    out += time_writer.write(e.time);
    out += "\"}";
  }
  out += "]}";
}

json::object to_json(const append_result& r) {
  std::string text;
  write_append_result_json(text, r);
  return json::parse(text).as_object();
}

json::object to_json(const aggregate_metadata& m) {
  json::object o;
  o["aggregateId"] = m.aggregate_id;
  o["aggregateType"] = m.aggregate_type;
  o["version"] = m.version;
  o["firstEventTimestamp"] = format_rfc3339(m.first_event_time);
  o["lastEventTimestamp"] = format_rfc3339(m.last_event_time);
  o["eventCount"] = m.event_count;
  if (m.snapshot_version) o["snapshotVersion"] = *m.snapshot_version;
  if (m.snapshot_time) o["snapshotTimestamp"] = format_rfc3339(*m.snapshot_time);
  if (!m.compacted_ranges.empty()) {
    json::array ranges;
    for (const auto& r : m.compacted_ranges) ranges.push_back(json::object{{"from", r.from}, {"to", r.to}});
    o["compactedRanges"] = std::move(ranges);
  }
  return o;
}

json::object to_json(const snapshot& s) {
  return {{"aggregateId", s.aggregate_id},
          {"aggregateType", s.aggregate_type},
          {"sequenceNumber", s.sequence_number},
          {"data", s.data},
          {"createdAt", format_rfc3339(s.created_at)}};
}

void write_query_result_json(std::string& out, const query_result& r) {
  out += "{\"events\":[";
  for (std::size_t i = 0; i < r.events.size(); ++i) {
    if (i) out += ',';
    write_event_json(out, r.events[i]);
  }
  write_query_tail(out, r.total_count, r.has_more, r.cursor);
}

void write_query_result_json(std::string& out, const query_json_result& r) {
  out += "{\"events\":[";
  out += r.events.json;
  write_query_tail(out, r.total_count, r.has_more, r.cursor);
}

}  // namespace pliers
