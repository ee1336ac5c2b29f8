#include "actors/log_writer.hpp"

#include <iostream>
#include <stdexcept>

#include "core/failpoint.hpp"
#include "core/lifeline.hpp"
#include "core/metrics.hpp"
#include "core/thread_name.hpp"

namespace eventsd::actors {

namespace {

/// A store that can no longer recover while open (RocksDB rated a failure
/// fatal) would refuse every write until someone restarts eventsd: the
/// writer ends instead, which stops the server with status 70, for its
/// supervisor to restart it (the store reopens with every durable event).
void stop_if_unrecoverable(const log_writer_state& st) {
  if (auto why = st.log->unrecoverable())
    throw std::runtime_error("the event store cannot recover from a failed write while open, "
                             "a restart reopens it: " + *why);
}

void flush(log_writer_actor::stateful_pointer<log_writer_state> self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (st.pending.empty())
    return;
  auto& m = core::metrics::instance();
  auto started = std::chrono::steady_clock::now();
  // Appends whose deadline passed while they queued (behind a slow batch, say)
  // are refused unwritten, and their clients told so.
  size_t kept = 0;
  for (size_t i = 0; i < st.pending.size(); ++i) {
    auto deadline = st.pending[i].deadline;
    if (deadline != std::chrono::steady_clock::time_point{} && started >= deadline) {
      st.promises[i].deliver(caf::make_error(core::runtime_errc::deadline_passed,
                                             "before the log writer could take it"));
      continue;
    }
    if (kept != i) {
      st.pending[kept] = std::move(st.pending[i]);
      st.promises[kept] = std::move(st.promises[i]);
    }
    ++kept;
  }
  st.pending.resize(kept);
  st.promises.resize(kept);
  if (st.pending.empty())
    return;
  core::failpoint("log-writer.before-append");
  const bool was_writable = st.log->writable();
  auto results = st.log->append(st.pending);
  st.appended = true; // until every promise of the batch is answered
  auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
  uint64_t written = 0;
  bool write_failed = false;
  for (auto& r : results) {
    if (r.ok() && !r->replayed)
      written += r->last_position - r->first_position + 1;
    else if (!r.ok() && r.error().code == storage::storage_errc::not_writable)
      write_failed = was_writable;
  }
  // A batch of replays and refusals writes and syncs nothing; one that found
  // the store not writable did not try either. A failed write did (its
  // duration is what the fsync histogram is for).
  if (written > 0 || write_failed) {
    m.fsync_batches.add();
    m.fsync_seconds.observe(elapsed.count());
    m.batch_events.observe(static_cast<double>(written));
    m.events_appended.add(written);
  }
  // Before any answer: a client that scrapes /metrics after its write's
  // answer sees the head (and the projection lag) with the write in it.
  auto head = st.log->head();
  m.log_head.set(static_cast<int64_t>(head));
  for (size_t i = 0; i < results.size(); ++i) {
    auto& r = results[i];
    if (r.ok()) {
      st.promises[i].deliver(std::move(r.value()));
    } else {
      if (r.error().code != storage::storage_errc::not_writable)
        m.append_conflicts.add();
      st.promises[i].deliver(core::make_error(r.error()));
    }
  }
  st.pending.clear();
  st.promises.clear();
  st.appended = false;
  for (auto& l : st.listeners)
    self->send(l, core::committed{head});
  stop_if_unrecoverable(st);
}

} // namespace

log_writer_actor::behavior_type
log_writer(log_writer_actor::stateful_pointer<log_writer_state> self, storage::event_log* log,
           writer_options options) {
  core::name_this_thread("log-writer");
  self->state.log = log;
  self->state.options = options;
  core::metrics::instance().log_head.set(static_cast<int64_t>(log->head()));
  self->state.pending.reserve(options.max_batch);
  self->state.promises.reserve(options.max_batch);
  // Not linked: a failing purger must not take the writer with it.
  self->state.purger = self->spawn<caf::detached>(key_purger, log, options);
  // A failed write (an append, or a snapshot, purge or mark on another
  // thread) leaves the store to be resumed: the next append does it, and
  // this tick every second too, so that /readyz turns ready again once the
  // fault has cleared even when no write comes.
  self->delayed_send(self, std::chrono::seconds{1}, tick_atom_v);
  // Appends still queued when the writer is told to stop, or when an
  // exception ends it, are answered, so that no aggregate waits forever for
  // them: as not written, unless the exception came after their batch's
  // append (`append` itself throws nothing).
  auto answer_queued = [self] {
    auto& st = self->state;
    auto why = st.appended ? "the log writer failed after writing the batch this write was "
                             "in: it may or may not have been appended"
                           : "the log writer stopped before writing this write; nothing was "
                             "appended, retry";
    for (auto& rp : st.promises)
      if (rp.pending())
        rp.deliver(caf::make_error(core::runtime_errc::shutting_down, why));
    st.pending.clear();
    st.promises.clear();
  };
  self->set_exit_handler([self, answer_queued](caf::exit_msg& msg) {
    answer_queued();
    self->send_exit(self->state.purger, msg.reason);
    self->quit(msg.reason);
  });
  self->set_exception_handler([self, answer_queued](std::exception_ptr& thrown) {
    answer_queued();
    self->send_exit(self->state.purger, caf::exit_reason::user_shutdown);
    return core::exception_error(thrown);
  });
  return {
    [=](append_atom, storage::append_request& req)
      -> caf::typed_response_promise<storage::append_result> {
      auto& st = self->state;
      auto rp = self->make_response_promise<storage::append_result>();
      st.pending.push_back(std::move(req));
      st.promises.push_back(rp);
      if (st.pending.size() >= st.options.max_batch) {
        flush(self);
      } else if (!st.flush_scheduled) {
        st.flush_scheduled = true;
        // The flush message queues behind every append already in the
        // mailbox, so one batch takes all of them.
        if (st.options.max_wait.count() > 0)
          self->delayed_send(self, st.options.max_wait, flush_atom_v);
        else
          self->send(self, flush_atom_v);
      }
      return rp;
    },
    [=](listen_atom, position_listener_actor listener) {
      self->state.listeners.push_back(std::move(listener));
    },
    [=](flush_atom) {
      if (self->state.flush_scheduled)
        flush(self);
    },
    [=](answered_atom, const std::string& key, uint64_t status,
        const core::reply_to<uint64_t>& recorded) {
      core::failpoint_pause("log-writer.slow-answer-record", std::chrono::seconds{2});
      auto r = self->state.log->mark_idempotency_answer(key, status);
      if (!r.ok()) {
        std::cerr << "eventsd: cannot record the answer to Idempotency-Key " << key
                  << " (a replay would answer as usual): " << r.error().detail << "\n";
        return recorded(status);
      }
      recorded(*r);
    },
    [=](tick_atom) {
      if (!self->state.log->writable())
        self->state.log->try_resume();
      stop_if_unrecoverable(self->state);
      self->delayed_send(self, std::chrono::seconds{1}, tick_atom_v);
    },
  };
}

key_purger_actor::behavior_type key_purger(key_purger_actor::pointer self,
                                           storage::event_log* log, writer_options options) {
  core::name_this_thread("key-purger");
  self->delayed_send(self, options.purge_interval, expire_atom_v);
  return {
    [=](expire_atom) {
      auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::system_clock::now().time_since_epoch());
      // Housekeeping: a failure, even an exception, is retried later rather
      // than ending the purger.
      std::string failure;
      auto& m = core::metrics::instance();
      auto started = std::chrono::steady_clock::now();
      try {
        auto older_than = now - options.idempotency_retention - options.purge_grace;
        if (auto r = log->purge_idempotency_keys(older_than.count()); r.ok()) {
          m.idempotency_keys_purged.add(*r);
          m.idempotency_purge_seconds.observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        } else {
          failure = r.error().detail;
        }
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "an exception of unknown type";
      }
      if (!failure.empty())
        std::cerr << "eventsd: purging expired idempotency keys failed (retried in "
                  << options.purge_interval.count() << " ms): " << failure << "\n";
      self->delayed_send(self, options.purge_interval, expire_atom_v);
    },
  };
}

} // namespace eventsd::actors
