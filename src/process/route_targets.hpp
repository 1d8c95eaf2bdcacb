// The routing target kinds (spec RoutingTarget.type) and their configs:
//   webhook    {url, secret?: "whsec_<base64>", headers?: {name: value}, timeout?: ms}
//              POST of the event's JSON with the Standard Webhooks headers: webhook-id (the
//              event id), webhook-timestamp (Unix seconds), webhook-signature
//              "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>" (key: the base64 after
//              "whsec_", or the secret's bytes). 2xx = delivered; 410 = gone (the target is
//              disabled); 429/503 honour Retry-After; other statuses fail as http_<status>.
//              Redirects are not followed; private/loopback/link-local/metadata addresses
//              are refused after resolution unless allow-listed (routes.allow_private_targets).
//   queue      {kind: "nats", url, subject, timeout?}: JetStream publish with ack, Nats-Msg-Id =
//              the event id (the stream's duplicate window de-duplicates).
//              {kind: "redis", url: redis://[:password@]host:port[/db], stream, maxLen?, timeout?}:
//              XADD with fields eventId, type, aggregateId, event (JSON), made at most once per
//              (stream, rule, target, event) within `dedupWindow` ms (default 24 h) by a
//              server-side script.
//   plugin     {pluginId}: runs that registered plugin on the event (its effects stored).
//   websocket  {channel}: pushes the event to the WebSocket clients of this node subscribed
//              to the channel ({"type":"subscribe","channel":NAME} on GET /v1/stream);
//              ephemeral, no retry.
//   email      {url: smtp://host:port (smtps://), from, to: string or [string], subject,
//              body, username?, password?, timeout?}: subject and body are templates where
//              {{id}}, {{type}}, {{aggregateId}}, {{aggregateType}}, {{timestamp}},
//              {{payload.<path>}}, {{metadata.<path>}} and {{event}} (the JSON) are replaced.
// Error types (retry policies match them): timeout, connection_error, forbidden_address,
// http_<status>, nats_error, no_stream, redis_error, smtp_error, plugin kinds' own.
#pragma once

#include <string>
#include <vector>

#include "process/route_target.hpp"

namespace pliers {

class plugin_chain;
class channel_hub;

struct route_target_options {
  std::vector<std::string> allow_private;  // hosts / addresses exempt from the private-address check
  std::chrono::milliseconds default_timeout{5000};
  plugin_chain* plugins = nullptr;  // plugin targets refused when null
  channel_hub* channels = nullptr;  // websocket targets refused when null
};

route_target_factory make_route_target_factory(route_target_options opts);

// Standard Webhooks: base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")) where key is the
// base64-decoded part after "whsec_" (or the secret's bytes when it has no such prefix).
std::string webhook_signature(const std::string& secret, const std::string& id, std::int64_t timestamp,
                              const std::string& body);
// Fills {{...}} placeholders from the event (see above); CR/LF removed when `one_line`.
std::string render_template(const std::string& tpl, const event& e, bool one_line);

}  // namespace pliers
