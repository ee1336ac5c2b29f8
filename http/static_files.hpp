// The static documents served by the gateway (OpenAPI, Swagger UI, /ui),
// loaded once from the static directory beside the binary.
//
// Thread-safety: immutable after construction.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace eventsd::http {

/// One file ready to serve.
struct static_file {
  std::string content_type;
  std::string body;
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
