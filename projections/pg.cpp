// Thread-safety: see pg.hpp (one thread per PGconn).
#include "projections/pg.hpp"

#include <array>
#include <charconv>
#include <vector>

namespace eventsd::projections::pg {

namespace {

std::string one_line(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  for (auto& ch : s)
    if (ch == '\n')
      ch = ' ';
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

} // namespace

outcome<conn_ptr> connect(const std::string& dsn) {
  // Later entries win, so the DSN (expanded from "dbname") overrides these defaults.
  static constexpr std::array<const char*, 8> keys{
    "connect_timeout", "keepalives",     "keepalives_idle", "keepalives_interval",
    "keepalives_count", "application_name", "dbname",       nullptr};
  std::array<const char*, 8> values{"3", "1", "10", "5", "3", "eventsd", dsn.c_str(), nullptr};
  conn_ptr c{PQconnectdbParams(keys.data(), values.data(), 1)};
  if (!c)
    return failure{true, "", "out of memory allocating a libpq connection"};
  if (PQstatus(c.get()) != CONNECTION_OK)
    return failure{true, "", one_line(PQerrorMessage(c.get()))};
  // libpq prints NOTICEs ("relation ... already exists, skipping") to stderr by default.
  PQsetNoticeProcessor(c.get(), [](void*, const char*) {}, nullptr);
  return c;
}

bool is_up(const PGconn* c) noexcept {
  return c != nullptr && PQstatus(c) == CONNECTION_OK;
}

outcome<result_ptr> exec(PGconn* c, const char* sql) {
  if (c == nullptr)
    return not_connected();
  return check(c, PQexec(c, sql));
}

outcome<result_ptr> exec(PGconn* c, const char* sql, std::span<const param> params) {
  if (c == nullptr)
    return not_connected();
  bound_params b{params};
  return check(c, PQexecParams(c, sql, static_cast<int>(b.values.size()), nullptr,
                               b.values.data(), nullptr, nullptr, 0));
}

outcome<void> prepare(PGconn* c, const char* name, const char* sql, int n_params) {
  if (c == nullptr)
    return not_connected();
  auto r = check(c, PQprepare(c, name, sql, n_params, nullptr));
  if (!r)
    return r.error();
  return {};
}

outcome<result_ptr> exec_prepared(PGconn* c, const char* name, std::span<const param> params) {
  if (c == nullptr)
    return not_connected();
  bound_params b{params};
  return check(c, PQexecPrepared(c, name, static_cast<int>(b.values.size()), b.values.data(),
                                 nullptr, nullptr, 0));
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
