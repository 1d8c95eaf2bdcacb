#include "core/uuid.hpp"

#include <cctype>
#include <cstdint>
#include <chrono>
#include <memory>
#include <random>

#include <openssl/evp.h>

namespace pliers {

namespace {

std::string format_uuid(std::uint64_t hi, std::uint64_t lo) {
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

// SHA-1 of prefix + name into `digest` (EVP_MAX_MD_SIZE bytes). The algorithm is fetched
// once and each thread keeps its context: EVP_Digest(..., EVP_sha1(), ...) fetches and
// allocates on every call, 2.5 times the cost (ids of plugin effects are derived per event).
void sha1(std::string_view prefix, std::string_view name, unsigned char* digest) {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  thread_local const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  unsigned int length = 0;
  if (md && ctx && EVP_DigestInit_ex(ctx.get(), md, nullptr) == 1 &&
      EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size()) == 1 &&
      EVP_DigestUpdate(ctx.get(), name.data(), name.size()) == 1 && EVP_DigestFinal_ex(ctx.get(), digest, &length) == 1)
    return;
  std::string input(prefix);
  input.append(name);
  EVP_Digest(input.data(), input.size(), digest, &length, EVP_sha1(), nullptr);
}

}  // namespace

std::string uuid_v5(std::string_view name) {
  // RFC 4122 name-based (SHA-1) in the URL namespace 6ba7b811-9dad-11d1-80b4-00c04fd430c8.
  static constexpr unsigned char ns[16] = {0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1,
                                           0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8};
  unsigned char digest[EVP_MAX_MD_SIZE];
  sha1(std::string_view(reinterpret_cast<const char*>(ns), sizeof ns), name, digest);
  std::uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; ++i) hi = (hi << 8) | digest[i];
  for (int i = 8; i < 16; ++i) lo = (lo << 8) | digest[i];
  hi = (hi & ~std::uint64_t{0xF000}) | 0x5000;                      // version 5
  lo = (lo & ~(std::uint64_t{0xC} << 60)) | (std::uint64_t{0x8} << 60);  // variant 10xx
  return format_uuid(hi, lo);
}

std::string uuid_v8_ordered(std::int64_t order, std::string_view name) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  sha1({}, name, digest);
  std::uint64_t h = 0, lo = 0;
  for (int i = 0; i < 8; ++i) h = (h << 8) | digest[i];
  for (int i = 8; i < 16; ++i) lo = (lo << 8) | digest[i];
  std::uint64_t hi = (static_cast<std::uint64_t>(order) & 0xFFFFFFFFFFFFULL) << 16;  // 48 bits of order
  hi |= 0x8000 | (h & 0x0FFF);                                                      // version 8 + 12 bits of hash
  lo = (lo & ~(std::uint64_t{0xC} << 60)) | (std::uint64_t{0x8} << 60);            // variant 10xx
  return format_uuid(hi, lo);
}

namespace {

constexpr std::uint64_t position_mask = (std::uint64_t{1} << 62) - 1;

std::uint64_t positional_hi(std::uint64_t tag) {
  return ((tag >> 12) & 0xFFFFFFFFFFFFULL) << 16 | 0x8000 | (tag & 0x0FFF);  // 48 bits, version 8, 12 bits
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string uuid_v8_positional(std::uint64_t tag, std::int64_t position) {
  const std::uint64_t lo = (std::uint64_t{0x8} << 60) | (static_cast<std::uint64_t>(position) & position_mask);
  return format_uuid(positional_hi(tag), lo);
}

std::string uuid_v8_positional_prefix(std::uint64_t tag) { return format_uuid(positional_hi(tag), 0).substr(0, 19); }

std::int64_t uuid_v8_position(std::string_view id, std::uint64_t tag) noexcept {
  if (!is_uuid(id)) return -1;
  std::uint64_t hi = 0, lo = 0;
  for (std::size_t i = 0, n = 0; i < id.size(); ++i) {
    if (id[i] == '-') continue;
    auto& half = n++ < 16 ? hi : lo;
    half = (half << 4) | static_cast<std::uint64_t>(hex_value(id[i]));
  }
  if (hi != positional_hi(tag) || (lo >> 62) != 0x2) return -1;
  return static_cast<std::int64_t>(lo & position_mask);
}

std::string new_uuid_v7() {
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  const auto ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  std::uint64_t hi = (ms & 0xFFFFFFFFFFFFULL) << 16;
  hi |= 0x7000 | (gen() & 0x0FFF);  // version 7 + 12 random bits
  std::uint64_t lo = gen();
  lo = (lo & ~(std::uint64_t{0xC} << 60)) | (std::uint64_t{0x8} << 60);  // variant 10xx
  return format_uuid(hi, lo);
}

std::string new_uuid_v4() {
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  std::uint64_t hi = gen(), lo = gen();
  hi = (hi & ~std::uint64_t{0xF000}) | 0x4000;                      // version 4
  lo = (lo & ~(std::uint64_t{0xC} << 60)) | (std::uint64_t{0x8} << 60);  // variant 10xx
  return format_uuid(hi, lo);
}

bool is_uuid(std::string_view t) noexcept {
  if (t.size() != 36) return false;
  for (std::size_t i = 0; i < 36; ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (t[i] != '-') return false;
    } else if (const char c = t[i]; !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
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
