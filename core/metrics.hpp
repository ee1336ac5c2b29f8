// Process-wide metrics rendered in the Prometheus text format.
//
// Thread-safety: every member may be used from any thread; counters and
// histograms are lock-free atomics; the per-route request counts take a
// mutex for every request they count.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace eventsd::core {

/// A monotonically increasing count.
class counter {
public:
  void add(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> value_{0};
};

/// A value that goes up and down.
class gauge {
public:
  explicit gauge(int64_t initial = 0) noexcept : value_{initial} {}
  void set(int64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(int64_t n) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<int64_t> value_{0};
};

/// A histogram with fixed upper bounds (`le` buckets) plus sum and count.
class histogram {
public:
  /// `bounds` ascending; an implicit +Inf bucket follows.
  explicit histogram(std::vector<double> bounds);
  void observe(double v) noexcept;
  /// Appends the `_bucket`, `_sum` and `_count` lines of `name{labels}`.
  void render(std::string& out, const std::string& name, const std::string& labels) const;

private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_; // bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0}; // sum scaled by 1e6 to stay an integer
};

/// Appends one unlabeled family (`type`: "counter" or "gauge") and its sample
/// to `out`, in the format of `metrics::render`: for values kept outside
/// `metrics` (the event log's stream cache, in storage/, knows no metrics).
void append_metric(std::string& out, const char* name, const char* type, const char* help,
                   uint64_t value);

/// Bounds for latencies in seconds (100 µs .. 10 s).
std::vector<double> latency_bounds();

/// Bounds for sizes (1 .. 4096).
std::vector<double> size_bounds();

/// All metrics of the process, one instance shared by every folder.
struct metrics {
  // -- write side (actors/) --
  counter events_appended;
  counter append_conflicts;
  counter fsync_batches;
  histogram batch_events{size_bounds()};
  histogram fsync_seconds{latency_bounds()};
  gauge live_aggregates;
  counter aggregate_activations;
  counter aggregate_passivations;
  histogram activation_seconds{latency_bounds()};
  gauge log_head;
  counter idempotency_keys_purged;
  histogram idempotency_purge_seconds{latency_bounds()};

  // -- read side (projections/) --
  gauge projection_position{-1}; ///< -1 until the read model's checkpoint was read
  /// When the oldest event not applied yet occurred (Unix ms); 0: none.
  /// The lags are computed from it when asked, so they grow while nothing
  /// is applied (PostgreSQL down, scheduled mode) without anyone updating.
  gauge projection_unapplied_since_ms;
  counter projection_batches;
  counter projection_errors;
  histogram projection_batch_events{size_bounds()};
  histogram projection_apply_seconds{latency_bounds()};
  histogram projection_visible_seconds{latency_bounds()};

  // -- http/ --
  gauge sse_subscribers;
  gauge sse_catching_up;     ///< subscribers reading a catch-up page now (the gate's slots held)
  gauge sse_catch_up_waiting; ///< subscribers waiting for a turn at the gate
  counter sse_catch_up_waits;  ///< turns waited for at the gate
  counter sse_dropped_slow;
  counter connections_refused; ///< connections answered 503 at once: descriptors kept for the store
  counter requests_abandoned; ///< minPosition waits whose client closed its connection

  /// Counts one HTTP request of `route` (a pattern like "/todo/{id}").
  void observe_request(const std::string& method, const std::string& route, int status,
                       double seconds);

  /// Log head minus projection position, now.
  int64_t projection_lag_events() const;
  /// Age of the oldest event not applied yet, now (0 when caught up).
  int64_t projection_lag_ms() const;

  /// The whole exposition in Prometheus text format 0.0.4.
  std::string render() const;

  /// The process-wide instance.
  static metrics& instance();

private:
  struct route_stats {
    std::map<int, uint64_t> by_status;
    histogram latency{latency_bounds()};
  };
  mutable std::mutex mtx_;
  std::map<std::string, std::unique_ptr<route_stats>> routes_; // key: method + " " + route
};

} // namespace eventsd::core
