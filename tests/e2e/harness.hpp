// End-to-end test harness: runs the real `eventsd` binary as a child process
// against its own PostgreSQL database and talks to it over loopback HTTP.
// Thread-safety: a `server` is driven from one thread; an `http_client` is used
// by one thread at a time (give each thread its own); `raw_exchange` is free.
#pragma once

#include <chrono>
#include <cstdlib>
#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace eventsd::e2e {

using json = nlohmann::json;

/// The DSN from EVENTSD_TEST_PG_DSN. Throws a clear error when it is unset or empty.
std::string test_dsn();

/// `dsn` with its `dbname` replaced by `dbname` (conninfo strings and URIs alike).
std::string dsn_with_dbname(const std::string& dsn, const std::string& dbname);

/// A uniquely named PostgreSQL database (`eventsd_e2e_<random>`), created on the
/// server of EVENTSD_TEST_PG_DSN and dropped `WITH (FORCE)` on destruction.
class test_database {
public:
  test_database();
  ~test_database();
  test_database(const test_database&) = delete;
  test_database& operator=(const test_database&) = delete;

  /// Conninfo of the new database.
  const std::string& dsn() const { return dsn_; }
  const std::string& name() const { return name_; }

private:
  std::string admin_dsn_;
  std::string name_;
  std::string dsn_;
};

/// `dsn` with its `host` and `port` replaced (and `hostaddr` dropped).
std::string dsn_with_host_port(const std::string& dsn, const std::string& host, uint16_t port);

/// The `host` and `port` that `dsn` names (defaults: 127.0.0.1 and 5432).
std::pair<std::string, uint16_t> host_port_of(const std::string& dsn);

/// A loopback TCP port that was free a moment ago (bound to port 0, then
/// released): nothing listens on it. Throws when none can be bound.
uint16_t free_port();

/// A loopback TCP port that completes handshakes (the kernel's backlog) and
/// never answers: a PostgreSQL host that hangs before its startup reply.
class silent_listener {
public:
  /// Throws when no port can be bound.
  silent_listener();
  ~silent_listener();
  silent_listener(const silent_listener&) = delete;
  silent_listener& operator=(const silent_listener&) = delete;

  uint16_t port() const { return port_; }
  /// The listening socket, to see (poll, accept) who connected.
  int fd() const { return fd_; }

private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

/// A loopback TCP forwarder to stand between eventsd and PostgreSQL: `cut()`
/// closes every forwarded connection and refuses new ones (as if PostgreSQL
/// were down); `stall()` keeps them open but forwards nothing (as if it hung);
/// `restore()` forwards again on the same port. Thread-safe.
class tcp_proxy {
public:
  tcp_proxy(std::string target_host, uint16_t target_port);
  ~tcp_proxy();
  tcp_proxy(const tcp_proxy&) = delete;
  tcp_proxy& operator=(const tcp_proxy&) = delete;

  /// The local port that forwards to the target.
  uint16_t port() const { return port_; }
  void cut();
  void restore();
  /// Stops accepting and forwarding but keeps every connection open, as a
  /// PostgreSQL that hangs (frozen, or a network black hole) would.
  void stall();

private:
  struct state;
  std::unique_ptr<state> state_;
  uint16_t port_ = 0;
};

/// A fresh directory under $TMPDIR (or /tmp), removed recursively on destruction.
class temp_dir {
public:
  explicit temp_dir(const std::string& prefix = "eventsd-e2e-");
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

/// A PostgreSQL that refuses every connection at once (nothing listens there).
inline const std::string unreachable_dsn =
  "host=127.0.0.1 port=1 dbname=eventsd user=postgres connect_timeout=1";

/// Options of a `server`.
struct server_options {
  /// Extra command-line arguments, e.g. `--projection.mode=unit-of-work`.
  std::vector<std::string> args;
  /// When set, used as `--postgres.dsn` and no database is created (e.g. an
  /// unreachable server). Otherwise a fresh `test_database` is created.
  std::optional<std::string> dsn;
  /// How long to wait for the "listening on" line (default 20 s).
  std::chrono::milliseconds start_timeout{20000};

  /// Options with just these extra arguments.
  static server_options with_args(std::vector<std::string> extra) {
    server_options o;
    o.args = std::move(extra);
    return o;
  }

  /// Options with these extra arguments and a PostgreSQL that is never reached.
  static server_options without_postgres(std::vector<std::string> extra) {
    auto o = with_args(std::move(extra));
    o.dsn = unreachable_dsn;
    return o;
  }
};

/// The real eventsd (EVENTSD_BINARY) on a fresh storage directory and database,
/// listening on a free loopback port. The directory and the database outlive
/// restarts of the process and are removed with the `server`.
/// REQUIRES: the thread that (re)starts the process outlives it: the child gets
/// SIGKILL when that thread ends (so a crashed test leaves no server behind).
class server {
public:
  /// Creates the storage directory and database and starts the process.
  /// Throws with the process's output when it does not start listening in time.
  explicit server(server_options opts = {});
  /// SIGTERM, then SIGKILL after 5 s; removes the directory, drops the database.
  /// Prints the process's output to stderr when unwinding from a failure (or
  /// always with EVENTSD_E2E_VERBOSE=1).
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Starts the process again (same directory, same database, same args);
  /// REQUIRES: it is not running. The port changes.
  void start();
  /// Sends `signal` (`count` times: each further one 5 ms after the process
  /// said it is shutting down, so that the kernel does not merge it with the
  /// first) and waits (SIGKILL after `patience`). Returns the exit status as
  /// from waitpid, or -1 when nothing ran.
  int stop(int count = 1, std::chrono::milliseconds patience = std::chrono::seconds{5},
           int signal = SIGTERM);
  /// Sends `signal` and nothing else (no wait, no reaping).
  void signal(int signal);
  /// Waits up to `limit` for the process to end by itself (no signal) and
  /// reaps it; its status as from waitpid, or nullopt while it still runs.
  std::optional<int> wait_exit(std::chrono::milliseconds limit);
  /// Sends SIGKILL and reaps the process.
  void kill();
  /// stop() then start().
  void restart();
  bool running() const { return pid_ > 0; }

  uint16_t port() const { return port_; }
  /// The storage directory passed as `--storage.dir`.
  const std::string& storage_dir() const { return storage_dir_; }
  const std::string& dsn() const { return dsn_; }
  /// Everything the process has written to stdout and stderr so far.
  std::string output() const;

private:
  struct output_pump;
  server_options opts_;
  std::unique_ptr<temp_dir> dir_;
  std::unique_ptr<test_database> db_;
  std::string dsn_;
  std::string storage_dir_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::shared_ptr<output_pump> pump_;
  std::string previous_output_;
};

/// The one server that every test case of an executable shares, started by the
/// first call (with `opts`, then `seed` run on it once); later calls return it
/// and ignore their arguments. When the start or the seed fails, that call
/// throws and so does every later one, at once, with the first error.
/// REQUIRES: called first from the thread that runs the tests (see `server`).
server& shared_server(const server_options& opts = {},
                      const std::function<void(server&)>& seed = {});

/// A server on a fresh database whose PostgreSQL connections pass through
/// `proxy`, so that a test can cut them or make PostgreSQL hang.
struct server_behind_proxy {
  test_database db;
  tcp_proxy proxy;
  server srv;

  /// `args`: extra command-line arguments, as for server_options;
  /// `dsn_options`: libpq options added to the DSN.
  explicit server_behind_proxy(std::vector<std::string> args,
                               const std::string& dsn_options = "connect_timeout=2");
};

/// What `run_command` saw of a child process.
struct command_result {
  int status = -1;        ///< as from waitpid
  bool timed_out = false; ///< killed (SIGKILL) after the timeout, or on `stop_at`
  std::string output;     ///< stdout and stderr, merged

  /// The exit status, or 128 + signal when a signal ended it, or -1 when it
  /// timed out.
  int exit_code() const;
};

/// Options of `run_command`, meant for designated initializers, e.g.
/// `{.timeout = 20s, .cwd = dir, .stop_at = "listening on"}`. Every member has
/// an initializer, so that naming only some of them draws no warning
/// (-Wmissing-field-initializers).
struct command_options {
  /// SIGKILL after this long.
  std::chrono::milliseconds timeout{60000};
  /// The child's working directory ("" keeps this process's).
  std::string cwd{};
  /// "NAME=value" entries added to this process's environment (replacing its value).
  std::vector<std::string> env{};
  /// Names of variables of this process's environment the child does not get.
  std::vector<std::string> unset_env{};
  /// The child's stdin ("" is /dev/null).
  std::string stdin_file{};
  /// When not empty, SIGKILL as soon as the output contains it (`timed_out` then).
  std::string stop_at{};
  /// When set, called with the child's pid once it runs, before any output is
  /// read (when it throws, the child is killed and reaped first).
  std::function<void(pid_t)> with_child{};
};

/// Runs `argv` (argv[0] looked up on PATH) to its end, with stdout and stderr
/// captured and no other descriptor of this process. The child gets SIGKILL
/// when the calling thread ends.
command_result run_command(const std::vector<std::string>& argv,
                           const command_options& opts = {});

/// Case-insensitive ordering for header names.
struct ci_less {
  bool operator()(const std::string& a, const std::string& b) const;
};

using header_list = std::vector<std::pair<std::string, std::string>>;

/// An HTTP answer.
struct response {
  unsigned status = 0;
  std::multimap<std::string, std::string, ci_less> headers;
  std::string body;

  /// The first value of header `name` (any letter case), or nullopt.
  std::optional<std::string> header(const std::string& name) const;
  /// The body parsed as JSON; throws with the body when it is not JSON.
  json json_body() const;
};

/// A synchronous HTTP/1.1 client over one keep-alive loopback connection
/// (reconnects when the server closed it). Not thread-safe.
class http_client {
public:
  explicit http_client(uint16_t port);
  ~http_client();
  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// Sends one request; `body` nullopt sends none. Adds Host (unless
  /// `headers` names one) and Content-Length only; pass Content-Type in
  /// `headers`. Throws on I/O errors.
  response request(const std::string& method, const std::string& target,
                   const std::optional<std::string>& body = std::nullopt,
                   const header_list& headers = {});

  /// GET `target`.
  response get(const std::string& target, const header_list& headers = {});
  /// `method` with a JSON body and Content-Type: application/json.
  response send_json(const std::string& method, const std::string& target, const json& body,
                     const header_list& headers = {});
  response post_json(const std::string& target, const json& body, const header_list& headers = {});
  response put_json(const std::string& target, const json& body, const header_list& headers = {});
  /// PUT without a body.
  response put(const std::string& target, const header_list& headers = {});

  /// Connections opened so far (1 while keep-alive holds).
  int connections() const { return connections_; }
  uint16_t port() const { return port_; }

private:
  struct impl;
  std::unique_ptr<impl> impl_;
  uint16_t port_;
  int connections_ = 0;
};

/// Makes SIGPIPE ignored (once per process): writing to a socket the peer
/// closed then fails with EPIPE instead of killing the test.
void ignore_sigpipe();

/// A blocking TCP connection to 127.0.0.1:`port` (SIGPIPE ignored); throws
/// when it cannot connect. `receive_buffer` > 0 sets SO_RCVBUF, before
/// connecting (the window is offered in the SYN): a slow reader.
int connect_loopback(uint16_t port, int receive_buffer = 0);

/// Opens a new connection, writes `bytes` as they are (errors while writing are
/// ignored: the server may answer and close early), then reads until the server
/// closes, a final (not 1xx) response is complete (unless `until_close`), or
/// `timeout` passes. Returns everything read.
std::string raw_exchange(uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds{5000},
                         bool until_close = false);

/// Like raw_exchange, but writes `pieces` one at a time, `pause` apart (each a
/// packet of its own), then reads until a final response is complete or
/// `timeout` passes.
std::string raw_exchange_in_pieces(uint16_t port, const std::vector<std::string>& pieces,
                                   std::chrono::milliseconds pause,
                                   std::chrono::milliseconds timeout = std::chrono::milliseconds{5000});

/// Parses the first HTTP/1.1 response in `raw` (status, headers, body by
/// Content-Length). Throws when `raw` holds no complete response head.
response parse_response(const std::string& raw);

/// A write's answer `{id, version, position}`.
struct write_ack {
  std::string id;
  uint64_t version = 0;
  uint64_t position = 0;
};

/// The ack in a write answer's body. Throws when the body lacks one.
write_ack ack_of(const response& r);

/// The highest position in `$all` (0 when empty), paging from `hint` (a
/// position known to exist, or 1).
uint64_t all_head(http_client& c, uint64_t hint = 1);

/// A counter or gauge without labels of GET /metrics (-1 when absent).
double metric(http_client& c, const std::string& name);

/// Every event of `$all` from `from` on, paging with `next`.
std::vector<json> read_all(http_client& c, uint64_t from = 1);

/// The one projection that GET /admin/projections lists (sent with `headers`,
/// e.g. an Authorization). Throws unless it answers 200 with exactly one item.
json projection_status(http_client& c, const header_list& headers = {});

/// The entity tag of `version`: `"<version>"` with the quotes.
std::string etag_of(uint64_t version);

/// True when `s` is a canonical lowercase UUID (8-4-4-4-12 hex).
bool is_canonical_uuid(const std::string& s);

/// True when `s` is RFC 3339 UTC with milliseconds, e.g. 2026-11-26T07:04:41.123Z.
bool is_rfc3339_ms_utc(const std::string& s);

/// A random canonical UUID (version 4).
std::string random_uuid();

/// `s` in upper case (ASCII).
std::string upper(std::string s);

/// `s` in lower case (ASCII).
std::string lower(std::string s);

/// Polls `fn` every `every` until it returns true or `within` passes.
/// Returns the last result.
template <class F>
bool eventually(F&& fn, std::chrono::milliseconds within = std::chrono::milliseconds{10000},
                std::chrono::milliseconds every = std::chrono::milliseconds{20});

void sleep_for(std::chrono::milliseconds d);

/// Runs `start` (which starts a server) with EVENTSD_FAILPOINTS set to
/// `names`: the process started inherits it, later restarts do not. Unset
/// again when `start` returns or throws.
template <class F>
void with_failpoints(const char* names, F&& start) {
  ::setenv("EVENTSD_FAILPOINTS", names, 1);
  struct unset {
    ~unset() { ::unsetenv("EVENTSD_FAILPOINTS"); }
  } at_exit;
  start();
}

template <class F>
bool eventually(F&& fn, std::chrono::milliseconds within, std::chrono::milliseconds every) {
  auto deadline = std::chrono::steady_clock::now() + within;
  for (;;) {
    if (fn())
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    sleep_for(every);
  }
}

} // namespace eventsd::e2e
