// eventsd: wires storage, actors, projections and the HTTP gateway, then
// serves until SIGINT, SIGTERM or SIGHUP.
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>
#include <sys/resource.h>
#include <unistd.h>

#include <caf/all.hpp>

#include "actors/log_reader.hpp"
#include "actors/log_writer.hpp"
#include "actors/todo_aggregate.hpp"
#include "config/options.hpp"
#include "core/lifeline.hpp"
#include "core/messages.hpp"
#include "http/server.hpp"
#include "http/services.hpp"
#include "projections/projection.hpp"
#include "projections/todo_read_model.hpp"
#include "storage/event_log.hpp"

namespace {

using namespace eventsd;

std::string default_static_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec)
    return "static";
  return (exe.parent_path() / "static").string();
}

int rebuild_offline(storage::event_log& log, const config::options& opts) {
  bool tty = isatty(STDERR_FILENO);
  auto r = projections::rebuild_offline(
    log, opts.postgres_dsn, opts.projection_rebuild_batch_size,
    std::chrono::milliseconds{opts.postgres_query_timeout_ms}, [tty](uint64_t pos, uint64_t head) {
    if (!tty)
      return;
    int width = 40;
    int filled = head == 0 ? width : static_cast<int>(width * pos / std::max<uint64_t>(head, 1));
    std::cerr << "\rrebuilding todos [" << std::string(filled, '#')
              << std::string(width - filled, ' ') << "] " << pos << "/" << head << std::flush;
  });
  if (tty)
    std::cerr << "\n";
  if (!r.ok()) {
    std::cerr << "eventsd: rebuild failed: " << r.error().detail << "\n";
    return 1;
  }
  std::cerr << "eventsd: rebuilt todos up to position " << r.value() << "\n";
  return 0;
}

/// Every connection takes a file descriptor, and so does every file RocksDB
/// opens (a new WAL, a flushed table): the soft limit goes up to the hard one
/// (Debian's shells start at 1024 of 524288). The gateway keeps a part of
/// whatever it is for the store (http/server.cpp, listener).
void raise_descriptor_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
    return;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0)
    std::cerr << "eventsd: WARNING cannot raise the file descriptor limit to " << rl.rlim_max
              << ": " << std::strerror(errno) << "\n";
}

} // namespace

int main(int argc, char** argv) {
  config::options opts;
  core::configure_messages(opts);
  core::add_error_category<todo::todo_errc>(opts, "todo");
  core::add_error_category<projections::projection_errc>(opts, "projection");
  if (auto err = config::parse(opts, argc, argv)) {
    std::cerr << "eventsd: " << *err << "\n";
    return 2;
  }
  if (opts.cli_helptext_printed)
    return 0;
  if (auto why = projections::dsn_problem(opts.postgres_dsn)) {
    std::cerr << "eventsd: invalid --postgres.dsn"
              << (opts.postgres_dsn_from.empty() ? "" : " (from " + opts.postgres_dsn_from + ")")
              << ": " << *why << "\n";
    return 2;
  }
  // The OpenAPI document, Swagger UI and /ui: a directory named for them must
  // hold them; beside the binary they may be missing (a binary copied alone).
  auto static_dir = opts.http_static_dir.empty() ? default_static_dir() : opts.http_static_dir;
  if (opts.rebuild.empty() && !std::filesystem::is_regular_file(static_dir + "/openapi.json")) {
    if (!opts.http_static_dir.empty()) {
      std::cerr << "eventsd: --http.static-dir " << static_dir
                << " holds no openapi.json (the directory of /openapi.json, /swagger and /ui, "
                   "build/static after a build)\n";
      return 2;
    }
    std::cerr << "eventsd: WARNING no openapi.json in " << static_dir
              << ": /openapi.json, /swagger and /ui answer 404 (set --http.static-dir to "
                 "build/static of a build)\n";
  }
  // A closed stderr (a pipe whose reader went) must not end the process
  // mid-drain: writes to it fail instead. Sockets never raise it (Beast
  // sends with MSG_NOSIGNAL).
  std::signal(SIGPIPE, SIG_IGN);
  raise_descriptor_limit();
  // Opening a large store takes a while: a SIGTERM meanwhile stops eventsd
  // cleanly once it has started instead of killing it mid-open.
  http::server::catch_early_signals();

  std::error_code ec;
  std::filesystem::create_directories(opts.storage_dir, ec);
  storage::log_options lopts;
  lopts.dir = opts.storage_dir;
  lopts.sync = opts.storage_sync == "fsync";
  lopts.block_cache_mb = opts.storage_block_cache_mb;
  lopts.stream_cache_mb = opts.storage_stream_cache_mb;
  auto opened = storage::event_log::open(lopts);
  if (!opened.ok()) {
    std::cerr << "eventsd: cannot open the event store in " << opts.storage_dir << ": "
              << opened.error().detail << "\n";
    return 1;
  }
  auto log = std::move(opened.value());
  if (log->read_only())
    std::cerr << "eventsd: WARNING the disk of " << opts.storage_dir
              << " is full: the event store is open read-only (reads are served, every write "
                 "answers 503, /readyz is 503); free space and restart eventsd\n";
  if (!lopts.sync)
    std::cerr << "eventsd: WARNING --storage.sync=none: acknowledged writes can be lost\n";

  if (!opts.rebuild.empty()) {
    http::server::release_early_signals();
    return rebuild_offline(*log, opts);
  }

  caf::actor_system sys{opts};
  actors::writer_options wopts;
  wopts.max_batch = opts.storage_max_batch;
  wopts.max_wait = std::chrono::microseconds{opts.storage_max_wait_us};
  wopts.idempotency_retention = std::chrono::seconds{opts.storage_idempotency_retention_s};
  // A write reaches the writer within its deadline (the request timeout) or
  // not at all; twice that leaves room for the clocks' difference.
  wopts.purge_grace = 2 * std::chrono::milliseconds{opts.http_request_timeout_ms};
  auto writer = sys.spawn<caf::detached>(actors::log_writer, log.get(), wopts);

  actors::runtime_options ropts;
  ropts.idle_timeout = std::chrono::seconds{opts.actors_idle_timeout_s};
  ropts.max_live = opts.actors_max_live;
  ropts.snapshot_every = opts.actors_snapshot_every;
  ropts.shards = opts.actors_shards;
  actors::todo_registry registry{sys, log.get(), writer, ropts};

  projections::projection_options popts;
  popts.dsn = opts.postgres_dsn;
  popts.mode = *projections::parse_projection_mode(opts.projection_mode);
  popts.interval = std::chrono::milliseconds{opts.projection_interval_ms};
  popts.batch_size = opts.projection_batch_size;
  popts.batch_wait = std::chrono::microseconds{opts.projection_batch_wait_us};
  popts.rebuild_batch_size = opts.projection_rebuild_batch_size;
  popts.query_timeout = std::chrono::milliseconds{opts.postgres_query_timeout_ms};
  popts.store = log->store_id();
  // Set at shutdown: what waits for PostgreSQL then gives up at once.
  std::atomic<bool> stopping{false};
  popts.cancel = &stopping;
  auto projection = projections::spawn_projection(sys, log.get(), popts);
  caf::anon_send(writer, listen_atom_v,
                 caf::actor_cast<actors::position_listener_actor>(projection));

  std::vector<actors::log_reader_actor> log_readers;
  for (size_t i = 0; i < opts.actors_log_readers; ++i)
    log_readers.push_back(sys.spawn<caf::detached>(actors::log_reader, log.get()));
  std::vector<projections::read_model_reader_actor> pg_readers;
  std::vector<std::shared_ptr<projections::reader_health>> pg_reader_health;
  for (size_t i = 0; i < opts.postgres_readers; ++i) {
    pg_reader_health.push_back(std::make_shared<projections::reader_health>());
    pg_readers.push_back(projections::spawn_read_model_reader(sys, opts.postgres_dsn,
                                                              popts.query_timeout, popts.store,
                                                              &stopping, pg_reader_health.back()));
  }

  http::bridge jobs{sys, 4};
  http::http_options hopts;
  hopts.address = opts.http_address;
  hopts.port = opts.http_port;
  hopts.threads = opts.http_threads;
  hopts.body_limit = opts.http_body_limit;
  hopts.read_timeout = std::chrono::milliseconds{opts.http_read_timeout_ms};
  hopts.request_timeout = std::chrono::milliseconds{opts.http_request_timeout_ms};
  hopts.drain_timeout = std::chrono::milliseconds{opts.http_drain_timeout_ms};
  hopts.admin_token = opts.http_admin_token;
  hopts.static_dir = static_dir;
  hopts.uow_timeout = std::chrono::milliseconds{opts.projection_uow_timeout_ms};
  hopts.sse_heartbeat = std::chrono::milliseconds{opts.http_sse_heartbeat_ms};
  hopts.sse_max_lag = opts.http_sse_max_lag;
  hopts.sse_max_subscribers = opts.http_sse_max_subscribers;
  hopts.sse_catch_up_slots = opts.http_sse_catch_up_slots != 0
                               ? opts.http_sse_catch_up_slots
                               : std::max(1u, std::thread::hardware_concurrency() / 2);
  hopts.idempotency_retention_ms = static_cast<int64_t>(opts.storage_idempotency_retention_s) * 1000;
  http::services svc{sys,       *log,         registry, writer, log_readers, pg_readers,
                     projection, popts.mode, jobs,     hopts, pg_reader_health};
  http::server srv{svc};
  auto shutdown = [&] {
    srv.stop();
    jobs.stop();
    stopping = true;
    caf::anon_send_exit(writer, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(projection, caf::exit_reason::user_shutdown);
    for (auto& r : log_readers)
      caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
    for (auto& r : pg_readers)
      caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
    registry.stop();
    // Actors hold sessions, the io context's executors and references to
    // `svc`, `jobs` and `srv`: they end before those are destroyed.
    sys.await_all_actors_done();
  };
  // A long-lived actor that ends unasked (an exception escaped it) stops the
  // server: what it did can no longer be done, and requests would wait on
  // it. The exit status tells a supervisor to restart eventsd.
  // The watches reach the server through `sink`, which is unhooked before
  // the server goes: CAF counts an actor done (await_all_actors_done) before
  // the functors attached to it have run.
  struct failure_sink {
    std::mutex mtx;
    http::server* srv = nullptr;
  };
  auto sink = std::make_shared<failure_sink>();
  sink->srv = &srv;
  struct unhook {
    std::shared_ptr<failure_sink> sink;
    ~unhook() {
      std::lock_guard<std::mutex> guard{sink->mtx};
      sink->srv = nullptr;
    }
  } unhook_at_return{sink};
  auto watch = [sink](const auto& handle, std::string name) {
    core::on_unexpected_exit(handle, std::move(name), [sink](const std::string& why) {
      std::cerr << "eventsd: " << why << "; stopping" << std::endl;
      std::lock_guard<std::mutex> guard{sink->mtx};
      if (sink->srv)
        sink->srv->stop_for(why);
    });
  };
  watch(writer, "the log writer");
  watch(projection, "the projection");
  for (auto& r : log_readers)
    watch(r, "a log reader");
  for (auto& r : pg_readers)
    watch(r, "a read-model reader");
  for (auto& s : registry.shards())
    watch(s, "a registry shard");
  for (auto& l : registry.loaders())
    watch(l, "an aggregate loader");
  for (auto& a : jobs.actors())
    watch(a, "a gateway actor");
  std::string error;
  auto port = srv.start(error);
  if (port == 0) {
    std::cerr << "eventsd: " << error << "\n";
    shutdown();
    return 2;
  }
  // An IPv6 address goes in brackets in a URL (RFC 3986 §3.2.2).
  auto host = hopts.address.find(':') != std::string::npos ? "[" + hopts.address + "]"
                                                            : hopts.address;
  std::cout << "eventsd: listening on http://" << host << ":" << port << " (mode "
            << opts.projection_mode << ", store " << opts.storage_dir << ")" << std::endl;
  srv.wait_for_signal();
  std::cout << "eventsd: shutting down" << std::endl;
  shutdown();
  return srv.failure().empty() ? 0 : 70; // EX_SOFTWARE
}
