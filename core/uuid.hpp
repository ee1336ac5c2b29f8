// UUIDs in canonical lowercase text form. Thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace eventsd::core {

/// A new time-ordered (version 7, RFC 9562) UUID: 48 bits of Unix
/// milliseconds, a 12-bit counter within the millisecond, then 62 random bits.
/// Within this process each id sorts after the one made before it, so the
/// indexes they key (RocksDB, PostgreSQL b-trees) grow at their end.
std::string make_uuid();

/// `text` in canonical lowercase form when it is a UUID in 8-4-4-4-12 hex
/// form (any letter case); empty otherwise.
std::optional<std::string> normalize_uuid(std::string_view text);

} // namespace eventsd::core
