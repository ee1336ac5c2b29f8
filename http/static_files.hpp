// The static documents served by the gateway (OpenAPI, Swagger UI, /ui),
// loaded once from the static directory beside the binary.
//
// Thread-safety: immutable after construction.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace eventsd::http {

/// One file ready to serve.
struct static_file {
  std::string content_type;
  std::string body;
  /// Its entity tag: a hash of `body`, at most 63 bits (a tag of digits, as
  /// the versions the other routes tag their answers with).
  uint64_t tag = 0;
};

/// Files under a directory, keyed by relative path ("ui/app.js").
class static_files {
public:
  /// Loads every regular file under `dir` (recursively); a missing
  /// directory yields an empty set.
  explicit static_files(const std::string& dir);

  /// The file at `relative`, if loaded. Never escapes the directory.
  const static_file* find(const std::string& relative) const;

private:
  std::map<std::string, static_file> files_;
};

} // namespace eventsd::http
