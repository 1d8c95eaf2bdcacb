// Dead-letter entries as JSON, in the spec's DeadLetterEvent shape (camelCase):
//
//   {"id", "seq", "originalEvent": Event, "consumer",
//    "error": {"type", "message", "stack"?, "context": {}},
//    "attempts", "maxAttempts", "firstFailedAt", "failedAt", "nextRetryAt"?,
//    "status", "permanentReason"?, "resolvedAt"?, "leaseUntil", "retryConfig": {},
//    "history": [{"attempt", "at", "success", "error"?, "durationMs", "manual"}]}
//
// Times are RFC 3339 (UTC, microseconds); absent optionals are omitted. The SQL backends
// keep this document as a row's `body` (docs/storage.md), and the HTTP API sends it, so
// changing a name is a format change for both. Decoding is for trusted text (our own rows):
// anything malformed is errc::internal ("corrupt"), never an exception.
//
// Also the store-side rules every backend shares: what dlq_add accepts and how a
// dead_letter_filter matches. Stateless, thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "core/type_pattern.hpp"
#include "store/event_store.hpp"

namespace pliers {

boost::json::object to_json(const processing_error& e);
result<processing_error> processing_error_from_json(const boost::json::value& v);

boost::json::object to_json(const dead_letter& d);
result<dead_letter> dead_letter_from_json(const boost::json::value& v);
// Parses `text` (a stored body) and decodes it; errc::internal when corrupt.
result<dead_letter> dead_letter_from_text(std::string_view text);

// pending_retry | retrying | permanent_failure | resolved
bool is_dead_letter_status(std::string_view status) noexcept;

// dlq_add's checks (consumer and original event id present, known status; invalid_argument
// otherwise). Assigns a UUID when `id` is empty (else it must be one; lowercased) and
// resets `seq`: the store assigns it. Failure text (error, history errors, permanent
// reason) that is not UTF-8 gets U+FFFD for each bad byte, so every stored row decodes.
result<void> prepare_dead_letter(dead_letter& entry);
// dlq_update's checks: known status.
result<void> check_dead_letter_update(const dead_letter& entry);
// Copies the fields dlq_update may change from `from` into `to` (failure text made UTF-8
// as above); the identity (id, seq, original_event, consumer) and the add-time policy
// (max_attempts, retry_config) stay.
void apply_dead_letter_update(dead_letter& to, const dead_letter& from);

// A dead_letter_filter with its type pattern parsed (invalid_argument, field "eventType",
// for a bad pattern or status). Every backend matches through this, possibly after
// prefiltering in SQL, so all of them agree on total_count.
class dead_letter_matcher {
 public:
  static result<dead_letter_matcher> make(const dead_letter_filter& filter);
  bool matches(const dead_letter& d) const;
  bool matches(std::string_view consumer, std::string_view event_type, std::string_view status,
               timestamp failed_at) const;
  const dead_letter_filter& filter() const noexcept { return filter_; }
  // The parsed filter.event_type, if any.
  const std::optional<type_pattern>& pattern() const noexcept { return pattern_; }

 private:
  dead_letter_filter filter_;
  std::optional<type_pattern> pattern_;
};

}  // namespace pliers
