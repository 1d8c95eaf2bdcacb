#include "core/time_format.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
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

void two_digits(char* p, std::int64_t v) {
  p[0] = static_cast<char>('0' + v / 10);
  p[1] = static_cast<char>('0' + v % 10);
}

}  // namespace

std::string_view rfc3339_writer::write(timestamp t) {
  using namespace std::chrono;
  const auto us_total = duration_cast<microseconds>(t.time_since_epoch()).count();
  constexpr std::int64_t us_per_day = 86'400'000'000;
  std::int64_t d = us_total / us_per_day, tod = us_total % us_per_day;
  if (tod < 0) {
    tod += us_per_day;
    --d;
  }
  if (d != day_) {
    const year_month_day ymd{sys_days{days{d}}};
    const int y = static_cast<int>(ymd.year());
    if (y < 0 || y > 9999) {  // not in the cached layout: the general formatter
      const std::string text = format_rfc3339(t);
      const std::size_t n = std::min(text.size(), sizeof fallback_);
      std::memcpy(fallback_, text.data(), n);
      return std::string_view(fallback_, n);
    }
    buf_[0] = static_cast<char>('0' + y / 1000);
    buf_[1] = static_cast<char>('0' + y / 100 % 10);
    buf_[2] = static_cast<char>('0' + y / 10 % 10);
    buf_[3] = static_cast<char>('0' + y % 10);
    buf_[4] = '-';
    two_digits(buf_ + 5, static_cast<unsigned>(ymd.month()));
    buf_[7] = '-';
    two_digits(buf_ + 8, static_cast<unsigned>(ymd.day()));
    buf_[10] = 'T';
    buf_[13] = ':';
    buf_[16] = ':';
    buf_[19] = '.';
    buf_[26] = 'Z';
    day_ = d;
  }
  const std::int64_t secs = tod / 1'000'000;
  two_digits(buf_ + 11, secs / 3600);
  two_digits(buf_ + 14, secs / 60 % 60);
  two_digits(buf_ + 17, secs % 60);
  std::int64_t f = tod % 1'000'000;
  for (int i = 25; i >= 20; --i, f /= 10) buf_[i] = static_cast<char>('0' + f % 10);
  return std::string_view(buf_, 27);
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
