#include "core/metrics.hpp"

#include <algorithm>
#include <chrono>

#include <cmath>
#include <cstdio>
#include <iterator>
#include <string_view>

#include "core/clock.hpp"

namespace eventsd::core {

namespace {

std::string format_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

template <class T>
void sample(std::string& out, const char* name, T value) {
  out += name;
  out += ' ';
  out += std::to_string(value);
  out += '\n';
}

std::string escape_label(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '\\' || c == '"')
      r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r;
}

} // namespace

void append_metric(std::string& out, const char* name, const char* type, const char* help,
                   uint64_t value) {
  family(out, name, type, help);
  sample(out, name, value);
}

histogram::histogram(std::vector<double> bounds)
  : bounds_(std::move(bounds)),
    buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i)
    buckets_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double v) noexcept {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i])
    ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(std::llround(v * 1e6)),
                        std::memory_order_relaxed);
}

void histogram::render(std::string& out, const std::string& name,
                       const std::string& labels) const {
  uint64_t cumulative = 0;
  auto sep = labels.empty() ? std::string{} : labels + ",";
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    out += name + "_bucket{" + sep + "le=\""
           + (i < bounds_.size() ? format_double(bounds_[i]) : std::string{"+Inf"}) + "\"} "
           + std::to_string(cumulative) + "\n";
  }
  auto braces = labels.empty() ? std::string{} : "{" + labels + "}";
  out += name + "_sum" + braces + " "
         + format_double(static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6)
         + "\n";
  out += name + "_count" + braces + " "
         + std::to_string(count_.load(std::memory_order_relaxed)) + "\n";
}

std::vector<double> latency_bounds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 5, 10};
}

std::vector<double> size_bounds() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
}

void metrics::observe_request(const std::string& method, const std::string& route,
                              int status, double seconds) {
  // Methods are a client's choice: any but the standard ones share one
  // label, so that made-up methods cannot grow the exposition without bound.
  static constexpr std::string_view known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                               "OPTIONS", "PATCH",   "TRACE", "CONNECT"};
  bool standard = std::find(std::begin(known), std::end(known), method) != std::end(known);
  auto key = (standard ? method : std::string{"other"}) + " " + route;
  std::lock_guard<std::mutex> guard{mtx_};
  auto& slot = routes_[key];
  if (!slot)
    slot = std::make_unique<route_stats>();
  ++slot->by_status[status];
  slot->latency.observe(seconds);
}

std::string metrics::render() const {
  std::string out;
  out.reserve(8192);
  {
    std::lock_guard<std::mutex> guard{mtx_};
    // Labels of each route, built once for both families.
    std::vector<std::pair<std::string, const route_stats*>> labeled;
    for (auto& [key, stats] : routes_) {
      auto space = key.find(' ');
      labeled.emplace_back("method=\"" + escape_label(key.substr(0, space)) + "\",route=\""
                             + escape_label(key.substr(space + 1)) + "\"",
                           stats.get());
    }
    family(out, "eventsd_http_requests_total", "counter", "HTTP requests by route and status.");
    for (auto& [labels, stats] : labeled)
      for (auto& [status, n] : stats->by_status)
        out += "eventsd_http_requests_total{" + labels + ",status=\"" + std::to_string(status)
               + "\"} " + std::to_string(n) + "\n";
    family(out, "eventsd_http_request_duration_seconds", "histogram",
           "HTTP request latency by route.");
    for (auto& [labels, stats] : labeled)
      stats->latency.render(out, "eventsd_http_request_duration_seconds", labels);
  }
  // One family of one sample, or one histogram without labels.
  auto metric = [&out](const char* name, const char* type, auto value, const char* help) {
    family(out, name, type, help);
    sample(out, name, value);
  };
  auto histogram_of = [&out](const char* name, const histogram& h, const char* help) {
    family(out, name, "histogram", help);
    h.render(out, name, "");
  };
  metric("eventsd_events_appended_total", "counter", events_appended.value(),
         "Events appended to the log.");
  metric("eventsd_append_conflicts_total", "counter", append_conflicts.value(),
         "Appends refused by an expected-version or idempotency conflict.");
  metric("eventsd_fsync_batches_total", "counter", fsync_batches.value(),
         "Group-commit batches written.");
  histogram_of("eventsd_fsync_batch_events", batch_events,
               "Events written per group-commit batch (replays and refusals write none).");
  histogram_of("eventsd_fsync_duration_seconds", fsync_seconds,
               "Time to write and fsync one batch.");
  metric("eventsd_log_head_position", "gauge", log_head.value(),
         "Position of the newest event in $all.");
  metric("eventsd_live_aggregates", "gauge", live_aggregates.value(),
         "Aggregate actors currently alive.");
  metric("eventsd_aggregate_activations_total", "counter", aggregate_activations.value(),
         "Aggregate actors spawned.");
  metric("eventsd_aggregate_passivations_total", "counter", aggregate_passivations.value(),
         "Aggregate actors stopped.");
  histogram_of("eventsd_aggregate_activation_seconds", activation_seconds,
               "Time to recover an aggregate from snapshot and log.");
  // Not known until the projection has read the read model's checkpoint (a
  // server started while PostgreSQL is down): the three families have no
  // sample then, rather than a position of 0 and the whole log as lag.
  auto known = projection_position.value() >= 0;
  metric("eventsd_projection_position_known", "gauge", known ? 1 : 0,
         "1 once the read model's position was read from PostgreSQL, 0 before (a server "
         "started while PostgreSQL is out of reach): alert on 0 as on a lag.");
  family(out, "eventsd_projection_position", "gauge",
         "Last position applied to the read model (no sample until it is known).");
  if (known)
    sample(out, "eventsd_projection_position", projection_position.value());
  family(out, "eventsd_projection_lag_events", "gauge",
         "Log head minus projection position (no sample until it is known).");
  if (known)
    sample(out, "eventsd_projection_lag_events", projection_lag_events());
  family(out, "eventsd_projection_lag_seconds", "gauge",
         "Age of the oldest event not yet applied to the read model (no sample until it is "
         "known).");
  if (known)
    out += "eventsd_projection_lag_seconds "
           + format_double(static_cast<double>(projection_lag_ms()) / 1000.0) + "\n";
  metric("eventsd_projection_batches_total", "counter", projection_batches.value(),
         "Read-model transactions committed.");
  metric("eventsd_projection_errors_total", "counter", projection_errors.value(),
         "Failed read-model transactions.");
  histogram_of("eventsd_projection_batch_events", projection_batch_events,
               "Events per read-model batch.");
  histogram_of("eventsd_projection_apply_seconds", projection_apply_seconds,
               "Time to apply one read-model batch.");
  histogram_of("eventsd_projection_visible_seconds", projection_visible_seconds,
               "Per event: from its append (occurredAt) to the commit that made it visible in the "
               "read model.");
  metric("eventsd_idempotency_keys_purged_total", "counter", idempotency_keys_purged.value(),
         "Idempotency keys deleted by the key purger (each kept its retention and twice the "
         "request timeout).");
  histogram_of("eventsd_idempotency_purge_seconds", idempotency_purge_seconds,
               "Per run of the key purger (every 10 minutes): how long its scan of every stored "
               "key took.");
  metric("eventsd_sse_subscribers", "gauge", sse_subscribers.value(),
         "Open /subscribe/$all connections.");
  metric("eventsd_sse_catching_up", "gauge", sse_catching_up.value(),
         "SSE subscribers behind the head reading a page now (at most half the cores' worth).");
  metric("eventsd_sse_catch_up_waiting", "gauge", sse_catch_up_waiting.value(),
         "SSE subscribers behind the head waiting for their turn to read a page.");
  metric("eventsd_sse_catch_up_waits_total", "counter", sse_catch_up_waits.value(),
         "Times an SSE subscriber behind the head waited for its turn to read a page.");
  metric("eventsd_sse_slow_disconnects_total", "counter", sse_dropped_slow.value(),
         "SSE subscribers disconnected for falling more than --http.sse-max-lag events behind.");
  metric("eventsd_http_connections_refused_total", "counter", connections_refused.value(),
         "Connections answered 503 and closed at once: the rest of the file descriptor limit "
         "is kept for the event store.");
  metric("eventsd_http_requests_abandoned_total", "counter", requests_abandoned.value(),
         "Reads waiting for minPosition whose client closed its connection: not answered, the "
         "connection closed at once.");
  return out;
}

int64_t metrics::projection_lag_events() const {
  auto position = projection_position.value();
  return position < 0 ? 0 : std::max<int64_t>(0, log_head.value() - position);
}

int64_t metrics::projection_lag_ms() const {
  auto since = projection_unapplied_since_ms.value();
  if (since == 0 || projection_lag_events() == 0)
    return 0;
  return std::max<int64_t>(0, unix_ms() - since);
}

metrics& metrics::instance() {
  static metrics m;
  return m;
}

} // namespace eventsd::core
