#include "http/server.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "actors/log_writer.hpp"
#include "core/metrics.hpp"
#include "http/event_json.hpp"
#include "http/routes.hpp"

namespace eventsd::http {

namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

/// Whether signal `n`'s action is to ignore it (SIGHUP under `nohup`, SIGINT
/// in a background job of a non-interactive shell).
bool ignored(int n) {
  struct sigaction action{};
  return ::sigaction(n, nullptr, &action) == 0 && action.sa_handler == SIG_IGN;
}

/// SIGINT, SIGTERM and SIGHUP for the whole process, from start() until
/// ignore_from_now() or release(): the first asks the server to stop (wait()
/// returns); another
/// within 2 s is ignored (a double Ctrl-C, `timeout` signalling the process
/// group, a supervisor's SIGTERM and SIGHUP); a later one ends the process at
/// once. SIGHUP (a closed terminal, a supervisor's "reload": eventsd has
/// nothing to reload) is left alone when it is ignored (`nohup eventsd`).
class signal_watch {
public:
  /// Starts watching, once: signals from now on are not lost.
  void start() {
    std::lock_guard<std::mutex> guard{mtx_};
    if (set_)
      return;
    for (int n : {SIGINT, SIGTERM})
      if (ignored(n))
        ignored_before_.push_back(n);
    set_.emplace(ioc_, SIGINT, SIGTERM);
    if (!ignored(SIGHUP))
      set_->add(SIGHUP);
    arm();
    thread_ = std::thread{[this] { ioc_.run(); }};
  }

  /// Blocks until the first signal or wake().
  void wait() {
    std::unique_lock<std::mutex> lock{mtx_};
    woken_.wait(lock, [this] { return stopping_since_.has_value(); });
  }

  /// Makes wait() return as a signal would (a signal after it counts as a
  /// second one); false when a signal came first.
  bool wake() {
    std::lock_guard<std::mutex> guard{mtx_};
    if (first_ != 0)
      return false;
    if (!stopping_since_)
      stopping_since_ = std::chrono::steady_clock::now();
    woken_.notify_all();
    return true;
  }

  /// Stops acting on signals: from now on they are ignored (asio's handler
  /// stays, writing to a pipe nobody reads: no moment with the default action).
  void ignore_from_now() {
    ioc_.stop();
    if (thread_.joinable())
      thread_.join();
  }

  /// Stops watching and gives the signals the action they had before start();
  /// returns the first signal that came (one still in asio's pipe too), or 0.
  int release() {
    ignore_from_now();
    ioc_.restart();
    ioc_.poll();
    set_.reset(); // the default action
    for (int n : ignored_before_)
      std::signal(n, SIG_IGN);
    return first_;
  }

  ~signal_watch() { ignore_from_now(); }

private:
  void arm() {
    set_->async_wait([this](beast::error_code ec, int n) {
      if (ec)
        return;
      on_signal(n);
      arm();
    });
  }

  void on_signal(int n) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      auto now = std::chrono::steady_clock::now();
      if (!stopping_since_) {
        first_ = n;
        stopping_since_ = now;
        woken_.notify_all();
        return;
      }
      if (now - *stopping_since_ < std::chrono::seconds{2})
        return say("eventsd: already shutting down\n");
    }
    say("eventsd: signal " + std::to_string(n) + " again: exiting now, without a clean shutdown\n");
    std::_Exit(128 + n);
  }

  /// Writes `line` to stderr unless that would block (a pipe nobody reads):
  /// the watcher goes on, and can end the process, whatever the log does.
  static void say(const std::string& line) {
    pollfd p{STDERR_FILENO, POLLOUT, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) != 0)
      [[maybe_unused]] auto written = ::write(STDERR_FILENO, line.data(), line.size());
  }

  std::mutex mtx_;
  std::condition_variable woken_;
  int first_ = 0; // the first signal, or 0
  std::optional<std::chrono::steady_clock::time_point> stopping_since_; // signal or wake()
  net::io_context ioc_{1};
  std::optional<net::signal_set> set_;
  std::thread thread_;
  std::vector<int> ignored_before_; // SIGINT/SIGTERM ignored when start() came
};

signal_watch& process_signals() {
  static signal_watch watch;
  return watch;
}

/// The `Date` header's value for now (RFC 9110 §5.6.7), formatted once a
/// second per io thread.
const std::string& http_date() {
  thread_local std::time_t formatted_at = -1;
  thread_local std::string value;
  auto now = std::time(nullptr);
  if (now != formatted_at) {
    std::tm utc{};
    gmtime_r(&now, &utc);
    std::array<char, 64> buf{};
    auto n = std::strftime(buf.data(), buf.size(), "%a, %d %b %Y %H:%M:%S GMT", &utc);
    value.assign(buf.data(), n);
    formatted_at = now;
  }
  return value;
}

/// RFC 9112 §6.1 lets a server refuse a request that gives both framings.
constexpr const char* both_framings =
  "malformed HTTP request: both Transfer-Encoding and Content-Length given; send one "
  "(RFC 9112 §6.1)";

/// What RFC 9112/9110 make a server refuse before routing: an HTTP/1.1
/// request without `Host`; a body whose framing cannot be trusted (400):
/// chunked applied twice or not last, both framings, any transfer coding in
/// HTTP/1.0; a transfer coding other than chunked (501), a content coding
/// (415).
/// Rewrites an absolute-form target (`http://host/p`) to its origin form
/// (RFC 9112 §3.2.2). The connection closes after any of these.
std::optional<reply> framing_problem(unsigned version, incoming& req) {
  if (version >= 11 && req.headers.count("host") == 0)
    return problem(400, "HTTP/1.1 request without a Host header");
  if (req.repeated("host"))
    return problem(400, "more than one Host header");
  for (std::string_view scheme : {"http://", "https://"}) {
    if (req.target.size() > scheme.size() && lower(req.target.substr(0, scheme.size())) == scheme) {
      auto path = req.target.find('/', scheme.size());
      req.target = path == std::string::npos ? "/" : req.target.substr(path);
      break;
    }
  }
  auto tokens = [&](const std::string& list) {
    std::vector<std::string> out;
    std::string token;
    for (char c : list + ",") {
      if (c == ',') {
        if (!token.empty())
          out.push_back(lower(std::exchange(token, {})));
      } else if (c != ' ' && c != '\t') {
        token += c;
      }
    }
    return out;
  };
  // Beast reads a body as chunked only when chunked is named once, last;
  // otherwise it would read none and take the body for the next request
  // (RFC 9112 §6.1, §6.3: such a request is a 400 and the connection closes).
  auto codings = tokens(req.header("transfer-encoding"));
  if (!codings.empty() && version < 11)
    return problem(400, "Transfer-Encoding in an HTTP/1.0 request: its framing cannot be "
                        "trusted (send HTTP/1.1, or Content-Length)");
  if (!codings.empty() && req.headers.count("content-length") > 0)
    return problem(400, both_framings);
  if (auto n = std::ranges::count(codings, "chunked"); n > 1)
    return problem(400, "Transfer-Encoding names chunked more than once");
  else if (n == 1 && codings.back() != "chunked")
    return problem(400, "Transfer-Encoding: chunked is not the last transfer coding");
  for (auto& coding : codings)
    if (coding != "chunked")
      return problem(501, "transfer coding `" + coding + "` is not supported (only chunked)");
  // Only a body has a content coding to undo (none: nothing to refuse).
  for (auto& coding : tokens(req.header("content-encoding")))
    if (coding != "identity" && !req.body.empty()) {
      auto r = problem(415, "content coding `" + coding
                              + "` is not supported: send the body uncompressed");
      r.header("Accept-Encoding", "identity"); // RFC 9110 §15.5.16
      return r;
    }
  return std::nullopt;
}

/// A request refused before it is routed: its answer, the route name of its
/// metrics, and whether the connection closes after it.
struct refusal {
  reply answer;
  std::string route;
  bool close = false;
};

/// framing_problem's refusals, then a method no HTTP specification defines
/// (Beast knows RFC 9110's and the registered extensions', WebDAV's and
/// others; names are case-sensitive: `get` is none), which is not
/// implemented for any resource (RFC 9110 §9.1), then a malformed target.
/// Sets `req.path` and `req.query`.
std::optional<refusal> refused_before_routing(unsigned version, bhttp::verb method, incoming& req) {
  if (auto bad = framing_problem(version, req))
    return refusal{std::move(*bad), "bad-request", true};
  if (method == bhttp::verb::unknown)
    return refusal{problem(501, "method `" + req.method + "` is not implemented"),
                   "method-not-implemented"};
  if (req.target != "*")
    if (auto bad = parse_target(req.target, req.path, req.query))
      return refusal{std::move(*bad), "bad-request"};
  return std::nullopt;
}

/// Logs an I/O failure worth knowing about, with the client's address when
/// there is one. At most one line a second: any client can cause these
/// (malformed requests), and must not flood the log.
void fail(beast::error_code ec, const char* what, const tcp::socket* peer = nullptr) {
  if (ec == net::error::operation_aborted || ec == beast::error::timeout
      || ec == net::error::eof || ec == net::error::connection_reset
      || ec == net::error::broken_pipe || ec == bhttp::error::end_of_stream)
    return;
  static std::atomic<int64_t> last_logged_s{0};
  static std::atomic<uint64_t> suppressed{0};
  auto now_s = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::steady_clock::now().time_since_epoch())
                 .count();
  auto last = last_logged_s.load(std::memory_order_relaxed);
  if (now_s <= last || !last_logged_s.compare_exchange_strong(last, now_s)) {
    suppressed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::cerr << "eventsd: http " << what;
  beast::error_code unknown;
  if (peer)
    if (auto from = peer->remote_endpoint(unknown); !unknown)
      std::cerr << " from " << from;
  std::cerr << ": " << ec.message();
  if (auto n = suppressed.exchange(0); n > 0)
    std::cerr << " (and " << n << " more failures not logged in the last second(s))";
  std::cerr << "\n";
}

/// Wakes SSE sessions when the log head moves, tells them when the server
/// stops, and admits them under a cap. Thread-safe.
class head_signal {
public:
  using callback = std::function<void(uint64_t)>;
  /// `now`: close at once; otherwise after a last comment.
  using stop_callback = std::function<void(bool now)>;

  explicit head_signal(size_t catch_up_slots)
    : catch_up_slots(std::max<size_t>(1, catch_up_slots)) {}

  /// Registers a subscriber; one that comes after stop_all() is told at once.
  uint64_t subscribe(callback on_head, stop_callback on_stop) {
    std::unique_lock<std::mutex> guard{mtx_};
    auto id = ++next_id_;
    callbacks_.emplace(id, subscriber{std::move(on_head), on_stop});
    if (stopping_) {
      bool now = stopping_now_;
      guard.unlock();
      on_stop(now);
    }
    return id;
  }

  void unsubscribe(uint64_t id) {
    std::lock_guard<std::mutex> guard{mtx_};
    callbacks_.erase(id);
  }

  /// Admits one more subscriber unless `max` are admitted already; each
  /// admitted one calls leave() once.
  bool admit(size_t max) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (admitted_ >= max)
      return false;
    ++admitted_;
    return true;
  }

  void leave() {
    std::lock_guard<std::mutex> guard{mtx_};
    --admitted_;
  }

  /// Subscribers admitted and not yet gone.
  size_t admitted() {
    std::lock_guard<std::mutex> guard{mtx_};
    return admitted_;
  }

  /// The catch-up gate: at most `catch_up_slots` subscribers behind the head
  /// read and encode a page at once; the others queue, first come first
  /// served, a page each per turn. A burst of subscribers starting far back
  /// (reconnecting after a restart, say) then takes turns instead of taking
  /// every core from the writes. Returns true when the caller holds a slot
  /// now; otherwise `turn` is called (on the thread that frees a slot, no
  /// lock held) when one is handed to it, and returns false when its
  /// subscriber is gone (the slot goes on to the next). A holder calls
  /// leave_catch_up() once.
  /// `turn` must not own anything that needs the io_context (an executor):
  /// turns still queued are destroyed with this, after the io_context.
  bool enter_catch_up(std::function<bool()> turn) {
    std::lock_guard<std::mutex> guard{gate_mtx_};
    if (catching_up_ < catch_up_slots) {
      ++catching_up_;
      gauges();
      return true;
    }
    waiting_.push_back(std::move(turn));
    core::metrics::instance().sse_catch_up_waits.add();
    gauges();
    return false;
  }

  void leave_catch_up() {
    for (;;) {
      std::function<bool()> next;
      {
        std::lock_guard<std::mutex> guard{gate_mtx_};
        if (waiting_.empty()) {
          --catching_up_;
          gauges();
          return;
        }
        next = std::move(waiting_.front());
        waiting_.pop_front();
        gauges();
      }
      if (next())
        return; // the slot is the next one's now
    }
  }

  void notify(uint64_t head) {
    std::vector<callback> copy;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      copy.reserve(callbacks_.size());
      for (auto& [id, sub] : callbacks_)
        copy.push_back(sub.on_head);
    }
    for (auto& cb : copy)
      cb(head);
  }

  /// Tells every subscriber the server stops (see stop_callback), and every
  /// later one when it subscribes.
  void stop_all(bool now) {
    std::vector<stop_callback> copy;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stopping_ = true;
      stopping_now_ = now;
      copy.reserve(callbacks_.size());
      for (auto& [id, sub] : callbacks_)
        copy.push_back(sub.on_stop);
    }
    for (auto& cb : copy)
      cb(now);
  }

private:
  /// REQUIRES: gate_mtx_ held.
  void gauges() {
    auto& m = core::metrics::instance();
    m.sse_catching_up.set(static_cast<int64_t>(catching_up_));
    m.sse_catch_up_waiting.set(static_cast<int64_t>(waiting_.size()));
  }

  /// Pages read and encoded at once (`--http.sse-catch-up-slots`; by
  /// default half the cores: one of this machine's two for the catch-up, the
  /// rest for everything else).
  const size_t catch_up_slots;
  struct subscriber {
    callback on_head;
    stop_callback on_stop;
  };
  std::mutex mtx_;
  uint64_t next_id_ = 0;
  size_t admitted_ = 0;
  bool stopping_ = false;     ///< stop_all() was called
  bool stopping_now_ = false; ///< its `now`
  std::unordered_map<uint64_t, subscriber> callbacks_;
  std::mutex gate_mtx_; // not mtx_: a turn may end a session, whose leave() takes mtx_
  size_t catching_up_ = 0;
  std::deque<std::function<bool()>> waiting_;
};

/// One `GET /subscribe/$all` connection: catch-up from the log, then live.
/// Pull-based: the next page is read only after the previous one was
/// written, so a slow client never makes the server buffer more than one
/// page (at most `page_size` events and about `page_bytes`), and never slows
/// writers. The log is the subscriber's buffer; its limit is
/// `--http.sse-max-lag`: a subscriber that has caught up once and then falls
/// more events behind the head than that is sent a final comment and
/// disconnected (it resumes with Last-Event-ID). A client that takes nothing
/// for `--http.read-timeout-ms` is dropped.
class sse_session : public std::enable_shared_from_this<sse_session> {
public:
  /// REQUIRES: `signal.admit()` admitted this subscriber.
  sse_session(beast::tcp_stream stream, services& svc, head_signal& signal, uint64_t from)
    : stream_(std::move(stream)), svc_(svc), signal_(signal), next_(from),
      heartbeat_(stream_.get_executor()), stall_check_(stream_.get_executor()) {}

  void start() {
    core::metrics::instance().sse_subscribers.add(1);
    // The session owns itself while the connection is open: between pages
    // no pending operation holds it. shutdown() lets go.
    self_ = shared_from_this();
    sub_id_ = signal_.subscribe(
      [weak = weak_from_this()](uint64_t head) {
        if (auto s = weak.lock())
          net::post(s->stream_.get_executor(), [s, head] { s->on_head(head); });
      },
      [weak = weak_from_this()](bool now) {
        if (auto s = weak.lock())
          net::post(s->stream_.get_executor(), [s, now] { s->on_stop(now); });
      });
    stream_.expires_never(); // a stalled client is found by arm_stall_check()
    out_ = "HTTP/1.1 200 OK\r\nServer: eventsd\r\nDate: " + http_date()
           + "\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             "Connection: close\r\nX-Accel-Buffering: no\r\n\r\n: subscribed from "
           + std::to_string(next_) + "\n\n";
    write();
    arm_heartbeat();
    watch_peer();
    known_head_ = svc_.log.head();
    read_page(); // an empty answer marks the subscriber live
  }

  ~sse_session() {
    core::metrics::instance().sse_subscribers.add(-1);
    leave_catch_up();
    signal_.leave();
  }

private:
  void on_head(uint64_t head) {
    known_head_ = std::max(known_head_, head);
    if (closing_ || closed_ || too_slow())
      return;
    if (!writing_ && !reading_ && next_ <= known_head_)
      read_page();
  }

  /// The server stops: a last comment, then the connection is closed (at
  /// once when `now`: the drain's time is up).
  void on_stop(bool now) {
    if (now)
      return shutdown();
    if (!closing_ && !closed_)
      close(": the server is stopping; reconnect with Last-Event-ID\n\n");
  }

  /// Disconnects a live subscriber that fell more than sse_max_lag behind.
  bool too_slow() {
    if (!live_ || closing_ || next_ > known_head_)
      return false;
    auto behind = known_head_ - next_ + 1;
    if (behind <= svc_.options.sse_max_lag)
      return false;
    core::metrics::instance().sse_dropped_slow.add();
    close(": disconnected: too slow, " + std::to_string(behind)
          + " events behind the head (limit " + std::to_string(svc_.options.sse_max_lag)
          + "); reconnect with Last-Event-ID\n\n");
    return true;
  }

  void read_page() {
    // Behind the head, a page is read in turn with the other subscribers
    // catching up (head_signal::enter_catch_up); a live one reads at once.
    if (!live_ && !in_catch_up_) {
      if (waiting_turn_)
        return;
      waiting_turn_ = true;
      auto turn = [weak = weak_from_this()] {
        auto s = weak.lock();
        if (!s)
          return false;
        net::post(s->stream_.get_executor(), [s] {
          s->waiting_turn_ = false;
          s->in_catch_up_ = true;
          if (s->closed_ || s->closing_)
            return s->leave_catch_up();
          s->read_page();
        });
        return true;
      };
      if (!signal_.enter_catch_up(std::move(turn)))
        return;
      waiting_turn_ = false;
      in_catch_up_ = true;
    }
    reading_ = true;
    auto reader = svc_.log_reader();
    auto from = next_;
    auto weak = weak_from_this();
    auto executor = stream_.get_executor();
    caf::anon_send(reader, all_atom_v, from, page_size,
                   core::reply_to<actors::recorded_events>{
                     [weak, executor](caf::expected<actors::recorded_events> events) {
                       net::post(executor, [weak, events = std::move(events)] {
                         if (auto s = weak.lock()) {
                           if (events)
                             return s->on_page(*events);
                           s->leave_catch_up();
                           s->close(": log read failed\n\n");
                         }
                       });
                     }});
  }

  void on_page(const actors::recorded_events& events) {
    reading_ = false;
    if (closed_ || closing_)
      return leave_catch_up();
    if (events.size() < page_size)
      live_ = true; // reached the head once: from now on the lag limit applies
    if (events.empty()) {
      leave_catch_up();
      if (next_ <= svc_.log.head())
        read_page();
      return;
    }
    for (auto& e : events) {
      out_ += "id: ";
      append_json_uint(out_, e.position);
      out_ += "\ndata: ";
      append_event_json(out_, e);
      out_ += "\n\n";
      next_ = e.position + 1;
      if (out_.size() >= page_bytes)
        break; // the rest of the page is read again after this is written
    }
    known_head_ = std::max(known_head_, next_ - 1);
    leave_catch_up(); // read and encoded: the next subscriber's turn
    write();
  }

  void leave_catch_up() {
    if (std::exchange(in_catch_up_, false))
      signal_.leave_catch_up();
  }

  void write() {
    if (closed_ || writing_ || out_.empty())
      return;
    writing_ = true;
    sending_.swap(out_);
    out_.clear();
    sent_ = 0;
    if (!stall_check_armed_) {
      stall_check_armed_ = true;
      acked_at_check_ = acked();
      arm_stall_check();
    }
    write_some();
  }

  void write_some() {
    stream_.async_write_some(net::buffer(sending_.data() + sent_, sending_.size() - sent_),
                             [self = shared_from_this()](beast::error_code ec, size_t n) {
                               self->sent_ += n;
                               self->handed_ += n;
                               if (!ec && self->sent_ < self->sending_.size())
                                 return self->write_some();
                               self->on_write(ec);
                             });
  }

  /// Bytes handed to the kernel that the client has not taken yet.
  uint64_t queued() {
    int queued = 0;
    if (::ioctl(stream_.socket().native_handle(), SIOCOUTQ, &queued) != 0 || queued < 0)
      queued = 0;
    return std::min<uint64_t>(handed_, static_cast<uint64_t>(queued));
  }

  /// Bytes the client has taken.
  uint64_t acked() { return handed_ - queued(); }

  /// While there is something for it (a write under way, or bytes the kernel
  /// still queues), a client that has taken nothing for the read timeout is
  /// dropped (it resumes with Last-Event-ID). Measured by what the client
  /// took, not by how long a write waits: the kernel lets a write go on only
  /// once a good part of a large send buffer is free, which a client reading
  /// slowly but steadily can take longer than the timeout to free; and a
  /// client that reads nothing on an idle server is found too, once its
  /// buffers are full (heartbeats still fit in the server's).
  void arm_stall_check() {
    stall_check_.expires_after(svc_.options.read_timeout);
    stall_check_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto s = weak.lock();
      if (!s || ec || s->closed_)
        return;
      if (!s->writing_ && s->queued() == 0) {
        s->stall_check_armed_ = false;
        return;
      }
      auto now = s->acked();
      if (now == s->acked_at_check_)
        return s->shutdown();
      s->acked_at_check_ = now;
      s->arm_stall_check();
    });
  }

  void on_write(beast::error_code ec) {
    writing_ = false;
    sending_.clear();
    if (ec) {
      // A client that took nothing within the timeout is dropped; it
      // resumes with Last-Event-ID.
      return shutdown();
    }
    if (!out_.empty())
      return write();
    if (closing_)
      return shutdown();
    known_head_ = std::max(known_head_, svc_.log.head());
    if (!reading_ && !too_slow() && next_ <= known_head_)
      read_page();
  }

  /// Notices a client that went away while we have nothing to send.
  void watch_peer() {
    stream_.socket().async_read_some(
      net::buffer(peer_buf_), [weak = weak_from_this()](beast::error_code ec, size_t) {
        auto s = weak.lock();
        if (!s || s->closed_)
          return;
        if (ec)
          return s->shutdown();
        s->watch_peer(); // ignore anything the client sends
      });
  }

  void arm_heartbeat() {
    heartbeat_.expires_after(svc_.options.sse_heartbeat);
    heartbeat_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto s = weak.lock();
      if (!s || ec || s->closed_)
        return;
      if (s->closing_)
        return;
      s->out_ += ": heartbeat\n\n";
      s->write();
      s->arm_heartbeat();
    });
  }

  void close(std::string final_comment) {
    closing_ = true;
    out_ += final_comment;
    if (!writing_)
      write();
  }

  void shutdown() {
    if (closed_)
      return;
    closed_ = true;
    signal_.unsubscribe(sub_id_);
    heartbeat_.cancel();
    stall_check_.cancel();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    auto keep = std::move(self_); // destroyed after this returns
    net::post(stream_.get_executor(), [keep] {});
  }

  static constexpr uint64_t page_size = 500;
  static constexpr size_t page_bytes = 256 * 1024;
  beast::tcp_stream stream_;
  services& svc_;
  head_signal& signal_;
  uint64_t next_;
  uint64_t known_head_ = 0;
  uint64_t sub_id_ = 0;
  net::steady_timer heartbeat_;
  std::shared_ptr<sse_session> self_;
  std::array<char, 512> peer_buf_{};
  std::string out_;
  std::string sending_;
  size_t sent_ = 0;           ///< of sending_
  uint64_t handed_ = 0;       ///< bytes handed to the kernel since the start
  uint64_t acked_at_check_ = 0;
  net::steady_timer stall_check_;
  bool stall_check_armed_ = false;
  bool writing_ = false;
  bool reading_ = false;
  bool live_ = false;
  bool waiting_turn_ = false; ///< queued at the catch-up gate
  bool in_catch_up_ = false;  ///< holds a catch-up slot (a page being read)
  bool closing_ = false;
  bool closed_ = false;
};

class session;

/// What stop() waits for: requests read and not yet answered. While
/// `draining`, every answer closes its connection, and no new one is accepted.
/// The open sessions are known (registered per connection, not per request),
/// so that what is still unanswered at the drain deadline can be answered.
struct drain_state {
  std::atomic<size_t> in_flight{0};
  std::atomic<bool> draining{false};
  /// Set by stop() once nothing was in flight: from then on a request read
  /// is not routed (503 "not served"), so none can start after the io
  /// threads' last answer.
  std::atomic<bool> closed{false};
  std::mutex mtx;
  std::unordered_map<const session*, std::weak_ptr<session>> sessions;
};

/// True when `bytes` hold a line feed within their first `limit` bytes.
template <class Buffers>
bool line_ends_within(const Buffers& bytes, size_t limit) {
  for (auto it = net::buffer_sequence_begin(bytes); it != net::buffer_sequence_end(bytes) && limit;
       ++it) {
    net::const_buffer b = *it;
    auto n = std::min(b.size(), limit);
    if (std::memchr(b.data(), '\n', n))
      return true;
    limit -= n;
  }
  return false;
}

/// True when `bytes`, what a chunked body's parser left unread (a chunk-size
/// or trailer line it waits to see the end of), hold a line ended by a bare
/// LF from byte `from` on: Beast looks for CRLF only and would wait for the
/// read timeout, but RFC 9112 §7.1 makes such a line malformed whatever
/// follows.
bool bare_line_feed(net::const_buffer bytes, size_t from) {
  auto* p = static_cast<const char*>(bytes.data());
  auto* end = p + bytes.size();
  for (auto* lf = p + std::min(from, bytes.size());
       (lf = static_cast<const char*>(std::memchr(lf, '\n', static_cast<size_t>(end - lf))));
       ++lf)
    if (lf == p || lf[-1] != '\r')
      return true;
  return false;
}

/// The version a request line asks for when it is well formed ("HTTP/" digit
/// "." digit, RFC 9112 §2.3) but not one Beast parses (1.0 and 1.1): such a
/// request is answered 505, anything else Beast calls a bad version is a 400.
template <class Buffers>
std::optional<std::string> unsupported_version(const Buffers& bytes, size_t limit) {
  std::string line;
  for (auto it = net::buffer_sequence_begin(bytes); it != net::buffer_sequence_end(bytes); ++it) {
    net::const_buffer b = *it;
    std::string_view chunk{static_cast<const char*>(b.data()), b.size()};
    auto end = chunk.find('\n');
    line.append(chunk.substr(0, std::min(end, limit - line.size())));
    if (end != std::string_view::npos || line.size() >= limit)
      break;
  }
  if (!line.empty() && line.back() == '\r')
    line.pop_back();
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (line.size() < 10 || line.compare(line.size() - 9, 6, " HTTP/") != 0
      || !digit(line[line.size() - 3]) || line[line.size() - 2] != '.' || !digit(line.back()))
    return std::nullopt;
  auto version = line.substr(line.size() - 8);
  // Beast says "bad version" for whatever it finds wrong after the target
  // (two spaces, a bare LF): with 1.0 or 1.1 it is that, a 400.
  if (version == "HTTP/1.0" || version == "HTTP/1.1")
    return std::nullopt;
  return version;
}

enum class expectation { none, continue_first, unknown };

/// What an `Expect` field asks: `100-continue` is the only expectation HTTP
/// defines (RFC 9110 §10.1.1; compared case-insensitively).
expectation expectation_of(beast::string_view value) {
  auto result = expectation::none;
  while (!value.empty()) {
    auto comma = value.find(',');
    auto member = value.substr(0, comma);
    value = comma == beast::string_view::npos ? beast::string_view{} : value.substr(comma + 1);
    while (!member.empty() && (member.front() == ' ' || member.front() == '\t'))
      member.remove_prefix(1);
    while (!member.empty() && (member.back() == ' ' || member.back() == '\t'))
      member.remove_suffix(1);
    if (member.empty())
      continue; // an empty list element (§5.6.1)
    if (!beast::iequals(member, "100-continue"))
      return expectation::unknown;
    result = expectation::continue_first;
  }
  return result;
}

class session : public std::enable_shared_from_this<session> {
  /// Most bytes of a request line and header fields together.
  static constexpr size_t header_limit = 16 * 1024;

public:
  session(tcp::socket&& socket, router& r, head_signal& signal, drain_state& drain)
    : stream_(std::move(socket)), deadline_(stream_.get_executor()),
      read_deadline_(stream_.get_executor()), router_(r), signal_(signal), drain_(drain) {}

  ~session() {
    finish_request();
    std::lock_guard<std::mutex> guard{drain_.mtx};
    drain_.sessions.erase(this);
  }

  void run() {
    {
      std::lock_guard<std::mutex> guard{drain_.mtx};
      drain_.sessions.emplace(this, weak_from_this());
    }
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&session::do_read, shared_from_this()));
  }

  /// At the drain deadline: a routed request still unanswered (a long
  /// `minPosition` wait, a stuck write) gets a 503 rather than a cut connection.
  void abandon() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->counted_ || self->answered_ >= self->request_no_)
        return;
      self->answer_late(self->request_no_, "the server is stopping");
    });
  }

private:
  void do_read() {
    read_until_ = std::chrono::steady_clock::now() + router_.svc().options.read_timeout;
    start_read();
  }

  /// Reads a request that must be in by `read_until_` (empty lines skipped
  /// before it do not give it more time).
  void start_read() {
    // What the previous request was says nothing of an answer to this one
    // that fails before its header is in (408, 431, 400).
    head_ = false;
    method_.clear();
    parser_.emplace();
    lf_checked_ = 0;
    parser_->body_limit(router_.svc().options.body_limit);
    parser_->header_limit(header_limit);
    // The whole request must arrive within the read timeout. Not the stream's
    // own timeout: that closes the socket, and a client that started a request
    // is owed a 408 (RFC 9110 §15.5.9).
    stream_.expires_never();
    read_timed_out_ = false;
    read_deadline_.expires_at(read_until_);
    arm_read_deadline(++read_phase_);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             beast::bind_front_handler(&session::on_header, shared_from_this()));
  }

  /// At the read deadline, cancels the request's read; on_read answers the
  /// 408. A read that completed as the timer fired is not cancelled, and the
  /// next one (Beast's header loop, read_body's) would then run without a
  /// deadline, for as long as the client sends: the cancel is repeated
  /// until on_read has run. A timer that fired as the request came in is
  /// queued already and runs despite on_read's cancel(): it must not touch
  /// the answer's write or the next request's read (read_phase_ has moved on
  /// by then).
  void arm_read_deadline(uint64_t phase) {
    read_deadline_.async_wait([weak = weak_from_this(), phase](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->read_phase_ != phase)
        return;
      self->read_timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
      self->read_deadline_.expires_after(std::chrono::milliseconds{20});
      self->arm_read_deadline(phase);
    });
  }

  /// The header is in: a request with a body still to come gets `100 Continue`
  /// first when it asked for it (RFC 9110 §10.1.1), then the body is read.
  void on_header(beast::error_code ec, size_t n) {
    // An answer to a HEAD has no body, whatever it is (a 408 while its body
    // is read, say).
    auto& h = parser_->get();
    // Beast limits the request line and the fields each, not together: a
    // header section that came whole but is longer than the limit is
    // refused here (`n` is what the parser took, the header only).
    if (!ec && parser_->is_header_done() && n > header_limit)
      ec = bhttp::error::header_limit;
    if (parser_->is_header_done()) {
      head_ = h.method() == bhttp::verb::head;
      // Taken now: Beast adds a chunked body's trailer fields to the same
      // container, but only the header section's are the request's (RFC
      // 9110 §6.5.1); the trailer is read and dropped.
      header_fields_.clear();
      repeated_fields_.clear();
      for (auto& f : h) {
        auto name = lower(std::string{f.name_string()});
        // Repeated lines of one field are one comma-separated list (§5.3).
        auto value = f.value();
        if (auto [it, added] = header_fields_.try_emplace(name, value); !added) {
          it->second.append(", ").append(value.data(), value.size());
          repeated_fields_.push_back(std::move(name));
        }
      }
    }
    auto expect = h.find(bhttp::field::expect);
    // HTTP/1.0 has no interim answers: its expectation is ignored (§10.1.1).
    auto expects = !ec && h.version() >= 11 && expect != h.end()
                     ? expectation_of(expect->value())
                     : expectation::none;
    // An expectation the server cannot meet is refused before anything is
    // done; a request expecting 100 Continue whose header decides its answer
    // gets that answer instead, and need not send its body (§10.1.1). Either
    // way a body that may follow is not read, so the connection closes.
    std::optional<refusal> refused;
    if (expects == expectation::unknown)
      refused = refusal{problem(417, "unknown expectation `" + std::string{expect->value()}
                                       + "`: only 100-continue is understood"),
                        router_.pattern_of(std::string{h.method_string()},
                                           {h.target().data(), h.target().size()})};
    else if (expects == expectation::continue_first && !parser_->is_done())
      refused = refusal_before_body(h);
    if (refused)
      return refuse_unread(std::move(refused->answer), refused->route);
    if (ec || parser_->is_done())
      return on_read(ec, n);
    if (expects == expectation::continue_first) {
      static constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(continue_line.data(), continue_line.size()),
                       [self = shared_from_this()](beast::error_code wec, size_t) {
                         if (wec)
                           return self->on_read(wec, 0);
                         self->read_body();
                       });
      return;
    }
    read_body();
  }

  /// Answers a request whose body is not read (or not all of it): the
  /// connection closes after the answer.
  void refuse_unread(reply r, const std::string& route) {
    read_deadline_.cancel();
    ++read_phase_;
    close_after_ = true;
    method_ = std::string{parser_->get().method_string()};
    send(std::move(r), route, std::chrono::steady_clock::now());
  }

  /// The answer of a request its header alone refuses: what on_read refuses
  /// before routing, then what the route would (404, 405, 415).
  std::optional<refusal>
  refusal_before_body(const bhttp::request_parser<bhttp::string_body>::value_type& h) {
    incoming req;
    req.method = std::string{h.method_string()};
    req.target = std::string{h.target()};
    req.headers = header_fields_;
    req.repeated_headers = repeated_fields_;
    if (auto refused = refused_before_routing(h.version(), h.method(), req))
      return refused;
    if (auto r = router_.refusal_before_body(req))
      return refusal{std::move(r->first), std::move(r->second), true};
    return std::nullopt;
  }

  /// Parses what the buffer holds of the body, then reads the rest a part at
  /// a time. Usually the whole body came with the header: it is parsed here
  /// rather than through one more asynchronous read (≈ 1 µs of an io thread
  /// per write). Eager parsing leaves no chunk data unparsed, only a line the
  /// parser waits to see the end of, which is checked for a bare LF.
  void read_body() {
    parser_->eager(true);
    beast::error_code ec;
    size_t used = 0;
    if (!parser_->chunked()) {
      used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
    } else {
      // A chunked body is shown to the parser at most the limit at a time,
      // so a size line or trailer section longer than that is never taken
      // whole, however it arrived: it stays in the buffer, checked below.
      for (;;) {
        auto data = buffer_.data();
        auto n = parser_->put(net::buffer(data.data(), std::min(data.size(), header_limit)), ec);
        buffer_.consume(n);
        used += n;
        if (n == 0 || parser_->is_done() || (ec && ec != bhttp::error::need_more))
          break;
        ec = {};
      }
    }
    if (ec == bhttp::error::need_more)
      ec = {};
    // Only what arrived since the last check is scanned (a line sent a byte
    // at a time must not be scanned again for each byte).
    if (used > 0)
      lf_checked_ = 0;
    if (!ec && !parser_->is_done() && parser_->chunked()) {
      // What the parser leaves unconsumed is a line it waits to see the end
      // of: a chunk's size line, or the trailer section, which Beast keeps
      // whole. Neither counts against a limit of Beast's (the body limit
      // counts chunk data; the header limit, the header section only), so a
      // line that never ends would grow the buffer for as long as the client
      // sends; one longer than the limit never ends within what the parser
      // is shown. (Checked first: the buffer then also holds what follows
      // that line, chunk data whose line feeds are no line endings.)
      if (buffer_.size() > header_limit) {
        auto& h = parser_->get();
        return refuse_unread(problem(400, "a chunk's size line or the trailer section does not "
                                          "end within " + std::to_string(header_limit) + " bytes"),
                             router_.pattern_of(std::string{h.method_string()},
                                                {h.target().data(), h.target().size()}));
      }
      if (bare_line_feed(buffer_.data(), lf_checked_))
        ec = bhttp::error::bad_line_ending;
      lf_checked_ = buffer_.size();
    }
    if (ec || parser_->is_done())
      return on_read(ec, 0);
    if (read_timed_out_) // a read that completed as the deadline came
      return on_read(beast::error::timeout, 0);
    // Bytes, not a parse: Beast's parsing read would go on reading while its
    // parser needs more, and a pending line would never be checked.
    stream_.async_read_some(
      buffer_.prepare(beast::read_size(buffer_, 65536)),
      [self = shared_from_this()](beast::error_code rec, size_t n) {
        self->buffer_.commit(n);
        if (rec == net::error::eof) {
          // The client stopped sending within the body (it may still read):
          // a partial message, answered as one.
          beast::error_code partial;
          self->parser_->put_eof(partial);
          return self->on_read(partial ? partial : rec, 0);
        }
        if (rec)
          return self->on_read(rec, 0);
        self->read_body();
      });
  }

  void on_read(beast::error_code ec, size_t) {
    read_deadline_.cancel();
    ++read_phase_;
    if (read_timed_out_ && ec) {
      // An idle keep-alive connection just closes; a started request is a 408.
      if (buffer_.size() == 0 && !parser_->got_some())
        return do_close();
      close_after_ = true;
      return send(problem(408, "the request did not arrive in full within "
                                 + std::to_string(router_.svc().options.read_timeout.count())
                                 + " ms"),
                  "timeout", std::chrono::steady_clock::now());
    }
    if (ec == bhttp::error::end_of_stream)
      return do_close();
    if (ec == bhttp::error::body_limit) {
      close_after_ = true;
      // Counted under the route it was for: the header is in.
      auto& h = parser_->get();
      method_ = std::string{h.method_string()};
      // Beast finds the declared length too large before the header is
      // done, so on_header did not learn the method.
      head_ = h.method() == bhttp::verb::head;
      return send(problem(413, "body larger than the limit of "
                                 + std::to_string(router_.svc().options.body_limit)
                                 + " bytes"),
                  router_.pattern_of(method_, {h.target().data(), h.target().size()}),
                  std::chrono::steady_clock::now());
    }
    if (ec == bhttp::error::header_limit) {
      close_after_ = true;
      // 414 when the request line itself does not end within the limit: it
      // is the target that is too long (RFC 9110 §15.5.15), not the header
      // fields. (Beast parses the request line only once the whole header is
      // in, so the parser cannot tell: the bytes read do.)
      if (parser_->get().target().empty() && !line_ends_within(buffer_.data(), header_limit))
        return send(problem(414, "request target too long: the request line does not end "
                                   "within " + std::to_string(header_limit) + " bytes"),
                    "too-large", std::chrono::steady_clock::now());
      return send(problem(431, "request header larger than " + std::to_string(header_limit)
                                 + " bytes"),
                  "too-large", std::chrono::steady_clock::now());
    }
    // Only a request line can begin with an empty line: once the header is
    // in, CR and LF left unread belong to a body, and are never skipped.
    if (ec == bhttp::error::bad_method && !parser_->is_header_done() && skip_blank_lines())
      return start_read();
    if (ec) {
      fail(ec, "read", &stream_.socket());
      if (ec != beast::error::timeout && ec != net::error::eof
          && ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category()) {
        close_after_ = true;
        if (ec == bhttp::error::bad_version)
          if (auto version = unsupported_version(buffer_.data(), header_limit))
            return send(problem(505, *version + " is not supported: send HTTP/1.1 (or 1.0)"),
                        "bad-request", std::chrono::steady_clock::now());
        // Both framings: Beast says the second is bad (the fields before it
        // are in the header); framing_problem answers the orders it accepts.
        auto& fields = parser_->get();
        if ((ec == bhttp::error::bad_content_length
             && fields.count(bhttp::field::transfer_encoding) > 0)
            || (ec == bhttp::error::bad_transfer_encoding
                && fields.count(bhttp::field::content_length) > 0))
          return send(problem(400, both_framings), "bad-request", std::chrono::steady_clock::now());
        return send(problem(400, "malformed HTTP request: " + ec.message()), "bad-request",
                    std::chrono::steady_clock::now());
      }
      return do_close();
    }
    blank_skipped_ = 0;
    auto started = std::chrono::steady_clock::now();
    auto msg = parser_->release();
    incoming req;
    req.method = std::string{msg.method_string()};
    method_ = req.method;
    req.target = std::string{msg.target()};
    req.headers = std::move(header_fields_);
    req.repeated_headers = std::move(repeated_fields_);
    req.body = std::move(msg.body());
    keep_alive_ = msg.keep_alive();
    chunked_ok_ = msg.version() >= 11;
    head_ = msg.method() == bhttp::verb::head;
    if (auto refused = refused_before_routing(msg.version(), msg.method(), req)) {
      if (refused->close)
        close_after_ = true;
      return send(std::move(refused->answer), refused->route, started);
    }
    if (router_.is_subscription(req))
      return start_subscription(req);
    // A HEAD answers what a GET would: while the server stops, the 503 of a
    // new subscription (a malformed start is still the route's 400).
    if (head_ && drain_.draining.load()
        && router_.pattern_of("GET", req.target) == "/subscribe/$all") {
      uint64_t from = 1;
      if (!subscription_start(req, from))
        return refuse_new_subscription();
    }
    auto executor = stream_.get_executor();
    auto self = shared_from_this();
    auto route = std::make_shared<std::string>();
    auto request = ++request_no_;
    // Counted first, then `closed` checked (stop() does the opposite, both
    // sequentially consistent): either stop() waits for this request, or it
    // is not routed — routed after stop() saw nothing in flight, it could be
    // appended and then cut off unanswered when the io threads stop.
    drain_.in_flight.fetch_add(1);
    counted_ = true;
    started_ = started;
    if (drain_.closed.load()) {
      answered_ = request;
      close_after_ = true;
      return send(unavailable("the server is stopping: this request was not served; retry"),
                  router_.pattern_of(req.method, req.path), started);
    }
    route_ = route;
    // A read that may wait long for the read model watches its client (a
    // percent-encoded query may name minPosition too).
    const bool may_wait = (req.method == "GET" || req.method == "HEAD")
                          && (req.target.find("minPosition=") != std::string::npos
                              || req.target.find('%') != std::string::npos);
    // A create's id is made by its route: kept for a late answer's detail.
    written_stream_.reset();
    if (req.method == "POST")
      req.written_stream = written_stream_ = std::make_shared<std::string>();
    *route = router_.handle(std::move(req), [self, executor, route, started, request](reply r) {
      net::post(executor, [self, r = std::move(r), route, started, request]() mutable {
        if (self->answered_ >= request)
          return; // answered by the deadline already
        self->answered_ = request;
        self->deadline_.cancel();
        self->send(std::move(r), *route, started);
      });
    });
    if (answered_ < request) {
      arm_deadline(request);
      if (may_wait && buffer_.size() == 0) // bytes read past it: the client's next request
        watch_client(request);
    }
  }

  /// While request `request` (a read waiting for minPosition, up to 30 s)
  /// waits for its answer, a client that closes its connection, or only its
  /// sending side, or resets it, is no longer waited for: its answer is
  /// dropped and the connection closed at once, so that abandoned waits do
  /// not hold a descriptor each. Bytes of a next request (pipelined), read
  /// already or arriving, mean a client that waits for its answers: they end
  /// (or prevent) the watch and are left for the read after the answer; the
  /// answer ends the watch too (`send`), so that no wait is left queued ahead
  /// of that read.
  void watch_client(uint64_t request) {
    watching_ = true;
    stream_.socket().async_wait(
      tcp::socket::wait_read, [weak = weak_from_this(), request](beast::error_code ec) {
        auto self = weak.lock();
        if (!ec && self && self->answered_ < request)
          self->watch_client(request); // queued again, then a look
      });
    // The socket's readiness is reported by edges: a close that came before
    // the wait was queued would never be reported to it.
    look_at_client(request);
  }

  /// What the client has sent since request `request`: nothing yet (the
  /// watch goes on), a next request (the watch ends), or its close.
  void look_at_client(uint64_t request) {
    char byte;
    auto n = ::recv(stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0)
      return stop_watching();
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return;
    answered_ = request;
    deadline_.cancel();
    finish_request();
    core::metrics::instance().requests_abandoned.add();
    watching_ = false;
    beast::error_code ignored;
    stream_.socket().close(ignored);
  }

  /// Ends the watch of `watch_client`, if one is queued (nothing else is
  /// then: the session reads nothing while a request waits for its answer).
  void stop_watching() {
    if (!watching_)
      return;
    watching_ = false;
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
  }

  /// Answers 503 when the actors have not answered request `request` within
  /// --http.request-timeout-ms (a stuck disk, say); its late answer is dropped.
  /// A write gets twice that: one that has not reached the event log within
  /// the request timeout is refused unwritten by the actors (its answer says
  /// so), one that has is answered when durable (in unit-of-work mode after
  /// its wait for the read model, shorter than the request timeout); only if
  /// that takes another request timeout (a hung disk) does it get this 503,
  /// which cannot say whether it was written.
  void arm_deadline(uint64_t request) {
    auto timeout = router_.svc().options.request_timeout;
    const bool read = method_ == "GET" || method_ == "HEAD";
    if (!read)
      timeout *= 2;
    deadline_.expires_after(timeout);
    deadline_.async_wait([weak = weak_from_this(), request, read](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->answered_ >= request)
        return;
      self->answer_late(request, read ? "no answer within the request timeout"
                                      : "no answer within twice the request timeout");
    });
  }

  /// A 503 for routed request `request`, which has no answer yet (`why`); a
  /// late answer is then dropped.
  void answer_late(uint64_t request, const std::string& why) {
    answered_ = request;
    deadline_.cancel();
    const bool read = method_ == "GET" || method_ == "HEAD";
    std::string look = written_stream_ && !written_stream_->empty()
                         ? " (GET /streams/" + *written_stream_ + ": the todo it would create)"
                         : "";
    send(unavailable(read ? why
                          : why + "; a write may or may not have happened: check the stream"
                              + look + " before retrying"),
         *route_, started_);
  }

  void refuse_new_subscription() {
    close_after_ = true;
    send(unavailable("the server is stopping: no new subscriptions; retry"), "/subscribe/$all",
         std::chrono::steady_clock::now());
  }

  void start_subscription(const incoming& req) {
    uint64_t from = 1;
    if (auto bad = subscription_start(req, from))
      return send(std::move(*bad), "/subscribe/$all", std::chrono::steady_clock::now());
    if (drain_.draining.load())
      return refuse_new_subscription();
    // Each subscriber reads the log after every batch: their number is
    // bounded like any other resource a client can claim.
    if (auto max = router_.svc().options.sse_max_subscribers; !signal_.admit(max)) {
      close_after_ = true;
      return send(unavailable("already " + std::to_string(max)
                                + " subscribers (--http.sse-max-subscribers); retry later",
                              "5"),
                  "/subscribe/$all", std::chrono::steady_clock::now());
    }
    core::metrics::instance().observe_request("GET", "/subscribe/$all", 200, 0);
    stream_.expires_never();
    std::make_shared<sse_session>(std::move(stream_), router_.svc(), signal_, from)->start();
  }

  void send(reply r, const std::string& route, std::chrono::steady_clock::time_point started) {
    stop_watching();
    if (r.stream)
      return send_stream(std::move(r), route, started);
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>(
      static_cast<bhttp::status>(r.status), 11);
    set_header(*res, r, route, started);
    res->body() = std::move(r.body);
    res->prepare_payload();
    // RFC 9110 §8.6: no body, no length; HEAD of the event stream, whose GET
    // is delimited by the connection's close, has none either.
    if (r.status == 204 || r.status == 304 || (head_ && r.content_type == "text/event-stream"))
      res->erase(bhttp::field::content_length);
    if (head_)
      res->body().clear();
    res_ = res;
    stream_.expires_after(router_.svc().options.read_timeout);
    bhttp::async_write(stream_, *res,
                       beast::bind_front_handler(&session::on_write, shared_from_this(),
                                                 !res->keep_alive()));
  }

  /// The header fields of every answer and whether the connection stays
  /// open; counts the answer in the metrics.
  template <class Response>
  void set_header(Response& res, const reply& r, const std::string& route,
                  std::chrono::steady_clock::time_point started) {
    res.set(bhttp::field::server, "eventsd");
    res.set(bhttp::field::date, http_date());
    if (r.status == 413) // Beast still has RFC 7231's "Payload Too Large"
      res.reason("Content Too Large");
    if (!r.content_type.empty())
      res.set(bhttp::field::content_type, r.content_type);
    for (auto& [name, value] : r.headers)
      res.insert(name, value);
    res.keep_alive(keep_alive_ && !close_after_
                   && !drain_.draining.load(std::memory_order_relaxed));
    // An HTTP/1.0 client closes unless told the connection stays open (the
    // answer says HTTP/1.1, where that goes without saying).
    if (!chunked_ok_ && res.keep_alive())
      res.set(bhttp::field::connection, "keep-alive");
    auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
    core::metrics::instance().observe_request(method_, route, static_cast<int>(r.status),
                                              elapsed.count());
  }

  /// An answer whose body comes part by part: the header with
  /// `Transfer-Encoding: chunked`, then one chunk per part, each asked for
  /// once the previous one is written (write timeouts apply to each). An
  /// HTTP/1.0 client knows no transfer coding (RFC 9112 §6.1): its answer's
  /// body is the parts as they are, ended by closing the connection.
  void send_stream(reply r, const std::string& route,
                   std::chrono::steady_clock::time_point started) {
    using header_response = bhttp::response<bhttp::empty_body>;
    auto res = std::make_shared<header_response>(static_cast<bhttp::status>(r.status), 11);
    if (!chunked_ok_)
      close_after_ = true;
    set_header(*res, r, route, started);
    res->chunked(chunked_ok_);
    auto serializer = std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*res);
    res_ = res;
    bool close = !res->keep_alive();
    stream_.expires_after(router_.svc().options.read_timeout);
    bhttp::async_write_header(
      stream_, *serializer,
      [self = shared_from_this(), serializer, body = std::move(r.stream),
       close](beast::error_code ec, size_t) mutable {
        if (ec)
          return self->on_write(close, ec, 0);
        if (self->head_) // the header of the answer GET would give, no body
          return self->on_write(close, {}, 0);
        self->send_part(std::move(body), close);
      });
  }

  void send_part(std::shared_ptr<body_stream> body, bool close) {
    auto executor = stream_.get_executor();
    auto* producer = body.get();
    // Each part is the server's own answer too: it must come within the
    // request timeout, or the body is cut (the client sees it truncated).
    waiting_part_ = true;
    deadline_.expires_after(router_.svc().options.request_timeout);
    // As the read timer: one that fired as part n came is for part n only.
    deadline_.async_wait([weak = weak_from_this(), part = ++part_no_](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || !self->waiting_part_ || self->part_no_ != part)
        return;
      self->waiting_part_ = false;
      self->finish_request();
      beast::error_code ignored;
      self->stream_.socket().close(ignored);
    });
    producer->next([self = shared_from_this(), executor, body = std::move(body),
                    close](std::optional<std::string> part) mutable {
      net::post(executor, [self, body = std::move(body), part = std::move(part),
                           close]() mutable {
        if (!self->waiting_part_)
          return; // it came too late: the connection is closed
        self->waiting_part_ = false;
        self->deadline_.cancel();
        if (!part) { // cannot be completed: a truncated body, then no more
          self->finish_request();
          beast::error_code ec;
          self->stream_.socket().close(ec);
          return;
        }
        auto data = std::make_shared<std::string>(std::move(*part));
        bool last = body->last();
        self->stream_.expires_after(self->router_.svc().options.read_timeout);
        auto written = [self, data, body = std::move(body), close, last](beast::error_code ec,
                                                                          size_t) mutable {
          if (ec)
            return self->on_write(close, ec, 0);
          if (!last)
            return self->send_part(std::move(body), close);
          if (!self->chunked_ok_) // the close ends the body
            return self->on_write(close, {}, 0);
          net::async_write(self->stream_, bhttp::make_chunk_last(),
                           [self, close](beast::error_code wec, size_t) {
                             self->on_write(close, wec, 0);
                           });
        };
        if (self->chunked_ok_)
          net::async_write(self->stream_, bhttp::make_chunk(net::buffer(*data)), std::move(written));
        else
          net::async_write(self->stream_, net::buffer(*data), std::move(written));
      });
    });
  }

  void on_write(bool close, beast::error_code ec, size_t) {
    res_.reset();
    finish_request();
    if (ec)
      return fail(ec, "write", &stream_.socket());
    if (close)
      return do_close();
    do_read();
  }

  /// Empty lines before a request line are ignored (RFC 9112 §2.2: some
  /// clients send a CRLF after a body), up to a few before each request.
  /// True when the unparsed bytes began with some, now dropped: the request
  /// is read again from what follows them.
  bool skip_blank_lines() {
    constexpr size_t most = 16;
    auto data = static_cast<const char*>(buffer_.data().data());
    size_t n = 0;
    while (n < buffer_.size() && (data[n] == '\r' || data[n] == '\n'))
      ++n;
    if (n == 0 || (blank_skipped_ += n) > most)
      return false;
    buffer_.consume(n);
    return true;
  }

  /// Closes the connection after the last answer: FIN first, then what the
  /// client still sends (the rest of a refused body, say) is read and
  /// dropped until it closes too, for at most 2 s and 4 MiB. Closing a
  /// socket with unread bytes sends a reset, which can destroy the answer
  /// before the client has read it (RFC 9112 §9.6).
  void do_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec)
      return;
    stream_.expires_after(std::chrono::seconds{2});
    linger(4 * 1024 * 1024);
  }

  void linger(size_t budget) {
    buffer_.consume(buffer_.size());
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this(), budget](beast::error_code ec, size_t n) {
                              if (!ec && n < budget)
                                self->linger(budget - n);
                            });
  }

  /// The routed request read last has been answered (or never will be).
  void finish_request() {
    if (counted_)
      drain_.in_flight.fetch_sub(1, std::memory_order_relaxed);
    counted_ = false;
  }

  beast::tcp_stream stream_;
  net::steady_timer deadline_;
  net::steady_timer read_deadline_; // the request must be read by then
  std::chrono::steady_clock::time_point read_until_{}; // when read_deadline_ fires
  bool read_timed_out_ = false;
  bool waiting_part_ = false; // a chunked answer waits for its next part
  uint64_t part_no_ = 0;      // parts of chunked answers asked for on this connection
  uint64_t read_phase_ = 0;   // bumped when a request's read starts and when it ends
  uint64_t request_no_ = 0; // requests read on this connection
  uint64_t answered_ = 0;   // the last one answered
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::shared_ptr<void> res_;
  router& router_;
  head_signal& signal_;
  drain_state& drain_;
  bool counted_ = false; // a routed request is in drain_.in_flight
  bool watching_ = false; // watch_client's wait is queued
  std::shared_ptr<std::string> route_;              // of the last routed request
  std::shared_ptr<std::string> written_stream_;     // its create's stream, once routed
  std::chrono::steady_clock::time_point started_{}; // when it was read
  std::string method_;
  bool keep_alive_ = true;
  bool chunked_ok_ = true; // HTTP/1.1 or later: Transfer-Encoding may be sent
  bool close_after_ = false;
  bool head_ = false;
  size_t blank_skipped_ = 0; // CR and LF bytes dropped before the next request line
  std::map<std::string, std::string> header_fields_; // of the request being read, as incoming's
  std::vector<std::string> repeated_fields_;
  size_t lf_checked_ = 0; // bytes of a chunked body's pending line checked for a bare LF
};

class listener : public std::enable_shared_from_this<listener> {
public:
  listener(net::io_context& ioc, router& r, head_signal& signal, drain_state& drain)
    : ioc_(ioc), acceptor_(net::make_strand(ioc)), router_(r), signal_(signal),
      drain_(drain), highest_fd_(highest_connection_fd()) {}

  std::string open(const tcp::endpoint& ep) {
    beast::error_code ec;
    acceptor_.open(ep.protocol(), ec);
    if (!ec)
      acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec)
      acceptor_.bind(ep, ec);
    if (!ec)
      acceptor_.listen(net::socket_base::max_listen_connections, ec);
    return ec ? ec.message() : std::string{};
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }

  void run() { do_accept(); }

  void stop() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      self->acceptor_.close(ec);
      self->retry_.cancel();
    });
  }

private:
  void do_accept() {
    if (!acceptor_.is_open())
      return; // closed by the drain (a connection accepted as it began was served)
    acceptor_.async_accept(net::make_strand(ioc_),
                           beast::bind_front_handler(&listener::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open())
        return;
      // Out of descriptors (or memory): the pending connection stays in the
      // backlog, so accepting again at once would fail again at once, in a
      // loop. Wait for open connections to go, and say so once a second.
      auto now = std::chrono::steady_clock::now();
      if (now - last_accept_error_ >= std::chrono::seconds{1}) {
        last_accept_error_ = now;
        fail(ec, "accept (retrying every 50 ms)");
      }
      retry_.expires_after(std::chrono::milliseconds{50});
      retry_.async_wait([self = shared_from_this()](beast::error_code wec) {
        if (!wec)
          self->do_accept();
      });
      return;
    }
    if (socket.native_handle() > highest_fd_) {
      refuse(socket);
      return do_accept();
    }
    socket.set_option(tcp::no_delay(true), ec);
    std::make_shared<session>(std::move(socket), router_, signal_, drain_)->run();
    do_accept();
  }

  /// The highest descriptor a connection may have: a quarter of the process's
  /// limit (at most 256) is kept for the event store and PostgreSQL, so that
  /// idle clients cannot take the descriptor RocksDB needs for its next WAL
  /// (which it rates fatal). Descriptors are handed out lowest first, so a
  /// connection's number is at least how many are open.
  static int highest_connection_fd() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY
        || rl.rlim_cur > static_cast<rlim_t>(std::numeric_limits<int>::max()))
      return std::numeric_limits<int>::max();
    auto limit = static_cast<int>(rl.rlim_cur);
    return limit - 1 - std::min(256, limit / 4);
  }

  /// Answers a connection over the descriptor budget with a 503 and closes it.
  void refuse(tcp::socket& socket) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_refusal_logged_ >= std::chrono::seconds{1}) {
      last_refusal_logged_ = now;
      std::cerr << "eventsd: http: refusing connections: descriptor " << socket.native_handle()
                << " is past those up to " << highest_fd_
                << " that connections may take (the rest of the file descriptor limit is kept "
                   "for the event store; raise it with ulimit -n)\n";
    }
    static const std::string answer = [] {
      auto r = problem(503, "too many connections open: retry later");
      return "HTTP/1.1 503 Service Unavailable\r\nServer: eventsd\r\nContent-Type: "
             + r.content_type + "\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: "
             + std::to_string(r.body.size()) + "\r\n\r\n" + r.body;
    }();
    beast::error_code ec;
    socket.non_blocking(true, ec);
    net::write(socket, net::buffer(answer), ec); // an empty send buffer takes it whole, or not
    socket.shutdown(tcp::socket::shutdown_send, ec);
    // What the client sent already is read first: closing with unread input
    // would send a reset, which may reach it before the answer.
    std::array<char, 4096> sink;
    for (int i = 0; i < 16 && socket.read_some(net::buffer(sink), ec) > 0 && !ec; ++i) {
    }
    socket.close(ec);
    core::metrics::instance().connections_refused.add();
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  net::steady_timer retry_{acceptor_.get_executor()};
  std::chrono::steady_clock::time_point last_accept_error_{};
  std::chrono::steady_clock::time_point last_refusal_logged_{};
  router& router_;
  head_signal& signal_;
  drain_state& drain_;
  const int highest_fd_;
};

} // namespace

struct server::impl {
  services& svc;
  // Before ioc: sessions destroyed with ioc's pending handlers use them.
  drain_state drain;
  router routes;
  head_signal signal;
  net::io_context ioc;
  std::shared_ptr<listener> accept;
  std::vector<std::thread> threads;
  actors::position_listener_actor head_listener;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  mutable std::mutex failure_mtx;
  std::string failure;

  explicit impl(services& s)
    : svc(s), routes(s), signal(s.options.sse_catch_up_slots),
      ioc(static_cast<int>(std::max<size_t>(1, s.options.threads))) {}
};

server::server(services& svc) : impl_(std::make_unique<impl>(svc)) {}

server::~server() {
  stop();
  // The rest of a stop (the actor system, the store's close) is not to be
  // cut short by a signal now that nothing is left to act on it.
  process_signals().ignore_from_now();
}

uint16_t server::start(std::string& error) {
  auto& d = *impl_;
  beast::error_code ec;
  auto address = net::ip::make_address(d.svc.options.address == "localhost"
                                         ? std::string{"127.0.0.1"}
                                         : d.svc.options.address,
                                       ec);
  if (ec) {
    error = "invalid --http.address `" + d.svc.options.address + "`: " + ec.message();
    return 0;
  }
  d.accept = std::make_shared<listener>(d.ioc, d.routes, d.signal, d.drain);
  if (auto err = d.accept->open(tcp::endpoint{address, d.svc.options.port}); !err.empty()) {
    error = "cannot listen on " + d.svc.options.address + ":"
            + std::to_string(d.svc.options.port) + ": " + err;
    return 0;
  }
  // Log-head notifications for SSE sessions.
  auto* signal = &d.signal;
  d.head_listener = d.svc.system.spawn(
    [signal](actors::position_listener_actor::pointer) -> actors::position_listener_actor::behavior_type {
      return {[signal](core::committed c) { signal->notify(c.position); }};
    });
  caf::anon_send(d.svc.writer, listen_atom_v, d.head_listener);
  d.accept->run();
  d.work.emplace(d.ioc.get_executor());
  for (size_t i = 0; i < std::max<size_t>(1, d.svc.options.threads); ++i)
    d.threads.emplace_back([&d] { d.ioc.run(); });
  return d.accept->port();
}

void server::stop() {
  auto& d = *impl_;
  if (d.threads.empty())
    return;
  if (d.accept)
    d.accept->stop();
  // Answer what was read: a write a client sent is answered, not cut off
  // after it may have been appended. Each answer closes its connection, so
  // busy connections stop sending; done when none is in flight twice in a row.
  d.drain.draining = true;
  // SSE subscribers get a last comment and are closed (they resume with
  // Last-Event-ID elsewhere or after the restart).
  d.signal.stop_all(false);
  // Waits on the read model end now: a unit-of-work write is answered 202
  // (durable), a minPosition read 503, instead of at the drain deadline.
  d.svc.on_drain.drain();
  caf::anon_send(d.svc.projection, drain_atom_v);
  auto deadline = std::chrono::steady_clock::now() + d.svc.options.drain_timeout;
  // Done when none is in flight twice in a row, 10 ms apart (a client that
  // had its answer before the drain began may be sending its next request);
  // with `subscribers`, when no SSE subscriber is left either.
  auto wait_idle = [&](bool subscribers) {
    int idle_checks = 0;
    while (idle_checks < 2 && std::chrono::steady_clock::now() < deadline) {
      bool idle = d.drain.in_flight.load() == 0 && (!subscribers || d.signal.admitted() == 0);
      idle_checks = idle ? idle_checks + 1 : 0;
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
  };
  wait_idle(false);
  // From here on no request is routed (see drain_state); one that slipped in
  // before this is waited for too, and so are subscribers still taking their
  // last comment (a stuck one until the deadline).
  d.drain.closed = true;
  wait_idle(true);
  if (d.drain.in_flight.load() > 0) {
    // Still unanswered at the deadline: a 503 each, rather than a cut
    // connection, and a moment for those answers to be written.
    std::vector<std::shared_ptr<session>> open;
    {
      std::lock_guard<std::mutex> guard{d.drain.mtx};
      for (auto& [ptr, weak] : d.drain.sessions)
        if (auto s = weak.lock())
          open.push_back(std::move(s));
    }
    for (auto& s : open)
      s->abandon();
    open.clear();
    auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds{500};
    while (d.drain.in_flight.load() > 0 && std::chrono::steady_clock::now() < grace)
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
  }
  if (auto left = d.drain.in_flight.load(); left > 0)
    std::cerr << "eventsd: stopped with " << left << " answer(s) unfinished after "
              << d.svc.options.drain_timeout.count() << " ms (--http.drain-timeout-ms)\n";
  // Subscribers that did not take their last comment (or subscribed as the
  // drain began) are closed now, while the io threads still run their ends.
  d.signal.stop_all(true);
  auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds{500};
  while (d.signal.admitted() > 0 && std::chrono::steady_clock::now() < grace)
    std::this_thread::sleep_for(std::chrono::milliseconds{10});
  d.work.reset();
  d.ioc.stop();
  for (auto& t : d.threads)
    t.join();
  d.threads.clear();
  if (d.head_listener)
    caf::anon_send_exit(d.head_listener, caf::exit_reason::user_shutdown);
}

void server::wait_for_signal() {
  process_signals().start();
  process_signals().wait();
}

void server::catch_early_signals() {
  process_signals().start();
}

void server::release_early_signals() {
  if (int n = process_signals().release())
    std::raise(n);
}

void server::stop_for(std::string reason) {
  auto& d = *impl_;
  std::lock_guard<std::mutex> guard{d.failure_mtx};
  if (process_signals().wake() && d.failure.empty())
    d.failure = std::move(reason);
}

std::string server::failure() const {
  std::lock_guard<std::mutex> guard{impl_->failure_mtx};
  return impl_->failure;
}

} // namespace eventsd::http
