// Client subcommands against a running server. Output: JSON lines on stdout; problems on
// stderr with exit code 1.
#include <boost/json.hpp>
#include <cctype>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.hpp"
#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "server/http_client.hpp"

namespace pliers::cli {

namespace json = boost::json;

namespace {

struct common {
  std::string url = "http://127.0.0.1:8080";
};

void add_url(CLI::App& app, common& c) {
  app.add_option("--url", c.url, "server address")->envname("PLIERS_URL")->capture_default_str();
}

int report(const error& e) {
  std::cerr << "pliers-events: " << (e.field.empty() ? "" : e.field + ": ") << e.message << "\n";
  return 1;
}

// Non-2xx: print the problem's detail.
int report(const http_response& r) {
  std::string detail = r.body;
  boost::system::error_code ec;
  auto v = json::parse(r.body, ec);
  if (!ec && v.is_object()) {
    if (const auto* d = v.as_object().if_contains("detail"); d && d->is_string()) detail = std::string(d->get_string());
    if (const auto* cv = v.as_object().if_contains("currentVersion"))
      detail += " (currentVersion " + json::serialize(*cv) + ")";
  }
  std::cerr << "pliers-events: HTTP " << r.status << ": " << detail << "\n";
  return 1;
}

result<http_response> call(const common& c, std::string_view method, const std::string& target, std::string_view body = {}) {
  auto client = http_client::connect(c.url);
  if (!client) return std::move(client).error();
  return (*client)->request(method, target, body);
}

// Reads events: a JSON array, one JSON object, or JSON lines.
result<json::array> read_events_input(std::istream& in) {
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  boost::system::error_code ec;
  auto v = json::parse(text, ec);
  if (!ec) {
    if (v.is_array()) return v.as_array();
    if (v.is_object()) return json::array{v};
    return error::invalid("input", "expected an event object, an array of events or JSON lines");
  }
  json::array out;
  std::istringstream lines(text);
  std::string line;
  std::size_t n = 0;
  while (std::getline(lines, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto lv = json::parse(line, ec);
    if (ec) return error::invalid("input", "line " + std::to_string(n) + ": " + ec.message());
    out.push_back(std::move(lv));
  }
  return out;
}

void print_events(const json::value& page) {
  if (const auto* evs = page.as_object().if_contains("events"))
    for (const auto& e : evs->as_array()) std::cout << json::serialize(e) << "\n";
}

}  // namespace

void add_client_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out) {
  // append
  {
    auto* sub = app.add_subcommand("append", "Append events to an aggregate (JSON array, object or lines)");
    auto c = std::make_shared<common>();
    auto aggregate = std::make_shared<std::string>();
    auto file = std::make_shared<std::string>();
    auto expected = std::make_shared<long long>(-1);
    add_url(*sub, *c);
    sub->add_option("aggregate", *aggregate, "aggregate id")->required();
    sub->add_option("--file,-f", *file, "read events from this file instead of stdin");
    auto* ev = sub->add_option("--expected-version", *expected, "the aggregate's current version (0 = new)");
    out.emplace_back(sub, [=]() -> int {
      std::ifstream f;
      if (!file->empty()) {
        f.open(*file);
        if (!f) return report(error::invalid("--file", "cannot open " + *file));
      }
      auto events = read_events_input(file->empty() ? std::cin : f);
      if (!events) return report(events.error());
      // Ids are given client-side so that a retried append is idempotent.
      for (auto& e : *events)
        if (e.is_object() && !e.as_object().contains("id")) e.as_object()["id"] = new_uuid_v4();
      json::object body{{"events", std::move(*events)}};
      if (ev->count() > 0) body["expectedVersion"] = *expected;
      auto r = call(*c, "POST", "/v1/aggregates/" + url_encode(*aggregate) + "/events", json::serialize(body));
      if (!r) return report(r.error());
      if (r->status >= 300) return report(*r);
      std::cout << r->body << "\n";
      return 0;
    });
  }
  // read
  {
    auto* sub = app.add_subcommand("read", "Read the events of one aggregate");
    auto c = std::make_shared<common>();
    auto aggregate = std::make_shared<std::string>();
    auto from = std::make_shared<long long>(0), to = std::make_shared<long long>(0);
    add_url(*sub, *c);
    sub->add_option("aggregate", *aggregate, "aggregate id")->required();
    auto* fo = sub->add_option("--from-version", *from, "first sequence number");
    auto* to_opt = sub->add_option("--to-version", *to, "last sequence number");
    out.emplace_back(sub, [=]() -> int {
      std::string target = "/v1/aggregates/" + url_encode(*aggregate) + "/events";
      char sep = '?';
      if (fo->count()) target += sep + std::string("fromVersion=") + std::to_string(*from), sep = '&';
      if (to_opt->count()) target += sep + std::string("toVersion=") + std::to_string(*to);
      auto r = call(*c, "GET", target);
      if (!r) return report(r.error());
      if (r->status >= 300) return report(*r);
      print_events(json::parse(r->body));
      return 0;
    });
  }
  // get
  {
    auto* sub = app.add_subcommand("get", "Get one event by id");
    auto c = std::make_shared<common>();
    auto id = std::make_shared<std::string>();
    add_url(*sub, *c);
    sub->add_option("id", *id, "event id (UUID)")->required();
    out.emplace_back(sub, [=]() -> int {
      auto r = call(*c, "GET", "/v1/events/" + url_encode(*id));
      if (!r) return report(r.error());
      if (r->status >= 300) return report(*r);
      std::cout << r->body << "\n";
      return 0;
    });
  }
  // query
  {
    auto* sub = app.add_subcommand("query", "Query events (spec EventQuery); prints JSON lines");
    auto c = std::make_shared<common>();
    struct query_flags {
      std::vector<std::string> types, aggregate_types, aggregate_ids, payload, metadata;
      std::string from, to, cursor;
      long long from_seq = 0, to_seq = 0;
      std::size_t limit = 100;
      bool all = false;
    };
    auto q = std::make_shared<query_flags>();
    add_url(*sub, *c);
    sub->add_option("--type,-t", q->types, "event type or pattern (form.*, submission.**); repeatable");
    sub->add_option("--aggregate-type", q->aggregate_types, "aggregate type; repeatable");
    sub->add_option("--aggregate-id", q->aggregate_ids, "aggregate id; repeatable");
    sub->add_option("--from", q->from, "from timestamp (RFC 3339, inclusive)");
    sub->add_option("--to", q->to, "to timestamp (RFC 3339, inclusive)");
    auto* fs = sub->add_option("--from-sequence", q->from_seq, "first sequence number");
    auto* ts = sub->add_option("--to-sequence", q->to_seq, "last sequence number");
    sub->add_option("--payload", q->payload,
                    R"(payload condition as JSON {"path":"$.a.b","operator":"equals|contains|exists|regex","value":...}; repeatable)");
    sub->add_option("--metadata", q->metadata, "metadata condition as JSON, like --payload; repeatable");
    sub->add_option("--limit", q->limit, "events per page (1-10000)")->capture_default_str();
    sub->add_option("--cursor", q->cursor, "continue after a cursor printed by an earlier page");
    sub->add_flag("--all", q->all, "follow cursors until the last page");
    out.emplace_back(sub, [=]() -> int {
      json::object query;
      auto list = [](const std::vector<std::string>& v) {
        json::array a;
        for (const auto& s : v) a.emplace_back(s);
        return a;
      };
      if (!q->types.empty()) query["eventTypes"] = list(q->types);
      if (!q->aggregate_types.empty()) query["aggregateTypes"] = list(q->aggregate_types);
      if (!q->aggregate_ids.empty()) query["aggregateIds"] = list(q->aggregate_ids);
      if (!q->from.empty() || !q->to.empty()) {
        json::object range;
        if (!q->from.empty()) range["from"] = q->from;
        if (!q->to.empty()) range["to"] = q->to;
        query["timestampRange"] = std::move(range);
      }
      if (fs->count() || ts->count()) {
        json::object range;
        if (fs->count()) range["from"] = q->from_seq;
        if (ts->count()) range["to"] = q->to_seq;
        query["sequenceRange"] = std::move(range);
      }
      for (auto [flag, key, conds] : {std::tuple{"--payload", "payloadQuery", &q->payload},
                                      std::tuple{"--metadata", "metadataQuery", &q->metadata}}) {
        if (conds->empty()) continue;
        json::array a;
        for (const auto& text : *conds) {
          boost::system::error_code ec;
          auto v = json::parse(text, ec);
          if (ec) return report(error::invalid(flag, "not JSON: " + ec.message()));
          a.push_back(std::move(v));
        }
        query[key] = std::move(a);
      }
      auto client = http_client::connect(c->url);
      if (!client) return report(client.error());
      std::string cursor = q->cursor;
      while (true) {
        json::object pagination{{"limit", q->limit}};
        if (!cursor.empty()) pagination["cursor"] = cursor;
        json::object body{{"query", query}, {"pagination", pagination}};
        auto r = (*client)->post("/v1/events/query", json::serialize(body));
        if (!r) return report(r.error());
        if (r->status >= 300) return report(*r);
        auto page = json::parse(r->body);
        print_events(page);
        const auto* next = page.as_object().if_contains("cursor");
        if (!next || !next->is_string()) break;
        cursor = std::string(next->get_string());
        if (!q->all) {
          std::cerr << "more events: --cursor " << cursor << "\n";
          break;
        }
      }
      return 0;
    });
  }
}

namespace {

std::string url_encode(std::string_view v) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char ch : v) {
    if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '*') out += static_cast<char>(ch);
    else {
      out += '%';
      out += hex[ch >> 4];
      out += hex[ch & 15];
    }
  }
  return out;
}

// Prints a 2xx JSON answer (one line) or reports the problem.
int print_reply(const result<http_response>& r) {
  if (!r) return report(r.error());
  if (r->status >= 300) return report(*r);
  if (!r->body.empty()) std::cout << r->body << "\n";
  return 0;
}

std::string read_input(const std::string& path) {
  std::stringstream ss;
  if (path == "-") ss << std::cin.rdbuf();
  else {
    std::ifstream in(path);
    ss << in.rdbuf();
  }
  return ss.str();
}

}  // namespace

// Operators' commands for the dead-letter queue and the plugin registry (issue 5).
void add_processing_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out) {
  auto c = std::make_shared<common>();
  auto* dlq = app.add_subcommand("dlq", "Dead-letter queue: list, get, retry, fail");
  dlq->require_subcommand(1);
  {
    struct opts {
      std::string status, consumer, event_type, from, to;
      std::size_t limit = 100;
      bool all = false;
    };
    auto o = std::make_shared<opts>();
    auto* sub = dlq->add_subcommand("list", "List dead letters (JSON lines), oldest first");
    add_url(*sub, *c);
    sub->add_option("--status", o->status, "pending_retry, retrying, permanent_failure or resolved");
    sub->add_option("--consumer", o->consumer, "plugin:<id> or route:<rule>:<target>");
    sub->add_option("--event-type", o->event_type, "event type pattern");
    sub->add_option("--from", o->from, "failed at or after (RFC 3339)");
    sub->add_option("--to", o->to, "failed at or before (RFC 3339)");
    sub->add_option("--limit", o->limit, "entries per page")->capture_default_str();
    sub->add_flag("--all", o->all, "follow the cursor to the end");
    out.emplace_back(sub, [=]() -> int {
      std::string base = "/v1/dead-letters?limit=" + std::to_string(o->limit);
      for (auto [key, value] : {std::pair<const char*, const std::string*>{"status", &o->status},
                                {"consumer", &o->consumer},
                                {"eventType", &o->event_type},
                                {"from", &o->from},
                                {"to", &o->to}})
        if (!value->empty()) base += std::string("&") + key + "=" + url_encode(*value);
      std::string cursor;
      while (true) {
        auto r = call(*c, "GET", base + (cursor.empty() ? "" : "&cursor=" + cursor));
        if (!r) return report(r.error());
        if (r->status >= 300) return report(*r);
        auto page = json::parse(r->body);
        for (const auto& d : page.at("deadLetters").as_array()) std::cout << json::serialize(d) << "\n";
        const auto* next = page.as_object().if_contains("cursor");
        if (!next || !next->is_string()) break;
        cursor = std::string(next->get_string());
        if (!o->all) {
          std::cerr << "more entries: run with --all\n";
          break;
        }
      }
      return 0;
    });
  }
  {
    auto id = std::make_shared<std::string>();
    auto* sub = dlq->add_subcommand("get", "Show one dead letter with its attempt history");
    add_url(*sub, *c);
    sub->add_option("id", *id, "dead-letter id")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "GET", "/v1/dead-letters/" + url_encode(*id))); });
  }
  {
    auto ids = std::make_shared<std::vector<std::string>>();
    auto* sub = dlq->add_subcommand("retry", "Retry dead letters now (one or many); prints RetryResults");
    add_url(*sub, *c);
    sub->add_option("ids", *ids, "dead-letter ids")->required();
    out.emplace_back(sub, [=]() -> int {
      if (ids->size() == 1) return print_reply(call(*c, "POST", "/v1/dead-letters/" + url_encode(ids->front()) + "/retry"));
      json::array a;
      for (const auto& i : *ids) a.emplace_back(i);
      return print_reply(call(*c, "POST", "/v1/dead-letters/retry", json::serialize(json::object{{"ids", a}})));
    });
  }
  {
    auto id = std::make_shared<std::string>();
    auto reason = std::make_shared<std::string>();
    auto* sub = dlq->add_subcommand("fail", "Mark a dead letter as a permanent failure (never retried on its own)");
    add_url(*sub, *c);
    sub->add_option("id", *id, "dead-letter id")->required();
    sub->add_option("--reason", *reason, "why it is given up")->required();
    out.emplace_back(sub, [=]() -> int {
      return print_reply(call(*c, "POST", "/v1/dead-letters/" + url_encode(*id) + "/permanent-failure",
                              json::serialize(json::object{{"reason", *reason}})));
    });
  }

  auto* plugins = app.add_subcommand("plugins", "Plugin registry: list, register, enable, disable, remove");
  plugins->require_subcommand(1);
  {
    auto* sub = plugins->add_subcommand("list", "List the registered plugins");
    add_url(*sub, *c);
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "GET", "/v1/plugins")); });
  }
  {
    auto file = std::make_shared<std::string>();
    auto* sub = plugins->add_subcommand("register", "Register a plugin from a JSON registration (file or -)");
    add_url(*sub, *c);
    sub->add_option("file", *file, "JSON: {id, name, kind: lua|remote, eventTypes, options?, source | url}")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "POST", "/v1/plugins", read_input(*file))); });
  }
  for (const char* verb : {"enable", "disable", "remove"}) {
    auto id = std::make_shared<std::string>();
    const std::string v = verb;
    auto* sub = plugins->add_subcommand(v, v == "remove" ? "Unregister a plugin" : v + " a plugin");
    add_url(*sub, *c);
    sub->add_option("id", *id, "plugin id")->required();
    out.emplace_back(sub, [=]() -> int {
      if (v == "remove") return print_reply(call(*c, "DELETE", "/v1/plugins/" + url_encode(*id)));
      return print_reply(call(*c, "POST", "/v1/plugins/" + url_encode(*id) + "/" + v));
    });
  }
}

void add_routing_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out) {
  auto c = std::make_shared<common>();
  auto* routes = app.add_subcommand("routes", "Routing rules: list, get, add, update, remove, dry-run");
  routes->require_subcommand(1);
  {
    auto* sub = routes->add_subcommand("list", "List the routing rules");
    add_url(*sub, *c);
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "GET", "/v1/routes")); });
  }
  for (const char* verb : {"get", "remove"}) {
    auto id = std::make_shared<std::string>();
    const std::string v = verb;
    auto* sub = routes->add_subcommand(v, v == "get" ? "Show one rule" : "Remove a rule");
    add_url(*sub, *c);
    sub->add_option("id", *id, "rule id")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, v == "get" ? "GET" : "DELETE", "/v1/routes/" + url_encode(*id))); });
  }
  {
    auto file = std::make_shared<std::string>();
    auto* sub = routes->add_subcommand("add", "Add a rule from a JSON RoutingRule (file or -)");
    add_url(*sub, *c);
    sub->add_option("file", *file, "JSON: {id, name?, conditions, targets, enabled?, priority?, rateLimit?}")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "POST", "/v1/routes", read_input(*file))); });
  }
  {
    auto id = std::make_shared<std::string>();
    auto file = std::make_shared<std::string>();
    auto* sub = routes->add_subcommand("update", "Replace a rule with a JSON RoutingRule (file or -)");
    add_url(*sub, *c);
    sub->add_option("id", *id, "rule id")->required();
    sub->add_option("file", *file, "JSON RoutingRule")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "PUT", "/v1/routes/" + url_encode(*id), read_input(*file))); });
  }
  {
    auto file = std::make_shared<std::string>();
    auto* sub = routes->add_subcommand("dry-run", "Which rules and targets an example event (JSON, file or -) matches, and why");
    add_url(*sub, *c);
    sub->add_option("file", *file, "JSON event: {type, aggregateType, payload?, metadata?}")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "POST", "/v1/routes/dry-run", read_input(*file))); });
  }
}

namespace {

// An argument that is JSON text when it starts with '{' or '[', else a file to read (- = stdin).
result<json::value> json_arg(const std::string& arg, const std::string& name) {
  const std::string text = !arg.empty() && (arg[0] == '{' || arg[0] == '[') ? arg : read_input(arg);
  boost::system::error_code ec;
  auto v = json::parse(text, ec);
  if (ec) return error::invalid(name, "not JSON: " + ec.message());
  return v;
}

// Prints the `events` member of a 2xx answer as JSON lines.
int print_event_lines(const result<http_response>& r) {
  if (!r) return report(r.error());
  if (r->status >= 300) return report(*r);
  print_events(json::parse(r->body));
  return 0;
}

}  // namespace

// replay, compact, projections (issue 7, docs/replay.md).
void add_ops_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out) {
  auto c = std::make_shared<common>();
  auto* replay = app.add_subcommand("replay", "Replay history: events, a time range, state through a Lua reducer");
  replay->require_subcommand(1);
  {
    struct opts {
      std::string aggregate;
      std::optional<std::int64_t> from, to, limit;
    };
    auto o = std::make_shared<opts>();
    auto* sub = replay->add_subcommand("events", "An aggregate's live events (JSON lines) with from <= sequenceNumber <= to");
    add_url(*sub, *c);
    sub->add_option("aggregate", o->aggregate, "aggregate id")->required();
    sub->add_option("--from", o->from, "first sequence number");
    sub->add_option("--to", o->to, "last sequence number");
    sub->add_option("--limit", o->limit, "at most this many events (default 10000, max 100000)");
    out.emplace_back(sub, [=]() -> int {
      json::object b{{"aggregateId", o->aggregate}};
      if (o->from) b["fromSequence"] = *o->from;
      if (o->to) b["toSequence"] = *o->to;
      if (o->limit) b["limit"] = *o->limit;
      return print_event_lines(call(*c, "POST", "/v1/replay/events", json::serialize(b)));
    });
  }
  {
    struct opts {
      std::string from, to, filter;
      std::optional<std::int64_t> limit;
    };
    auto o = std::make_shared<opts>();
    auto* sub = replay->add_subcommand("range", "Events with from <= timestamp <= to matching a filter (JSON lines)");
    add_url(*sub, *c);
    sub->add_option("--from", o->from, "RFC 3339")->required();
    sub->add_option("--to", o->to, "RFC 3339")->required();
    sub->add_option("--filter", o->filter, "EventFilter: JSON text or file");
    sub->add_option("--limit", o->limit, "at most this many events (default 10000, max 100000)");
    out.emplace_back(sub, [=]() -> int {
      json::object b{{"from", o->from}, {"to", o->to}};
      if (!o->filter.empty()) {
        auto f = json_arg(o->filter, "--filter");
        if (!f) return report(f.error());
        b["filter"] = std::move(*f);
      }
      if (o->limit) b["limit"] = *o->limit;
      return print_event_lines(call(*c, "POST", "/v1/replay/time-range", json::serialize(b)));
    });
  }
  {
    struct opts {
      std::string aggregate, reducer, initial;
      bool no_snapshot = false;
    };
    auto o = std::make_shared<opts>();
    auto* sub = replay->add_subcommand("state", "replayToState: fold an aggregate through a Lua reducer, from its latest snapshot");
    add_url(*sub, *c);
    sub->add_option("aggregate", o->aggregate, "aggregate id")->required();
    sub->add_option("--reducer", o->reducer, "Lua file (or -) defining reduce(state, event) or handlers")->required();
    sub->add_option("--initial", o->initial, "initial state: JSON text or file");
    sub->add_flag("--no-snapshot", o->no_snapshot, "fold every live event, ignoring snapshots");
    out.emplace_back(sub, [=]() -> int {
      json::object b{{"aggregateId", o->aggregate}, {"reducer", read_input(o->reducer)}, {"useSnapshot", !o->no_snapshot}};
      if (!o->initial.empty()) {
        auto i = json_arg(o->initial, "--initial");
        if (!i) return report(i.error());
        b["initialState"] = std::move(*i);
      }
      return print_reply(call(*c, "POST", "/v1/replay/state", json::serialize(b)));
    });
  }
  {
    struct opts {
      std::string projector, from, to, filter;
    };
    auto o = std::make_shared<opts>();
    auto* sub = replay->add_subcommand("project", "createProjection: fold the matching events through a Lua projector");
    add_url(*sub, *c);
    sub->add_option("--projector", o->projector, "Lua file (or -) defining handlers or reduce")->required();
    sub->add_option("--from", o->from, "RFC 3339");
    sub->add_option("--to", o->to, "RFC 3339");
    sub->add_option("--filter", o->filter, "EventFilter: JSON text or file");
    out.emplace_back(sub, [=]() -> int {
      json::object b{{"projector", read_input(o->projector)}};
      if (!o->from.empty()) b["from"] = o->from;
      if (!o->to.empty()) b["to"] = o->to;
      if (!o->filter.empty()) {
        auto f = json_arg(o->filter, "--filter");
        if (!f) return report(f.error());
        b["filter"] = std::move(*f);
      }
      return print_reply(call(*c, "POST", "/v1/replay/projection", json::serialize(b)));
    });
  }

  auto* compact = app.add_subcommand("compact", "Compaction: an aggregate, a time window; the archive");
  compact->require_subcommand(1);
  for (const char* what : {"aggregate", "window"}) {
    struct opts {
      std::string aggregate, strategy, reducer, from, to;
    };
    auto o = std::make_shared<opts>();
    const std::string w = what;
    auto* sub = compact->add_subcommand(
        w, w == "aggregate" ? "Compact one aggregate; prints the CompactionResult"
                            : "Compact the events in [from, to] of every aggregate; prints the CompactionResult");
    add_url(*sub, *c);
    if (w == "aggregate") sub->add_option("aggregate", o->aggregate, "aggregate id")->required();
    else {
      sub->add_option("--from", o->from, "RFC 3339")->required();
      sub->add_option("--to", o->to, "RFC 3339")->required();
    }
    sub->add_option("--strategy", o->strategy, "CompactionStrategy {type, config}: JSON text or file")->required();
    sub->add_option("--reducer", o->reducer, "Lua file (or -): required by the snapshot strategy");
    out.emplace_back(sub, [=]() -> int {
      auto st = json_arg(o->strategy, "--strategy");
      if (!st) return report(st.error());
      json::object b{{"strategy", std::move(*st)}};
      if (!o->reducer.empty()) b["reducer"] = read_input(o->reducer);
      if (w == "aggregate")
        return print_reply(call(*c, "POST", "/v1/compaction/aggregates/" + url_encode(o->aggregate), json::serialize(b)));
      b["from"] = o->from;
      b["to"] = o->to;
      return print_reply(call(*c, "POST", "/v1/compaction/time-window", json::serialize(b)));
    });
  }
  {
    struct opts {
      std::string aggregate, compaction;
    };
    auto o = std::make_shared<opts>();
    auto* sub = compact->add_subcommand("archive", "List an aggregate's archived events (JSON lines, all pages)");
    add_url(*sub, *c);
    sub->add_option("aggregate", o->aggregate, "aggregate id")->required();
    sub->add_option("--compaction", o->compaction, "only this compaction id");
    out.emplace_back(sub, [=]() -> int {
      std::string base = "/v1/compaction/archive/" + url_encode(o->aggregate) + "?limit=1000";
      if (!o->compaction.empty()) base += "&compactionId=" + url_encode(o->compaction);
      std::string after;
      while (true) {
        auto r = call(*c, "GET", base + (after.empty() ? "" : "&after=" + after));
        if (!r) return report(r.error());
        if (r->status >= 300) return report(*r);
        auto page = json::parse(r->body);
        print_events(page);
        const auto* next = page.as_object().if_contains("after");
        if (!next || !next->is_int64()) return 0;
        after = std::to_string(next->get_int64());
      }
    });
  }
  {
    struct opts {
      std::string aggregate, compaction;
    };
    auto o = std::make_shared<opts>();
    auto* sub = compact->add_subcommand("restore", "Put an aggregate's archived events back in the live log");
    add_url(*sub, *c);
    sub->add_option("aggregate", o->aggregate, "aggregate id")->required();
    sub->add_option("--compaction", o->compaction, "only this compaction id");
    out.emplace_back(sub, [=]() -> int {
      json::object b;
      if (!o->compaction.empty()) b["compactionId"] = o->compaction;
      return print_reply(call(*c, "POST", "/v1/compaction/archive/" + url_encode(o->aggregate) + "/restore", json::serialize(b)));
    });
  }

  auto* projections = app.add_subcommand("projections", "Named projections on the server: list, register, state, rebuild");
  projections->require_subcommand(1);
  {
    auto* sub = projections->add_subcommand("list", "The projections with their position and lag");
    add_url(*sub, *c);
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "GET", "/v1/projections")); });
  }
  {
    auto file = std::make_shared<std::string>();
    auto* sub = projections->add_subcommand("register", "Register a projection from JSON {name, source, filter?} (file or -)");
    add_url(*sub, *c);
    sub->add_option("file", *file, "JSON registration")->required();
    out.emplace_back(sub, [=]() -> int { return print_reply(call(*c, "POST", "/v1/projections", read_input(*file))); });
  }
  for (const char* verb : {"get", "state", "rebuild", "remove"}) {
    auto name = std::make_shared<std::string>();
    const std::string v = verb;
    auto* sub = projections->add_subcommand(v, v == "get"       ? "One projection: definition, position, lag"
                                               : v == "state"   ? "A projection's current state"
                                               : v == "rebuild" ? "Rebuild a projection from the start of the log"
                                                                : "Unregister a projection and drop its state");
    add_url(*sub, *c);
    sub->add_option("name", *name, "projection name")->required();
    out.emplace_back(sub, [=]() -> int {
      const std::string path = "/v1/projections/" + url_encode(*name);
      if (v == "get") return print_reply(call(*c, "GET", path));
      if (v == "state") return print_reply(call(*c, "GET", path + "/state"));
      if (v == "rebuild") return print_reply(call(*c, "POST", path + "/rebuild"));
      return print_reply(call(*c, "DELETE", path));
    });
  }
}

}  // namespace pliers::cli
