// What a route answers, without Beast types: status, headers and body.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/fwd.hpp>

namespace eventsd::http {

inline constexpr const char* json_type = "application/json; charset=utf-8";
inline constexpr const char* problem_type = "application/problem+json; charset=utf-8";

/// A body produced part by part, for answers too large to hold at once: it
/// is sent with the chunked transfer coding, and the next part is asked for
/// only once the previous one is written, so a slow client holds one part.
class body_stream {
public:
  virtual ~body_stream() = default;
  /// Produces the next part and calls `done` once, from any thread: with the
  /// part (never empty), or with nothing when the body cannot be completed
  /// (the connection is then closed: a truncated chunked body tells the
  /// client). Not called again after a part for which `last()` was true.
  virtual void next(std::function<void(std::optional<std::string>)> done) = 0;
  /// True once the part last handed to `done` was the final one.
  virtual bool last() const = 0;
};

/// One HTTP answer.
struct reply {
  unsigned status = 200;
  std::string content_type = json_type;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  /// When set, the body comes from here instead of `body`.
  std::shared_ptr<body_stream> stream;

  reply& header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
};

/// One failing field of a validation problem.
struct field_error {
  std::string field;
  std::vector<std::string> messages;
};

/// An RFC 9457 problem+json answer; `errors` only for validation (400).
reply problem(unsigned status, std::string detail, std::vector<field_error> errors = {});

/// A 503 problem that says when to try again (`Retry-After`, in seconds).
reply unavailable(std::string detail, const char* retry_after = "1");

/// The one place where errors of every layer become HTTP answers.
reply problem_for(const caf::error& err);

} // namespace eventsd::http
