// problem_for (http/problem.cpp), without a server: how errors of the
// components become problem+json answers.
#include "http/reply.hpp"

#include "core/messages.hpp"

#include <string>

#include <caf/all.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using eventsd::http::problem_for;
using json = nlohmann::json;

TEST_CASE("a component that does not answer in time is a 503 saying so, not an internal error",
          "[http][problem]") {
  auto r = problem_for(caf::make_error(caf::sec::request_timeout));
  CHECK(r.status == 503);
  CHECK(r.content_type.rfind("application/problem+json", 0) == 0);
  auto j = json::parse(r.body);
  CHECK(j["status"] == 503);
  CHECK(j["type"] == "urn:eventsd:problem:unavailable");
  CHECK(j["detail"].get<std::string>().find("no answer in time") != std::string::npos);
  bool retry_after = false;
  for (auto& [name, value] : r.headers)
    retry_after = retry_after || name == "Retry-After";
  CHECK(retry_after);
}

TEST_CASE("a request whose component stopped before answering is a 503 that does not claim "
          "to know whether a write was made",
          "[http][problem]") {
  auto r = problem_for(caf::make_error(caf::sec::request_receiver_down));
  CHECK(r.status == 503);
  auto detail = json::parse(r.body)["detail"].get<std::string>();
  CHECK(detail.find("stopped before answering it") != std::string::npos);
  CHECK(detail.find("may or may not have been made") != std::string::npos);
}

TEST_CASE("an error no component names is a 503 internal error", "[http][problem]") {
  auto r = problem_for(caf::make_error(caf::sec::runtime_error));
  CHECK(r.status == 503);
  CHECK(json::parse(r.body)["detail"].get<std::string>().rfind("internal error", 0) == 0);
}

TEST_CASE("a write refused at its deadline is a 503 that says nothing was appended",
          "[http][problem][deadline]") {
  auto r = problem_for(caf::make_error(eventsd::core::runtime_errc::deadline_passed,
                                       "before the log writer could take it"));
  CHECK(r.status == 503);
  auto detail = json::parse(r.body)["detail"].get<std::string>();
  CHECK(detail.rfind("not written", 0) == 0);
  CHECK(detail.find("nothing was appended") != std::string::npos);
  CHECK(detail.find("before the log writer could take it") != std::string::npos);
  bool retry_after = false;
  for (auto& [name, value] : r.headers)
    retry_after = retry_after || name == "Retry-After";
  CHECK(retry_after);
}
