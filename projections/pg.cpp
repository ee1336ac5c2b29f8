// Thread-safety: see pg.hpp (one thread per PGconn).
#include "projections/pg.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <poll.h>

namespace eventsd::projections::pg {

namespace {

std::string one_line(const char* msg) {
  // libpq's messages run over lines, their continuations indented by a tab.
  std::string s;
  for (const char* p = msg ? msg : ""; *p != '\0'; ++p) {
    bool space = *p == '\n' || *p == '\t' || *p == ' ';
    if (!space)
      s += *p;
    else if (!s.empty() && s.back() != ' ')
      s += ' ';
  }
  if (!s.empty() && s.back() == ' ')
    s.pop_back();
  return s;
}

// SQLSTATEs after which the session is gone even if libpq has not noticed yet:
// class 08 (connection exception) and the 57P0x shutdown/termination codes.
bool is_connection_sqlstate(std::string_view st) {
  return st.starts_with("08") || st == "57P01" || st == "57P02" || st == "57P03";
}

failure failure_of(PGconn* c, const PGresult* r) {
  failure f;
  if (r == nullptr) {
    f.message = one_line(PQerrorMessage(c));
  } else {
    if (const char* st = PQresultErrorField(r, PG_DIAG_SQLSTATE))
      f.sqlstate = st;
    f.message = one_line(PQresultErrorMessage(r));
    if (f.message.empty())
      f.message = one_line(PQerrorMessage(c));
  }
  if (f.message.empty())
    f.message = "unknown libpq failure";
  f.connection_lost = r == nullptr || PQstatus(c) != CONNECTION_OK
                      || is_connection_sqlstate(f.sqlstate);
  return f;
}

outcome<result_ptr> check(PGconn* c, PGresult* raw) {
  result_ptr r{raw};
  if (r) {
    switch (PQresultStatus(r.get())) {
      case PGRES_COMMAND_OK:
      case PGRES_TUPLES_OK:
      case PGRES_EMPTY_QUERY:
        return r;
      default:
        break;
    }
  }
  return failure_of(c, r.get());
}

struct bound_params {
  std::vector<std::string> storage; // NUL-terminated copies of string_views
  std::vector<const char*> values;

  explicit bound_params(std::span<const param> ps) {
    storage.reserve(ps.size());
    values.reserve(ps.size());
    for (const auto& p : ps) {
      if (p) {
        storage.emplace_back(*p);
        values.push_back(storage.back().c_str());
      } else {
        values.push_back(nullptr);
      }
    }
  }
};

failure not_connected() {
  return failure{true, "", "not connected"};
}

using clock = std::chrono::steady_clock;

enum class wait_outcome { ready, timed_out, cancelled, failed };

/// Waits until the connection's socket is ready for `events`, `deadline`
/// (none: forever) passes or `cancel` is set (checked every 100 ms).
wait_outcome wait_socket(PGconn* c, short events, std::optional<clock::time_point> deadline,
                         const std::atomic<bool>* cancel) {
  pollfd p{PQsocket(c), events, 0};
  if (p.fd < 0) {
    errno = EBADF;
    return wait_outcome::failed;
  }
  for (;;) {
    if (cancel != nullptr && cancel->load(std::memory_order_relaxed))
      return wait_outcome::cancelled;
    int ms = cancel != nullptr ? 100 : -1;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - clock::now());
      if (left.count() <= 0)
        return wait_outcome::timed_out;
      ms = static_cast<int>(std::min<int64_t>(left.count(), ms < 0 ? INT_MAX : ms));
    }
    int n = ::poll(&p, 1, ms);
    if (n > 0)
      return wait_outcome::ready;
    if (n < 0 && errno != EINTR)
      return wait_outcome::failed;
  }
}

using conninfo_ptr = std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)>;

/// The value of `keyword` in `options`; empty when unset.
std::string_view option(const conninfo_ptr& options, std::string_view keyword) {
  for (auto* o = options.get(); o != nullptr && o->keyword != nullptr; ++o)
    if (o->keyword == keyword && o->val != nullptr)
      return o->val;
  return {};
}

/// The connection's effective connect_timeout in seconds (0: none; libpq
/// waits at least 2).
int connect_timeout_of(PGconn* c) {
  conninfo_ptr options{PQconninfo(c), &PQconninfoFree};
  int seconds = std::atoi(std::string{option(options, "connect_timeout")}.c_str());
  return seconds <= 0 ? 0 : std::max(seconds, 2);
}

/// True when `dsn` names several hosts (libpq tries them in turn).
bool several_hosts(const std::string& dsn) {
  conninfo_ptr options{PQconninfoParse(dsn.c_str(), nullptr), &PQconninfoFree};
  return option(options, "host").find(',') != std::string_view::npos
         || option(options, "hostaddr").find(',') != std::string_view::npos;
}

failure timed_out(session s) {
  return failure{true, "",
                 "PostgreSQL did not answer within " + std::to_string(s.timeout.count())
                   + " ms (" + std::string{s.timeout_source} + "); the connection is closed"};
}

/// Sends what a PQsend* call queued and collects its results, never waiting
/// past the session's deadline. `sent` is that call's return value.
outcome<result_ptr> finish(session s, int sent) {
  PGconn* c = s.conn;
  if (sent == 0)
    return failure_of(c, nullptr);
  std::optional<clock::time_point> deadline;
  if (s.timeout.count() > 0)
    deadline = clock::now() + s.timeout;
  auto wait = [&](short events) -> std::optional<failure> {
    switch (wait_socket(c, events, deadline, s.cancel)) {
      case wait_outcome::ready:
        if (PQconsumeInput(c) == 0)
          return failure_of(c, nullptr);
        return std::nullopt;
      case wait_outcome::timed_out:
        return timed_out(s);
      case wait_outcome::cancelled:
        return failure{true, "", "the server is stopping; the connection is closed"};
      default:
        return failure{true, "", std::string{"waiting for PostgreSQL: "} + std::strerror(errno)};
    }
  };
  for (int left = PQflush(c); left != 0; left = PQflush(c)) {
    if (left < 0)
      return failure_of(c, nullptr);
    if (auto f = wait(POLLIN | POLLOUT))
      return *f;
  }
  result_ptr error, last;
  for (;;) {
    while (PQisBusy(c))
      if (auto f = wait(POLLIN))
        return *f;
    result_ptr r{PQgetResult(c)};
    if (!r)
      break;
    auto st = PQresultStatus(r.get());
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
    if (!ok && !error)
      error = std::move(r);
    else if (ok)
      last = std::move(r);
  }
  return check(c, (error ? error : last).release());
}

} // namespace

outcome<conn_ptr> connect(const std::string& dsn, const char* app,
                          const std::atomic<bool>* cancel) {
  // Later entries win, so the DSN (expanded from "dbname") overrides these defaults.
  static constexpr std::array<const char*, 8> keys{
    "connect_timeout", "keepalives",     "keepalives_idle", "keepalives_interval",
    "keepalives_count", "application_name", "dbname",       nullptr};
  std::array<const char*, 8> values{"3", "1", "10", "5", "3", app, dsn.c_str(), nullptr};
  // Connecting step by step, so that the wait can be cut short (libpq's
  // blocking connect would hold the thread for connect_timeout). Not with
  // several hosts: only the blocking connect gives up on a host that does
  // not answer and tries the next one.
  const bool step_by_step = !several_hosts(dsn);
  conn_ptr c{step_by_step ? PQconnectStartParams(keys.data(), values.data(), 1)
                          : PQconnectdbParams(keys.data(), values.data(), 1)};
  if (!c)
    return failure{true, "", "out of memory allocating a libpq connection"};
  if (PQstatus(c.get()) == CONNECTION_BAD)
    return failure{true, "", one_line(PQerrorMessage(c.get()))};
  std::optional<clock::time_point> deadline;
  if (auto seconds = connect_timeout_of(c.get()); seconds > 0)
    deadline = clock::now() + std::chrono::seconds{seconds};
  for (auto polled = step_by_step ? PGRES_POLLING_WRITING : PGRES_POLLING_OK;
       polled != PGRES_POLLING_OK;) {
    if (polled == PGRES_POLLING_FAILED)
      return failure{true, "", one_line(PQerrorMessage(c.get()))};
    switch (wait_socket(c.get(), polled == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline,
                        cancel)) {
      case wait_outcome::ready:
        break;
      case wait_outcome::timed_out:
        return failure{true, "", "connection to PostgreSQL timed out (connect_timeout)"};
      case wait_outcome::cancelled:
        return failure{true, "", "the server is stopping"};
      case wait_outcome::failed:
        return failure{true, "", std::string{"connecting to PostgreSQL: "} + std::strerror(errno)};
    }
    polled = PQconnectPoll(c.get());
  }
  // Sends must not block either: finish() flushes them under the deadline.
  if (PQsetnonblocking(c.get(), 1) != 0)
    return failure{true, "", one_line(PQerrorMessage(c.get()))};
  // libpq prints NOTICEs ("relation ... already exists, skipping") to stderr by default.
  PQsetNoticeProcessor(c.get(), [](void*, const char*) {}, nullptr);
  return c;
}

std::optional<std::string> dsn_problem(const std::string& dsn) {
  char* err = nullptr;
  conninfo_ptr options{PQconninfoParse(dsn.c_str(), &err), &PQconninfoFree};
  if (!options) {
    // libpq quotes parts of the DSN: a malformed URI whole (first taken out
    // here, as it may hold quotes itself), a token after which it expected
    // "=", a bad percent-encoding. Each quoted part becomes "…" but the
    // separators libpq names and the keyword of "invalid connection option".
    std::string why = one_line(err ? err : "out of memory");
    PQfreemem(err);
    for (auto at = why.find(dsn); !dsn.empty() && at != std::string::npos; at = why.find(dsn))
      why.replace(at, dsn.size(), "…");
    bool keyword = why.starts_with("invalid connection option ");
    std::string out;
    size_t at = 0;
    for (auto open = why.find('"'); open != std::string::npos; open = why.find('"', at)) {
      auto close = why.find('"', open + 1);
      if (close == std::string::npos)
        break;
      auto quoted = why.substr(open + 1, close - open - 1);
      bool keep = quoted == "=" || quoted == "]" || quoted == ":" || quoted == "/" || keyword;
      out += why.substr(at, open - at) + "\"" + (keep ? quoted : "…") + "\"";
      at = close + 1;
    }
    // An unpaired quote: what follows it may be DSN text.
    auto rest = why.substr(at);
    return out + rest.substr(0, rest.find('"'));
  }
  // One port, or one per host (comma-separated); empty means the default.
  for (auto ports = option(options, "port"); !ports.empty();) {
    auto comma = std::min(ports.find(','), ports.size());
    auto port = ports.substr(0, comma);
    unsigned n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (!port.empty()
        && (ec != std::errc{} || end != port.data() + port.size() || n == 0 || n > 65535))
      return "its port is not a number 1..65535";
    ports = comma < ports.size() ? ports.substr(comma + 1) : std::string_view{};
  }
  static constexpr std::string_view modes[] = {"disable", "allow",     "prefer",
                                               "require", "verify-ca", "verify-full"};
  if (auto mode = option(options, "sslmode");
      !mode.empty() && std::find(std::begin(modes), std::end(modes), mode) == std::end(modes))
    return "its sslmode is none of disable, allow, prefer, require, verify-ca, verify-full";
  return std::nullopt;
}

bool is_up(const PGconn* c) noexcept {
  return c != nullptr && PQstatus(c) == CONNECTION_OK;
}

outcome<result_ptr> exec(session s, const char* sql) {
  if (s.conn == nullptr)
    return not_connected();
  return finish(s, PQsendQuery(s.conn, sql));
}

outcome<result_ptr> exec(session s, const char* sql, std::span<const param> params) {
  if (s.conn == nullptr)
    return not_connected();
  bound_params b{params};
  return finish(s, PQsendQueryParams(s.conn, sql, static_cast<int>(b.values.size()), nullptr,
                                     b.values.data(), nullptr, nullptr, 0));
}

outcome<void> prepare(session s, const char* name, const char* sql, int n_params) {
  if (s.conn == nullptr)
    return not_connected();
  auto r = finish(s, PQsendPrepare(s.conn, name, sql, n_params, nullptr));
  if (!r)
    return r.error();
  return {};
}

outcome<result_ptr> exec_prepared(session s, const char* name, std::span<const param> params) {
  if (s.conn == nullptr)
    return not_connected();
  bound_params b{params};
  return finish(s, PQsendQueryPrepared(s.conn, name, static_cast<int>(b.values.size()),
                                       b.values.data(), nullptr, nullptr, 0));
}

bool is_null(const PGresult* r, int row, int col) noexcept {
  return PQgetisnull(r, row, col) != 0;
}

std::string_view text(const PGresult* r, int row, int col) noexcept {
  if (PQgetisnull(r, row, col))
    return {};
  return {PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col))};
}

std::optional<uint64_t> to_u64(const PGresult* r, int row, int col) noexcept {
  if (PQgetisnull(r, row, col))
    return std::nullopt;
  auto s = text(r, row, col);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size())
    return std::nullopt;
  return v;
}

void append_array_element(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char ch : s) {
    if (ch == '"' || ch == '\\')
      out.push_back('\\');
    out.push_back(ch);
  }
  out.push_back('"');
}

void append_array_element(std::string& out, const std::optional<std::string>& s) {
  if (s)
    append_array_element(out, std::string_view{*s});
  else
    out += "NULL";
}

bool is_plain_identifier(std::string_view s, size_t max_len) noexcept {
  if (s.empty() || s.size() > max_len)
    return false;
  auto lower = [](char ch) { return (ch >= 'a' && ch <= 'z') || ch == '_'; };
  if (!lower(s.front()))
    return false;
  for (char ch : s)
    if (!lower(ch) && !(ch >= '0' && ch <= '9'))
      return false;
  return true;
}

} // namespace eventsd::projections::pg
