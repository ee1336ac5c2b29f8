// Helpers of the HTTP-level tests (tests/http/): on top of the e2e harness
// (tests/e2e/harness.hpp: the real eventsd, a fresh database, an HTTP client,
// a child-process runner) they add a streaming Server-Sent-Events reader over a
// raw socket, a Prometheus text-format parser and shared checks.
// Thread-safety: an `sse_client` is used by one thread at a time; the free
// functions are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "e2e/harness.hpp"

namespace eventsd::http_tests {

using eventsd::e2e::header_list;
using eventsd::e2e::json;
using eventsd::e2e::response;

// -- checks (Catch2 assertions) ----------------------------------------------

/// Checks that `r` is an RFC 9457 problem (application/problem+json) with `status`
/// and non-empty `type`, `title` and `detail`.
void check_problem(const response& r, unsigned status);

/// Checks that `e` is an event as API.md §2 shapes it: exactly `id` (canonical
/// UUID), `stream`, `type`, `version` (>= 1), `position` (>= 1), `occurredAt`
/// (RFC 3339 UTC with ms) and `data` (an object).
void check_event_shape(const json& e);

/// Content-Type of `r` without parameters, lower case ("" when absent).
std::string media_type(const response& r);

// -- Server-Sent Events --------------------------------------------------------

/// One dispatched SSE message.
struct sse_message {
  std::optional<std::string> id; ///< the `id:` field, when the message had one
  std::string event;             ///< the `event:` field ("" = message)
  std::string data;              ///< the `data:` lines joined by "\n"
};

/// A streaming `GET` over its own loopback connection that parses the answer
/// as `text/event-stream` incrementally (identity or chunked framing).
class sse_client {
public:
  struct options {
    /// Extra request headers (e.g. Last-Event-ID).
    header_list headers;
    /// When > 0, SO_RCVBUF of the socket, set before connecting (a slow reader).
    int receive_buffer = 0;
  };

  /// Connects and sends `GET target`. Throws when it cannot connect.
  sse_client(uint16_t port, const std::string& target, options opts);
  sse_client(uint16_t port, const std::string& target);
  ~sse_client();
  sse_client(const sse_client&) = delete;
  sse_client& operator=(const sse_client&) = delete;

  /// The response head (status, headers; body empty for a stream, or the whole
  /// body of a non-streaming answer such as a 400). Throws when none arrives in time.
  const response& head(std::chrono::milliseconds timeout = std::chrono::milliseconds{5000});

  /// The next message, or nullopt when `timeout` passes first or the stream ended.
  std::optional<sse_message> next(std::chrono::milliseconds timeout);

  /// Every comment line received so far (the text after the ':'), in order.
  const std::vector<std::string>& comments() const { return comments_; }

  /// Reads whatever is available within `timeout` (keeps messages queued for next()).
  void pump(std::chrono::milliseconds timeout);

  /// True once the server closed the connection (or it failed).
  bool ended() const { return ended_; }

  /// Closes the connection normally (FIN).
  void close();
  /// Closes the connection with a TCP reset (SO_LINGER 0), as a crashed client would.
  void reset();

private:
  bool fill(std::chrono::steady_clock::time_point deadline);
  void parse();
  void parse_lines();

  int fd_ = -1;
  std::string raw_;   // bytes not yet parsed (head, then framed body)
  std::string body_;  // de-framed body not yet split into lines
  std::optional<response> head_;
  bool chunked_ = false;
  size_t content_length_ = 0;
  bool has_length_ = false;
  bool streaming_ = false;
  bool ended_ = false;
  // current message being assembled
  std::optional<std::string> cur_id_;
  std::string cur_event_;
  std::vector<std::string> cur_data_;
  std::deque<sse_message> ready_;
  std::vector<std::string> comments_;
};

// -- Prometheus text format ----------------------------------------------------

struct prom_sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct prom_exposition {
  std::map<std::string, std::string> types; ///< family -> counter/gauge/histogram/...
  std::map<std::string, std::string> help;  ///< family -> help text
  std::vector<prom_sample> samples;

  /// Samples named `name` whose labels include every pair of `labels`.
  std::vector<prom_sample> find(const std::string& name,
                                const std::map<std::string, std::string>& labels = {}) const;
  /// The value of the one sample `name{labels...}`; throws when there is none.
  double value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
};

/// Parses a Prometheus text exposition (format 0.0.4). Throws on a malformed line.
prom_exposition parse_prometheus(const std::string& text);

// -- other helpers -------------------------------------------------------------

/// The value of environment variable `name`; throws naming it when unset or empty.
std::string require_env(const char* name);

/// Writes `text` to a new file in a fresh temp directory owned by `dir`; returns its path.
std::string write_temp_file(const eventsd::e2e::temp_dir& dir, const std::string& name,
                            const std::string& text);

/// The `q`-quantile (0..1) of `values` (copied and sorted); 0 when empty.
double quantile(std::vector<double> values, double q);

// -- writes ------------------------------------------------------------------------

/// What `parallel_writes` did.
struct write_batch {
  std::vector<eventsd::e2e::write_ack> acks; ///< every accepted write, in no particular order
  std::vector<double> latency_ms;            ///< one per write, same order as `acks`
};

/// Runs `threads` threads, each with its own client, each making `per_thread`
/// writes with `write(client, thread_index, i)`; every answer must be 200 or 201
/// (else it throws, after joining, with the first bad answer).
write_batch parallel_writes(
  uint16_t port, size_t threads, size_t per_thread,
  const std::function<response(eventsd::e2e::http_client&, size_t, size_t)>& write);

/// `parallel_writes` of `POST /todo` with descriptions `<prefix> <thread>/<i>`
/// (ASCII), padded with `pad` (one code point) to `description_size` code points
/// when that is larger.
write_batch create_todos(uint16_t port, size_t threads, size_t per_thread,
                         const std::string& prefix, size_t description_size = 0,
                         const std::string& pad = "x");

} // namespace eventsd::http_tests
