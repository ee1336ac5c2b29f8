#include "e2e/harness.hpp"

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <libpq-fe.h>

extern char** environ;

namespace eventsd::e2e {

void ignore_sigpipe() {
  static std::once_flag once;
  std::call_once(once, [] { std::signal(SIGPIPE, SIG_IGN); });
}

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

std::mt19937_64& rng() {
  static thread_local std::mt19937_64 gen{std::random_device{}() ^ (uint64_t(::getpid()) << 32)
                                          ^ uint64_t(std::hash<std::thread::id>{}(
                                            std::this_thread::get_id()))};
  return gen;
}

std::string random_hex(size_t digits) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < digits; ++i)
    s += hex[rng()() % 16];
  return s;
}

struct pg_conn_deleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct pg_result_deleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using pg_conn_ptr = std::unique_ptr<PGconn, pg_conn_deleter>;
using pg_result_ptr = std::unique_ptr<PGresult, pg_result_deleter>;

pg_conn_ptr pg_connect(const std::string& dsn) {
  pg_conn_ptr c{PQconnectdb(dsn.c_str())};
  if (!c || PQstatus(c.get()) != CONNECTION_OK)
    throw std::runtime_error("cannot connect to PostgreSQL at `" + dsn
                             + "`: " + (c ? PQerrorMessage(c.get()) : "out of memory")
                             + " (start it with scripts/lib/pg.sh's pg_start)");
  return c;
}

void pg_exec(PGconn* c, const std::string& sql) {
  pg_result_ptr r{PQexec(c, sql.c_str())};
  if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK)
    throw std::runtime_error("`" + sql + "` failed: " + PQerrorMessage(c));
}

std::string conninfo_quote(const std::string& v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + "'";
}

} // namespace

// -- PostgreSQL ---------------------------------------------------------------

std::string test_dsn() {
  const char* v = std::getenv("EVENTSD_TEST_PG_DSN");
  if (v == nullptr || *v == '\0')
    throw std::runtime_error(
      "EVENTSD_TEST_PG_DSN is not set: the e2e tests need a real PostgreSQL. Run them through "
      "scripts/test (which starts a private cluster), or start one with scripts/lib/pg.sh's "
      "pg_start and export e.g. "
      "EVENTSD_TEST_PG_DSN='host=127.0.0.1 port=55432 dbname=eventsd_test user=postgres'.");
  return v;
}

namespace {

/// The options of `dsn` as keyword -> value (only those set).
std::vector<std::pair<std::string, std::string>> conninfo_of(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    std::string msg = err ? err : "out of memory";
    PQfreemem(err);
    throw std::runtime_error("cannot parse the DSN `" + dsn + "`: " + msg);
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (auto* o = opts; o->keyword != nullptr; ++o)
    if (o->val != nullptr)
      out.emplace_back(o->keyword, o->val);
  PQconninfoFree(opts);
  return out;
}

std::string conninfo_string(const std::vector<std::pair<std::string, std::string>>& opts) {
  std::string out;
  for (auto& [k, v] : opts)
    out += (out.empty() ? "" : " ") + k + "=" + conninfo_quote(v);
  return out;
}

} // namespace

std::string dsn_with_dbname(const std::string& dsn, const std::string& dbname) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& kv : conninfo_of(dsn))
    if (kv.first != "dbname")
      out.push_back(kv);
  out.emplace_back("dbname", dbname);
  return conninfo_string(out);
}

std::string dsn_with_host_port(const std::string& dsn, const std::string& host, uint16_t port) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& kv : conninfo_of(dsn))
    if (kv.first != "host" && kv.first != "hostaddr" && kv.first != "port")
      out.push_back(kv);
  out.emplace_back("host", host);
  out.emplace_back("port", std::to_string(port));
  return conninfo_string(out);
}

std::pair<std::string, uint16_t> host_port_of(const std::string& dsn) {
  std::string host = "127.0.0.1";
  uint16_t port = 5432;
  for (auto& [k, v] : conninfo_of(dsn)) {
    if (k == "host" || k == "hostaddr")
      host = v;
    else if (k == "port")
      port = static_cast<uint16_t>(std::stoi(v));
  }
  return {host, port};
}

test_database::test_database()
    : admin_dsn_(test_dsn()), name_("eventsd_e2e_" + random_hex(12)),
      dsn_(dsn_with_dbname(admin_dsn_, name_)) {
  auto c = pg_connect(admin_dsn_);
  pg_exec(c.get(), "CREATE DATABASE " + name_);
}

test_database::~test_database() {
  try {
    auto c = pg_connect(admin_dsn_);
    pg_exec(c.get(), "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception& e) {
    std::cerr << "e2e: cannot drop database " << name_ << ": " << e.what() << "\n";
  }
}

// -- tcp_proxy ------------------------------------------------------------------

struct tcp_proxy::state {
  std::string host;
  uint16_t target_port = 0;
  uint16_t port = 0;
  int listener = -1;
  int wake[2] = {-1, -1};
  std::mutex mtx;
  std::condition_variable cv;
  bool want_up = true;    // guarded by mtx
  bool is_up = true;      // guarded by mtx
  bool quit = false;      // guarded by mtx
  bool stalled = false;   // guarded by mtx: nothing is accepted or forwarded
  std::vector<std::pair<int, int>> links; // proxy thread only
  std::thread thread;

  int listen_on(uint16_t p) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(p);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
      auto err = std::string{std::strerror(errno)};
      ::close(fd);
      throw std::runtime_error("tcp_proxy: cannot listen on port " + std::to_string(p) + ": "
                               + err);
    }
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    return fd;
  }

  int connect_target() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(host.c_str(), std::to_string(target_port).c_str(), &hints, &res) != 0)
      return -1;
    int fd = -1;
    for (auto* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
      fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd >= 0 && ::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        ::close(fd);
        fd = -1;
      }
    }
    ::freeaddrinfo(res);
    return fd;
  }

  void drop_links() {
    for (auto& [a, b] : links) {
      ::close(a);
      ::close(b);
    }
    links.clear();
  }

  static bool send_all(int fd, const char* p, size_t n) {
    while (n > 0) {
      auto w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  void run() {
    char buf[65536];
    for (;;) {
      bool frozen = false;
      {
        std::lock_guard lock{mtx};
        if (quit)
          break;
        frozen = stalled;
        if (want_up != is_up) {
          if (!want_up) {
            drop_links();
            ::close(listener);
            listener = -1;
          } else {
            try {
              listener = listen_on(port);
            } catch (const std::exception& e) {
              std::cerr << "e2e: " << e.what() << "\n";
            }
          }
          is_up = want_up;
          cv.notify_all();
        }
      }
      std::vector<pollfd> fds;
      fds.push_back({wake[0], POLLIN, 0});
      if (frozen) { // like a server that stopped answering: connections stay open
        if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR)
          break;
        char drain[64];
        if (fds[0].revents & POLLIN)
          (void)!::read(wake[0], drain, sizeof drain);
        continue;
      }
      if (listener >= 0)
        fds.push_back({listener, POLLIN, 0});
      size_t first_link = fds.size();
      for (auto& [a, b] : links) {
        fds.push_back({a, POLLIN, 0});
        fds.push_back({b, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR)
        break;
      if (fds[0].revents & POLLIN) {
        char drain[64];
        (void)!::read(wake[0], drain, sizeof drain);
      }
      // Only links that were polled this round have revents to look at.
      const size_t polled_links = links.size();
      if (listener >= 0 && (fds[1].revents & POLLIN)) {
        int in = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (in >= 0) {
          int out = connect_target();
          if (out < 0)
            ::close(in);
          else
            links.emplace_back(in, out);
        }
      }
      std::vector<size_t> dead;
      for (size_t i = 0; i < polled_links; ++i) {
        auto& [a, b] = links[i];
        bool ok = true;
        for (int side = 0; side < 2 && ok; ++side) {
          auto& p = fds[first_link + 2 * i + side];
          if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
          int from = side == 0 ? a : b, to = side == 0 ? b : a;
          auto n = ::recv(from, buf, sizeof buf, MSG_DONTWAIT);
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
          ok = n > 0 && send_all(to, buf, static_cast<size_t>(n));
        }
        if (!ok)
          dead.push_back(i);
      }
      for (auto i = dead.rbegin(); i != dead.rend(); ++i) {
        ::close(links[*i].first);
        ::close(links[*i].second);
        links.erase(links.begin() + static_cast<std::ptrdiff_t>(*i));
      }
    }
    drop_links();
    if (listener >= 0)
      ::close(listener);
  }

  void set_up(bool up) {
    std::unique_lock lock{mtx};
    want_up = up;
    (void)!::write(wake[1], "x", 1);
    cv.wait(lock, [&] { return is_up == want_up; });
  }
};

tcp_proxy::tcp_proxy(std::string target_host, uint16_t target_port)
    : state_(std::make_unique<state>()) {
  ignore_sigpipe();
  state_->host = std::move(target_host);
  state_->target_port = target_port;
  if (::pipe2(state_->wake, O_CLOEXEC | O_NONBLOCK) != 0)
    throw std::runtime_error(std::string{"pipe2 failed: "} + std::strerror(errno));
  state_->listener = state_->listen_on(0);
  port_ = state_->port;
  state_->thread = std::thread{[s = state_.get()] { s->run(); }};
}

tcp_proxy::~tcp_proxy() {
  {
    std::lock_guard lock{state_->mtx};
    state_->quit = true;
  }
  (void)!::write(state_->wake[1], "x", 1);
  state_->thread.join();
  ::close(state_->wake[0]);
  ::close(state_->wake[1]);
}

void tcp_proxy::cut() {
  state_->set_up(false);
}

void tcp_proxy::restore() {
  {
    std::lock_guard lock{state_->mtx};
    state_->stalled = false;
  }
  state_->set_up(true);
}

void tcp_proxy::stall() {
  std::lock_guard lock{state_->mtx};
  state_->stalled = true;
  (void)!::write(state_->wake[1], "x", 1);
}

// -- temp_dir -----------------------------------------------------------------

temp_dir::temp_dir(const std::string& prefix) {
  std::string base = "/tmp";
  if (const char* t = std::getenv("TMPDIR"); t && *t)
    base = t;
  std::string tmpl = base + "/" + prefix + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr)
    throw std::runtime_error("mkdtemp(" + tmpl + ") failed: " + std::strerror(errno));
  path_ = buf.data();
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// -- child processes ----------------------------------------------------------

namespace {

/// In a forked child: says `what` on stderr and exits with `code`.
template <size_t N>
[[noreturn]] void child_fails(const char (&what)[N], int code) {
  (void)!::write(STDERR_FILENO, what, N - 1);
  ::_exit(code);
}

/// A child started by `spawn`.
struct child {
  pid_t pid = -1;
  int output = -1; ///< the read end of its stdout and stderr, merged
};

/// Starts `argv` (argv[0] looked up on PATH) with the environment `env`
/// ("NAME=value" entries), stdin from `stdin_file`, in `cwd` ("" keeps this
/// process's) and with no other descriptor of this process. The child gets
/// SIGKILL when the calling thread ends.
child spawn(std::vector<std::string> argv, std::vector<std::string> env,
            const std::string& stdin_file, const std::string& cwd) {
  if (argv.empty())
    throw std::invalid_argument("spawn: empty argv");
  // Everything the child needs is built here: after fork it may not allocate.
  std::vector<char*> cargv, envp;
  for (auto& a : argv)
    cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);

  const int max_fd = static_cast<int>(std::min<long>(::sysconf(_SC_OPEN_MAX), 65536));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string{"pipe2 failed: "} + std::strerror(errno));
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw std::runtime_error(std::string{"fork failed: "} + std::strerror(errno));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int in = ::open(stdin_file.c_str(), O_RDONLY);
    if (in < 0)
      child_fails("e2e: cannot open the child's stdin\n", 126);
    ::dup2(in, STDIN_FILENO);
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    // Nothing else of ours may leak into the child (a postmaster, say, lives on
    // and would hold our pipes and sockets open).
    if (::syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
      for (int fd = 3; fd < max_fd; ++fd) // a kernel or filter without close_range
        ::close(fd);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0)
      child_fails("e2e: chdir failed\n", 126);
    ::execvpe(cargv[0], cargv.data(), envp.data());
    child_fails("e2e: exec failed\n", 127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

/// This process's environment with the entries of `set` ("NAME=value") in place
/// of its own and without the variables named in `unset`.
std::vector<std::string> environment(const std::vector<std::string>& set = {},
                                     const std::vector<std::string>& unset = {}) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    auto named = [&](const std::string& name) { return kv.rfind(name + "=", 0) == 0; };
    auto replaced = [&](const std::string& entry) {
      return named(entry.substr(0, entry.find('=')));
    };
    if (std::none_of(unset.begin(), unset.end(), named)
        && std::none_of(set.begin(), set.end(), replaced))
      out.push_back(kv);
  }
  out.insert(out.end(), set.begin(), set.end());
  return out;
}

} // namespace

int command_result::exit_code() const {
  if (timed_out)
    return -1;
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return -1;
}

command_result run_command(const std::vector<std::string>& argv, const command_options& opts) {
  auto c = spawn(argv, environment(opts.env, opts.unset_env),
                 opts.stdin_file.empty() ? "/dev/null" : opts.stdin_file, opts.cwd);
  command_result r;
  // Stops reading and reaps the child, SIGKILLed first when `kill_it`.
  auto finish = [&](bool kill_it) {
    if (kill_it)
      ::kill(c.pid, SIGKILL);
    ::close(c.output);
    while (::waitpid(c.pid, &r.status, 0) < 0 && errno == EINTR) {
    }
  };
  if (opts.with_child) {
    try {
      opts.with_child(c.pid);
    } catch (...) {
      finish(true);
      throw;
    }
  }
  auto deadline = std::chrono::steady_clock::now() + opts.timeout;
  char buf[8192];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0
        || (!opts.stop_at.empty() && r.output.find(opts.stop_at) != std::string::npos)) {
      r.timed_out = true;
      break;
    }
    pollfd p{c.output, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 100))) <= 0)
      continue; // EINTR, or time to look at the deadline again
    auto got = ::read(c.output, buf, sizeof buf);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break;
    r.output.append(buf, static_cast<size_t>(got));
  }
  finish(r.timed_out);
  return r;
}

// -- server -------------------------------------------------------------------

/// Reads the child's merged stdout/stderr into a buffer until EOF.
struct server::output_pump {
  int fd = -1;
  std::mutex mtx;
  std::condition_variable cv;
  std::string text;
  bool eof = false;
  std::thread thread;

  explicit output_pump(int read_fd) : fd(read_fd) {
    thread = std::thread{[this] {
      char buf[4096];
      for (;;) {
        auto n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
          continue;
        std::lock_guard lock{mtx};
        if (n <= 0) {
          eof = true;
          cv.notify_all();
          return;
        }
        text.append(buf, static_cast<size_t>(n));
        cv.notify_all();
      }
    }};
  }

  ~output_pump() {
    if (thread.joinable())
      thread.join();
    ::close(fd);
  }

  std::string snapshot() {
    std::lock_guard lock{mtx};
    return text;
  }
};

server::server(server_options opts) : opts_(std::move(opts)) {
  ignore_sigpipe();
  // Every e2e test needs PostgreSQL configured, even one that points eventsd elsewhere.
  test_dsn();
  const char* bin = std::getenv("EVENTSD_BINARY");
  if (bin == nullptr || *bin == '\0')
    throw std::runtime_error("EVENTSD_BINARY is not set: run the e2e tests through ctest, or "
                             "export EVENTSD_BINARY=<build>/eventsd");
  if (opts_.dsn) {
    dsn_ = *opts_.dsn;
  } else {
    db_ = std::make_unique<test_database>();
    dsn_ = db_->dsn();
  }
  dir_ = std::make_unique<temp_dir>();
  storage_dir_ = dir_->path() + "/data";
  start();
}

server::~server() {
  if (running())
    stop();
  // A failed REQUIRE unwinds through here: show what the server said.
  const char* verbose = std::getenv("EVENTSD_E2E_VERBOSE");
  if (std::uncaught_exceptions() > 0 || (verbose != nullptr && *verbose == '1')) {
    auto out = output();
    if (out.size() > 8192)
      out = "...\n" + out.substr(out.size() - 8192);
    std::cerr << "---- eventsd output (" << storage_dir_ << ") ----\n" << out
              << "---- end of eventsd output ----\n";
  }
  db_.reset();
  dir_.reset();
}

void server::start() {
  if (running())
    throw std::logic_error("server::start: already running");
  std::string bin = std::getenv("EVENTSD_BINARY");
  std::vector<std::string> args{bin, "--storage.dir=" + storage_dir_, "--http.port=0",
                                "--http.address=127.0.0.1", "--postgres.dsn=" + dsn_};
  args.insert(args.end(), opts_.args.begin(), opts_.args.end());
  // In its own directory: a relative config/eventsd.conf must not leak in from the test's cwd.
  auto c = spawn(args, environment(), "/dev/null", dir_->path());
  pid_ = c.pid;
  pump_ = std::make_shared<output_pump>(c.output);

  static const std::regex listening{R"(listening on http://[^:\s]+:(\d+))"};
  auto deadline = std::chrono::steady_clock::now() + opts_.start_timeout;
  std::smatch m;
  std::unique_lock lock{pump_->mtx};
  for (;;) {
    if (std::regex_search(pump_->text, m, listening)) {
      port_ = static_cast<uint16_t>(std::stoi(m[1].str()));
      return;
    }
    if (pump_->eof || std::chrono::steady_clock::now() >= deadline) {
      bool timed_out = !pump_->eof;
      lock.unlock();
      if (timed_out)
        ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      auto out = pump_->snapshot();
      pump_.reset();
      previous_output_ += out;
      std::string how = timed_out ? "did not print `listening on` within "
                                      + std::to_string(opts_.start_timeout.count()) + " ms"
                                  : "exited before listening (wait status "
                                      + std::to_string(status) + ")";
      std::string cmd;
      for (auto& a : args)
        cmd += a + " ";
      throw std::runtime_error("eventsd " + how + "\ncommand: " + cmd + "\noutput:\n" + out);
    }
    pump_->cv.wait_for(lock, 50ms);
  }
}

int server::stop(int count, std::chrono::milliseconds patience, int signal) {
  if (!running())
    return -1;
  const auto before = output().size();
  for (int i = 0; i < count; ++i) {
    if (i > 0) {
      // A signal sent before the first was taken would merge with it.
      auto seen = std::chrono::steady_clock::now() + 1s;
      while (output().find("eventsd: shutting down", before) == std::string::npos
             && std::chrono::steady_clock::now() < seen)
        std::this_thread::sleep_for(1ms);
      std::this_thread::sleep_for(5ms);
    }
    ::kill(pid_, signal);
  }
  if (auto status = wait_exit(patience))
    return *status;
  std::cerr << "e2e: eventsd (pid " << pid_ << ") ignored signal " << signal << " for "
            << patience.count()
            << " ms; sending SIGKILL\n";
  ::kill(pid_, SIGKILL);
  return *wait_exit(std::chrono::hours{1});
}

void server::signal(int signal) {
  if (running())
    ::kill(pid_, signal);
}

std::optional<int> server::wait_exit(std::chrono::milliseconds limit) {
  if (!running())
    return std::nullopt;
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR))
      break;
    if (std::chrono::steady_clock::now() >= deadline)
      return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
  pid_ = -1;
  if (pump_) {
    previous_output_ += pump_->snapshot();
    pump_.reset();
  }
  return status;
}

void server::kill() {
  if (!running())
    return;
  ::kill(pid_, SIGKILL);
  wait_exit(std::chrono::hours{1});
}

void server::restart() {
  stop();
  start();
}

std::string server::output() const {
  return previous_output_ + (pump_ ? pump_->snapshot() : std::string{});
}

server& shared_server(const server_options& opts, const std::function<void(server&)>& seed) {
  static std::string failure;
  if (!failure.empty())
    throw std::runtime_error("the shared eventsd did not start (see the first failing test): "
                             + failure.substr(0, 300));
  try {
    static server s{opts};
    static bool seeded = [&] {
      if (seed)
        seed(s);
      return true;
    }();
    (void)seeded;
    return s;
  } catch (const std::exception& e) {
    failure = e.what();
    throw;
  }
}

server_behind_proxy::server_behind_proxy(std::vector<std::string> args,
                                         const std::string& dsn_options)
    : proxy(host_port_of(db.dsn()).first, host_port_of(db.dsn()).second),
      srv([&] {
        server_options o;
        o.dsn = dsn_with_host_port(db.dsn(), "127.0.0.1", proxy.port()) + " " + dsn_options;
        o.args = std::move(args);
        return o;
      }()) {}

// -- loopback ports: free, silent ----------------------------------------------

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
      || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    auto err = std::string{std::strerror(errno)};
    if (fd >= 0)
      ::close(fd);
    throw std::runtime_error("cannot find a free port: " + err);
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

silent_listener::silent_listener() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
      || ::listen(fd_, 16) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    auto why = std::string{"silent_listener: "} + std::strerror(errno);
    if (fd_ >= 0)
      ::close(fd_);
    throw std::runtime_error(why);
  }
  port_ = ntohs(a.sin_port);
}

silent_listener::~silent_listener() {
  ::close(fd_);
}

// -- HTTP ---------------------------------------------------------------------

bool ci_less::operator()(const std::string& a, const std::string& b) const {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) < std::tolower(static_cast<unsigned char>(y));
  });
}

std::optional<std::string> response::header(const std::string& name) const {
  auto i = headers.find(name);
  if (i == headers.end())
    return std::nullopt;
  return i->second;
}

json response::json_body() const {
  auto j = json::parse(body, nullptr, false);
  if (j.is_discarded())
    throw std::runtime_error("answer " + std::to_string(status) + " is not JSON: " + body);
  return j;
}

struct http_client::impl {
  asio::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  void run() {
    ioc.restart();
    ioc.run();
  }
};

http_client::http_client(uint16_t port) : impl_(std::make_unique<impl>()), port_(port) {
  ignore_sigpipe();
}

http_client::~http_client() {
  if (impl_->stream) {
    beast::error_code ec;
    impl_->stream->socket().shutdown(tcp::socket::shutdown_both, ec);
  }
}

response http_client::request(const std::string& method, const std::string& target,
                              const std::optional<std::string>& body, const header_list& headers) {
  auto& d = *impl_;
  bhttp::request<bhttp::string_body> req;
  req.method_string(method);
  req.target(target);
  req.version(11);
  req.set(bhttp::field::host, "127.0.0.1:" + std::to_string(port_));
  for (auto& [k, v] : headers) {
    if (beast::iequals(k, "host"))
      req.set(bhttp::field::host, v); // in place of the default
    else
      req.insert(k, v);
  }
  if (body) {
    req.body() = *body;
    req.prepare_payload();
  } else if (method == "PUT" || method == "POST" || method == "PATCH") {
    req.content_length(0);
  }

  for (int attempt = 0;; ++attempt) {
    bool fresh = false;
    if (!d.stream) {
      d.stream.emplace(d.ioc);
      d.buffer.clear();
      d.stream->expires_after(10s);
      beast::error_code ec;
      d.stream->async_connect(tcp::endpoint{asio::ip::make_address("127.0.0.1"), port_},
                              [&](beast::error_code e) { ec = e; });
      d.run();
      if (ec) {
        d.stream.reset();
        throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port_) + ": "
                                 + ec.message());
      }
      ++connections_;
      fresh = true;
    }
    beast::error_code wec, rec;
    d.stream->expires_after(60s);
    bhttp::async_write(*d.stream, req, [&](beast::error_code e, size_t) { wec = e; });
    d.run();
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(256 * 1024 * 1024);
    if (method == "HEAD")
      parser.skip(true);
    if (!wec) {
      d.stream->expires_after(60s);
      bhttp::async_read(*d.stream, d.buffer, parser, [&](beast::error_code e, size_t) { rec = e; });
      d.run();
    }
    auto ec = wec ? wec : rec;
    if (ec) {
      bool nothing_read = !parser.got_some();
      d.stream.reset();
      // A kept-alive connection the server closed meanwhile: the request was
      // never read, so sending it once more on a new connection is safe.
      if (!fresh && attempt == 0 && nothing_read
          && (ec == bhttp::error::end_of_stream || ec == asio::error::connection_reset
              || ec == asio::error::broken_pipe || ec == asio::error::eof))
        continue;
      throw std::runtime_error(method + " " + target + " failed: " + ec.message());
    }
    auto msg = parser.release();
    response r;
    r.status = msg.result_int();
    for (auto& f : msg)
      r.headers.emplace(std::string{f.name_string()}, std::string{f.value()});
    r.body = std::move(msg.body());
    if (!msg.keep_alive()) {
      beast::error_code ignored;
      d.stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      d.stream.reset();
    }
    return r;
  }
}

response http_client::get(const std::string& target, const header_list& headers) {
  return request("GET", target, std::nullopt, headers);
}

response http_client::send_json(const std::string& method, const std::string& target,
                                const json& body, const header_list& headers) {
  header_list h{{"Content-Type", "application/json"}};
  h.insert(h.end(), headers.begin(), headers.end());
  return request(method, target, body.dump(), h);
}

response http_client::post_json(const std::string& target, const json& body,
                                const header_list& headers) {
  return send_json("POST", target, body, headers);
}

response http_client::put_json(const std::string& target, const json& body,
                               const header_list& headers) {
  return send_json("PUT", target, body, headers);
}

response http_client::put(const std::string& target, const header_list& headers) {
  return request("PUT", target, std::nullopt, headers);
}

namespace {

/// Length of the complete response at the start of `raw`, or 0 while incomplete.
size_t complete_response_length(const std::string& raw) {
  auto end = raw.find("\r\n\r\n");
  if (end == std::string::npos)
    return 0;
  // An interim answer (`100 Continue`) is not the response: look past it.
  if (raw.compare(0, 10, "HTTP/1.1 1") == 0) {
    auto rest = complete_response_length(raw.substr(end + 4));
    return rest > 0 ? end + 4 + rest : 0;
  }
  auto head = lower(raw.substr(0, end));
  size_t length = 0;
  auto i = head.find("\r\ncontent-length:");
  if (i != std::string::npos)
    length = std::stoul(head.substr(i + 17));
  // Neither length nor transfer coding (an answer to HTTP/1.0): the body
  // ends when the server closes — unless the status has no body.
  bool bodiless = head.compare(9, 3, "204") == 0 || head.compare(9, 3, "304") == 0;
  if (i == std::string::npos && head.find("\r\ntransfer-encoding:") == std::string::npos
      && !bodiless)
    return 0;
  auto total = end + 4 + length;
  return raw.size() >= total ? total : 0;
}

} // namespace

int connect_loopback(uint16_t port, int receive_buffer) {
  ignore_sigpipe();
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    throw std::runtime_error(std::string{"socket failed: "} + std::strerror(errno));
  // Before connect(): the window scale is agreed in the SYN.
  if (receive_buffer > 0)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    auto err = std::string{std::strerror(errno)};
    ::close(fd);
    throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port) + ": " + err);
  }
  return fd;
}

std::string raw_exchange_in_pieces(uint16_t port, const std::vector<std::string>& pieces,
                                   std::chrono::milliseconds pause,
                                   std::chrono::milliseconds timeout) {
  int fd = connect_loopback(port);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i > 0)
      std::this_thread::sleep_for(pause);
    for (size_t sent = 0; sent < pieces[i].size();) {
      auto w = ::send(fd, pieces[i].data() + sent, pieces[i].size() - sent, MSG_NOSIGNAL);
      if (w <= 0)
        break; // answered and closed early: read what came
      sent += static_cast<size_t>(w);
    }
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string in;
  char buf[16384];
  while (complete_response_length(in) == 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      break;
    auto r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0)
      break;
    in.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return in;
}

std::string raw_exchange(uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout, bool until_close) {
  int fd = connect_loopback(port);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string in;
  size_t sent = 0;
  bool write_open = true;
  char buf[16384];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      break;
    pollfd p{fd, static_cast<short>(POLLIN | (write_open && sent < bytes.size() ? POLLOUT : 0)), 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if ((p.revents & POLLOUT) && write_open) {
      auto w = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (w > 0)
        sent += static_cast<size_t>(w);
      else if (w < 0 && errno != EAGAIN && errno != EINTR)
        write_open = false;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      auto r = ::recv(fd, buf, sizeof buf, 0);
      if (r > 0) {
        in.append(buf, static_cast<size_t>(r));
        if (!until_close && complete_response_length(in) > 0)
          break;
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        break;
      }
    }
  }
  ::close(fd);
  return in;
}

response parse_response(const std::string& raw) {
  auto end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0)
    throw std::runtime_error("no complete HTTP/1.1 response in: `" + raw.substr(0, 300) + "`");
  response r;
  r.status = static_cast<unsigned>(std::stoul(raw.substr(9, 3)));
  size_t line = raw.find("\r\n") + 2;
  while (line < end) {
    auto eol = raw.find("\r\n", line);
    auto colon = raw.find(':', line);
    if (colon != std::string::npos && colon < eol) {
      auto value = raw.substr(colon + 1, eol - colon - 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t") + 1);
      r.headers.emplace(raw.substr(line, colon - line), value);
    }
    line = eol + 2;
  }
  size_t length = 0;
  if (auto cl = r.header("Content-Length"))
    length = std::stoul(*cl);
  r.body = raw.substr(end + 4, length);
  return r;
}

// -- helpers ----------------------------------------------------------------

write_ack ack_of(const response& r) {
  auto j = r.json_body();
  if (!j.is_object() || !j.contains("id") || !j["id"].is_string() || !j.contains("version")
      || !j["version"].is_number_unsigned() || !j.contains("position")
      || !j["position"].is_number_unsigned())
    throw std::runtime_error("answer " + std::to_string(r.status)
                             + " is not {id, version, position}: " + r.body);
  return {j["id"].get<std::string>(), j["version"].get<uint64_t>(), j["position"].get<uint64_t>()};
}

double metric(http_client& c, const std::string& name) {
  auto r = c.get("/metrics");
  std::istringstream in{r.body};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0)
      return std::stod(line.substr(name.size() + 1));
  return -1;
}

namespace {

/// The page of `$all` from `from` (up to 1000 events); throws unless 200.
json all_page(http_client& c, uint64_t from) {
  auto r = c.get("/streams/$all?from=" + std::to_string(from) + "&limit=1000");
  if (r.status != 200)
    throw std::runtime_error("GET /streams/$all answered " + std::to_string(r.status) + ": "
                             + r.body);
  return r.json_body();
}

} // namespace

uint64_t all_head(http_client& c, uint64_t hint) {
  uint64_t from = std::max<uint64_t>(hint, 1);
  uint64_t head = 0;
  for (;;) {
    auto j = all_page(c, from);
    auto& items = j.at("items");
    if (items.empty() && head == 0 && from > 1) {
      from = 1; // the hint was past the end
      continue;
    }
    if (!items.empty())
      head = items.back().at("position").get<uint64_t>();
    if (j.at("next").is_null())
      return head;
    from = j.at("next").get<uint64_t>();
  }
}

std::vector<json> read_all(http_client& c, uint64_t from) {
  std::vector<json> out;
  for (;;) {
    auto j = all_page(c, from);
    for (auto& e : j.at("items"))
      out.push_back(e);
    if (j.at("next").is_null())
      return out;
    from = j.at("next").get<uint64_t>();
  }
}

json projection_status(http_client& c, const header_list& headers) {
  auto r = c.get("/admin/projections", headers);
  if (r.status != 200)
    throw std::runtime_error("GET /admin/projections answered " + std::to_string(r.status) + ": "
                             + r.body);
  auto j = r.json_body();
  if (!j.is_object() || !j.contains("items") || !j["items"].is_array() || j["items"].size() != 1)
    throw std::runtime_error("GET /admin/projections did not list exactly one projection: "
                             + r.body);
  return j["items"][0];
}

std::string etag_of(uint64_t version) {
  std::string tag = "\"";
  tag.append(std::to_string(version)).append("\"");
  return tag;
}

bool is_canonical_uuid(const std::string& s) {
  static const std::regex re{"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"};
  return std::regex_match(s, re);
}

bool is_rfc3339_ms_utc(const std::string& s) {
  static const std::regex re{
    R"(^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$)"};
  return std::regex_match(s, re);
}

std::string random_uuid() {
  auto h = random_hex(32);
  h[12] = '4';
  h[16] = "89ab"[rng()() % 4];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4)
         + "-" + h.substr(20);
}

std::string upper(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void sleep_for(std::chrono::milliseconds d) {
  std::this_thread::sleep_for(d);
}

} // namespace eventsd::e2e
