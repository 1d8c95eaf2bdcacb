#include "store/event_store.hpp"

#include <future>

#include "core/event_codec.hpp"
#include "core/validation.hpp"
#include "store/memory/memory_store.hpp"
#include "store/postgres/postgres_store.hpp"
#include "store/sqlite/sqlite_store.hpp"

namespace pliers {

void event_store::append_async(append_request request, append_callback done) {
  if (auto ok = validate_append(request); !ok) {
    done(std::move(ok).error());
    return;
  }
  std::vector<append_request> one;
  one.push_back(std::move(request));
  submit_group(std::move(one), [done = std::move(done)](result<std::vector<append_result>> r) {
    if (!r) done(std::move(r).error());
    else done(std::move(r->front()));
  });
}

void event_store::append_group_async(std::vector<append_request> requests, group_callback done) {
  if (requests.empty()) {
    done(error::invalid("appends", "must contain at least one append"));
    return;
  }
  std::size_t events = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (auto ok = validate_append(requests[i]); !ok) {
      error e = std::move(ok).error();
      e.field = "appends[" + std::to_string(i) + "]" + (e.field.empty() ? "" : "." + e.field);
      done(std::move(e));
      return;
    }
    events += requests[i].events.size();
  }
  if (events > max_events_per_append)
    return done(error::invalid("appends", "more than " + std::to_string(max_events_per_append) + " events in one group"));
  submit_group(std::move(requests), std::move(done));
}

result<std::vector<append_result>> event_store::append_group(std::vector<append_request> requests) {
  std::promise<result<std::vector<append_result>>> promise;
  auto future = promise.get_future();
  append_group_async(std::move(requests),
                     [&promise](result<std::vector<append_result>> r) { promise.set_value(std::move(r)); });
  return future.get();
}

result<append_result> event_store::append(append_request request) {
  std::promise<result<append_result>> promise;
  auto future = promise.get_future();
  append_async(std::move(request), [&promise](result<append_result> r) { promise.set_value(std::move(r)); });
  return future.get();
}

void event_store::set_commit_observer(commit_observer observer) {
  std::lock_guard lock(observer_mutex_);
  observer_ = observer ? std::make_shared<commit_observer>(std::move(observer)) : nullptr;
}

result<compaction_outcome> event_store::apply_compaction(const compaction_change& change) {
  auto r = do_apply_compaction(change);
  if (r) rewrites_.fetch_add(1);
  return r;
}

result<std::int64_t> event_store::restore_archived(std::string_view aggregate_id, std::optional<std::string> compaction_id) {
  auto r = do_restore_archived(aggregate_id, std::move(compaction_id));
  if (r) rewrites_.fetch_add(1);
  return r;
}

bool event_store::observed() {
  std::lock_guard lock(observer_mutex_);
  return observer_ != nullptr;
}

void event_store::notify_committed(std::vector<event> committed) {
  std::shared_ptr<commit_observer> o;
  {
    std::lock_guard lock(observer_mutex_);
    o = observer_;
  }
  if (o) (*o)(std::move(committed));
}

result<void> event_store::read_aggregate_json(std::string_view aggregate_id, std::int64_t from_version,
                                             std::optional<std::int64_t> to_version, std::size_t limit,
                                             event_json_page& page) {
  auto events = read_aggregate(aggregate_id, from_version, to_version, limit);
  if (!events) return std::move(events).error();
  for (const auto& e : *events) add_to_page(page, e);
  return {};
}

result<query_json_result> event_store::query_json(const event_query& q, const pagination& page) {
  auto r = query(q, page);
  if (!r) return std::move(r).error();
  query_json_result out;
  for (const auto& e : r->events) add_to_page(out.events, e);
  out.total_count = r->total_count;
  out.has_more = r->has_more;
  out.cursor = std::move(r->cursor);
  return out;
}

result<std::vector<event>> event_store::read_by_type(std::string_view type, std::optional<timestamp> from,
                                                     std::optional<timestamp> to, std::size_t limit) {
  auto pattern = type_pattern::parse(type, "eventType");
  if (!pattern) return std::move(pattern).error();
  event_query q;
  q.event_types.push_back(std::move(*pattern));
  q.from = from;
  q.to = to;
  pagination page;
  page.limit = limit;
  auto r = query(q, page);
  if (!r) return std::move(r).error();
  return std::move(r->events);
}

result<std::unique_ptr<event_store>> open_store(std::string_view url, const store_options& options) {
  if (url == "memory:" || url == "memory") return std::unique_ptr<event_store>(std::make_unique<memory_store>(options));
  for (std::string_view prefix : {"sqlite://", "sqlite:"}) {
    if (url.starts_with(prefix)) {
      auto path = url.substr(prefix.size());
      if (path.empty()) return error::invalid("store", "sqlite store URL needs a file path: sqlite:PATH");
      auto s = sqlite_store::open(std::string(path), options);
      if (!s) return std::move(s).error();
      return std::unique_ptr<event_store>(std::move(*s));
    }
  }
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
    auto s = postgres_store::open(std::string(url), options);
    if (!s) return std::move(s).error();
    return std::unique_ptr<event_store>(std::move(*s));
  }
  return error::invalid("store", "unknown store URL '" + std::string(url) +
                                     "': use memory:, sqlite:PATH or postgres://...");
}

}  // namespace pliers
