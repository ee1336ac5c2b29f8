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

  /// Blocks until a SIGINT, SIGTERM or SIGHUP arrives (or came since
  /// catch_early_signals()) or stop_for() is called. From then on, another
  /// within 2 s is ignored and a later one ends the process at once.
  void wait_for_signal();

  /// From now on a SIGINT, SIGTERM or SIGHUP does not end the process but is
  /// kept for wait_for_signal(): eventsd finishes starting (a large store's
  /// open included) and then stops as it would have when serving. SIGHUP is
  /// left alone when it is ignored (`nohup`).
  static void catch_early_signals();

  /// Gives the three signals back the action they had before
  /// catch_early_signals(), for a run that will not serve (an offline
  /// rebuild); one caught early is raised again now.
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
