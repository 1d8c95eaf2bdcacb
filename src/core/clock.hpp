// Time for the engine: microsecond UTC time points and an injectable clock, so tests can
// drive time (fake_clock) instead of sleeping. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pliers {

using timestamp = std::chrono::sys_time<std::chrono::microseconds>;

inline std::int64_t to_micros(timestamp t) noexcept { return t.time_since_epoch().count(); }
inline timestamp from_micros(std::int64_t us) noexcept {
  return timestamp(std::chrono::microseconds(us));
}

class clock {
 public:
  virtual ~clock() = default;
  virtual timestamp now() const noexcept = 0;
};

class system_clock final : public clock {
 public:
  timestamp now() const noexcept override {
    return std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  }
};

class fake_clock final : public clock {
 public:
  explicit fake_clock(timestamp start) : us_(to_micros(start)) {}
  timestamp now() const noexcept override { return from_micros(us_.load()); }
  void set(timestamp t) noexcept { us_.store(to_micros(t)); }
  void advance(std::chrono::microseconds d) noexcept { us_.fetch_add(d.count()); }

 private:
  std::atomic<std::int64_t> us_;
};

// The process-wide system clock.
const clock& default_clock() noexcept;

}  // namespace pliers
