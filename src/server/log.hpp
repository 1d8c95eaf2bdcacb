// Structured logging: one JSON object per line on stderr
// ({"time","level","msg", ...fields}). Thread-safe (spdlog underneath).
#pragma once

#include <boost/json/object.hpp>
#include <string_view>

namespace pliers::log {

enum class level { trace, debug, info, warn, error, off };

void init(std::string_view level_name);
bool enabled(level l) noexcept;
void write(level l, std::string_view msg, boost::json::object fields = {});

inline void info(std::string_view msg, boost::json::object fields = {}) { write(level::info, msg, std::move(fields)); }
inline void warn(std::string_view msg, boost::json::object fields = {}) { write(level::warn, msg, std::move(fields)); }
inline void error(std::string_view msg, boost::json::object fields = {}) { write(level::error, msg, std::move(fields)); }
inline void debug(std::string_view msg, boost::json::object fields = {}) {
  if (enabled(level::debug)) write(level::debug, msg, std::move(fields));
}

}  // namespace pliers::log
