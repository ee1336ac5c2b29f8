// eventsd's options, read through CAF's config system: command line
// (`--group.name=value`), the config file (`config/eventsd.conf` by
// default, `--config-file=PATH` to change) and the environment
// (`EVENTSD_<GROUP>_<NAME>`). Defaults and meanings are in config/eventsd.conf.
//
// Thread-safety: filled once in `main` before anything starts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <caf/actor_system_config.hpp>

namespace eventsd::config {

/// The actor-system config plus every eventsd option.
class options : public caf::actor_system_config {
public:
  options();

  /// The eventsd options (for checking a config file).
  const caf::config_option_set& custom_options() const { return custom_options_; }

  // [http]
  std::string http_address = "127.0.0.1";
  uint16_t http_port = 8000;
  size_t http_threads = 2;
  size_t http_body_limit = 64 * 1024;
  std::string http_admin_token;
  std::string http_static_dir; // default: <dir of the binary>/static
  size_t http_read_timeout_ms = 30'000;
  size_t http_request_timeout_ms = 60'000;
  size_t http_drain_timeout_ms = 5'000;
  size_t http_sse_heartbeat_ms = 15'000;
  size_t http_sse_max_lag = 10'000;
  size_t http_sse_max_subscribers = 1'000;
  size_t http_sse_catch_up_slots = 0; ///< 0: half the cores, at least 1

  // [storage]
  std::string storage_dir = "var/data";
  std::string storage_sync = "fsync";
  size_t storage_max_batch = 512;
  size_t storage_max_wait_us = 0;
  size_t storage_block_cache_mb = 128;
  size_t storage_stream_cache_mb = 64;
  size_t storage_idempotency_retention_s = 24 * 3600;

  // [postgres]
  std::string postgres_dsn;
  std::string postgres_dsn_from; ///< "EVENTSD_POSTGRES_DSN" when it came from there
  size_t postgres_readers = 2;
  size_t postgres_query_timeout_ms = 10'000;

  // [projection]
  std::string projection_mode = "eventual";
  size_t projection_uow_timeout_ms = 5000;
  size_t projection_interval_ms = 1000;
  size_t projection_batch_size = 1000;
  size_t projection_batch_wait_us = 2000;
  size_t projection_rebuild_batch_size = 5000;

  // [actors]
  size_t actors_idle_timeout_s = 60;
  size_t actors_max_live = 1'000'000;
  size_t actors_snapshot_every = 100;
  size_t actors_shards = 8;
  size_t actors_log_readers = 4;

  // one-shot commands
  std::string rebuild; // `--rebuild=todos`: rebuild offline and exit
};

/// Parses `argv`; on a bad value returns a one-line reason (the caller
/// exits with code 2). An option the command line leaves out is taken from
/// the environment (`EVENTSD_HTTP_PORT` for `--http.port`, `-` as `_`), then
/// from the config file. An empty optional means "parsed fine".
std::optional<std::string> parse(options& opts, int argc, char** argv);

} // namespace eventsd::config
