#include "http/reply.hpp"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/todo_aggregate.hpp"
#include "core/messages.hpp"
#include "projections/projection.hpp"

namespace eventsd::http {

namespace {

struct problem_kind {
  const char* slug;
  const char* title;
};

problem_kind kind_of(unsigned status) {
  switch (status) {
    case 400:
      return {"validation-failed", "Bad Request"};
    case 401:
      return {"unauthorized", "Unauthorized"};
    case 403:
      return {"forbidden", "Forbidden"};
    case 404:
      return {"not-found", "Not Found"};
    case 405:
      return {"method-not-allowed", "Method Not Allowed"};
    case 408:
      return {"request-timeout", "Request Timeout"};
    case 409:
      return {"conflict", "Conflict"};
    case 412:
      return {"precondition-failed", "Precondition Failed"};
    case 413:
      return {"payload-too-large", "Content Too Large"};
    case 414:
      return {"uri-too-long", "URI Too Long"};
    case 415:
      return {"unsupported-media-type", "Unsupported Media Type"};
    case 417:
      return {"expectation-failed", "Expectation Failed"};
    case 431:
      return {"headers-too-large", "Request Header Fields Too Large"};
    case 501:
      return {"not-implemented", "Not Implemented"};
    case 503:
      return {"unavailable", "Service Unavailable"};
    case 505:
      return {"http-version-not-supported", "HTTP Version Not Supported"};
    default:
      return {"internal", "Internal Server Error"};
  }
}

/// The i-th string of an error's context, or empty.
std::string context_string(const caf::error& err, size_t i) {
  auto& ctx = err.context();
  if (i < ctx.size() && ctx.match_element<std::string>(i))
    return ctx.get_as<std::string>(i);
  return {};
}

} // namespace

reply unavailable(std::string detail, const char* retry_after) {
  auto r = problem(503, std::move(detail));
  r.header("Retry-After", retry_after);
  return r;
}

reply problem(unsigned status, std::string detail, std::vector<field_error> errors) {
  auto kind = kind_of(status);
  nlohmann::json j{{"type", std::string{"urn:eventsd:problem:"} + kind.slug},
                   {"title", kind.title},
                   {"status", status},
                   {"detail", detail}};
  if (!errors.empty()) {
    auto& arr = j["errors"] = nlohmann::json::array();
    for (auto& e : errors)
      arr.push_back({{"field", e.field}, {"messages", e.messages}});
  }
  reply r;
  r.status = status;
  r.content_type = problem_type;
  r.body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

reply problem_for(const caf::error& err) {
  using storage::storage_errc;
  using projections::projection_errc;
  using todo::todo_errc;
  auto detail = context_string(err, 0);
  if (err == caf::sec::request_timeout)
    return unavailable("no answer in time from the component serving this request "
                       "(PostgreSQL or the event store is slow or stalled)");
  // The actor serving the request ended before answering it: sent to one
  // that had ended (nothing done), or ended while it held the request (an
  // aggregate whose append was durable, say): which one, nobody can tell.
  if (err == caf::sec::request_receiver_down)
    return unavailable("a component serving this request stopped before answering it (the "
                       "server may be stopping); a write may or may not have been made: retry "
                       "with If-Match or the same Idempotency-Key");
  if (err.category() == caf::atom("storage")) {
    switch (static_cast<storage_errc>(err.code())) {
      case storage_errc::stream_not_found:
        return problem(404, "stream not found");
      case storage_errc::event_not_found:
        return problem(404, "event not found");
      case storage_errc::snapshot_not_found:
        return problem(404, "snapshot not found");
      case storage_errc::idempotency_conflict:
        return problem(409, "Idempotency-Key was already used for a different request");
      case storage_errc::wrong_expected_version:
        return problem(409, "concurrent write to the same stream; retry");
      case storage_errc::not_writable: {
        // A store opened read-only (its disk was full at start) takes writes
        // only after a restart: not worth a retry every second.
        if (detail.find("opened read-only") != std::string::npos)
          return problem(503, "event store is not writable: " + detail).header("Retry-After", "60");
        return unavailable("event store is not writable: " + detail);
      }
      case storage_errc::corrupted:
      case storage_errc::io_error:
        return unavailable("event store read failed: " + detail);
    }
  } else if (err.category() == caf::atom("todo")) {
    auto field = context_string(err, 0);
    auto message = context_string(err, 1);
    switch (static_cast<todo_errc>(err.code())) {
      case todo_errc::invalid_description:
        return problem(400, "validation failed", {{field, {message}}});
      case todo_errc::not_found:
        return problem(404, "todo not found");
      case todo_errc::already_exists:
        return problem(409, "todo already exists");
      case todo_errc::unknown_event:
        return problem(404, "event not found in this todo");
    }
  } else if (err.category() == caf::atom("runtime")) {
    switch (static_cast<core::runtime_errc>(err.code())) {
      case core::runtime_errc::precondition_failed: {
        auto r = problem(412, "the current version " + detail
                                 + " fails the request's If-Match or If-None-Match");
        if (!detail.empty())
          r.header("ETag", "\"" + detail + "\"");
        return r;
      }
      case core::runtime_errc::invalid_id:
        return problem(404, "no aggregate has the id " + detail);
      case core::runtime_errc::deadline_passed:
        return unavailable("not written: the write did not reach the event log within the "
                           "request timeout (" + detail + "); nothing was appended, retry");
      case core::runtime_errc::shutting_down:
        return unavailable("the server is stopping" + (detail.empty() ? "" : ": " + detail));
    }
  } else if (err.category() == caf::atom("projection")) {
    switch (static_cast<projection_errc>(err.code())) {
      case projection_errc::not_found:
        return problem(404, "todo not found");
      case projection_errc::invalid_cursor:
        return problem(400, "malformed cursor", {{"after", {"is not a cursor from `next`"}}});
      case projection_errc::timeout:
        return unavailable("read model did not reach the requested position in time ("
                           + detail + ")");
      case projection_errc::unavailable:
      case projection_errc::query_failed:
      case projection_errc::diverged:
        return unavailable("read model unavailable: " + detail);
    }
  }
  return unavailable("internal error: " + caf::to_string(err));
}

} // namespace eventsd::http
