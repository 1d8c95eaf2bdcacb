// /v1/compaction (spec EventCompaction, docs/replay.md): compact an aggregate or a time
// window with a strategy (and an optional Lua reducer, required by `snapshot`), list the
// archive of an aggregate, restore it. Admin only; store work and Lua on the worker pool.
#include "ops/compaction.hpp"
#include "ops/maintenance.hpp"
#include "server/handlers/ops_json.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

struct compaction_request {
  compaction_strategy strategy;
  std::unique_ptr<lua_projector> reducer;
};

result<compaction_request> parse_request(const json::object& body) {
  compaction_request out;
  const auto* s = body.if_contains("strategy");
  if (!s || s->is_null()) return error::invalid("strategy", "required: {\"type\", \"config\"}");
  auto st = compaction_strategy::from_json(*s, "strategy");
  if (!st) return std::move(st).error();
  out.strategy = std::move(*st);
  if (const auto* r = body.if_contains("reducer"); r && !r->is_null()) {
    auto p = ops_json::required_projector(body, "reducer");
    if (!p) return std::move(p).error();
    out.reducer = std::move(*p);
  } else if (out.strategy.type == "snapshot") {
    return error::invalid("reducer", "required by the snapshot strategy: Lua source defining `handlers` or `reduce`");
  }
  return out;
}

error name_lua(error e) {
  if (lua_failure_of(e) && e.field.empty()) e.field = "reducer";
  return e;
}

json::object archived_json(const archived_event& a) {
  auto o = event_to_json(a.original);
  o["compactionId"] = a.compaction_id;
  o["archivedAt"] = format_rfc3339(a.archived_at);
  return o;
}

// /v1/compaction/schedules[/{id}]: scheduleCompaction (ops/maintenance.hpp).
asio::awaitable<reply> handle_schedules(request_context& ctx) {
  const auto& s = ctx.segments;
  auto* scheduler = ctx.state.compaction_schedules;
  if (!scheduler) co_return problem_reply(error::make(errc::unavailable, "scheduled compaction is not running on this node"));
  const auto method = ctx.req.method();
  if (s.size() == 3) {
    if (method == http::verb::get) {
      auto list = co_await run_blocking(ctx.state.workers, [&] { return scheduler->list(); });
      if (!list) co_return problem_reply(list.error());
      json::array out;
      for (const auto& st : *list) out.push_back(st.to_json());
      co_return json_reply(http::status::ok, json::object{{"schedules", std::move(out)}});
    }
    if (method != http::verb::post) co_return method_not_allowed("GET, POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    auto r = co_await run_blocking(ctx.state.workers, [&]() -> result<json::object> {
      auto spec = compaction_schedule::from_json(*body);
      if (!spec) return std::move(spec).error();
      if (auto ok = scheduler->schedule(*spec); !ok) return std::move(ok).error();
      return spec->to_json();
    });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::created, *r);
  }
  if (s.size() == 4) {
    if (method != http::verb::delete_) co_return method_not_allowed("DELETE");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return scheduler->cancel(s[3]); });
    if (!r) co_return problem_reply(r.error());
    reply out;
    out.head.result(http::status::no_content);
    co_return out;
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace

asio::awaitable<reply> handle_compaction(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 compaction (aggregates/{id} | time-window | archive/{id}[/restore])
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {"*", {}}); !ok) co_return problem_reply(ok.error());
  const auto method = ctx.req.method();
  auto& store = ctx.state.store;
  event_compaction::options opts;
  opts.actor = ctx.who.id;

  if ((s.size() == 4 && s[2] == "aggregates") || (s.size() == 3 && s[2] == "time-window")) {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    if (!body->is_object()) co_return problem_reply(error::invalid("body", "must be a JSON object"));
    const auto& o = body->get_object();
    auto r = co_await run_blocking(ctx.state.workers, [&]() -> result<compaction_result> {
      auto req = parse_request(o);
      if (!req) return std::move(req).error();
      event_compaction c(store, opts);
      if (s[2] == "aggregates") {
        auto out = c.compact_aggregate(s[3], req->strategy, req->reducer.get());
        if (!out) return name_lua(std::move(out).error());
        return out;
      }
      auto from = ops_json::required_time(o, "from");
      if (!from) return std::move(from).error();
      auto to = ops_json::required_time(o, "to");
      if (!to) return std::move(to).error();
      if (*to < *from) return error::invalid("to", "must not be before from");
      auto max = ops_json::optional_int(o, "maxAggregates", 1, 100000);
      if (!max) return std::move(max).error();
      auto out = c.compact_time_window(*from, *to, req->strategy, req->reducer.get(),
                                       static_cast<std::size_t>(max->value_or(10000)));
      if (!out) return name_lua(std::move(out).error());
      return out;
    });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, r->to_json());
  }

  if (s.size() == 4 && s[2] == "archive") {
    if (method != http::verb::get) co_return method_not_allowed("GET");
    std::optional<std::string> compaction_id;
    log_position after{};
    std::size_t limit = 1000;
    for (const auto& p : ctx.url.params()) {
      if (p.key == "compactionId") {
        compaction_id = std::string(p.value);
      } else if (p.key == "after") {
        char* end = nullptr;
        const long long v = std::strtoll(std::string(p.value).c_str(), &end, 10);
        if (p.value.empty() || *end || v < 0) co_return problem_reply(error::invalid("after", "must be a position (integer >= 0)"));
        after = log_position(v);
      } else if (p.key == "limit") {
        auto l = parse_limit(p.value, "limit");
        if (!l) co_return problem_reply(l.error());
        limit = *l;
      } else {
        co_return problem_reply(error::invalid(std::string(p.key).substr(0, 100), "unknown query parameter"));
      }
    }
    auto r = co_await run_blocking(ctx.state.workers, [&] { return store.list_archived(s[3], compaction_id, after, limit + 1); });
    if (!r) co_return problem_reply(r.error());
    const bool more = r->size() > limit;
    if (more) r->resize(limit);
    json::array events;
    for (const auto& a : *r) events.push_back(archived_json(a));
    json::object out{{"aggregateId", s[3]}, {"events", std::move(events)}, {"hasMore", more}};
    if (more) out["after"] = r->back().original.position.value;
    co_return json_reply(http::status::ok, out);
  }

  if (s.size() == 5 && s[2] == "archive" && s[4] == "restore") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    std::optional<std::string> compaction_id;
    if (!ctx.req.body().empty()) {
      auto body = parse_body(ctx);
      if (!body) co_return problem_reply(body.error());
      if (!body->is_object()) co_return problem_reply(error::invalid("body", "must be a JSON object"));
      if (const auto* c = body->get_object().if_contains("compactionId"); c && !c->is_null()) {
        if (!c->is_string()) co_return problem_reply(error::invalid("compactionId", "must be a string"));
        compaction_id = std::string(c->get_string());
      }
    }
    auto r = co_await run_blocking(ctx.state.workers, [&] { return store.restore_archived(s[3], compaction_id); });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, json::object{{"aggregateId", s[3]}, {"restored", *r}});
  }
  if (s.size() >= 3 && s[2] == "schedules") co_return co_await handle_schedules(ctx);

  if (s.size() == 3 && s[2] == "batch") {
    // batchCompact: {criteria: {aggregateIds?, aggregateTypes?, minEvents?}, strategy, reducer?, batchSize?}
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    if (!body->is_object()) co_return problem_reply(error::invalid("body", "must be a JSON object"));
    const auto& o = body->get_object();
    auto r = co_await run_blocking(ctx.state.workers, [&]() -> result<json::object> {
      // The schedule parser checks criteria, strategy and reducer the same way.
      json::object as_schedule{{"id", "batch"}, {"intervalMs", 1000}};
      for (const char* k : {"criteria", "strategy", "reducer"})
        if (const auto* v = o.if_contains(k)) as_schedule[k] = *v;
      auto spec = compaction_schedule::from_json(as_schedule);
      if (!spec) return std::move(spec).error();
      auto size = ops_json::optional_int(o, "batchSize", 1, 10000);
      if (!size) return std::move(size).error();
      std::function<std::unique_ptr<state_folder>()> make_folder;
      if (!spec->reducer_source.empty())
        make_folder = [src = spec->reducer_source]() -> std::unique_ptr<state_folder> {
          auto p = lua_projector::create(src);
          return p ? std::unique_ptr<state_folder>(std::move(*p)) : nullptr;
        };
      batch_processor batch(store);
      auto out = batch.batch_compact(spec->criteria, spec->strategy, make_folder,
                                     static_cast<std::size_t>(size->value_or(100)), opts);
      if (!out) return std::move(out).error();
      auto j = out->summary.to_json();
      j["compaction"] = out->compaction.to_json();
      return j;
    });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, *r);
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
