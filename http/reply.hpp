// What a route answers, without Beast types: status, headers and body.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <caf/fwd.hpp>

namespace eventsd::http {

inline constexpr const char* json_type = "application/json; charset=utf-8";
inline constexpr const char* problem_type = "application/problem+json; charset=utf-8";

/// One HTTP answer.
struct reply {
  unsigned status = 200;
  std::string content_type = json_type;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

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

/// The one place where errors of every layer become HTTP answers.
reply problem_for(const caf::error& err);

} // namespace eventsd::http
