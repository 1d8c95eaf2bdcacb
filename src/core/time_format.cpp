#include "core/time_format.hpp"

#include <charconv>
#include <cstdio>

namespace pliers {

const clock& default_clock() noexcept {
  static const system_clock instance;
  return instance;
}

std::string format_rfc3339(timestamp t) {
  using namespace std::chrono;
  auto day = floor<days>(t);
  year_month_day ymd{day};
  auto tod = t - day;
  auto h = duration_cast<hours>(tod);
  auto m = duration_cast<minutes>(tod - h);
  auto s = duration_cast<seconds>(tod - h - m);
  auto us = (tod - h - m - s).count();
  char buf[40];
  int n = std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%06lldZ",
                        static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                        static_cast<unsigned>(ymd.day()), static_cast<int>(h.count()),
                        static_cast<int>(m.count()), static_cast<int>(s.count()),
                        static_cast<long long>(us));
  return std::string(buf, static_cast<std::size_t>(n));
}

namespace {

bool read_int(std::string_view& s, std::size_t digits, int& out) {
  if (s.size() < digits) return false;
  for (std::size_t i = 0; i < digits; ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  std::from_chars(s.data(), s.data() + digits, out);
  s.remove_prefix(digits);
  return true;
}

bool expect(std::string_view& s, char c) {
  if (s.empty() || s.front() != c) return false;
  s.remove_prefix(1);
  return true;
}

}  // namespace

std::optional<timestamp> parse_rfc3339(std::string_view s) {
  using namespace std::chrono;
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  if (!read_int(s, 4, y) || !expect(s, '-') || !read_int(s, 2, mo) || !expect(s, '-') ||
      !read_int(s, 2, d))
    return std::nullopt;
  year_month_day ymd{year{y}, month{static_cast<unsigned>(mo)}, day{static_cast<unsigned>(d)}};
  if (!ymd.ok()) return std::nullopt;
  if (s.empty()) return timestamp(sys_days{ymd});
  if (s.front() != 'T' && s.front() != 't' && s.front() != ' ') return std::nullopt;
  s.remove_prefix(1);
  if (!read_int(s, 2, h) || !expect(s, ':') || !read_int(s, 2, mi) || !expect(s, ':') ||
      !read_int(s, 2, se))
    return std::nullopt;
  if (h > 23 || mi > 59 || se > 60) return std::nullopt;
  std::int64_t frac_us = 0;
  if (!s.empty() && s.front() == '.') {
    s.remove_prefix(1);
    std::size_t n = 0;
    std::int64_t scale = 100000;
    while (!s.empty() && s.front() >= '0' && s.front() <= '9') {
      if (n < 6) frac_us += (s.front() - '0') * scale, scale /= 10;
      s.remove_prefix(1);
      if (++n > 9) return std::nullopt;
    }
    if (n == 0) return std::nullopt;
  }
  int offset_min = 0;
  if (s == "Z" || s == "z") {
    s.remove_prefix(1);
  } else if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    int sign = s.front() == '-' ? -1 : 1;
    s.remove_prefix(1);
    int oh = 0, om = 0;
    if (!read_int(s, 2, oh) || !expect(s, ':') || !read_int(s, 2, om) || oh > 23 || om > 59)
      return std::nullopt;
    offset_min = sign * (oh * 60 + om);
  } else {
    return std::nullopt;
  }
  if (!s.empty()) return std::nullopt;
  auto t = sys_days{ymd} + hours{h} + minutes{mi} + seconds{se} + microseconds{frac_us} -
           minutes{offset_min};
  return time_point_cast<microseconds>(t);
}

}  // namespace pliers
