#include "store/scheduled_codec.hpp"

#include <boost/json.hpp>

#include "core/event_codec.hpp"
#include "core/uuid.hpp"
#include "core/validation.hpp"

namespace pliers {

namespace json = boost::json;

std::string encode_scheduled_request(const append_request& r) {
  json::object o{{"aggregateId", r.aggregate_id}, {"event", to_json(r.events.front())}};
  if (r.expected_version) o["expectedVersion"] = *r.expected_version;
  return json::serialize(o);
}

result<append_request> decode_scheduled_request(std::string_view text) {
  boost::system::error_code ec;
  auto v = json::parse(json::string_view(text.data(), text.size()), ec);
  if (ec || !v.is_object() || !v.as_object().contains("event") || !v.as_object().contains("aggregateId"))
    return error::make(errc::internal, "corrupt scheduled entry in store");
  json::object body{{"events", json::array{v.as_object()["event"]}}};
  if (auto* ev = v.as_object().if_contains("expectedVersion")) body["expectedVersion"] = *ev;
  return append_request_from_json(json::value(std::move(body)), std::string(v.as_object()["aggregateId"].as_string()));
}

result<void> prepare_scheduled(scheduled_event& entry, timestamp now) {
  if (entry.request.events.size() != 1) return error::invalid("events", "a scheduled publication holds exactly one event");
  if (auto ok = validate_append(entry.request); !ok) return ok;
  auto& e = entry.request.events.front();
  if (!e.id) e.id = new_uuid_v4();
  if (entry.id.empty()) entry.id = new_uuid_v4();
  entry.status = "pending";
  entry.created_at = now;
  entry.attempts = 0;
  entry.position.reset();
  entry.last_error.reset();
  return {};
}

}  // namespace pliers
