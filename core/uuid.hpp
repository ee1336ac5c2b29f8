// UUIDs in canonical lowercase text form. Thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace eventsd::core {

/// A new random (version 4) UUID, e.g. "3f2b...-...".
std::string make_uuid();

/// `text` in canonical lowercase form when it is a UUID in 8-4-4-4-12 hex
/// form (any letter case); empty otherwise.
std::optional<std::string> normalize_uuid(std::string_view text);

} // namespace eventsd::core
