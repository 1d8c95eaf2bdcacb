// /v1/dead-letters: the dead-letter queue for operators (spec DeadLetterQueue): list with
// filters and pagination, get, retry one, retry many, mark permanent failure.
#include <charconv>

#include "core/time_format.hpp"
#include "process/retry_engine.hpp"
#include "server/http.hpp"
#include "server/problem.hpp"
#include "store/dead_letter_codec.hpp"

namespace pliers::http_api {

namespace json = boost::json;

namespace {

json::object to_json(const retry_result& r) {
  json::object o{{"id", r.id}, {"success", r.success}, {"status", r.status}, {"attempts", r.attempts}};
  if (r.error) o["error"] = pliers::to_json(*r.error);
  return o;
}

asio::awaitable<reply> list(request_context& ctx, retry_engine& dlq) {
  dead_letter_filter filter;
  std::size_t limit = 100;
  std::optional<std::int64_t> after;
  for (auto p : ctx.url.params()) {
    const std::string key = p.key, value = p.value;
    if (key == "eventType") filter.event_type = value;
    else if (key == "consumer") filter.consumer = value;
    else if (key == "status") {
      if (!is_dead_letter_status(value))
        co_return problem_reply(error::invalid("status", "must be pending_retry, retrying, permanent_failure or resolved"));
      filter.status = value;
    } else if (key == "from" || key == "to") {
      auto t = parse_rfc3339(value);
      if (!t) co_return problem_reply(error::invalid(key, "must be an RFC 3339 timestamp"));
      (key == "from" ? filter.from : filter.to) = *t;
    } else if (key == "limit") {
      auto n = parse_limit(value, "limit");
      if (!n) co_return problem_reply(n.error());
      limit = *n;
    } else if (key == "cursor") {
      std::int64_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc{} || ptr != value.data() + value.size() || n < 0)
        co_return problem_reply(error::invalid("cursor", "not a cursor from an earlier page"));
      after = n;
    } else {
      co_return problem_reply(error::invalid(key.substr(0, 100), "unknown query parameter"));
    }
  }
  auto page = co_await run_blocking(ctx.state.workers, [&] { return dlq.list(filter, limit, after); });
  if (!page) co_return problem_reply(page.error());
  json::array entries;
  for (const auto& d : page->entries) entries.push_back(pliers::to_json(d));
  json::object out{{"deadLetters", std::move(entries)}, {"totalCount", page->total_count}, {"hasMore", page->has_more}};
  if (page->next_after) out["cursor"] = std::to_string(*page->next_after);
  co_return json_reply(http::status::ok, out);
}

}  // namespace

asio::awaitable<reply> handle_dead_letters(request_context& ctx) {
  const auto& s = ctx.segments;  // v1 dead-letters [retry | id [retry | permanent-failure]]
  if (auto ok = ctx.state.access.authorize(ctx.who, access_action::admin, {}); !ok) co_return problem_reply(ok.error());
  auto* dlq = ctx.state.dead_letters;
  if (!dlq) co_return problem_reply(error::make(errc::unavailable, "the retry engine does not run on this node"));
  const auto method = ctx.req.method();
  if (s.size() == 2) {
    if (method != http::verb::get) co_return method_not_allowed("GET");
    co_return co_await list(ctx, *dlq);
  }
  if (s.size() == 3 && s[2] == "retry") {
    // retryBatch: {"ids": [...]} -> {"results": [RetryResult | problem]}
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    const auto* ids = body->is_object() ? body->as_object().if_contains("ids") : nullptr;
    if (!ids) co_return problem_reply(error::invalid("ids", "required: the dead-letter ids to retry"));
    auto list = string_list(*ids, "ids");
    if (!list) co_return problem_reply(list.error());
    auto results = co_await run_blocking(ctx.state.workers, [&] { return dlq->retry_batch(*list); });
    json::array out;
    for (std::size_t i = 0; i < results.size(); ++i) {
      if (results[i]) out.push_back(to_json(*results[i]));
      else {
        auto problem = problem_json(results[i].error());
        problem["id"] = (*list)[i];
        out.push_back(std::move(problem));
      }
    }
    co_return json_reply(http::status::ok, json::object{{"results", std::move(out)}});
  }
  const std::string& id = s[2];
  if (s.size() == 3) {
    if (method != http::verb::get) co_return method_not_allowed("GET");
    auto d = co_await run_blocking(ctx.state.workers, [&] { return dlq->get(id); });
    if (!d) co_return problem_reply(d.error());
    co_return json_reply(http::status::ok, pliers::to_json(*d));
  }
  if (s.size() == 4 && s[3] == "retry") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto r = co_await run_blocking(ctx.state.workers, [&] { return dlq->retry(id); });
    if (!r) co_return problem_reply(r.error());
    co_return json_reply(http::status::ok, to_json(*r));
  }
  if (s.size() == 4 && s[3] == "permanent-failure") {
    if (method != http::verb::post) co_return method_not_allowed("POST");
    auto body = parse_body(ctx);
    if (!body) co_return problem_reply(body.error());
    const auto* reason = body->is_object() ? body->as_object().if_contains("reason") : nullptr;
    if (!reason || !reason->is_string() || reason->get_string().empty() || reason->get_string().size() > 1000)
      co_return problem_reply(error::invalid("reason", "required: a string of 1 to 1000 characters"));
    std::string why(reason->get_string());
    auto d = co_await run_blocking(ctx.state.workers, [&] { return dlq->mark_permanent(id, why); });
    if (!d) co_return problem_reply(d.error());
    co_return json_reply(http::status::ok, pliers::to_json(*d));
  }
  co_return problem_reply(error::make(errc::not_found, "no resource at this path"));
}

}  // namespace pliers::http_api
