// The route table of API.md and the handlers behind it, free of Beast types:
// a request comes in as `incoming`, the answer leaves through `respond`.
//
// Thread-safety: `handle` is called concurrently from every io thread; it
// never blocks — work for actors goes through `services::jobs`.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/reply.hpp"
#include "http/services.hpp"

namespace eventsd::http {

/// A parsed request.
struct incoming {
  std::string method;
  std::string target;              ///< raw request target
  std::string path;                ///< decoded path, no query
  std::map<std::string, std::string> query;
  /// Lowercase names; repeated lines of a field joined by ", " (RFC 9110 §5.3).
  std::map<std::string, std::string> headers;
  std::vector<std::string> repeated_headers; ///< lowercase names sent on several lines
  std::string body;
  /// Where a create's route writes the stream it appends to (when set), so
  /// that an answer that cannot tell whether it was written names where to look.
  std::shared_ptr<std::string> written_stream;

  /// Header value or empty.
  std::string header(const std::string& lower_name) const;
  /// True when the field came on more than one line.
  bool repeated(std::string_view lower_name) const;
};

/// `s` with ASCII letters in lower case (header names, media types, codings).
std::string lower(std::string s);

/// Delivers the answer of one request (exactly once, from any thread).
using responder = std::function<void(reply)>;

/// Splits `target` into path and query (percent-decoded; an encoded `/` in
/// the path stays `%2F`, a character of a segment, never a separator).
/// Answers the 400 of why it cannot: a malformed percent escape, or a query
/// parameter given more than once (which of them would count is anyone's
/// guess; `errors` names it).
std::optional<reply> parse_target(std::string_view target, std::string& path,
                                  std::map<std::string, std::string>& query);

/// A non-negative decimal number of a query parameter or header: digits only,
/// leading zeros allowed; past 19 significant digits it is UINT64_MAX (a
/// number beyond any position, version or limit). nullopt: not a number.
std::optional<uint64_t> parse_count(std::string_view v);

/// True for 127.0.0.0/8, ::1 (in any spelling, IPv4-mapped 127.x.y.z too)
/// and "localhost".
bool is_loopback_address(const std::string& address);

/// Where GET /subscribe/$all starts: `from` (inclusive, default 1), or one past
/// `Last-Event-ID`, which overrides it. Answers the 400 for a malformed one.
std::optional<reply> subscription_start(const incoming& req, uint64_t& from);

/// Compares secrets in time independent of where they differ.
bool constant_time_equal(std::string_view a, std::string_view b);

class router {
public:
  explicit router(services& svc);

  /// Answers `req` through `respond`; returns the matched route pattern
  /// (or "unmatched") for metrics.
  std::string handle(incoming req, responder respond);

  /// True when `req` is `GET /subscribe/$all` (served by the SSE session).
  bool is_subscription(const incoming& req) const;

  /// The route pattern `method` and `target` would go to ("unmatched": none),
  /// for the metrics of a request refused before it is routed.
  std::string pattern_of(const std::string& method, std::string_view target) const;

  /// The answer `req` gets whatever its body is, when its header alone
  /// decides it: no route (404), a method the path does not take (405), a
  /// body that is not JSON where JSON is expected (415). For a request that
  /// expects `100 Continue`, which then need not send its body. With the
  /// route pattern for the metrics, as `handle` returns it.
  std::optional<std::pair<reply, std::string>> refusal_before_body(const incoming& req) const;

  services& svc() { return svc_; }

private:
  using handler = std::function<void(incoming&, std::vector<std::string>&, responder&)>;
  struct route {
    std::string method;
    std::string pattern;
    std::vector<std::string> segments;
    handler fn;
    bool json_body = false; ///< its body must be `application/json`
  };
  void add(std::string method, std::string pattern, handler fn, bool json_body = false);
  /// The 404 or 405 (or an OPTIONS' 204) of a request no route takes, with
  /// its route name for the metrics; `allowed` lists the methods of routes
  /// of its path.
  std::pair<reply, std::string> unrouted(const incoming& req,
                                         std::vector<std::string> allowed) const;
  /// The route for `method` on `path` (the one with most literal segments),
  /// its parameters in `params`; the methods other routes of the path take
  /// are added to `allowed`.
  const route* find(const std::string& method, const std::string& path,
                    std::vector<std::string>& params, std::vector<std::string>& allowed) const;

  services& svc_;
  std::vector<route> routes_;
};

} // namespace eventsd::http
