// Errors as values for the storage layer. Plain value types, no CAF here.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace eventsd::storage {

/// Why a storage operation failed. Starts at 1 (0 means "no error" in CAF).
enum class storage_errc : uint8_t {
  wrong_expected_version = 1, ///< the stream's version differs from the expected one
  stream_not_found,           ///< no event was ever appended to the stream
  event_not_found,            ///< no event has that id
  snapshot_not_found,         ///< the stream has no snapshot yet
  idempotency_conflict,       ///< key reused with a different request fingerprint
  not_writable,               ///< RocksDB refused the write (I/O error, full disk, read-only)
  corrupted,                  ///< a stored record could not be decoded
  io_error,                   ///< a read failed
};

/// Stable lowercase name of `x`, e.g. "wrong_expected_version".
const char* to_string(storage_errc x);

/// A failed storage operation: what and a human-readable detail.
struct storage_error {
  storage_errc code;
  std::string detail;
};

/// Either a `T` or an error `E`. "Not found" is always an error, never an
/// empty `T`. Other layers reuse it with their own error type.
template <class T, class E = storage_error>
class result {
public:
  result(T value) : v_(std::move(value)) {}
  result(E err) : v_(std::move(err)) {}

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  /// REQUIRES: ok()
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  /// REQUIRES: !ok()
  const E& error() const { return std::get<1>(v_); }

private:
  std::variant<T, E> v_;
};

/// A result that carries no value.
template <class E>
class result<void, E> {
public:
  result() = default;
  result(E err) : err_(std::move(err)), failed_(true) {}

  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const E& error() const { return err_; }

private:
  E err_{};
  bool failed_ = false;
};

} // namespace eventsd::storage
