// The Beast HTTP server: listener, sessions, SSE subscriptions.
//
// Thread-safety: `start` and `stop` from one controlling thread; the server
// runs on its own io threads. No Beast type leaks out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "http/services.hpp"

namespace eventsd::http {

class server {
public:
  explicit server(services& svc);
  ~server();

  /// Binds and starts the io threads; returns the bound port (useful with
  /// port 0) or an error message in `error`.
  uint16_t start(std::string& error);

  /// Stops accepting, closes connections and joins the io threads.
  void stop();

  /// Blocks until a SIGINT, SIGTERM or SIGHUP arrives or stop_for() is called;
  /// returns at once when one was caught early (catch_early_signals()).
  void wait_for_signal();

  /// From now until wait_for_signal() takes over, a SIGINT, SIGTERM or SIGHUP
  /// is remembered instead of ending the process: eventsd finishes starting
  /// (a store is never left half-opened) and then stops as it would have
  /// when serving; a second one ends the process at once. SIGHUP is left
  /// alone when it is ignored (`nohup`).
  static void catch_early_signals();

  /// Gives the three signals back their default action, for a run that will
  /// not serve (an offline rebuild); one caught early is raised again now.
  static void release_early_signals();

  /// Makes wait_for_signal() return as a signal would, because a part of the
  /// server cannot go on (`reason`; the first one is kept). From any thread,
  /// also before wait_for_signal(); ignored once a signal has come.
  void stop_for(std::string reason);

  /// The reason given to stop_for() before any signal, or empty.
  std::string failure() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace eventsd::http
