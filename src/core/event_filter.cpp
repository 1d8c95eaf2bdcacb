#include "core/event_filter.hpp"

#include <re2/re2.h>

#include <algorithm>
#include <boost/json.hpp>
#include <variant>

#include "core/event_codec.hpp"
#include "core/time_format.hpp"

namespace pliers {

namespace json = boost::json;

namespace {

using op = condition_op;

enum class base_field { type, aggregate_type, aggregate_id, routing_key, version, sequence, position, time, metadata, payload };

// The value of a field of an event as JSON; nullopt when missing.
std::optional<json::value> field_value(const event& e, base_field f, const json_path* path) {
  switch (f) {
    case base_field::type: return json::value(e.type);
    case base_field::aggregate_type: return json::value(e.aggregate_type);
    case base_field::aggregate_id: return json::value(e.aggregate_id);
    case base_field::routing_key: {
      auto* v = e.metadata.if_contains("routingKey");
      return v ? std::optional<json::value>(*v) : std::nullopt;
    }
    case base_field::version: return json::value(e.version);
    case base_field::sequence: return json::value(e.sequence.value);
    case base_field::position: return json::value(e.position.value);
    case base_field::time: return json::value(format_rfc3339(e.time));
    case base_field::metadata:
    case base_field::payload: {
      const auto& obj = f == base_field::metadata ? e.metadata : e.payload;
      if (path->steps().empty()) return json::value(obj);
      // Resolve without copying the whole object: first step is a key of obj.
      const auto& first = path->steps().front();
      const auto* key = std::get_if<std::string>(&first);
      if (!key) return std::nullopt;
      auto it = obj.find(*key);
      if (it == obj.end()) return std::nullopt;
      const json::value* cur = &it->value();
      for (std::size_t i = 1; i < path->steps().size(); ++i) {
        const auto& st = path->steps()[i];
        if (const auto* k = std::get_if<std::string>(&st)) {
          const auto* o = cur->if_object();
          if (!o) return std::nullopt;
          auto jt = o->find(*k);
          if (jt == o->end()) return std::nullopt;
          cur = &jt->value();
        } else {
          const auto* a = cur->if_array();
          auto idx = std::get<std::size_t>(st);
          if (!a || idx >= a->size()) return std::nullopt;
          cur = &(*a)[idx];
        }
      }
      return *cur;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<condition_op> condition_op_from(std::string_view s) {
  static const std::pair<std::string_view, op> ops[] = {
      {"equals", op::equals}, {"not_equals", op::not_equals}, {"contains", op::contains}, {"regex", op::regex},
      {"in", op::in},         {"not_in", op::not_in},         {"exists", op::exists},     {"prefix", op::prefix},
      {"suffix", op::suffix}, {"gt", op::gt},                 {"gte", op::gte},           {"lt", op::lt},
      {"lte", op::lte}};
  for (auto& [name, o] : ops)
    if (name == s) return o;
  return std::nullopt;
}

namespace {

int compare_numbers_or_strings(const json::value& a, const json::value& b, bool& comparable) {
  comparable = true;
  auto num = [](const json::value& v) { return v.is_int64() || v.is_uint64() || v.is_double(); };
  if (num(a) && num(b)) {
    double x = a.to_number<double>(), y = b.to_number<double>();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    auto c = std::string_view(a.get_string()).compare(std::string_view(b.get_string()));
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  comparable = false;
  return 0;
}

}  // namespace

bool condition_op_holds(condition_op o, const json::value* v, const json::value& operand, const RE2* re) {
  if (o == op::exists) return v != nullptr;
  if (!v) return false;
  switch (o) {
    case op::equals: return json_equal(*v, operand);
    case op::not_equals: return !json_equal(*v, operand);
    case op::contains: return json_contains(*v, operand);
    case op::regex: {
      if (!v->is_string() || !re) return false;
      const std::string_view s = v->get_string();
      return RE2::PartialMatch(re2::StringPiece(s.data(), s.size()), *re);
    }
    case op::in:
    case op::not_in: {
      const auto& list = operand.get_array();
      const bool found = std::any_of(list.begin(), list.end(), [&](const json::value& x) { return json_equal(*v, x); });
      return o == op::in ? found : !found;
    }
    case op::prefix:
      return v->is_string() && std::string_view(v->get_string()).starts_with(std::string_view(operand.get_string()));
    case op::suffix:
      return v->is_string() && std::string_view(v->get_string()).ends_with(std::string_view(operand.get_string()));
    case op::gt:
    case op::gte:
    case op::lt:
    case op::lte: {
      bool comparable = false;
      const int c = compare_numbers_or_strings(*v, operand, comparable);
      if (!comparable) return false;
      return o == op::gt ? c > 0 : o == op::gte ? c >= 0 : o == op::lt ? c < 0 : c <= 0;
    }
    case op::exists: return true;
  }
  return false;
}

std::shared_ptr<const RE2> compile_condition_regex(std::string_view pattern, std::string* why) {
  RE2::Options opts;
  opts.set_log_errors(false);
  opts.set_max_mem(8 << 20);
  auto re = std::make_shared<RE2>(re2::StringPiece(pattern.data(), pattern.size()), opts);
  if (re->ok()) return re;
  if (why) *why = re->error().substr(0, 200);
  return nullptr;
}

struct condition::node {
  enum class kind { all, any, negate, leaf } k = kind::leaf;
  std::vector<node> children;
  base_field field = base_field::type;
  std::optional<json_path> path;
  op o = op::equals;
  json::value value;
  std::shared_ptr<const RE2> re;

  bool eval(const event& e) const {
    switch (k) {
      case kind::all: return std::all_of(children.begin(), children.end(), [&](const node& n) { return n.eval(e); });
      case kind::any: return std::any_of(children.begin(), children.end(), [&](const node& n) { return n.eval(e); });
      case kind::negate: return !children.front().eval(e);
      case kind::leaf: break;
    }
    const auto v = field_value(e, field, path ? &*path : nullptr);
    return condition_op_holds(o, v ? &*v : nullptr, value, re.get());
  }
};

namespace {

result<condition::node> parse_node(const json::value& v, const std::string& field, int depth) {
  using node = condition::node;
  if (depth > 32) return error::invalid(field, "conditions nested deeper than 32 levels");
  const auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object: {all|any: [...]}, {not: {...}} or {field, operator, value}");
  node n;
  for (const char* group : {"all", "any"}) {
    if (const auto* list = o->if_contains(group)) {
      if (o->size() != 1) return error::invalid(field, std::string("'") + group + "' must be the only member");
      if (!list->is_array() || list->get_array().empty())
        return error::invalid(field + "." + group, "must be a non-empty array of conditions");
      if (list->get_array().size() > 256) return error::invalid(field + "." + group, "more than 256 conditions");
      n.k = std::string_view(group) == "all" ? node::kind::all : node::kind::any;
      for (std::size_t i = 0; i < list->get_array().size(); ++i) {
        auto child = parse_node(list->get_array()[i], field + "." + group + "[" + std::to_string(i) + "]", depth + 1);
        if (!child) return std::move(child).error();
        n.children.push_back(std::move(*child));
      }
      return n;
    }
  }
  if (const auto* inner = o->if_contains("not")) {
    if (o->size() != 1) return error::invalid(field, "'not' must be the only member");
    auto child = parse_node(*inner, field + ".not", depth + 1);
    if (!child) return std::move(child).error();
    n.k = node::kind::negate;
    n.children.push_back(std::move(*child));
    return n;
  }
  for (const auto& kv : *o)
    if (kv.key() != "field" && kv.key() != "operator" && kv.key() != "value")
      return error::invalid(field + "." + std::string(kv.key()).substr(0, 100), "unknown member");
  const auto* f = o->if_contains("field");
  if (!f || !f->is_string()) return error::invalid(field + ".field", "required string");
  std::string_view name = f->get_string();
  static const std::pair<std::string_view, base_field> simple[] = {
      {"type", base_field::type},           {"aggregateType", base_field::aggregate_type},
      {"aggregateId", base_field::aggregate_id}, {"routingKey", base_field::routing_key},
      {"version", base_field::version},     {"sequenceNumber", base_field::sequence},
      {"position", base_field::position},   {"timestamp", base_field::time}};
  bool known = false;
  for (auto& [k, b] : simple)
    if (k == name) n.field = b, known = true;
  if (!known) {
    for (auto [prefix, b] : {std::pair<std::string_view, base_field>{"metadata", base_field::metadata},
                             {"payload", base_field::payload}}) {
      if (name == prefix || name.starts_with(std::string(prefix) + ".") || name.starts_with(std::string(prefix) + "[")) {
        auto rest = name.substr(prefix.size());
        auto p = json_path::parse(rest.empty() ? "$" : "$" + std::string(rest), field + ".field");
        if (!p) return std::move(p).error();
        n.field = b;
        n.path = std::move(*p);
        known = true;
      }
    }
  }
  if (!known)
    return error::invalid(field + ".field", "unknown field '" + std::string(name).substr(0, 100) +
                                                "' (type, aggregateType, aggregateId, routingKey, version, "
                                                "sequenceNumber, position, timestamp, metadata.<path>, payload.<path>)");
  const auto* opv = o->if_contains("operator");
  if (!opv || !opv->is_string()) return error::invalid(field + ".operator", "required string");
  auto parsed = condition_op_from(opv->get_string());
  if (!parsed)
    return error::invalid(field + ".operator", "unknown operator '" + std::string(opv->get_string()).substr(0, 50) +
                                                   "' (equals, not_equals, contains, regex, in, not_in, exists, "
                                                   "prefix, suffix, gt, gte, lt, lte)");
  n.o = *parsed;
  const auto* val = o->if_contains("value");
  if (n.o != op::exists && !val) return error::invalid(field + ".value", "required for operator " + std::string(opv->get_string()));
  if (val) n.value = *val;
  if ((n.o == op::in || n.o == op::not_in) && !n.value.is_array())
    return error::invalid(field + ".value", "must be an array for in / not_in");
  if ((n.o == op::prefix || n.o == op::suffix || n.o == op::regex) && !n.value.is_string())
    return error::invalid(field + ".value", "must be a string for " + std::string(opv->get_string()));
  if (n.o == op::regex) {
    std::string why;
    n.re = compile_condition_regex(std::string_view(n.value.get_string()), &why);
    if (!n.re) return error::invalid(field + ".value", "invalid regular expression: " + why);
  }
  return n;
}

result<std::vector<std::pair<json_path, json::value>>> equality_map(const json::value& v, const std::string& field) {
  std::vector<std::pair<json_path, json::value>> out;
  const auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object {path: value}");
  for (const auto& kv : *o) {
    std::string key(kv.key());
    auto p = json_path::parse(key.starts_with("$") ? key : "$." + key, field + "." + key.substr(0, 100));
    if (!p) return std::move(p).error();
    out.emplace_back(std::move(*p), kv.value());
  }
  return out;
}

}  // namespace

result<condition> condition::from_json(const json::value& v, const std::string& field, int depth) {
  auto n = parse_node(v, field, depth);
  if (!n) return std::move(n).error();
  condition c;
  c.root_ = std::make_shared<const node>(std::move(*n));
  return c;
}

bool condition::matches(const event& e) const { return root_ && root_->eval(e); }

result<event_filter> event_filter::from_json(const json::value& v, const std::string& field) {
  event_filter f;
  if (v.is_null()) return f;
  const auto* o = v.if_object();
  if (!o) return error::invalid(field, "must be an object");
  f.source = *o;
  for (const auto& kv : *o) {
    const std::string key(kv.key());
    const std::string path = field + "." + key;
    const auto& val = kv.value();
    if (val.is_null()) continue;
    if (key == "eventTypes") {
      auto list = string_list(val, path);
      if (!list) return std::move(list).error();
      for (std::size_t i = 0; i < list->size(); ++i) {
        auto p = type_pattern::parse((*list)[i], path + "[" + std::to_string(i) + "]");
        if (!p) return std::move(p).error();
        f.event_types.push_back(std::move(*p));
      }
    } else if (key == "aggregateTypes" || key == "aggregateIds" || key == "routingKeys") {
      auto list = string_list(val, path);
      if (!list) return std::move(list).error();
      (key == "aggregateTypes" ? f.aggregate_types : key == "aggregateIds" ? f.aggregate_ids : f.routing_keys) =
          std::move(*list);
    } else if (key == "metadataFilters" || key == "payloadFilters") {
      auto m = equality_map(val, path);
      if (!m) return std::move(m).error();
      (key == "metadataFilters" ? f.metadata_filters : f.payload_filters) = std::move(*m);
    } else if (key == "timestampRange") {
      const auto* r = val.if_object();
      if (!r) return error::invalid(path, "must be an object {from, to}");
      for (const auto& m : *r) {
        if (m.key() != "from" && m.key() != "to")
          return error::invalid(path + "." + std::string(m.key()).substr(0, 100), "unknown member");
        if (m.value().is_null()) continue;
        auto t = m.value().is_string() ? parse_rfc3339(m.value().get_string()) : std::nullopt;
        if (!t) return error::invalid(path + "." + std::string(m.key()), "must be an RFC 3339 timestamp");
        (m.key() == "from" ? f.from : f.to) = *t;
      }
    } else if (key == "conditions") {
      auto c = condition::from_json(val, path);
      if (!c) return std::move(c).error();
      f.conditions = std::move(*c);
    } else {
      return error::invalid(path.substr(0, 120), "unknown member (eventTypes, aggregateTypes, aggregateIds, routingKeys, "
                                                 "metadataFilters, payloadFilters, timestampRange, conditions)");
    }
  }
  return f;
}

bool event_filter::matches(const event& e) const {
  if (!event_types.empty() &&
      std::none_of(event_types.begin(), event_types.end(), [&](const auto& p) { return p.matches(e.type); }))
    return false;
  auto in = [](const std::vector<std::string>& v, std::string_view x) {
    return v.empty() || std::find(v.begin(), v.end(), x) != v.end();
  };
  if (!in(aggregate_types, e.aggregate_type) || !in(aggregate_ids, e.aggregate_id)) return false;
  if (!routing_keys.empty()) {
    const auto* rk = e.metadata.if_contains("routingKey");
    if (!rk || !rk->is_string() || !in(routing_keys, rk->get_string())) return false;
  }
  if (from && e.time < *from) return false;
  if (to && e.time > *to) return false;
  for (const auto& [p, v] : metadata_filters) {
    auto got = field_value(e, base_field::metadata, &p);
    if (!got || !json_equal(*got, v)) return false;
  }
  for (const auto& [p, v] : payload_filters) {
    auto got = field_value(e, base_field::payload, &p);
    if (!got || !json_equal(*got, v)) return false;
  }
  return !conditions || conditions->matches(e);
}

}  // namespace pliers
