// /v1/aggregates/{aggregateId}[/events|/snapshot]: append, read one aggregate (streamed in
// pages, never buffered whole), metadata, snapshots.
#include <charconv>

#include "core/validation.hpp"
#include "server/http.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

constexpr std::size_t read_page = 1000;

result<std::optional<std::int64_t>> int_param(const request_context& ctx, std::string_view name) {
  auto it = ctx.url.params().find(name);
  if (it == ctx.url.params().end()) return std::optional<std::int64_t>();
  std::string v = (*it).value;
  std::int64_t n = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || ptr != v.data() + v.size() || n < 0)
    return error::invalid(std::string(name), "must be an integer >= 0");
  return std::optional<std::int64_t>(n);
}

result<void> only_params(const request_context& ctx, std::initializer_list<std::string_view> allowed) {
  for (auto p : ctx.url.params()) {
    if (std::find(allowed.begin(), allowed.end(), p.key) == allowed.end())
      return error::invalid(std::string(p.key).substr(0, 100), "unknown query parameter");
  }
  return {};
}

asio::awaitable<reply> append(request_context& ctx, const std::string& aggregate_id) {
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  auto req = append_request_from_json(std::move(*body), aggregate_id);
  if (!req) co_return problem_reply(req.error());
  for (const auto& e : req->events)
    if (auto ok = ctx.state.access.authorize(ctx.who, access_action::append, {aggregate_id, e.type}); !ok)
      co_return problem_reply(ok.error());
  auto r = co_await async_append(ctx.state.store, std::move(*req));
  if (!r) co_return problem_reply(r.error());
  std::string out;
  write_append_result_json(out, *r);
  co_return json_text_reply(r->idempotent_replay ? http::status::ok : http::status::created, std::move(out));
}

asio::awaitable<reply> read_events(request_context& ctx, const std::string& aggregate_id) {
  if (auto ok = only_params(ctx, {"fromVersion", "toVersion"}); !ok) co_return problem_reply(ok.error());
  auto from = int_param(ctx, "fromVersion");
  if (!from) co_return problem_reply(from.error());
  auto to = int_param(ctx, "toVersion");
  if (!to) co_return problem_reply(to.error());
  if (*from && *to && **to < **from) co_return problem_reply(error::invalid("toVersion", "must be >= fromVersion"));
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {aggregate_id, {}}); !ok)
    co_return problem_reply(ok.error());

  // Streamed: pages of read_page events are fetched on the worker pool and written as
  // chunks of one JSON document {"events":[...]}.
  struct cursor_state {
    std::int64_t next;
    std::optional<std::int64_t> to;
    bool started = false, done = false;
  };
  auto st = std::make_shared<cursor_state>(cursor_state{std::max<std::int64_t>(from->value_or(1), 1), *to});
  reply r;
  r.head.result(http::status::ok);
  r.head.set(http::field::content_type, "application/json");
  auto& state = ctx.state;
  std::string id = aggregate_id;
  r.next_chunk = [st, &state, id]() -> asio::awaitable<result<std::optional<std::string>>> {
    if (st->done) co_return std::optional<std::string>();
    // The page is written after this chunk's framing: the document's start, or the comma
    // after the previous page's last event.
    event_json_page page;
    page.json = st->started ? "," : "{\"events\":[";
    st->started = true;
    auto read = co_await run_blocking(state.workers, [&] {
      return state.store.read_aggregate_json(id, st->next, st->to, read_page, page);
    });
    if (!read) co_return std::move(read).error();
    if (page.count == 0 && page.json == ",") page.json.clear();
    if (page.count < read_page) {
      page.json += "]}";
      st->done = true;
    } else {
      st->next = page.last_sequence.value + 1;
    }
    co_return std::optional<std::string>(std::move(page.json));
  };
  co_return r;
}

asio::awaitable<reply> snapshot_resource(request_context& ctx, const std::string& aggregate_id) {
  auto& store = ctx.state.store;
  if (ctx.req.method() == http::verb::get) {
    if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {aggregate_id, {}}); !ok)
      co_return problem_reply(ok.error());
    auto s = co_await run_blocking(ctx.state.workers, [&] { return store.get_latest_snapshot(aggregate_id); });
    if (!s) co_return problem_reply(s.error());
    if (!*s) co_return problem_reply(error::make(errc::not_found, "aggregate '" + aggregate_id + "' has no snapshot"));
    co_return json_reply(http::status::ok, to_json(**s));
  }
  if (ctx.req.method() != http::verb::put) co_return method_not_allowed("GET, PUT");
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::append, {aggregate_id, {}}); !ok)
    co_return problem_reply(ok.error());
  auto body = parse_body(ctx);
  if (!body) co_return problem_reply(body.error());
  const auto* o = body->if_object();
  if (!o) co_return problem_reply(error::invalid("body", "must be an object {sequenceNumber, data}"));
  for (const auto& kv : *o)
    if (kv.key() != "sequenceNumber" && kv.key() != "data")
      co_return problem_reply(error::invalid(std::string(kv.key()).substr(0, 100), "unknown member"));
  const auto* seq = o->if_contains("sequenceNumber");
  if (!seq || !(seq->is_int64() || (seq->is_uint64() && seq->get_uint64() <= static_cast<std::uint64_t>(INT64_MAX))))
    co_return problem_reply(error::invalid("sequenceNumber", "required integer"));
  const auto* data = o->if_contains("data");
  if (!data || !data->is_object()) co_return problem_reply(error::invalid("data", "required object"));
  const std::int64_t n = seq->is_int64() ? seq->get_int64() : static_cast<std::int64_t>(seq->get_uint64());
  json::object state = data->get_object();
  auto r = co_await run_blocking(ctx.state.workers, [&] { return store.create_snapshot(aggregate_id, n, std::move(state)); });
  if (!r) co_return problem_reply(r.error());
  auto s = co_await run_blocking(ctx.state.workers, [&] { return store.get_latest_snapshot(aggregate_id); });
  if (!s || !*s) co_return json_reply(http::status::created, json::object{{"aggregateId", aggregate_id}, {"sequenceNumber", n}});
  co_return json_reply(http::status::created, to_json(**s));
}

}  // namespace

asio::awaitable<reply> handle_aggregates(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 aggregates {id} [events|snapshot]
  if (s.size() < 3 || s.size() > 4) co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
  const std::string& id = s[2];
  if (auto ok = validate_aggregate_id(id); !ok) co_return problem_reply(ok.error());
  if (s.size() == 3) {
    if (ctx.req.method() != http::verb::get) co_return method_not_allowed("GET");
    if (auto ok = ctx.state.access.authorize(ctx.who, access_action::read, {id, {}}); !ok) co_return problem_reply(ok.error());
    auto m = co_await run_blocking(ctx.state.workers, [&] { return ctx.state.store.get_aggregate_metadata(id); });
    if (!m) co_return problem_reply(m.error());
    co_return json_reply(http::status::ok, to_json(*m));
  }
  if (s[3] == "events") {
    if (ctx.req.method() == http::verb::post) co_return co_await append(ctx, id);
    if (ctx.req.method() == http::verb::get) co_return co_await read_events(ctx, id);
    co_return method_not_allowed("GET, POST");
  }
  if (s[3] == "snapshot") co_return co_await snapshot_resource(ctx, id);
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
