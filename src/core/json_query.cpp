#include "core/json_query.hpp"

#include <re2/re2.h>

#include <boost/json.hpp>
#include <charconv>

namespace pliers {

namespace json = boost::json;

result<json_path> json_path::parse(std::string_view text, std::string_view field) {
  auto fail = [&](std::string why) {
    return error::invalid(std::string(field), "invalid JSON path '" + std::string(text) + "': " + why);
  };
  if (text.empty()) return fail("empty");
  if (text.size() > 1024) return fail("longer than 1024 characters");
  json_path p;
  p.text_ = std::string(text);
  std::string_view s = text;
  if (s.front() == '$') {
    s.remove_prefix(1);
  } else {
    // Relative form "a.b[0]": treat as "$.a.b[0]".
    if (s.front() != '[' && s.front() != '.') {
      p.steps_.reserve(4);
      std::size_t end = s.find_first_of(".[]");
      auto key = s.substr(0, end);
      p.steps_.emplace_back(std::string(key));
      s.remove_prefix(key.size());
    }
  }
  while (!s.empty()) {
    if (s.front() == '.') {
      s.remove_prefix(1);
      std::size_t end = s.find_first_of(".[]");
      auto key = s.substr(0, end);
      if (key.empty()) return fail("empty key after '.'");
      p.steps_.emplace_back(std::string(key));
      s.remove_prefix(key.size());
    } else if (s.front() == '[') {
      s.remove_prefix(1);
      if (!s.empty() && (s.front() == '\'' || s.front() == '"')) {
        char q = s.front();
        s.remove_prefix(1);
        auto close = s.find(q);
        if (close == std::string_view::npos) return fail("unterminated quoted key");
        p.steps_.emplace_back(std::string(s.substr(0, close)));
        s.remove_prefix(close + 1);
      } else {
        std::size_t idx = 0;
        auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), idx);
        if (ec != std::errc{} || ptr == s.data()) return fail("array index must be a non-negative integer");
        s.remove_prefix(static_cast<std::size_t>(ptr - s.data()));
        p.steps_.emplace_back(idx);
      }
      if (s.empty() || s.front() != ']') return fail("missing ']'");
      s.remove_prefix(1);
    } else {
      return fail("unexpected character '" + std::string(1, s.front()) + "'");
    }
  }
  if (p.steps_.size() > 64) return fail("more than 64 steps");
  return p;
}

const json::value* json_path::resolve(const json::value& root) const noexcept { return walk(&root, nullptr); }

const json::value* json_path::resolve(const json::object& root) const noexcept { return walk(nullptr, &root); }

const json::value* json_path::walk(const json::value* cur, const json::object* start) const noexcept {
  if (!cur && steps_.empty()) return nullptr;  // the object itself is not a value here
  for (const auto& st : steps_) {
    if (start) {  // the first step from the root object
      const auto* key = std::get_if<std::string>(&st);
      if (!key) return nullptr;
      auto it = start->find(*key);
      if (it == start->end()) return nullptr;
      cur = &it->value();
      start = nullptr;
      continue;
    }
    if (const auto* key = std::get_if<std::string>(&st)) {
      const auto* obj = cur->if_object();
      if (!obj) return nullptr;
      auto it = obj->find(*key);
      if (it == obj->end()) return nullptr;
      cur = &it->value();
    } else {
      const auto* arr = cur->if_array();
      auto idx = std::get<std::size_t>(st);
      if (!arr || idx >= arr->size()) return nullptr;
      cur = &(*arr)[idx];
    }
  }
  return cur;
}

const char* to_string(json_operator op) noexcept {
  switch (op) {
    case json_operator::equals: return "equals";
    case json_operator::contains: return "contains";
    case json_operator::exists: return "exists";
    case json_operator::regex: return "regex";
  }
  return "equals";
}

static bool is_number(const json::value& v) { return v.is_int64() || v.is_uint64() || v.is_double(); }

bool json_equal(const json::value& a, const json::value& b) noexcept {
  if (is_number(a) && is_number(b)) {
    if (a.is_double() || b.is_double()) return a.to_number<double>() == b.to_number<double>();
    if (a.is_int64() && b.is_int64()) return a.get_int64() == b.get_int64();
    if (a.is_uint64() && b.is_uint64()) return a.get_uint64() == b.get_uint64();
    const auto& i = a.is_int64() ? a : b;
    const auto& u = a.is_uint64() ? a : b;
    return i.get_int64() >= 0 && static_cast<std::uint64_t>(i.get_int64()) == u.get_uint64();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case json::kind::object: {
      const auto& oa = a.get_object();
      const auto& ob = b.get_object();
      if (oa.size() != ob.size()) return false;
      for (const auto& kv : oa) {
        auto it = ob.find(kv.key());
        if (it == ob.end() || !json_equal(kv.value(), it->value())) return false;
      }
      return true;
    }
    case json::kind::array: {
      const auto& xa = a.get_array();
      const auto& xb = b.get_array();
      if (xa.size() != xb.size()) return false;
      for (std::size_t i = 0; i < xa.size(); ++i)
        if (!json_equal(xa[i], xb[i])) return false;
      return true;
    }
    default: return a == b;
  }
}

bool json_contains(const json::value& h, const json::value& n) noexcept {
  if (h.is_string() && n.is_string())
    return std::string_view(h.get_string()).find(std::string_view(n.get_string())) != std::string_view::npos;
  if (h.is_array()) {
    const auto& arr = h.get_array();
    auto holds = [&](const json::value& x) {
      for (const auto& e : arr)
        if (json_equal(e, x) || (e.is_object() && x.is_object() && json_contains(e, x))) return true;
      return false;
    };
    if (n.is_array()) {
      for (const auto& x : n.get_array())
        if (!holds(x)) return false;
      return true;
    }
    return holds(n);
  }
  if (h.is_object() && n.is_object()) {
    const auto& ho = h.get_object();
    for (const auto& kv : n.get_object()) {
      auto it = ho.find(kv.key());
      if (it == ho.end()) return false;
      const auto& hv = it->value();
      bool ok = (hv.is_object() || hv.is_array()) ? json_contains(hv, kv.value())
                                                  : json_equal(hv, kv.value());
      if (!ok) return false;
    }
    return true;
  }
  return json_equal(h, n);
}

result<json_query> json_query::make(std::string_view path, json_operator op, json::value value,
                                    std::string_view field) {
  auto p = json_path::parse(path, std::string(field) + ".path");
  if (!p) return std::move(p).error();
  json_query q;
  q.path_ = std::move(*p);
  q.op_ = op;
  q.value_ = std::move(value);
  if (op == json_operator::regex) {
    if (!q.value_.is_string())
      return error::invalid(std::string(field) + ".value", "regex operator needs a string pattern");
    RE2::Options opts;
    opts.set_log_errors(false);
    opts.set_max_mem(8 << 20);
    auto re = std::make_shared<RE2>(std::string(q.value_.get_string()), opts);
    if (!re->ok())
      return error::invalid(std::string(field) + ".value", "invalid regular expression: " + re->error().substr(0, 200));
    q.regex_ = std::move(re);
  }
  return q;
}

result<json_query> json_query::from_json(const json::value& v, std::string_view field) {
  const auto* obj = v.if_object();
  if (!obj) return error::invalid(std::string(field), "must be an object {path, operator, value}");
  for (const auto& kv : *obj) {
    if (kv.key() != "path" && kv.key() != "operator" && kv.key() != "value")
      return error::invalid(std::string(field) + "." + std::string(kv.key()), "unknown member");
  }
  const auto* path = obj->if_contains("path");
  if (!path || !path->is_string()) return error::invalid(std::string(field) + ".path", "required string");
  const auto* opv = obj->if_contains("operator");
  if (!opv || !opv->is_string())
    return error::invalid(std::string(field) + ".operator", "required: equals, contains, exists or regex");
  std::string_view ops = opv->get_string();
  json_operator op;
  if (ops == "equals") op = json_operator::equals;
  else if (ops == "contains") op = json_operator::contains;
  else if (ops == "exists") op = json_operator::exists;
  else if (ops == "regex") op = json_operator::regex;
  else
    return error::invalid(std::string(field) + ".operator",
                          "unknown operator '" + std::string(ops) + "' (equals, contains, exists, regex)");
  const auto* val = obj->if_contains("value");
  if (!val && op != json_operator::exists)
    return error::invalid(std::string(field) + ".value", "required for operator " + std::string(ops));
  return make(path->get_string(), op, val ? *val : json::value(), field);
}

bool json_query::matches(const json::value& doc) const {
  const auto* v = path_.resolve(doc);
  if (!v) return false;
  switch (op_) {
    case json_operator::exists: return true;
    case json_operator::equals: return json_equal(*v, value_);
    case json_operator::contains: return json_contains(*v, value_);
    case json_operator::regex: {
      if (!v->is_string()) return false;
      std::string_view s = v->get_string();
      return RE2::PartialMatch(re2::StringPiece(s.data(), s.size()), *regex_);
    }
  }
  return false;
}

json::object json_query::to_json() const {
  json::object o;
  o["path"] = path_.text();
  o["operator"] = to_string(op_);
  if (op_ != json_operator::exists) o["value"] = value_;
  return o;
}

}  // namespace pliers
