#include "config/options.hpp"

#include <array>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string_view>
#include <thread>
#include <algorithm>

#include <caf/config_option_adder.hpp>
#include <arpa/inet.h>
#include <unistd.h> // environ

namespace eventsd::config {

options::options() {
  opt_group{custom_options_, "http"}
    .add(http_address, "address", "listen address (default 127.0.0.1)")
    .add(http_port, "port", "listen port (default 8000; 0 picks a free one)")
    .add(http_threads, "threads", "io threads (default 2)")
    .add(http_body_limit, "body-limit", "largest request body in bytes, inclusive (default 65536)")
    .add(http_admin_token, "admin-token", "bearer token for /admin routes (default none)")
    .add(http_static_dir, "static-dir", "OpenAPI, Swagger UI and /ui files: must hold openapi.json (default <binary dir>/static, where a missing one is a warning)")
    .add(http_read_timeout_ms, "read-timeout-ms", "idle/read/write timeout per connection (default 30000)")
    .add(http_request_timeout_ms, "request-timeout-ms",
         "longest wait for the server's own answer to a request before it answers 503 "
         "(default 60000; above the longest waitMs of 30000)")
    .add(http_drain_timeout_ms, "drain-timeout-ms",
         "on SIGTERM/SIGINT/SIGHUP, the longest wait for requests already read to be answered "
         "(default 5000)")
    .add(http_sse_heartbeat_ms, "sse-heartbeat-ms", "SSE heartbeat interval (default 15000)")
    .add(http_sse_max_lag, "sse-max-lag",
         "events a live SSE subscriber may fall behind the head before it is disconnected "
         "(default 10000)")
    .add(http_sse_max_subscribers, "sse-max-subscribers",
         "most SSE subscribers at once; more are answered 503 with Retry-After (default 1000)")
    .add(http_sse_catch_up_slots, "sse-catch-up-slots",
         "SSE subscribers behind the head reading a page at once; the others wait their "
         "turn (default 0: half the cores, at least 1)");
  opt_group{custom_options_, "storage"}
    .add(storage_dir, "dir", "RocksDB directory (default var/data)")
    .add(storage_sync, "sync", "fsync (default, durable) or none (UNSAFE: loses acknowledged writes on power loss)")
    .add(storage_max_batch, "max-batch", "most appends per group commit (default 512)")
    .add(storage_max_wait_us, "max-wait-us", "extra wait for a batch to fill, in microseconds (default 0)")
    .add(storage_block_cache_mb, "block-cache-mb", "RocksDB memory: block cache, memtables charged to it (default 128)")
    .add(storage_stream_cache_mb, "stream-cache-mb", "whole short streams (up to 64 events) kept as read, for histories read again; 0: none (default 64)")
    .add(storage_idempotency_retention_s, "idempotency-retention-s", "how long Idempotency-Key answers are kept, in seconds (default 86400; at least 86400, API.md)");
  opt_group{custom_options_, "postgres"}
    .add(postgres_dsn, "dsn", "libpq conninfo of the read model (env EVENTSD_POSTGRES_DSN)")
    .add(postgres_readers, "readers", "read-model connections for GET /todo (default 2)")
    .add(postgres_query_timeout_ms, "query-timeout-ms",
         "longest wait for PostgreSQL's answer to one statement before the connection is "
         "closed and reopened (default 10000, at least 100; 0 = forever)");
  opt_group{custom_options_, "projection"}
    .add(projection_mode, "mode", "eventual (default), unit-of-work, on-demand or scheduled")
    .add(projection_uow_timeout_ms, "uow-timeout-ms", "unit-of-work wait before answering 202 (default 5000)")
    .add(projection_interval_ms, "interval-ms", "scheduled mode period (default 1000)")
    .add(projection_batch_size, "batch-size", "most events per read-model transaction (default 1000)")
    .add(projection_batch_wait_us, "batch-wait-us",
         "eventual mode: a smaller batch waits this long after the previous one began (default 2000)")
    .add(projection_rebuild_batch_size, "rebuild-batch-size",
         "most events per transaction of a rebuild, online or --rebuild (default 5000)");
  opt_group{custom_options_, "actors"}
    .add(actors_idle_timeout_s, "idle-timeout", "seconds before an idle aggregate actor stops (default 60)")
    .add(actors_max_live, "max-live", "most live aggregate actors (default 1000000)")
    .add(actors_snapshot_every, "snapshot-every", "store a snapshot every N events (default 100, 0 = never)")
    .add(actors_shards, "shards", "registry shards (default 8)")
    .add(actors_log_readers, "log-readers", "threads reading the log for HTTP (default 4)");
  opt_group{custom_options_, "global"}
    .add(rebuild, "rebuild", "rebuild the named projection (todos) offline and exit");
}

namespace {

/// The groups of eventsd's settings (`global` holds the `--rebuild` command).
constexpr std::array<std::string_view, 5> setting_groups{"http", "storage", "postgres",
                                                          "projection", "actors"};

bool is_setting_group(std::string_view g) {
  return std::find(setting_groups.begin(), setting_groups.end(), g) != setting_groups.end();
}

bool is_our_group(std::string_view g) {
  return is_setting_group(g) || g == "global";
}

/// Sections CAF 0.17 reads itself.
bool is_caf_group(std::string_view g) {
  return g == "scheduler" || g == "work-stealing" || g == "logger" || g == "middleman"
         || g == "stream" || g == "openssl" || g == "opencl" || g == "caf";
}

/// The text given for `--name` on the command line, for error messages (a
/// number too large for its type reaches us as 0); none when not given there.
std::optional<std::string> on_command_line(int argc, char** argv, const std::string& name) {
  auto prefix = "--" + name + "=";
  for (int i = argc - 1; i > 0; --i)
    if (std::string_view a = argv[i]; a.rfind(prefix, 0) == 0)
      return std::string{a.substr(prefix.size())};
  return std::nullopt;
}

std::string str(caf::string_view v) { return std::string{v.data(), v.size()}; }

/// `s` as a part of an environment variable's name: upper case, `-` as `_`.
std::string env_word(std::string_view s) {
  std::string w;
  for (char c : s)
    w += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return w;
}

/// The environment variable of option `group.name`: EVENTSD_GROUP_NAME
/// (`--http.read-timeout-ms` is EVENTSD_HTTP_READ_TIMEOUT_MS).
std::string env_name(const caf::config_option& o) {
  return "EVENTSD_" + env_word(str(o.category())) + "_" + env_word(str(o.long_name()));
}

/// Whether `o` is one of eventsd's options that the environment may set
/// (`--rebuild` is a command, not a setting).
bool settable_from_env(const caf::config_option& o) {
  return is_setting_group(str(o.category()));
}

bool blank(std::string_view text) {
  return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

/// Why CAF could not read `text` as a value of option `o`, in words (CAF's
/// own message is a parser_error tuple).
std::string why_not(const caf::config_option& o, std::string_view text, const caf::error& err) {
  auto type = str(o.type_name());
  bool whole = type.rfind("uint", 0) == 0;
  if (blank(text))
    return "needs a value";
  if (whole && err.category() == caf::atom("parser")
      && static_cast<caf::pec>(err.code()) == caf::pec::integer_overflow)
    return type == "uint16" ? "too large (at most 65535)" : "too large";
  return whole ? "not a whole number of 0 or more" : "not a " + type;
}

/// `err` from reading a config file, in words: where and what.
std::string file_error(const caf::error& err) {
  if (err.category() != caf::atom("parser"))
    return caf::to_string(err);
  std::string where;
  auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<caf::config_value::dictionary>(0)) {
    auto& d = ctx.get_as<caf::config_value::dictionary>(0);
    auto number = [&](const char* key) -> std::string {
      auto i = d.find(key);
      if (i == d.end())
        return "?";
      if (auto* n = caf::get_if<caf::config_value::integer>(&i->second))
        return std::to_string(*n);
      return "?";
    };
    where = "line " + number("line") + ", column " + number("column") + ": ";
  }
  auto code = static_cast<caf::pec>(err.code());
  std::string what = caf::to_string(code);
  for (auto& c : what)
    c = c == '_' ? ' ' : c;
  if (code == caf::pec::unexpected_character)
    what += " (text values need quotes: mode = \"eventual\")";
  return where + what;
}

struct bound {
  const char* name;
  size_t value;
  size_t min;
  size_t max;
  const char* unit;
};

} // namespace

std::optional<std::string> parse(options& opts, int argc, char** argv) {
  bool file_named = false;
  std::string file = "config/eventsd.conf";
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h" || a == "-?" || a == "--long-help") {
      // Every option of ours with its default, to stdout; nothing else runs.
      std::cout << "usage: eventsd [--group.option=value ...]\n\n"
                   "Options come from the command line, then the environment\n"
                   "(EVENTSD_GROUP_OPTION for each --group.option below, not for\n"
                   "--rebuild, --scheduler.* or --config-file: EVENTSD_POSTGRES_DSN for\n"
                   "--postgres.dsn, EVENTSD_HTTP_READ_TIMEOUT_MS for --http.read-timeout-ms;\n"
                   "an empty variable counts as unset), then the config file (--config-file=PATH, default config/eventsd.conf in the\n"
                   "working directory, which describes every option), then the defaults\n"
                   "below.\n";
      std::string group;
      for (const auto& o : opts.custom_options()) {
        auto category = str(o.category());
        bool rebuild = category == "global" && str(o.long_name()) == "rebuild";
        if (!is_setting_group(category) && !rebuild)
          continue; // CAF's own options
        if (category != group) {
          group = category;
          std::cout << "\n";
        }
        std::cout << "  --" << (rebuild ? str(o.long_name()) : str(o.full_name())) << "=<"
                  << str(o.type_name()) << ">\n      " << str(o.description()) << "\n";
      }
      std::cout << "\n  --scheduler.policy=sharing|stealing (default sharing)\n"
                   "  --scheduler.max-threads=N (default: cores - 1, at least 1)\n"
                   "  --config-file=PATH (default config/eventsd.conf; /dev/null: none)\n";
      opts.cli_helptext_printed = true;
      return std::nullopt;
    }
    if (a.rfind("--config-file=", 0) == 0) {
      file = std::string{a.substr(14)};
      file_named = true;
    }
  }
  std::error_code ec;
  // `--config-file=/dev/null` is the Unix way of saying "none", also where
  // the working directory holds a config/eventsd.conf.
  const bool none = file_named && std::filesystem::weakly_canonical(file, ec) == "/dev/null";
  bool has_file = !none && std::filesystem::exists(file, ec);
  if (has_file && !std::filesystem::is_regular_file(file, ec))
    return "invalid --config-file " + file + ": not a regular file";
  if (!has_file && file_named && !none)
    return "invalid --config-file " + file + ": no such file";
  if (has_file) {
    // CAF skips config-file values it cannot convert (`[http] threads="many"`
    // parsed, and the default stayed): read the file without the options and
    // check each value of ours against its option first, so that a typo stops
    // the server instead of being ignored.
    auto raw = caf::actor_system_config::parse_config_file(file.c_str());
    if (!raw)
      return "invalid config file " + file + ": " + file_error(raw.error());
    for (auto& [category, entries] : *raw) {
      auto* group = caf::get_if<caf::config_value::dictionary>(&entries);
      if (group == nullptr)
        continue;
      const bool ours = is_our_group(category);
      if (!ours && !is_caf_group(category))
        return "invalid config file " + file + ": unknown section [" + std::string{category}
               + "]";
      for (auto& [key, value] : *group) {
        auto* option = opts.custom_options().qualified_name_lookup(category, key);
        if (option == nullptr && ours)
          return "invalid config file " + file + ": unknown option " + std::string{category}
                 + "." + std::string{key};
        if (option == nullptr)
          continue; // CAF's own groups (scheduler, logger, ...) are CAF's to check
        if (auto err = option->check(value))
          return "invalid config file " + file + ": " + std::string{category} + "." + key
                 + " = " + caf::to_string(value) + " is not a valid value";
      }
    }
  }
  // Defaults of ours for CAF's scheduler, set before parsing so that the
  // command line and the config file override them and --dump-config shows
  // them. CAF's work-stealing workers poll and nap; on a small machine shared
  // with io threads and clients, one queue with sleeping workers is faster.
  opts.set("scheduler.policy", caf::atom("sharing"));
  // Leave a core to the io threads and the log writer (measured: on 2 cores
  // one worker beats two by ~40 %, see docs/performance.md).
  auto cores = std::thread::hardware_concurrency(); // 0 when unknown
  opts.set("scheduler.max-threads", static_cast<size_t>(cores > 1 ? cores - 1 : 1));
  // Say which argument CAF would refuse, in words (its own message is a
  // parser_error tuple).
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.rfind("--", 0) != 0 || a.rfind("--config-file=", 0) == 0)
      continue;
    auto eq = a.find('=');
    auto name = a.substr(2, eq == std::string_view::npos ? a.npos : eq - 2);
    auto* option = opts.custom_options().cli_long_name_lookup({name.data(), name.size()});
    if (option == nullptr)
      return "unknown option " + std::string{a} + " (eventsd --help lists them)";
    if (eq == std::string_view::npos && !option->is_flag())
      return "option " + std::string{a} + " needs a value: " + std::string{a} + "=...";
    if (eq != std::string_view::npos && !option->is_flag()) {
      auto text = a.substr(eq + 1);
      auto parsed = option->parse({text.data(), text.size()});
      // A text value is not repeated: it may be a DSN with a password, or a token.
      if (!parsed || blank(text))
        return "invalid "
               + std::string{str(option->type_name()) == "string" ? a.substr(0, eq) : a} + ": "
               + why_not(*option, text, parsed ? caf::error{} : parsed.error());
    }
  }
  if (auto err = opts.parse(argc, argv, has_file ? file.c_str() : "/dev/null"))
    return "invalid configuration: " + caf::to_string(err);
  if (!opts.remainder.empty())
    return "unknown argument: " + opts.remainder.front();
  // The environment, for each option of ours the command line leaves out.
  std::vector<std::pair<std::string, std::string>> from_env; // option name, variable
  for (const auto& o : opts.custom_options()) {
    if (!settable_from_env(o) || on_command_line(argc, argv, str(o.full_name())))
      continue;
    auto var = env_name(o);
    const char* value = std::getenv(var.c_str());
    if (value == nullptr || *value == '\0')
      continue; // empty: unset
    if (blank(value))
      return "invalid " + var + ": needs a value (or leave it unset)";
    // A text value is not repeated: it may be a DSN with a password, or a token.
    if (auto parsed = o.parse(value); !parsed)
      return "invalid " + var + (str(o.type_name()) == "string" ? "" : "=" + std::string{value})
             + ": " + why_not(o, value, parsed.error());
    from_env.emplace_back(str(o.full_name()), std::move(var));
  }
  // A misspelt variable of one of our groups would otherwise be ignored; an
  // empty one counts as unset, whatever its name.
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv = *e;
    auto eq = kv.find('=');
    if (eq == std::string_view::npos || eq + 1 == kv.size())
      continue;
    auto name = kv.substr(0, eq);
    for (auto group : setting_groups) {
      if (name.rfind("EVENTSD_" + env_word(group) + "_", 0) != 0)
        continue;
      bool known = std::any_of(opts.custom_options().begin(), opts.custom_options().end(),
                               [&](const caf::config_option& o) {
                                 return settable_from_env(o) && env_name(o) == name;
                               });
      if (!known)
        return "unknown variable " + std::string{name}
               + " (eventsd --help lists the options; EVENTSD_HTTP_PORT sets --http.port)";
    }
  }
  auto env_of = [&](const std::string& name) -> std::optional<std::string> {
    for (auto& [option, var] : from_env)
      if (option == name)
        return var;
    return std::nullopt;
  };
  {
    in6_addr ip;
    auto& a = opts.http_address;
    auto v6 = a.substr(0, a.find('%')); // fe80::1%eth0: the zone is the server's to check
    if (a != "localhost" && inet_pton(AF_INET, a.c_str(), &ip) != 1
        && inet_pton(AF_INET6, v6.c_str(), &ip) != 1) {
      auto var = env_of("http.address");
      return "invalid --http.address `" + a + "`" + (var ? " (" + *var + ")" : std::string{})
             + ": not an IPv4 or IPv6 address (nor localhost)";
    }
  }
  if (opts.postgres_dsn.empty())
    return "no PostgreSQL DSN: pass --postgres.dsn=... or set EVENTSD_POSTGRES_DSN";
  if (env_of("postgres.dsn"))
    opts.postgres_dsn_from = "EVENTSD_POSTGRES_DSN";
  // Each number within what makes sense: a timeout of 0 answers nothing, a
  // heartbeat of 0 floods, a retention in the trillions overflows.
  constexpr size_t day_ms = 24 * 3600 * 1000;
  const bound bounds[] = {
    {"http.threads", opts.http_threads, 1, 64, ""},
    {"http.read-timeout-ms", opts.http_read_timeout_ms, 100, day_ms, "ms"},
    {"http.request-timeout-ms", opts.http_request_timeout_ms, 100, day_ms, "ms"},
    {"http.drain-timeout-ms", opts.http_drain_timeout_ms, 0, 3600 * 1000, "ms"},
    {"http.sse-heartbeat-ms", opts.http_sse_heartbeat_ms, 100, 3600 * 1000, "ms"},
    {"http.sse-max-lag", opts.http_sse_max_lag, 1, size_t{1} << 40, "events"},
    {"http.sse-max-subscribers", opts.http_sse_max_subscribers, 0, 1'000'000, ""},
    {"http.sse-catch-up-slots", opts.http_sse_catch_up_slots, 0, 1'000'000, ""},
    {"http.body-limit", opts.http_body_limit, 1, size_t{1} << 30, "bytes"},
    {"storage.max-batch", opts.storage_max_batch, 1, 1'000'000, "appends"},
    {"storage.max-wait-us", opts.storage_max_wait_us, 0, 1'000'000, "µs"},
    {"storage.block-cache-mb", opts.storage_block_cache_mb, 8, size_t{1} << 20, "MiB"},
    {"storage.stream-cache-mb", opts.storage_stream_cache_mb, 0, size_t{1} << 20, "MiB"},
    {"storage.idempotency-retention-s", opts.storage_idempotency_retention_s, 24 * 3600,
     10 * 366 * 24 * 3600, "s (1 day .. 10 years)"},
    {"postgres.readers", opts.postgres_readers, 1, 256, ""},
    {"postgres.query-timeout-ms",
     opts.postgres_query_timeout_ms == 0 ? 100 : opts.postgres_query_timeout_ms, 100, day_ms,
     "ms, or 0 = forever"},
    {"projection.uow-timeout-ms", opts.projection_uow_timeout_ms, 1, 3600 * 1000, "ms"},
    {"projection.interval-ms", opts.projection_interval_ms, 1, day_ms, "ms"},
    {"projection.batch-size", opts.projection_batch_size, 1, 1'000'000, "events"},
    {"projection.batch-wait-us", opts.projection_batch_wait_us, 0, 10'000'000, "µs"},
    {"projection.rebuild-batch-size", opts.projection_rebuild_batch_size, 1, 1'000'000, "events"},
    {"actors.idle-timeout", opts.actors_idle_timeout_s, 1, 366 * 24 * 3600, "s"},
    {"actors.max-live", opts.actors_max_live, 1, 1'000'000'000, ""},
    {"actors.snapshot-every", opts.actors_snapshot_every, 0, 1'000'000'000, "events"},
    {"actors.shards", opts.actors_shards, 1, 1024, ""},
    {"actors.log-readers", opts.actors_log_readers, 1, 256, ""},
    {"scheduler.max-threads", caf::get_or(opts, "scheduler.max-threads", size_t{1}), 1, 1024, ""},
  };
  for (auto& b : bounds) {
    if (b.value >= b.min && b.value <= b.max)
      continue;
    // Not on the command line: the environment's or the config file's (the
    // defaults are in range).
    auto given = on_command_line(argc, argv, b.name);
    auto var = env_of(b.name);
    return "invalid --" + std::string{b.name} + " "
           + (given ? *given
                    : std::to_string(b.value)
                        + (var ? " (" + *var + ")" : " (config file " + file + ")"))
           + ": expected " + std::to_string(b.min) + ".." + std::to_string(b.max)
           + (*b.unit != '\0' ? " " + std::string{b.unit} : std::string{});
  }
  if (auto policy = caf::get_or(opts, "scheduler.policy", caf::atom("sharing"));
      policy != caf::atom("sharing") && policy != caf::atom("stealing"))
    return "invalid --scheduler.policy " + caf::to_string(policy) + ": expected sharing or stealing";
  if (opts.storage_sync != "fsync" && opts.storage_sync != "none")
    return "invalid --storage.sync `" + opts.storage_sync + "`: expected fsync or none";
  if (opts.projection_mode != "eventual" && opts.projection_mode != "unit-of-work"
      && opts.projection_mode != "on-demand" && opts.projection_mode != "scheduled")
    return "invalid --projection.mode `" + opts.projection_mode
           + "`: expected eventual, unit-of-work, on-demand or scheduled";
  // A unit-of-work write waits up to uow-timeout-ms for the read model (plus
  // 2 s of slack for the answer) and then answers 202: the request deadline
  // must not fall first, or an appended write would be answered 503.
  if (opts.projection_mode == "unit-of-work"
      && opts.http_request_timeout_ms < opts.projection_uow_timeout_ms + 2000)
    return "invalid --http.request-timeout-ms " + std::to_string(opts.http_request_timeout_ms)
           + ": in unit-of-work mode it must be at least --projection.uow-timeout-ms + 2000 ("
           + std::to_string(opts.projection_uow_timeout_ms + 2000)
           + "), or appended writes would be answered 503 instead of 202";
  if (!opts.rebuild.empty() && opts.rebuild != "todos")
    return "invalid --rebuild `" + opts.rebuild + "`: the only projection is todos";
  return std::nullopt;
}

} // namespace eventsd::config
