// result<T>: a value or a pliers::error. g++ 12 has no std::expected; this is the small
// subset we need. result<void> carries only success or an error.
#pragma once

#include <cassert>
#include <type_traits>
#include <utility>
#include <variant>

#include "core/error.hpp"

namespace pliers {

template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  result(pliers::error e) : v_(std::in_place_index<1>, std::move(e)) {}      // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { assert(has_value()); return std::get<0>(v_); }
  const T& value() const& { assert(has_value()); return std::get<0>(v_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const pliers::error& error() const& { assert(!has_value()); return std::get<1>(v_); }
  pliers::error&& error() && { assert(!has_value()); return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, pliers::error> v_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(pliers::error e) : e_(std::move(e)), ok_(false) {}  // NOLINT
  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const pliers::error& error() const& { assert(!ok_); return e_; }
  pliers::error&& error() && { assert(!ok_); return std::move(e_); }

 private:
  pliers::error e_;
  bool ok_ = true;
};

}  // namespace pliers
