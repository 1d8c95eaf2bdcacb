#include "ops/projections.hpp"

#include <boost/json.hpp>

#include "core/clock.hpp"

namespace pliers {

namespace json = boost::json;
using steady = std::chrono::steady_clock;

struct projection_manager::entry {
  // Definition and published progress. GUARDED_BY(mutex_)
  projection_status pub;
  bool removed = false;
  // Runner thread only.
  std::unique_ptr<lua_projector> projector;
  std::optional<event_filter> filter;
  std::int64_t running_generation = -1;
  std::int64_t position = 0, processed = 0, since_checkpoint = 0;
  steady::time_point last_checkpoint{};
  bool failed = false;
  bool owned = false;
  steady::time_point lease_checked{}, followed{};
};

json::object projection_status::to_json(bool with_state) const {
  json::object o{{"name", name},
                 {"filter", filter},
                 {"generation", generation},
                 {"status", status},
                 {"position", position},
                 {"head", head},
                 {"lag", std::max<std::int64_t>(0, head - position)},
                 {"eventsProcessed", events_processed},
                 {"checkpointPosition", checkpoint_position},
                 {"owner", owner}};
  o["error"] = error ? json::value(*error) : json::value(nullptr);
  if (with_state) o["state"] = state;
  else o["source"] = source;
  return o;
}

projection_manager::projection_manager(event_store& store, options o)
    : store_(store), opts_(std::move(o)), log_(store, "pliers-projection") {}

projection_manager::~projection_manager() { stop(); }

result<void> projection_manager::start() {
  if (auto r = poll_registry(); !r) return r;
  runner_ = std::thread([this] { run(); });
  return {};
}

void projection_manager::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (!runner_.joinable()) return;
  runner_.join();
  // Hand the leases over at once rather than after they expire.
  std::vector<std::shared_ptr<entry>> owned;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, p] : entries_)
      if (p->owned) owned.push_back(p);
  }
  for (const auto& p : owned) (void)store_.group_release("projection:" + p->pub.name, 0, opts_.member);
}

void projection_manager::wake() {
  {
    std::lock_guard lock(mutex_);
    woken_ = true;
  }
  wake_.notify_all();
}

void projection_manager::apply_lifecycle(const event& e) {
  const auto* n = e.payload.if_contains("name");
  const std::string name = n && n->is_string() ? std::string(n->get_string())
                                               : e.aggregate_id.substr(log_.aggregate_type().size() + 1);
  if (!log_.should_apply(name, e)) return;
  auto it = entries_.find(name);
  if (e.type == "projection.registered") {
    auto p = std::make_shared<entry>();
    p->pub.name = name;
    if (const auto* s = e.payload.if_contains("source"); s && s->is_string()) p->pub.source = std::string(s->get_string());
    if (const auto* f = e.payload.if_contains("filter")) p->pub.filter = *f;
    p->pub.generation = e.sequence.value;
    p->pub.status = "running";
    p->pub.head = store_.head().value;
    if (it != entries_.end()) it->second->removed = true;
    entries_[name] = std::move(p);
  } else if (it != entries_.end() && e.type == "projection.rebuilt") {
    it->second->pub.generation = e.sequence.value;
    it->second->pub.status = "running";
    it->second->pub.error.reset();
  } else if (it != entries_.end() && e.type == "projection.removed") {
    it->second->removed = true;
    entries_.erase(it);
  }
}

result<void> projection_manager::poll_registry() {
  // Only the lifecycle events after the last poll, found through the type index. Every
  // position up to the head read first is visible to the query, so the next poll starts
  // there even when nothing was found (not at the last lifecycle event, which would make
  // every poll scan all that came after it).
  event_query q;
  for (const char* t : {"projection.registered", "projection.rebuilt", "projection.removed"})
    q.event_types.push_back(*type_pattern::parse(t));
  q.aggregate_types.push_back(log_.aggregate_type());
  const log_position head = store_.head();
  std::unique_lock lock(mutex_);
  pagination page{max_page_limit, registry_after_, /*count_total=*/false};
  lock.unlock();
  while (true) {
    auto r = store_.query(q, page);
    if (!r) return std::move(r).error();
    lock.lock();
    std::lock_guard log_lock(log_.mutex());
    for (const auto& e : r->events) apply_lifecycle(e);
    if (!r->events.empty()) registry_after_ = std::max(registry_after_, r->events.back().position);
    if (!r->has_more) registry_after_ = std::max(registry_after_, head);
    lock.unlock();
    if (!r->has_more || r->events.empty()) break;
    page.after = r->events.back().position;
  }
  return {};
}

result<projection_status> projection_manager::register_projection(const json::value& body) {
  const auto* o = body.if_object();
  if (!o) return error::invalid("body", "must be an object {\"name\", \"source\", \"filter\"?}");
  for (const auto& kv : *o)
    if (kv.key() != "name" && kv.key() != "source" && kv.key() != "filter")
      return error::invalid(std::string(kv.key()).substr(0, 100), "unknown member of a projection registration");
  const auto* n = o->if_contains("name");
  if (!n || !n->is_string() || n->get_string().empty() || n->get_string().size() > 100)
    return error::invalid("name", "required: a string of 1 to 100 characters");
  const std::string name(n->get_string());
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return error::invalid("name", "may hold only letters, digits, '-', '_' and '.'");
  const auto* s = o->if_contains("source");
  if (!s || !s->is_string()) return error::invalid("source", "required: Lua source defining `handlers` or `reduce`");
  if (s->get_string().size() > opts_.max_source_bytes) return error::invalid("source", "too long");
  auto compiled = lua_projector::create(std::string_view(s->get_string()), opts_.limits);
  if (!compiled) {
    auto e = std::move(compiled).error();
    e.field = "source";
    return e;
  }
  json::value filter;
  if (const auto* f = o->if_contains("filter"); f && !f->is_null()) {
    auto parsed = event_filter::from_json(*f, "filter");
    if (!parsed) return std::move(parsed).error();
    filter = *f;
  }
  std::lock_guard lock(mutex_);
  if (entries_.count(name)) return error::make(errc::conflict, "a projection named '" + name + "' exists");
  if (entries_.size() >= opts_.max_projections)
    return error::invalid("name", "at most " + std::to_string(opts_.max_projections) + " projections");
  std::lock_guard log_lock(log_.mutex());
  json::object payload{{"name", name}, {"source", s->get_string()}, {"filter", filter}};
  auto r = log_.append(name, "projection.registered", payload);
  if (!r) return std::move(r).error();
  auto p = std::make_shared<entry>();
  p->pub.name = name;
  p->pub.source = std::string(s->get_string());
  p->pub.filter = std::move(filter);
  p->pub.generation = r->events.back().sequence.value;
  p->pub.status = "running";
  p->pub.head = r->events.back().position.value;
  entries_[name] = p;
  woken_ = true;
  wake_.notify_all();
  return p->pub;
}

result<projection_status> projection_manager::rebuild(std::string_view name) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return error::make(errc::not_found, "no projection named '" + std::string(name) + "'");
  std::lock_guard log_lock(log_.mutex());
  auto r = log_.append(name, "projection.rebuilt", json::object{{"name", name}});
  if (!r) return std::move(r).error();
  auto& pub = it->second->pub;
  pub.generation = r->events.back().sequence.value;
  pub.status = "running";
  pub.error.reset();
  pub.position = pub.events_processed = pub.checkpoint_position = 0;
  pub.state = nullptr;
  woken_ = true;
  wake_.notify_all();
  return pub;
}

result<void> projection_manager::remove(std::string_view name) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return error::make(errc::not_found, "no projection named '" + std::string(name) + "'");
  std::lock_guard log_lock(log_.mutex());
  auto r = log_.append(name, "projection.removed", json::object{{"name", name}});
  if (!r) return std::move(r).error();
  it->second->removed = true;
  entries_.erase(it);
  return {};
}

std::vector<projection_status> projection_manager::list() const {
  std::lock_guard lock(mutex_);
  std::vector<projection_status> out;
  for (const auto& [name, p] : entries_) out.push_back(p->pub);
  return out;
}

result<projection_status> projection_manager::get(std::string_view name) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return error::make(errc::not_found, "no projection named '" + std::string(name) + "'");
  return it->second->pub;
}

bool projection_manager::wait_for(std::string_view name, std::int64_t position, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    auto it = entries_.find(name);
    return it != entries_.end() && (it->second->pub.position >= position || it->second->pub.status == "failed");
  });
}

bool projection_manager::holds_lease(entry& p) {
  const auto now = steady::now();
  if (p.lease_checked != steady::time_point{} && now - p.lease_checked < opts_.lease / 3) return p.owned;
  const std::string group = "projection:" + p.pub.name;
  const auto wall = default_clock().now();
  bool owned = false;
  if (store_.group_sync(group, opts_.member, 1, log_position(0), wall, opts_.lease)) {
    auto c = store_.group_claim(group, 0, opts_.member, wall, opts_.lease);
    owned = c && *c;
  }
  p.lease_checked = now;
  if (p.owned && !owned) p.running_generation = -1;  // lost: resume from a checkpoint when owned again
  p.owned = owned;
  std::lock_guard lock(mutex_);
  p.pub.owner = owned;
  return owned;
}

void projection_manager::follow_checkpoint(entry& p) {
  const auto now = steady::now();
  if (now - p.followed < std::chrono::seconds(1)) return;
  p.followed = now;
  auto snap = store_.get_latest_snapshot(log_.aggregate_of(p.pub.name));
  const std::int64_t head = store_.head().value;
  std::lock_guard lock(mutex_);
  p.pub.head = head;
  if (!snap || !*snap) return;
  const auto& d = (*snap)->data;
  const auto* g = d.if_contains("generation");
  if (!g || !g->is_int64() || g->get_int64() != p.pub.generation) return;
  if (const auto* x = d.if_contains("position"); x && x->is_int64()) p.pub.position = p.pub.checkpoint_position = x->get_int64();
  if (const auto* x = d.if_contains("eventsProcessed"); x && x->is_int64()) p.pub.events_processed = x->get_int64();
  if (const auto* x = d.if_contains("state")) p.pub.state = *x;
}

void projection_manager::checkpoint(entry& p) {
  auto st = p.projector->state();
  if (!st) return;
  // Still the owner? (A node whose lease expired must not overwrite a newer checkpoint.)
  auto mine = store_.group_checkpoint("projection:" + p.pub.name, 0, opts_.member, log_position(p.position));
  if (!mine || !*mine) {
    p.owned = false;
    p.running_generation = -1;
    p.lease_checked = steady::time_point{};
    return;
  }
  const auto aggregate = log_.aggregate_of(p.pub.name);
  auto meta = store_.get_aggregate_metadata(aggregate);
  if (!meta) return;
  json::object data{{"generation", p.running_generation},
                    {"position", p.position},
                    {"eventsProcessed", p.processed},
                    {"state", *st}};
  if (!store_.create_snapshot(aggregate, meta->version, std::move(data))) return;
  p.since_checkpoint = 0;
  p.last_checkpoint = steady::now();
  std::lock_guard lock(mutex_);
  p.pub.checkpoint_position = p.position;
  p.pub.state = std::move(*st);
}

bool projection_manager::step(entry& p) {
  std::int64_t generation;
  std::string source;
  json::value filter_json;
  if (!holds_lease(p)) {
    follow_checkpoint(p);
    return false;
  }
  {
    std::lock_guard lock(mutex_);
    if (p.removed) return false;
    generation = p.pub.generation;
    if (generation != p.running_generation) {
      source = p.pub.source;
      filter_json = p.pub.filter;
    }
  }
  auto fail = [&](const error& e) {
    p.failed = true;
    std::lock_guard lock(mutex_);
    if (p.pub.generation == generation) {
      p.pub.status = "failed";
      p.pub.error = (e.field.empty() ? "" : e.field + ": ") + e.message;
    }
    changed_.notify_all();
  };
  if (generation != p.running_generation) {
    p.running_generation = generation;
    p.failed = false;
    p.position = p.processed = p.since_checkpoint = 0;
    p.filter.reset();
    auto proj = lua_projector::create(source, opts_.limits);
    if (!proj) return fail(proj.error()), false;
    p.projector = std::move(*proj);
    if (!filter_json.is_null()) {
      auto f = event_filter::from_json(filter_json, "filter");
      if (!f) return fail(f.error()), false;
      p.filter = std::move(*f);
    }
    json::value initial;
    std::int64_t checkpoint_position = 0;
    if (auto snap = store_.get_latest_snapshot(log_.aggregate_of(p.pub.name)); snap && *snap) {
      const auto& d = (*snap)->data;
      const auto* g = d.if_contains("generation");
      if (g && g->is_int64() && g->get_int64() == generation) {
        p.position = d.at("position").as_int64();
        if (const auto* n = d.if_contains("eventsProcessed"); n && n->is_int64()) p.processed = n->get_int64();
        if (const auto* s = d.if_contains("state")) initial = *s;
        checkpoint_position = p.position;
      }
    }
    if (auto s = p.projector->start(initial); !s) return fail(s.error()), false;
    p.last_checkpoint = steady::now();
    std::lock_guard lock(mutex_);
    if (p.pub.generation == generation) {
      p.pub.position = p.position;
      p.pub.events_processed = p.processed;
      p.pub.checkpoint_position = checkpoint_position;
      p.pub.state = initial.is_null() ? json::value(json::object()) : initial;
    }
  }
  if (p.failed) return false;
  auto page = store_.read_all(log_position(p.position), opts_.page_size);
  if (!page) return false;  // transient (the store logs it); retried on the next round
  const std::int64_t head = store_.head().value;
  std::vector<event> matching;
  if (p.filter) {
    for (auto& e : *page)
      if (p.filter->matches(e)) matching.push_back(std::move(e));
  }
  const auto& folded = p.filter ? matching : *page;
  if (!folded.empty()) {
    if (auto a = p.projector->apply(folded); !a) return fail(a.error()), false;
  }
  const bool caught_up = page->size() < opts_.page_size;
  const bool moved = !page->empty();
  if (moved) p.position = page->back().position.value;
  p.processed += static_cast<std::int64_t>(folded.size());
  p.since_checkpoint += static_cast<std::int64_t>(folded.size());
  const bool due = p.since_checkpoint >= opts_.checkpoint_events ||
                   (p.since_checkpoint > 0 && steady::now() - p.last_checkpoint >= opts_.checkpoint_interval);
  bool behind = false;  // filtered-out events moved the position past the checkpoint
  {
    std::lock_guard lock(mutex_);
    behind = p.position > p.pub.checkpoint_position;
  }
  if (due || (caught_up && (p.since_checkpoint > 0 || behind))) checkpoint(p);
  {
    std::lock_guard lock(mutex_);
    if (p.pub.generation == generation) {
      p.pub.position = p.position;
      p.pub.head = std::max(head, p.position);
      p.pub.events_processed = p.processed;
    }
  }
  changed_.notify_all();
  return moved && !caught_up;
}

void projection_manager::run() {
  auto last_registry_poll = steady::now();
  while (true) {
    std::vector<std::shared_ptr<entry>> work;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      for (const auto& [name, p] : entries_) work.push_back(p);
    }
    bool busy = false;
    for (const auto& p : work) {
      {
        std::lock_guard lock(mutex_);
        if (stopping_) return;
      }
      busy = step(*p) || busy;
    }
    if (steady::now() - last_registry_poll >= opts_.idle_poll * 10) {
      (void)poll_registry();  // other nodes' registrations; failures retried on the next round
      last_registry_poll = steady::now();
    }
    if (busy) continue;
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, opts_.idle_poll, [&] { return stopping_ || woken_; });
    woken_ = false;
  }
}

}  // namespace pliers
