#include "server/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>

#include "core/clock.hpp"
#include "core/time_format.hpp"

namespace pliers::log {

namespace {

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto lg = spdlog::stderr_logger_mt("pliers");
    lg->set_pattern("%v");
    lg->set_level(spdlog::level::info);
    return lg;
  }();
  return l;
}

spdlog::level::level_enum to_spd(level l) {
  switch (l) {
    case level::trace: return spdlog::level::trace;
    case level::debug: return spdlog::level::debug;
    case level::info: return spdlog::level::info;
    case level::warn: return spdlog::level::warn;
    case level::error: return spdlog::level::err;
    case level::off: return spdlog::level::off;
  }
  return spdlog::level::info;
}

const char* name(level l) {
  switch (l) {
    case level::trace: return "trace";
    case level::debug: return "debug";
    case level::info: return "info";
    case level::warn: return "warn";
    case level::error: return "error";
    case level::off: return "off";
  }
  return "info";
}

}  // namespace

void init(std::string_view level_name) {
  logger()->set_level(spdlog::level::from_str(std::string(level_name)));
  logger()->flush_on(spdlog::level::trace);
}

bool enabled(level l) noexcept { return logger()->should_log(to_spd(l)); }

void write(level l, std::string_view msg, boost::json::object fields) {
  if (!enabled(l)) return;
  boost::json::object line;
  line["time"] = format_rfc3339(default_clock().now());
  line["level"] = name(l);
  line["msg"] = msg;
  for (auto& kv : fields) line[kv.key()] = std::move(kv.value());
  logger()->log(to_spd(l), "{}", boost::json::serialize(line));
}

}  // namespace pliers::log
