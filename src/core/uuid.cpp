#include "core/uuid.hpp"

#include <cctype>
#include <cstdint>
#include <random>

namespace pliers {

std::string new_uuid_v4() {
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  std::uint64_t hi = gen(), lo = gen();
  hi = (hi & ~std::uint64_t{0xF000}) | 0x4000;                      // version 4
  lo = (lo & ~(std::uint64_t{0xC} << 60)) | (std::uint64_t{0x8} << 60);  // variant 10xx
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(36, '-');
  std::size_t pos = 0;
  auto put = [&](std::uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) {
      if (out[pos] == '-' && (pos == 8 || pos == 13 || pos == 18 || pos == 23)) ++pos;
      out[pos++] = hex[(v >> (i * 4)) & 0xF];
    }
  };
  put(hi, 16);
  put(lo, 16);
  return out;
}

bool is_uuid(std::string_view t) noexcept {
  if (t.size() != 36) return false;
  for (std::size_t i = 0; i < 36; ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (t[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(t[i]))) {
      return false;
    }
  }
  return true;
}

std::string canonical_uuid(std::string_view t) {
  std::string out(t);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace pliers
