#include "projections/projection.hpp"

#include <algorithm>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/clock.hpp"
#include "core/flat_json.hpp"
#include "core/lifeline.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"
#include "core/uuid.hpp"

namespace eventsd::projections {

namespace {

using clock = std::chrono::steady_clock;
constexpr const char* live_table = "todos";
constexpr const char* rebuild_table = "todos_rebuild";
/// The event store's note of an online rebuild answered 202 and not yet
/// swapped in: a stop before its first step must not lose it. Its value
/// (a fresh UUID per note) tells one request's note from the next.
constexpr std::string_view rebuild_work = "rebuild todos";
/// Where the reason for a read-model failure told to a client is.
const std::string see_log = " (the reason is in eventsd's log and GET /admin/projections)";

/// Which failures are worth a line on stderr: each new reason, and the same
/// one again once a minute.
struct failure_log {
  std::string last; ///< the failure last said, empty when none (or cleared)
  clock::time_point at{};

  /// True (and remembered) when `why` is to be said now.
  bool due(const std::string& why) {
    auto now = clock::now();
    if (why == last && now - at < std::chrono::minutes{1})
      return false;
    last = why;
    at = now;
    return true;
  }
};

caf::error to_caf(const projection_error& err) {
  return caf::make_error(err.code, err.detail);
}

/// What the projection's worker (which talks to PostgreSQL) tells the front
/// (which answers waits and status, and never waits for PostgreSQL).
struct projection_report {
  uint64_t position = 0;       ///< last applied position
  bool position_known = false; ///< read from PostgreSQL since the connection was (re)made
  bool reached = false;        ///< read from PostgreSQL at least once since the start
  bool connected = false;
  bool diverged = false; ///< the read model is another store's or ahead of the log
  std::string last_error;
  uint64_t reach_failures = 0;  ///< failed attempts to reach the read model so far
  uint64_t probes_answered = 0; ///< stats_atom probes done
  bool rebuilding = false;
  uint64_t rebuild_position = 0;
  uint64_t rebuilds_asked = 0; ///< rebuild requests received
  uint64_t rebuilds_completed = 0;
  bool rebuild_noted = false; ///< the store notes a rebuild asked for, not yet taken up
  bool operator==(const projection_report&) const = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, projection_report& x) {
  return f(caf::meta::type_name("projection_report"), x.position, x.position_known, x.reached,
           x.connected, x.diverged, x.last_error, x.reach_failures, x.probes_answered, x.rebuilding,
           x.rebuild_position, x.rebuilds_asked, x.rebuilds_completed, x.rebuild_noted);
}

/// The front's interface: the projection's, plus what its worker and its
/// own timers send it.
using front_actor = projection_actor::extend<caf::reacts_to<projection_report>,
                                             caf::reacts_to<expire_atom>>;

// -- the notes: the event store's record of rebuilds asked for ---------------

/// Writes and forgets the notes of rebuilds asked for, in the order asked,
/// on a thread of its own: a disk that stalls holds neither the front
/// (waits, /readyz) nor the worker.
using notes_actor = caf::typed_actor<
  /// Notes a rebuild asked for under a value of its own; answers once durable.
  caf::replies_to<note_atom, std::string>::with<bool>,
  /// The rebuild noted under this value is done (a newer note stays).
  caf::reacts_to<forget_atom, std::string>>;

notes_actor::behavior_type rebuild_notes(notes_actor::pointer self, storage::event_log* log) {
  core::name_this_thread("rebuild-notes");
  core::end_on_exception(self);
  return {
    [=](note_atom, const std::string& value) -> caf::result<bool> {
      if (auto noted = log->note_pending_work(rebuild_work, value); !noted.ok())
        return core::make_error(storage::storage_error{
          noted.error().code, "the rebuild cannot be noted: " + noted.error().detail});
      return true;
    },
    [=](forget_atom, const std::string& value) {
      if (auto r = log->finish_pending_work(rebuild_work, value); !r.ok())
        std::cerr << "eventsd: a finished read-model rebuild is still noted as asked for (the "
                     "next start rebuilds again): "
                  << r.error().detail << "\n";
    },
  };
}

// -- the worker: applies the log to PostgreSQL (blocking, own thread) --------

/// What the worker asks of itself or hears from the front.
using worker_actor = caf::typed_actor<
  caf::reacts_to<core::committed>,
  /// The highest position reads now wait for, 0 for none (no batch wait
  /// below it; on-demand: apply up to it).
  caf::reacts_to<wait_atom, uint64_t>,
  /// Probes PostgreSQL, then reports (`probes_answered`).
  caf::reacts_to<stats_atom>,
  caf::reacts_to<rebuild_atom>, caf::reacts_to<run_atom, uint64_t>, caf::reacts_to<rebuild_step_atom>,
  caf::reacts_to<tick_atom>>;

struct worker_state {
  storage::event_log* log = nullptr;
  projection_options opts;
  front_actor front;
  notes_actor notes;
  std::unique_ptr<todo_read_model> model;
  projection_report now;       // position, errors, rebuild progress
  projection_report published; // what the front was told last
  uint64_t target = 0; // apply up to here now
  uint64_t wanted = 0; // the highest position reads wait for (0: none)
  bool run_scheduled = false;
  // The run_atom that counts: one sent early (a batch that need not linger,
  // a read that waits during a backoff) supersedes the one scheduled, which
  // is ignored when it comes (else each early run would start a second chain
  // of retries).
  uint64_t run_generation = 0;
  // When the latest batch began; none yet, so the first one goes at once
  // (not `time_point{}`: steady_clock counts from boot, and a batch wait
  // longer than the uptime would hold the first batch back).
  std::optional<clock::time_point> last_batch;
  bool lingering = false;         // the scheduled run is a batch waiting for company
  std::chrono::milliseconds backoff{0};
  clock::time_point connect_failed{}; // when connecting last failed
  clock::time_point failed_at{};      // when anything last failed
  failure_log logged;
  // online rebuild
  std::unique_ptr<todo_read_model> rebuild_model;
  bool rebuild_reset = false; ///< the rebuild's table was emptied for this rebuild
  bool looked_for_rebuild = false; ///< for one a stop interrupted (once connected)
  std::string rebuild_note; ///< value of the note the running rebuild answers ("": none)
  static inline const char* name = "todo_projection";
};

using worker_ptr = worker_actor::stateful_pointer<worker_state>;

/// The projection's model of `table` (the live one or a rebuild's).
std::unique_ptr<todo_read_model> make_model(const projection_options& opts, const char* table) {
  return std::make_unique<todo_read_model>(
    opts.dsn, table,
    connection_options{"eventsd projection", opts.query_timeout, opts.store, opts.cancel});
}

/// Tells the front what changed since it was told last.
void publish(worker_ptr self) {
  auto& st = self->state;
  if (st.now == st.published)
    return;
  st.published = st.now;
  self->send(st.front, st.now);
}

void schedule_run(worker_ptr self, clock::duration delay = clock::duration::zero()) {
  auto& st = self->state;
  if (st.run_scheduled)
    return;
  st.run_scheduled = true;
  if (delay.count() > 0)
    self->delayed_send(self, delay, run_atom_v, ++st.run_generation);
  else
    self->send(self, run_atom_v, ++st.run_generation);
}

/// Says on stderr that the read model cannot be updated: each new reason,
/// and the same one again once a minute.
void log_failure(worker_state& st) {
  if (!st.logged.due(st.now.last_error))
    return;
  std::string where = st.now.reached    ? "position " + std::to_string(st.now.position)
                      : st.now.diverged ? "diverged from this log"
                                        : "not reached since the start";
  std::cerr << "eventsd: read model not updated (" << where
            << "; writes go on, retried): " << st.now.last_error << std::endl;
}

/// The read model is updated again: says so when a failure was logged.
void clear_failure(worker_state& st) {
  st.now.last_error.clear();
  if (st.logged.last.empty())
    return;
  st.logged.last.clear();
  std::cerr << "eventsd: read model reachable again (position " << st.now.position << ")"
            << std::endl;
}

void fail(worker_ptr self, const projection_error& err) {
  auto& st = self->state;
  st.now.last_error = err.detail.empty() ? to_string(err.code) : err.detail;
  // A statement cut short because the server stops is no failure to report.
  if (!(st.opts.cancel && st.opts.cancel->load()))
    log_failure(st);
  core::metrics::instance().projection_errors.add();
  auto next = st.backoff.count() == 0 ? st.opts.retry_min : st.backoff * 2;
  st.backoff = std::min(next, st.opts.retry_max);
  st.failed_at = clock::now();
}

void update_metrics(worker_ptr self) {
  auto& st = self->state;
  auto& m = core::metrics::instance();
  auto head = st.log->head();
  auto position = st.now.position;
  // Unknown (the gauge's -1, no sample) until a checkpoint was read; the last
  // one read stays a lower bound while PostgreSQL is out of reach.
  if (st.now.reached)
    m.projection_position.set(static_cast<int64_t>(position));
  int64_t since = 0;
  if (head > position) {
    if (auto next = st.log->read_all(position + 1, 1); next.ok() && !next->empty())
      since = next->front().occurred_at_ms;
  }
  m.projection_unapplied_since_ms.set(since);
}

/// The id of the log's event at `position`, if it has one.
std::optional<std::string> event_id_at(const storage::event_log* log, uint64_t position) {
  auto e = log->read_all(position, 1);
  if (!e.ok() || e->empty() || e->front().position != position)
    return std::nullopt;
  return e->front().id;
}

/// Starts a rebuild into `rebuild_table` unless one runs; `resume_at` goes on
/// from what an interrupted one of this store left there (its rows and
/// checkpoint were written together), otherwise the table is emptied first.
void start_rebuild(worker_ptr self, std::optional<uint64_t> resume_at = std::nullopt) {
  auto& st = self->state;
  // The rebuild answers the request noted last, also when it was already
  // running (it replays the log up to the head when it ends); a note it
  // cannot read stays, and the next start rebuilds once more.
  if (auto note = st.log->pending_work(rebuild_work); !note.ok())
    std::cerr << "eventsd: cannot read the note of the read-model rebuild asked for (it stays, "
                 "and the next start rebuilds once more): "
              << note.error().detail << "\n";
  else if (*note)
    st.rebuild_note = std::move(**note);
  st.now.rebuild_noted = false;
  // It answers an interrupted one too: none is looked for after it.
  st.looked_for_rebuild = true;
  if (st.now.rebuilding)
    return;
  st.now.rebuilding = true;
  st.now.rebuild_position = resume_at.value_or(0);
  st.rebuild_reset = resume_at.has_value();
  st.rebuild_model = make_model(st.opts, rebuild_table);
  // The steps connect and empty the table (retried until they can).
  self->send(self, rebuild_step_atom_v);
}

/// A rebuild a stop interrupted (its checkpoint row is there: a finished
/// one's goes with the swap) is taken up again, once, after the first
/// connect — also when the live table is diverged, the case rebuilds are
/// for: it was asked for, and /admin/projections would otherwise show
/// nothing of it. Only one of this store's: a row of another store, or of
/// none yet (its rebuild had not begun; another store's server may be about
/// to claim it), is left alone, unless the event store noted a rebuild
/// asked for and not finished (a stop before its first step, say): then it
/// starts from the start. Its rows and checkpoint were written together, so
/// it goes on from there, unless its table is gone, or its checkpoint is
/// past the log's head or names an event the log does not hold at that
/// position (an older copy of the store restored): then it starts over.
void resume_interrupted_rebuild(worker_ptr self) {
  auto& st = self->state;
  if (st.looked_for_rebuild || st.now.rebuilding)
    return;
  auto row = st.model->checkpoint_of(rebuild_table);
  if (!row.ok())
    return; // looked for at the next connect
  st.looked_for_rebuild = true;
  st.now.rebuild_noted = false; // taken up below, or not asked for
  if (!*row || st.opts.store.empty() || (*row)->store != st.opts.store) {
    auto asked = st.log->pending_work(rebuild_work);
    if (!asked.ok())
      std::cerr << "eventsd: cannot tell whether a read-model rebuild was asked for before the "
                   "last stop: "
                << asked.error().detail << "\n";
    else if (asked->has_value()) {
      std::cerr << "eventsd: taking up the read-model rebuild asked for before the last stop "
                   "(from the start)\n";
      start_rebuild(self);
    }
    return;
  }
  auto head = st.log->head();
  // A log restored from an older copy may have grown past the position with
  // other events: the rows up to it are then not this log's.
  auto& last = (*row)->last_event;
  bool same_log = last.empty() || event_id_at(st.log, (*row)->position) == last;
  std::optional<uint64_t> resume_at;
  if ((*row)->table_exists && (*row)->position <= head && same_log)
    resume_at = (*row)->position;
  std::cerr << "eventsd: taking up the read-model rebuild that a stop interrupted ("
            << (resume_at ? "at position " + std::to_string(*resume_at) + " of " + std::to_string(head)
                          : std::string{"from the start"})
            << ")\n";
  start_rebuild(self, resume_at);
}

/// Connects when needed and learns the checkpoint; false on failure.
bool ensure_connected(worker_ptr self) {
  auto& st = self->state;
  auto& now = st.now;
  if (st.model->connected() && now.position_known)
    return true;
  auto unreachable = [&](const projection_error& err) {
    ++now.reach_failures;
    fail(self, err);
    return false;
  };
  auto connected = st.model->connect();
  now.connected = st.model->connected();
  if (!connected.ok()) {
    st.connect_failed = clock::now();
    return unreachable(connected.error());
  }
  resume_interrupted_rebuild(self);
  // The checkpoint must count positions of this store's log: a read model
  // of another store, one ahead of the log, or one whose checkpoint event is
  // not this log's event at its position, is never applied to.
  auto event_at = [log = st.log](uint64_t position) { return event_id_at(log, position); };
  auto cp = st.opts.store.empty() ? st.model->checkpoint()
                                  : st.model->bind_store(st.log->head(), event_at);
  now.connected = st.model->connected();
  now.diverged = !cp.ok() && cp.error().code == projection_errc::diverged;
  if (!cp.ok())
    return unreachable(cp.error());
  now.position = *cp;
  now.position_known = true;
  now.reached = true;
  update_metrics(self);
  clear_failure(st); // connected and bound again: earlier failures are over
  return true;
}

std::vector<todo_change> to_changes(const std::vector<storage::recorded_event>& events) {
  std::vector<todo_change> changes;
  changes.reserve(events.size());
  for (auto& e : events)
    if (auto c = to_change(e))
      changes.push_back(std::move(*c));
  return changes;
}

/// How long a small batch should still wait for company (see
/// projection_options::batch_wait); zero when it should go now.
clock::duration batch_wait_left(const worker_state& st) {
  if (st.opts.mode != projection_mode::eventual || st.wanted > st.now.position
      || st.target >= st.now.position + st.opts.batch_size || !st.last_batch)
    return clock::duration::zero();
  return std::max(clock::duration::zero(), *st.last_batch + st.opts.batch_wait - clock::now());
}

/// Runs a batch that waits for company at once when it need not wait any
/// longer (it became full, or a read waits for it); the delayed run, which
/// this one supersedes, is ignored when it comes.
void stop_waiting_if_due(worker_ptr self) {
  auto& st = self->state;
  if (st.lingering && batch_wait_left(st) == clock::duration::zero()) {
    st.lingering = false;
    self->send(self, run_atom_v, ++st.run_generation);
  }
}

/// Minimum time between two attempts a waiting read asks for.
constexpr auto read_retry_gap = std::chrono::milliseconds{250};

/// On-demand reads wait for the read model to be brought up to the head:
/// while a failure's backoff (up to retry_max, 5 s) holds the next attempt,
/// a read asks for one within a quarter second of the last failure instead,
/// so that it learns soon whether PostgreSQL is back (the front fails the
/// waiting reads when it is not). It supersedes the backoff's run, and each
/// later read's supersedes it: however many ask, one attempt is made.
void retry_for_read(worker_ptr self) {
  auto& st = self->state;
  if (!st.run_scheduled || st.lingering || st.now.last_error.empty())
    return;
  auto left = st.failed_at + read_retry_gap - clock::now();
  if (left > clock::duration::zero())
    self->delayed_send(self, left, run_atom_v, ++st.run_generation);
  else
    self->send(self, run_atom_v, ++st.run_generation);
}

/// Applies one batch towards `target`; schedules the next step.
void step(worker_ptr self) {
  auto& st = self->state;
  if (!ensure_connected(self)) {
    schedule_run(self, st.backoff);
    return;
  }
  if (st.now.position >= st.target)
    return;
  if (auto wait = batch_wait_left(st); wait > clock::duration::zero()) {
    schedule_run(self, wait);
    st.lingering = st.run_scheduled;
    return;
  }
  // Up to the published head only: a batch being written is readable a moment
  // before its head is published, and a checkpoint past the head would read
  // as another store's at the next connect.
  auto head = st.log->head();
  if (head <= st.now.position)
    return;
  auto events = st.log->read_all(st.now.position + 1,
                                 std::min<uint64_t>(st.opts.batch_size, head - st.now.position));
  if (!events.ok()) {
    fail(self, {projection_errc::query_failed, events.error().detail});
    schedule_run(self, st.backoff);
    return;
  }
  if (events->empty())
    return;
  auto started = clock::now();
  st.last_batch = started;
  auto changes = to_changes(*events);
  auto last = events->back().position;
  auto applied = st.model->apply(changes, last, events->back().id);
  st.now.connected = st.model->connected();
  if (!applied.ok()) {
    fail(self, applied.error());
    st.now.position_known = false; // re-read the checkpoint after reconnecting
    schedule_run(self, st.backoff);
    return;
  }
  auto& m = core::metrics::instance();
  m.projection_batches.add();
  m.projection_batch_events.observe(static_cast<double>(events->size()));
  m.projection_apply_seconds.observe(
    std::chrono::duration<double>(clock::now() - started).count());
  auto committed_ms = core::unix_ms();
  for (auto& e : *events)
    m.projection_visible_seconds.observe(
      static_cast<double>(std::max<int64_t>(0, committed_ms - e.occurred_at_ms)) / 1000.0);
  st.now.position = last;
  st.backoff = std::chrono::milliseconds{0};
  clear_failure(st);
  update_metrics(self);
  if (st.now.position < st.target)
    schedule_run(self);
}

void rebuild_step(worker_ptr self) {
  auto& st = self->state;
  auto& now = st.now;
  if (!now.rebuilding)
    return;
  auto retry = [&](const projection_error& err) {
    fail(self, err);
    self->delayed_send(self, st.backoff, rebuild_step_atom_v);
  };
  if (!st.rebuild_model->connected()) {
    if (auto r = st.rebuild_model->connect(); !r.ok())
      return retry(r.error());
    if (st.rebuild_reset) {
      // Reconnected mid-rebuild: go on from what the table holds.
      auto cp = st.rebuild_model->checkpoint();
      if (!cp.ok())
        return retry(cp.error());
      now.rebuild_position = *cp;
    }
  }
  if (!st.rebuild_reset) {
    // Whatever an interrupted rebuild left in the table (of another store,
    // even) is dropped before this one writes.
    if (auto r = st.rebuild_model->reset(); !r.ok())
      return retry(r.error());
    st.rebuild_reset = true;
    now.rebuild_position = 0;
  }
  auto head = st.log->head();
  if (now.rebuild_position < head) {
    auto events = st.log->read_all(now.rebuild_position + 1,
                                   std::min<uint64_t>(st.opts.rebuild_batch_size,
                                                      head - now.rebuild_position)); // as in step
    if (!events.ok())
      return retry({projection_errc::query_failed, events.error().detail});
    if (events->empty())
      return retry({projection_errc::query_failed,
                    "the log holds no event past " + std::to_string(now.rebuild_position)
                      + " below its head " + std::to_string(head)});
    auto last = events->back().position;
    if (auto r = st.rebuild_model->apply(to_changes(*events), last, events->back().id); !r.ok())
      return retry(r.error());
    now.rebuild_position = last;
    self->send(self, rebuild_step_atom_v); // let live work and reads interleave
    return;
  }
  // Caught up with the head: swap the fresh table in, atomically.
  if (auto r = st.rebuild_model->swap_into(live_table); !r.ok())
    return retry(r.error());
  now.rebuilding = false;
  st.rebuild_model.reset();
  ++now.rebuilds_completed;
  if (!st.rebuild_note.empty())
    self->send(st.notes, forget_atom_v, std::exchange(st.rebuild_note, {}));
  st.model = make_model(st.opts, live_table);
  now.position_known = false;
  st.backoff = std::chrono::milliseconds{0};
  if (!ensure_connected(self))
    schedule_run(self, st.backoff); // until it knows the new table's position
  else if (now.position < st.target)
    schedule_run(self);
}

worker_actor::behavior_type worker(worker_ptr self, storage::event_log* log,
                                   projection_options opts, front_actor front,
                                   notes_actor notes) {
  core::name_this_thread("projection");
  core::end_on_exception(self);
  auto& st = self->state;
  st.log = log;
  st.opts = opts;
  st.front = std::move(front);
  st.notes = std::move(notes);
  // A rebuild noted before the last stop shows as running from the start,
  // though it is taken up only once PostgreSQL is reached.
  if (auto note = log->pending_work(rebuild_work); note.ok() && *note) {
    st.now.rebuild_noted = true;
    publish(self);
  }
  st.model = make_model(opts, live_table);
  auto mode = opts.mode;
  if (mode == projection_mode::eventual || mode == projection_mode::unit_of_work) {
    st.target = log->head();
    schedule_run(self);
  } else if (mode == projection_mode::scheduled) {
    self->delayed_send(self, opts.interval, tick_atom_v);
  }
  if (!ensure_connected(self))
    update_metrics(self); // a connect sets them
  publish(self);
  return {
    [=](core::committed c) {
      auto& st = self->state;
      // The first event not applied since the projection caught up occurred
      // just now: the lag (computed when /metrics is scraped) counts from
      // here, also while nothing gets applied (PostgreSQL down, on-demand or
      // scheduled mode); the next update_metrics reads the exact time.
      auto& m = core::metrics::instance();
      if (m.projection_unapplied_since_ms.value() == 0 && c.position > st.now.position)
        m.projection_unapplied_since_ms.set(core::unix_ms());
      if (mode == projection_mode::eventual || mode == projection_mode::unit_of_work) {
        st.target = std::max(st.target, c.position);
        schedule_run(self);
        stop_waiting_if_due(self);
      } else if (mode == projection_mode::on_demand && st.target < st.wanted) {
        // A read waits for a position the log had not reached when it asked.
        st.target = std::max(st.target, std::min(st.wanted, c.position));
        schedule_run(self);
      }
    },
    [=](wait_atom, uint64_t wanted) {
      auto& st = self->state;
      st.wanted = wanted;
      if (mode == projection_mode::on_demand && st.target < wanted) {
        st.target = std::max(st.target, std::min(wanted, st.log->head()));
        schedule_run(self);
      }
      // A read may wait for the position to be read again (on-demand's
      // catch-up): a run connects and reads it, with nothing to apply.
      if (!st.now.position_known)
        schedule_run(self);
      if (mode == projection_mode::on_demand && wanted > 0)
        retry_for_read(self);
      stop_waiting_if_due(self);
    },
    [=](stats_atom) {
      auto& st = self->state;
      // Probe PostgreSQL: libpq only notices a lost server when the
      // connection is used, and an idle projection does not use it. The
      // probe waits two seconds at most; connecting again is tried here only
      // after a quick failure (a server restarted or gone) and not soon
      // after a failed attempt: against a server that does not answer it
      // would wait out connect_timeout, and this status is wanted now.
      auto began = clock::now();
      auto probed = st.model->connected() ? st.model->probe(std::chrono::seconds{2})
                                          : pg_result<void>{};
      st.now.connected = st.model->connected();
      if (!st.model->connected() || !probed.ok()) {
        if (!probed.ok())
          fail(self, probed.error()); // the reason /readyz and the admin view give
        st.now.position_known = false;
        if (clock::now() - began < std::chrono::milliseconds{500}
            && clock::now() - st.connect_failed > std::chrono::seconds{5}
            && ensure_connected(self))
          st.backoff = std::chrono::milliseconds{0};
        else
          schedule_run(self, st.backoff); // connects again, as after a failed apply
      }
      update_metrics(self);
      ++st.now.probes_answered;
      publish(self);
    },
    [=](rebuild_atom) {
      auto& st = self->state;
      ++st.now.rebuilds_asked;
      start_rebuild(self);
      publish(self);
    },
    [=](run_atom, uint64_t generation) {
      if (generation != self->state.run_generation)
        return; // superseded by a run sent early
      self->state.run_scheduled = false;
      self->state.lingering = false;
      step(self);
      publish(self);
    },
    [=](rebuild_step_atom) {
      rebuild_step(self);
      publish(self);
    },
    [=](tick_atom) {
      auto& st = self->state;
      st.target = std::max(st.target, st.log->head());
      schedule_run(self);
      self->delayed_send(self, st.opts.interval, tick_atom_v);
    },
  };
}

// -- the front: waits and status, never blocked by PostgreSQL ----------------

struct waiter {
  uint64_t position;
  bool fresh; // the position must have been read from PostgreSQL since it was lost
  clock::time_point deadline;
  caf::typed_response_promise<uint64_t> promise;
};

struct rebuild_waiter {
  clock::time_point deadline;
  caf::typed_response_promise<bool> promise;
};

struct status_waiter {
  clock::time_point deadline;
  caf::typed_response_promise<projection_status> promise;
};

struct front_state {
  storage::event_log* log = nullptr;
  projection_mode mode = projection_mode::eventual;
  worker_actor worker;
  projection_report report; // the worker's latest
  std::vector<waiter> waiters;
  uint64_t wanted = 0;        // what the worker was told reads wait for
  bool draining = false;      // the server is stopping: waits end at once
  uint64_t rebuilds_sent = 0; // rebuild_atoms passed on to the worker
  notes_actor notes;
  bool noting_rebuild = false; // a rebuild asked for waits for the store's note
  std::vector<rebuild_waiter> rebuild_waiters; // its requests (they share the answer)
  uint64_t probes_sent = 0;   // stats_atoms passed on to the worker
  clock::time_point probe_sent_at{};
  std::vector<status_waiter> status_waiters; // for the probe under way
  static inline const char* name = "todo_projection_front";
};

using front_ptr = front_actor::stateful_pointer<front_state>;

/// Longest wait for the worker's probe before the front answers from what it
/// knows (the worker may be inside a statement PostgreSQL does not answer).
constexpr auto probe_patience = std::chrono::seconds{3};

/// Why a wait ends without the read model: it is another store's, or
/// PostgreSQL cannot be reached (never since the start: then no position is
/// claimed, since the projection does not know where the read model is).
/// PostgreSQL's own words (hosts, ports, users, databases) go to the log and
/// /admin/projections, never to a client: this is what clients get instead.
caf::error unreachable(const projection_report& r) {
  if (r.diverged)
    return caf::make_error(projection_errc::diverged, r.last_error);
  if (!r.reached)
    return caf::make_error(projection_errc::unavailable,
                           "PostgreSQL not reached since the start" + see_log);
  return caf::make_error(projection_errc::unavailable,
                         "the read model cannot be updated; it had reached position "
                           + std::to_string(r.position) + see_log,
                         r.position);
}

caf::error stopping_error() {
  return caf::make_error(projection_errc::unavailable, "the server is stopping");
}

/// Tells the worker the highest position reads now wait for, when it changed.
void tell_wanted(front_ptr self) {
  auto& st = self->state;
  uint64_t wanted = 0;
  for (auto& w : st.waiters)
    wanted = std::max(wanted, w.position);
  if (wanted != st.wanted) {
    st.wanted = wanted;
    self->send(st.worker, wait_atom_v, wanted);
  }
}

void deliver_waiters(front_ptr self) {
  auto& st = self->state;
  auto& r = st.report;
  auto ready = std::partition(st.waiters.begin(), st.waiters.end(), [&](const waiter& w) {
    return w.position > r.position || (w.fresh && !r.position_known);
  });
  for (auto i = ready; i != st.waiters.end(); ++i)
    i->promise.deliver(r.position);
  st.waiters.erase(ready, st.waiters.end());
}

void fail_waiters(front_ptr self, const caf::error& why) {
  for (auto& w : self->state.waiters)
    w.promise.deliver(why);
  self->state.waiters.clear();
  tell_wanted(self);
}

/// A wait answered at once.
caf::typed_response_promise<uint64_t> answered(front_ptr self, uint64_t position) {
  auto rp = self->make_response_promise<uint64_t>();
  rp.deliver(position);
  return rp;
}

/// Waits until the read model reaches `position`, asking the worker for it.
caf::typed_response_promise<uint64_t> add_waiter(front_ptr self, uint64_t position, bool fresh,
                                                 uint64_t timeout_ms) {
  auto& st = self->state;
  auto rp = self->make_response_promise<uint64_t>();
  if (st.draining) {
    rp.deliver(stopping_error());
    return rp;
  }
  auto timeout = std::chrono::milliseconds{timeout_ms};
  st.waiters.push_back(waiter{position, fresh, clock::now() + timeout, rp});
  self->delayed_send(self, timeout, expire_atom_v);
  tell_wanted(self);
  return rp;
}

/// What `GET /admin/projections` and `/readyz` show for report `r`.
projection_status status_of(const front_state& st, const projection_report& r) {
  projection_status s;
  s.name = "todos";
  s.mode = to_string(st.mode);
  s.position = r.position;
  // A position once seen stays a lower bound of the read model's.
  s.position_known = r.position_known || r.reached;
  s.head = st.log->head();
  s.lag_ms = core::metrics::instance().projection_lag_ms();
  s.connected = r.connected;
  s.last_error = r.last_error;
  if (!r.last_error.empty())
    s.state = "error";
  else if (s.position >= s.head)
    s.state = "live";
  else if (st.mode == projection_mode::scheduled || st.mode == projection_mode::on_demand)
    s.state = "waiting";
  else
    s.state = "catching-up";
  s.diverged = r.diverged;
  s.rebuilding = r.rebuilding || st.rebuilds_sent > r.rebuilds_asked || st.noting_rebuild
                 || r.rebuild_noted;
  // One asked for and not begun yet is at its start, not where the last ended.
  s.rebuild_position = s.rebuilding && !r.rebuilding ? 0 : r.rebuild_position;
  // A finished rebuild reached the head it was chasing.
  s.rebuild_head = s.rebuilding ? s.head : r.rebuild_position;
  s.rebuilds_completed = r.rebuilds_completed;
  return s;
}

bool probe_under_way(const front_state& st) {
  return st.probes_sent > st.report.probes_answered;
}

/// The status while the worker has not come back from a probe for a while:
/// it is inside a statement (or a connection attempt) PostgreSQL does not
/// answer, which the status says instead of waiting for it.
projection_status stuck_status(const front_state& st) {
  auto s = status_of(st, st.report);
  auto waited = std::chrono::duration_cast<std::chrono::seconds>(clock::now() - st.probe_sent_at);
  s.connected = false;
  s.state = "error";
  s.stuck = true;
  s.last_error = "PostgreSQL has not answered the projection for "
                 + std::to_string(waited.count()) + " s";
  return s;
}

/// How long a rebuild asked for waits for the store's note before its
/// request is answered 503 (less than the gateway's 10 s).
constexpr auto note_patience = std::chrono::seconds{5};

/// The store noted the rebuild asked for (or failed to: `err`): every
/// request waiting for the note gets the same answer.
void on_rebuild_noted(front_ptr self, const caf::error& err) {
  auto& st = self->state;
  st.noting_rebuild = false;
  if (!err) {
    ++st.rebuilds_sent;
    self->send(st.worker, rebuild_atom_v);
  }
  // Its requests were answered 503 at the deadline: the log says how it ended.
  if (st.rebuild_waiters.empty())
    std::cerr << "eventsd: the read-model rebuild asked for "
              << (err ? "could not be noted after all (not started): " + caf::to_string(err)
                      : std::string{"was noted late; it starts now"})
              << "\n";
  for (auto& w : st.rebuild_waiters)
    if (err)
      w.promise.deliver(err);
    else
      w.promise.deliver(true);
  st.rebuild_waiters.clear();
}

front_actor::behavior_type front(front_ptr self, storage::event_log* log,
                                 projection_options opts) {
  core::end_on_exception(self);
  auto& st = self->state;
  st.log = log;
  st.mode = opts.mode;
  st.notes = self->spawn<caf::detached + caf::linked>(rebuild_notes, log);
  st.worker = self->spawn<caf::detached + caf::linked>(worker, log, std::move(opts),
                                                       front_actor{self}, st.notes);
  return {
    [=](core::committed c) { self->send(self->state.worker, c); },
    [=](const projection_report& r) {
      auto& st = self->state;
      bool unreachable_now = r.reach_failures > st.report.reach_failures;
      st.report = r;
      deliver_waiters(self);
      // Reads wait to bring the read model up to the head; without
      // PostgreSQL they cannot be served anyway: say so now, not at waitMs.
      if (unreachable_now && st.mode == projection_mode::on_demand)
        fail_waiters(self, unreachable(r));
      tell_wanted(self);
      if (!probe_under_way(st)) {
        auto s = status_of(st, r);
        for (auto& w : st.status_waiters)
          w.promise.deliver(s);
        st.status_waiters.clear();
      }
    },
    [=](wait_atom, uint64_t position,
        uint64_t timeout_ms) -> caf::typed_response_promise<uint64_t> {
      auto& st = self->state;
      // What the read model applied it keeps, also while PostgreSQL is out
      // of reach: the position last seen is reached (the query will tell
      // whether the read model can be asked).
      if (st.report.position >= position)
        return answered(self, st.report.position);
      return add_waiter(self, position, false, timeout_ms);
    },
    [=](catch_up_atom, uint64_t timeout_ms) -> caf::typed_response_promise<uint64_t> {
      auto& st = self->state;
      auto head = st.log->head();
      if (st.report.position_known && st.report.position >= head)
        return answered(self, st.report.position);
      return add_waiter(self, head, true, timeout_ms);
    },
    [=](stats_atom) -> caf::typed_response_promise<projection_status> {
      auto& st = self->state;
      auto rp = self->make_response_promise<projection_status>();
      auto now = clock::now();
      if (!probe_under_way(st)) {
        ++st.probes_sent;
        st.probe_sent_at = now;
        self->send(st.worker, stats_atom_v);
      } else if (now - st.probe_sent_at >= probe_patience) {
        // Still in the statement the last probe found it in: no need to wait again.
        rp.deliver(stuck_status(st));
        return rp;
      }
      auto deadline = st.probe_sent_at + probe_patience;
      st.status_waiters.push_back(status_waiter{deadline, rp});
      self->delayed_send(self, deadline - now, expire_atom_v);
      return rp;
    },
    [=](rebuild_atom) -> caf::typed_response_promise<bool> {
      auto& st = self->state;
      auto rp = self->make_response_promise<bool>();
      if (st.report.rebuilding || st.report.rebuild_noted
          || st.rebuilds_sent > st.report.rebuilds_asked)
        return rp.deliver(false);
      // Answered once the store has noted it (fsynced), so that a stop
      // before the rebuild's first step (PostgreSQL unreachable, say) does
      // not lose it. Requests that come meanwhile share its answer.
      st.rebuild_waiters.push_back(rebuild_waiter{clock::now() + note_patience, rp});
      self->delayed_send(self, note_patience, expire_atom_v);
      if (!st.noting_rebuild) {
        st.noting_rebuild = true;
        self->request(st.notes, caf::infinite, note_atom_v, core::make_uuid())
          .then([=](bool) { on_rebuild_noted(self, caf::error{}); },
                [=](caf::error& err) { on_rebuild_noted(self, err); });
      }
      return rp;
    },
    [=](expire_atom) {
      auto& st = self->state;
      auto& r = st.report;
      auto now = clock::now();
      auto expired = std::partition(st.waiters.begin(), st.waiters.end(),
                                    [&](const waiter& w) { return w.deadline > now; });
      auto why = r.diverged || (!r.position_known && !r.last_error.empty())
                   ? unreachable(r)
                   : caf::make_error(projection_errc::timeout,
                                     "read model at position " + std::to_string(r.position),
                                     r.position);
      for (auto i = expired; i != st.waiters.end(); ++i)
        i->promise.deliver(why);
      st.waiters.erase(expired, st.waiters.end());
      tell_wanted(self);
      auto late = std::partition(st.status_waiters.begin(), st.status_waiters.end(),
                                 [&](const status_waiter& w) { return w.deadline > now; });
      if (late != st.status_waiters.end()) {
        auto s = stuck_status(st);
        for (auto i = late; i != st.status_waiters.end(); ++i)
          i->promise.deliver(s);
        st.status_waiters.erase(late, st.status_waiters.end());
      }
      auto overdue = std::partition(st.rebuild_waiters.begin(), st.rebuild_waiters.end(),
                                    [&](const rebuild_waiter& w) { return w.deadline > now; });
      if (overdue != st.rebuild_waiters.end())
        std::cerr << "eventsd: the read-model rebuild asked for is not noted within 5 s (the "
                     "disk has not completed the write): answered 503; it starts once noted\n";
      for (auto i = overdue; i != st.rebuild_waiters.end(); ++i)
        i->promise.deliver(core::make_error(storage::storage_error{
          storage::storage_errc::not_writable,
          "the rebuild was not noted within 5 s (a disk that does not complete writes?); it "
          "starts once it is: see GET /admin/projections"}));
      st.rebuild_waiters.erase(overdue, st.rebuild_waiters.end());
    },
    [=](drain_atom) {
      self->state.draining = true;
      fail_waiters(self, stopping_error());
    },
  };
}

/// Largest number of ids in one read-model query.
constexpr size_t max_fetch_batch = 256;
/// See connection_options::lock_timeout.
constexpr std::chrono::milliseconds reader_lock_timeout{2000};

struct pending_fetch {
  std::string id;
  core::reply_to<todo_answer> reply;
};

struct reader_state {
  std::unique_ptr<todo_read_model> model;
  /// Lookups received since the last query; answered together by the
  /// flush message queued behind them.
  std::vector<pending_fetch> pending;
  /// The last failed connect, repeated as the answer for a second instead
  /// of trying again for every lookup (against a server that does not
  /// answer each try waits out connect_timeout).
  std::optional<projection_error> connect_error;
  clock::time_point connect_failed{};
  std::shared_ptr<reader_health> health;
  bool reconnect_scheduled = false; ///< a recover_atom is on its way
  failure_log logged;
  static inline const char* name = "todo_read_model_reader";
};

using reader_ptr = read_model_reader_actor::stateful_pointer<reader_state>;

} // namespace

const char* to_string(projection_mode x) {
  switch (x) {
    case projection_mode::eventual:
      return "eventual";
    case projection_mode::unit_of_work:
      return "unit-of-work";
    case projection_mode::on_demand:
      return "on-demand";
    case projection_mode::scheduled:
      return "scheduled";
  }
  return "eventual";
}

std::optional<projection_mode> parse_projection_mode(std::string_view name) {
  for (auto m : {projection_mode::eventual, projection_mode::unit_of_work,
                 projection_mode::on_demand, projection_mode::scheduled})
    if (name == to_string(m))
      return m;
  return std::nullopt;
}

std::optional<todo_change> to_change(const storage::recorded_event& e) {
  constexpr std::string_view prefix = "todo-";
  if (e.stream.compare(0, prefix.size(), prefix) != 0)
    return std::nullopt;
  todo_change c;
  c.id = e.stream.substr(prefix.size());
  c.version = e.version;
  c.position = e.position;
  bool flat = core::scan_flat_strings(e.data, [&](std::string_view key, std::string_view value) {
    if (key == "description")
      c.description = std::string{value};
    else if (key == "status")
      c.status = std::string{value};
  });
  if (flat)
    return c;
  auto data = nlohmann::json::parse(e.data, nullptr, false);
  if (data.is_discarded() || !data.is_object())
    return std::nullopt;
  c.description.reset();
  c.status.reset();
  if (auto d = data.find("description"); d != data.end() && d->is_string())
    c.description = d->get<std::string>();
  if (auto s = data.find("status"); s != data.end() && s->is_string())
    c.status = s->get<std::string>();
  return c;
}

projection_actor spawn_projection(caf::actor_system& sys, storage::event_log* log,
                                  projection_options opts) {
  return sys.spawn(front, log, std::move(opts)); // the projection_actor part of front_actor
}

read_model_reader_actor spawn_read_model_reader(caf::actor_system& sys, std::string dsn,
                                                std::chrono::milliseconds query_timeout,
                                                std::string store,
                                                const std::atomic<bool>* cancel,
                                                std::shared_ptr<reader_health> health) {
  return sys.spawn<caf::detached>(
    [query_timeout, store, cancel, health](reader_ptr self,
                           std::string dsn) -> read_model_reader_actor::behavior_type {
      core::name_this_thread("model-reader");
      core::end_on_exception(self);
      self->state.model = std::make_unique<todo_read_model>(
        std::move(dsn), live_table,
        connection_options{"eventsd reader", query_timeout, store, cancel, reader_lock_timeout});
      self->state.health = health;
      // Connects unless connected. A failed connect is the answer for a
      // second (not retried per lookup), is told through `health`, and is
      // retried by the reader itself a second later, and so on until it
      // connects: while it fails, reads go to other readers.
      auto ready = [self]() -> std::optional<projection_error> {
        auto& st = self->state;
        if (st.model->connected())
          return std::nullopt;
        if (!st.connect_error || clock::now() - st.connect_failed >= std::chrono::seconds{1}) {
          if (auto r = st.model->connect(); !r.ok()) {
            st.connect_error = r.error();
            st.connect_failed = clock::now();
          } else {
            st.connect_error.reset();
            if (st.health)
              st.health->never_connected = false;
          }
        }
        if (st.health)
          st.health->failing = st.connect_error.has_value();
        if (st.connect_error && !st.reconnect_scheduled) {
          st.reconnect_scheduled = true;
          self->delayed_send(self, std::chrono::seconds{1}, recover_atom_v);
        }
        return st.connect_error;
      };
      // Runs a query; a connection found broken (PostgreSQL restarted since
      // the last use) is reopened and the query tried once more. A failure
      // goes to the log in PostgreSQL's words, to the client in eventsd's.
      auto run = [self, ready, cancel](auto&& query) -> decltype(query()) {
        auto r = [&]() -> decltype(query()) {
          if (auto err = ready())
            return *err;
          auto first = query();
          if (!first.ok() && first.error().code == projection_errc::unavailable && !ready())
            return query();
          return first;
        }();
        if (r.ok())
          return r;
        auto code = r.error().code;
        if (code != projection_errc::unavailable && code != projection_errc::query_failed)
          return r; // eventsd's own words: a store mismatch, a malformed cursor
        if (cancel != nullptr && cancel->load())
          return projection_error{code, "the server is stopping"};
        auto& st = self->state;
        const auto& why = r.error().detail;
        if (st.logged.due(why))
          std::cerr << "eventsd: read-model read failed: " << why << std::endl;
        return projection_error{code, code == projection_errc::unavailable
                                        ? "PostgreSQL cannot be reached" + see_log
                                        : "the read-model query failed" + see_log};
      };
      // Answers every pending lookup with one query per max_fetch_batch ids.
      auto flush = [self, run] {
        auto batch = std::move(self->state.pending);
        self->state.pending.clear();
        for (size_t from = 0; from < batch.size(); from += max_fetch_batch) {
          auto to = std::min(batch.size(), from + max_fetch_batch);
          std::vector<std::string> ids;
          ids.reserve(to - from);
          for (size_t i = from; i < to; ++i)
            ids.push_back(std::move(batch[i].id));
          auto r = run([&] { return self->state.model->get_many(ids); });
          for (size_t i = from; i < to; ++i) {
            auto& reply = batch[i].reply;
            if (!r.ok())
              reply(to_caf(r.error()));
            else if (auto& row = r->rows[i - from])
              reply(todo_answer{std::move(*row), r->position});
            else // a 404 is a read-model answer too: it says how far the model was
              reply(caf::make_error(projection_errc::not_found, "no todo " + ids[i - from],
                                    r->position));
          }
        }
      };
      return {
        [=](fetch_atom, std::string& id, core::reply_to<todo_answer>& reply) {
          auto& pending = self->state.pending;
          pending.push_back(pending_fetch{std::move(id), std::move(reply)});
          if (pending.size() == 1)
            self->send(self, flush_atom_v);
        },
        [=](flush_atom) { flush(); },
        [=](recover_atom) {
          self->state.reconnect_scheduled = false;
          if (ready())
            return;
          if (self->state.logged.due("reconnected"))
            std::cerr << "eventsd: read-model reader connected again\n";
        },
        [=](list_atom, const todo_query& q, const core::reply_to<todo_page>& reply) {
          auto r = run([&] { return self->state.model->list(q); });
          if (!r.ok())
            return reply(to_caf(r.error()));
          reply(std::move(r.value()));
        },
      };
    },
    std::move(dsn));
}

pg_result<uint64_t> rebuild_offline(storage::event_log& log, const std::string& dsn,
                                    size_t batch_size, std::chrono::milliseconds query_timeout,
                                    const std::function<void(uint64_t, uint64_t)>& progress) {
  connection_options conn;
  conn.application_name = "eventsd rebuild";
  conn.query_timeout = query_timeout;
  conn.store = log.store_id();
  todo_read_model fresh{dsn, rebuild_table, conn};
  if (auto r = fresh.connect(); !r.ok())
    return r.error();
  if (auto r = fresh.reset(); !r.ok())
    return r.error();
  uint64_t position = 0;
  for (;;) {
    auto head = log.head();
    auto events = log.read_all(position + 1, std::max<size_t>(batch_size, 1));
    if (!events.ok())
      return projection_error{projection_errc::query_failed, events.error().detail};
    if (events->empty())
      break;
    auto last = events->back().position;
    if (auto r = fresh.apply(to_changes(*events), last, events->back().id); !r.ok())
      return r.error();
    position = last;
    progress(position, head);
  }
  if (auto r = fresh.swap_into(live_table); !r.ok())
    return r.error();
  // An online rebuild asked for before is done by this one.
  if (auto r = log.finish_pending_work(rebuild_work); !r.ok())
    std::cerr << "eventsd: an online rebuild asked for earlier is still noted (the next start "
                 "rebuilds again): "
              << r.error().detail << "\n";
  return position;
}

} // namespace eventsd::projections
