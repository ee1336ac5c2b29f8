// The aggregate runtime: one actor per live aggregate instance, spawned on
// first use by a sharded registry, recovered from snapshot + later events,
// passivated when idle or when too many are alive (least recently used first).
//
// It is generic over an aggregate definition `A` (see todo_aggregate.hpp for
// the one eventsd ships); adding an aggregate type touches nothing here.
//
// Actor ownership: aggregate actors and registry shards run on CAF's shared
// scheduler and never block; each aggregate actor owns its state. Recovery
// and snapshots go through the registry's loaders, detached actors that own
// their threads (RocksDB reads and writes block), and appends through the
// log writer.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/all.hpp>

#include "actors/log_writer.hpp"
#include "core/clock.hpp"
#include "core/lifeline.hpp"
#include "core/messages.hpp"
#include "core/metrics.hpp"
#include "core/reply_to.hpp"
#include "core/thread_name.hpp"
#include "core/uuid.hpp"
#include "storage/event_log.hpp"

namespace eventsd::actors {

/// Conditions a client put on a write.
struct write_conditions {
  /// `If-Match`: the versions the client accepts (none matches when empty);
  /// nullopt when the write is unconditional (no header, or `*`).
  std::optional<std::vector<uint64_t>> if_match;
  /// `If-None-Match`: the versions the client refuses; nullopt without it.
  std::optional<std::vector<uint64_t>> if_none_match;
  bool if_none_match_any = false; ///< `If-None-Match: *`: refused when the aggregate exists
  std::optional<storage::idempotency_claim> idempotency; ///< `Idempotency-Key`
  /// A command still undecided at this time (queued behind a slow activation,
  /// say) is refused unwritten with runtime_errc::deadline_passed, and so is
  /// its append if the log writer has not taken it by then; the default is no
  /// deadline. The gateway sets its request timeout here.
  std::chrono::steady_clock::time_point deadline{};
};

/// The answer to an accepted write.
struct write_outcome {
  std::string id;        ///< aggregate id
  uint64_t version = 0;  ///< version after the write
  uint64_t position = 0; ///< position of the event in `$all`
  bool replayed = false; ///< answered from an earlier request with the same key
  uint64_t first_answer = 0; ///< replays: the first answer's status, when recorded
};

/// Runtime options of the aggregate actors.
struct runtime_options {
  /// Stop an aggregate actor after this long without commands (default 60 s).
  std::chrono::milliseconds idle_timeout{60'000};
  /// Most live aggregate actors in all shards together (default 1 000 000).
  size_t max_live = 1'000'000;
  /// Store a snapshot every this many events (default 100; 0 disables).
  uint64_t snapshot_every = 100;
  /// Number of registry shards (default 8).
  size_t shards = 8;
};

/// Where the answer to a command goes when its sender is not an actor.
using write_reply = core::reply_to<write_outcome>;

/// Handle of one aggregate actor of definition `A`. A command carries the
/// `write_reply` its outcome goes to.
template <class A>
using aggregate_actor = caf::typed_actor<
  caf::reacts_to<execute_atom, typename A::command_type, write_conditions, write_reply>,
  caf::reacts_to<passivate_atom>>;

/// Handle of one registry shard: routes a command to the aggregate `id`.
template <class A>
using registry_actor
  = caf::typed_actor<caf::reacts_to<execute_atom, std::string, typename A::command_type,
                                    write_conditions, write_reply>,
                     caf::reacts_to<idle_atom, std::string>, caf::reacts_to<tick_atom>,
                     caf::reacts_to<stopped_atom, std::string>,
                     caf::replies_to<stats_atom>::with<uint64_t>>;

/// Recovers the state of aggregate `id` right after version `through` (by
/// default its latest) from its latest snapshot at or before it plus the
/// events after that. Fails only when the log cannot be read or decoded.
template <class A>
storage::result<typename A::state_type>
recover(const storage::event_log& log, const std::string& id,
        uint64_t through = std::numeric_limits<uint64_t>::max()) {
  auto stream = std::string{A::stream_prefix} + id;
  auto st = A::initial(id);
  uint64_t from = 1;
  if (auto snap = log.load_snapshot(stream, through); snap.ok()) {
    if (auto decoded = A::decode_state(snap->state)) {
      st = std::move(*decoded);
      from = snap->version + 1;
    }
  }
  constexpr uint64_t page = 1024;
  while (from <= through) {
    auto want = std::min(page, through - from + 1);
    auto events = log.read_stream(stream, from, want);
    if (!events.ok()) {
      if (events.error().code == storage::storage_errc::stream_not_found)
        return st;
      return events.error();
    }
    for (auto& e : *events) {
      auto ev = A::decode(e.type, e.data);
      if (!ev)
        return storage::storage_error{storage::storage_errc::corrupted,
                                      "undecodable event " + e.id + " in " + stream};
      st = A::evolve(std::move(st), *ev);
    }
    if (events->size() < want)
      return st;
    from += want;
  }
  return st;
}

/// Handle of a loader: recovers aggregates of definition `A` from the log
/// and stores their snapshots, so that no aggregate blocks a shared
/// scheduler thread on RocksDB.
template <class A>
using loader_actor = caf::typed_actor<
  typename caf::replies_to<recover_atom, std::string>::template with<typename A::state_type>,
  caf::reacts_to<snapshot_atom, std::string, storage::snapshot_record>>;

/// Number of loaders of a registry (each a thread of its own).
inline constexpr size_t loaders_per_registry = 2;

/// Behavior of a loader. Actor ownership: spawned `detached` (RocksDB
/// reads and writes block). REQUIRES: `log` outlives the actor.
template <class A>
typename loader_actor<A>::behavior_type loader(typename loader_actor<A>::pointer self,
                                               storage::event_log* log) {
  core::name_this_thread("loader");
  core::end_on_exception(self);
  return {
    [log](recover_atom, const std::string& id) -> caf::result<typename A::state_type> {
      auto rec = recover<A>(*log, id);
      if (!rec.ok())
        return core::make_error(rec.error());
      return std::move(rec.value());
    },
    [log](snapshot_atom, const std::string& stream, const storage::snapshot_record& snap) {
      // A snapshot is a cache: a failed write (it marks the store for
      // recovery) only makes a later activation replay more events.
      log->save_snapshot(stream, snap);
    },
  };
}

/// What every aggregate of one registry shard shares (one allocation per
/// shard, not per aggregate: a live aggregate must stay small).
template <class A>
struct aggregate_env {
  log_writer_actor writer;
  registry_actor<A> registry;
  runtime_options opts;
  std::vector<loader_actor<A>> loaders;

  /// The loader of aggregate `id` (always the same one: a snapshot it was
  /// sent is stored before a later activation of `id` reads).
  const loader_actor<A>& loader_for(const std::string& id) const {
    return loaders[std::hash<std::string>{}(id) % loaders.size()];
  }
};

template <class A>
struct aggregate_state {
  typename A::state_type current;
  std::shared_ptr<const aggregate_env<A>> env;
  std::unique_ptr<caf::error> broken; // set when recovery failed
  static inline const char* name = "aggregate";

  aggregate_state() = default;
  aggregate_state(const aggregate_state&) = delete;
  aggregate_state& operator=(const aggregate_state&) = delete;

  /// CAF destroys the state when the actor terminates, after its last
  /// message: only now may a successor for this id recover, since every
  /// append of this instance has been answered. (Doing this here rather
  /// than in an attached functor saves ~110 bytes per live aggregate.)
  ~aggregate_state() {
    if (!env)
      return;
    auto& m = core::metrics::instance();
    m.live_aggregates.add(-1);
    m.aggregate_passivations.add();
    caf::anon_send(env->registry, stopped_atom_v, A::id_of(current));
  }
};

template <class A>
using aggregate_pointer =
  typename aggregate_actor<A>::template stateful_pointer<aggregate_state<A>>;

/// An aggregate that does not exist (after a refused, replayed or unwritten
/// create) is not kept alive: the shard is told it is idle.
template <class A>
void idle_if_absent(aggregate_pointer<A> self) {
  auto& st = self->state;
  if (!A::exists(st.current))
    self->send(st.env->registry, idle_atom_v, A::id_of(st.current));
}

/// Decides `cmd`, appends its event and answers through `reply`. The next
/// command waits (`await`) until this one's event is durable. An append that
/// conflicts with the log (this actor's view was stale) is decided once more
/// on the recovered state (`retried` set then).
template <class A>
void run_command(aggregate_pointer<A> self, typename A::command_type& cmd, write_conditions& cond,
                 const write_reply& reply, bool retried = false) {
  auto& st = self->state;
  auto& env = *st.env;
  auto& cur = st.current;
  if (st.broken) {
    // Recovery failed (the store could not be read): answer the error and
    // stop, so the next command retries a fresh activation.
    self->send(env.registry, idle_atom_v, A::id_of(cur));
    return reply(*st.broken);
  }
  if (cond.deadline != std::chrono::steady_clock::time_point{}
      && std::chrono::steady_clock::now() >= cond.deadline) {
    idle_if_absent<A>(self);
    return reply(caf::make_error(core::runtime_errc::deadline_passed,
                                 "before the aggregate could decide it"));
  }
  auto names_version = [&](const std::vector<uint64_t>& versions) {
    return std::find(versions.begin(), versions.end(), A::version(cur)) != versions.end();
  };
  if (A::exists(cur)
      && ((cond.if_match && !names_version(*cond.if_match)) || cond.if_none_match_any
          || (cond.if_none_match && names_version(*cond.if_none_match))))
    return reply(caf::make_error(core::runtime_errc::precondition_failed,
                                 std::to_string(A::version(cur))));
  auto decided = A::decide(cur, cmd);
  if (auto rej = A::rejected(decided)) {
    idle_if_absent<A>(self);
    return reply(std::move(*rej));
  }
  auto ev = A::event_of(std::move(decided));
  storage::append_request req;
  req.stream = std::string{A::stream_prefix} + A::id_of(cur);
  req.expected_version = A::version(cur);
  req.events.push_back(storage::proposed_event{
    core::make_uuid(), std::string{A::type_name(ev)}, A::encode(ev), core::unix_ms()});
  req.idempotency = std::move(cond.idempotency);
  req.deadline = cond.deadline;
  // Kept for a retry after a conflict, without the claim: only a create
  // carries one, and a create that conflicts is refused on the recovered
  // state before it appends.
  auto retry_cond = std::move(cond);
  self->request(env.writer, caf::infinite, append_atom_v, std::move(req))
    .await(
      [self, reply, ev](storage::append_result& r) mutable {
        auto& st = self->state;
        if (r.replayed) {
          // A replayed create names the first request's stream, not this
          // fresh one: nothing to keep alive.
          idle_if_absent<A>(self);
          auto stream_id = r.stream.substr(A::stream_prefix.size());
          return reply(write_outcome{stream_id, r.version, r.last_position, true,
                                     r.first_answer});
        }
        auto every = st.env->opts.snapshot_every;
        auto before = A::version(st.current);
        st.current = A::evolve(std::move(st.current), ev);
        auto after = A::version(st.current);
        if (every > 0 && after / every != before / every)
          self->send(st.env->loader_for(A::id_of(st.current)), snapshot_atom_v, r.stream,
                     storage::snapshot_record{after, A::encode_state(st.current)});
        reply(write_outcome{A::id_of(st.current), after, r.last_position, false});
      },
      [self, reply, cmd, retry_cond, retried](caf::error& err) mutable {
        if (err != storage::storage_errc::wrong_expected_version) {
          // A failed write may have reached the log after all (its answer
          // says "may or may not"): this state may be a version behind, so
          // the next command goes to a successor recovered from the log.
          // Otherwise nothing was appended (an idempotency conflict, a
          // deadline): a todo that does not exist is not kept alive for it.
          if (err == storage::storage_errc::not_writable || err == core::runtime_errc::shutting_down)
            self->send(self->state.env->registry, idle_atom_v, A::id_of(self->state.current));
          else
            idle_if_absent<A>(self);
          return reply(std::move(err));
        }
        // Our view of the stream was stale (a fresh aggregate whose id exists
        // after all, or another writer): recover from the log and decide the
        // command again against the real state — its conditions, a refusal
        // and a new append included — once; a second conflict is answered.
        auto id = A::id_of(self->state.current);
        self->request(self->state.env->loader_for(id), caf::infinite, recover_atom_v, id)
          .await(
            [self, reply, cmd, retry_cond, retried,
             err](typename A::state_type& recovered) mutable {
              self->state.current = std::move(recovered);
              if (retried)
                return reply(std::move(err));
              run_command<A>(self, cmd, retry_cond, reply, true);
            },
            [self, reply, id, err](caf::error&) mutable {
              self->send(self->state.env->registry, idle_atom_v, id);
              reply(std::move(err));
            });
      });
}

/// Behavior of one aggregate actor. Commands are decided one at a time.
/// The handlers capture only `self`; everything else lives in the state.
template <class A>
typename aggregate_actor<A>::behavior_type
aggregate(aggregate_pointer<A> self, const std::string& id,
          std::shared_ptr<const aggregate_env<A>> env, bool fresh) {
  auto& m = core::metrics::instance();
  m.live_aggregates.add(1);
  m.aggregate_activations.add();
  auto started = std::chrono::steady_clock::now();
  auto activated = [started] {
    core::metrics::instance().activation_seconds.observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  };
  self->state.current = A::initial(id);
  self->state.env = std::move(env); // from here on, the state's destructor reports the stop
  // A fresh aggregate (its first command creates it under a new random id)
  // has nothing to recover; the append's expected version `no_stream` still
  // guards against an id that exists after all. Any other waits for its
  // loader (`await`: commands queue meanwhile).
  if (fresh) {
    activated();
  } else {
    self->request(self->state.env->loader_for(id), caf::infinite, recover_atom_v, id)
      .await(
        [self, activated](typename A::state_type& recovered) {
          self->state.current = std::move(recovered);
          activated();
        },
        [self, activated](caf::error& err) {
          self->state.broken = std::make_unique<caf::error>(std::move(err));
          activated();
        });
  }
  return {
    [self](execute_atom, typename A::command_type& cmd, write_conditions& cond,
           write_reply& reply) { run_command<A>(self, cmd, cond, reply); },
    [self](passivate_atom) { self->quit(); },
  };
}

/// Where a registry shard keeps one live aggregate.
template <class A>
struct registry_entry {
  using node = std::pair<const typename A::key_type, registry_entry>; ///< a node of the shard's map
  aggregate_actor<A> handle;
  std::chrono::steady_clock::time_point last_used;
  /// The recency list, threaded through the map's nodes (they never move):
  /// no allocation of its own per live aggregate.
  node* newer = nullptr;
  node* older = nullptr;
};

/// A command that arrived while its aggregate was stopping.
template <class A>
struct queued_command {
  typename A::command_type cmd;
  write_conditions cond;
  write_reply reply;
};

/// A registry shard keys its maps by `A::key_type`, a compact form of the id
/// (`A::key_of`): a live aggregate must stay small, and a heap-allocated
/// string key with a cached hash cost ~60 bytes more per entry.
template <class A>
struct registry_state {
  using key = typename A::key_type;
  using node = typename registry_entry<A>::node;
  std::unordered_map<key, registry_entry<A>, typename A::key_hash> live;
  /// Ends of the recency list of `live`.
  node* newest = nullptr;
  node* oldest = nullptr;
  /// Aggregates told to stop that have not stopped yet, with the commands
  /// that arrived meanwhile (they go to the successor, in order).
  std::unordered_map<key, std::vector<queued_command<A>>, typename A::key_hash> stopping;
  static inline const char* name = "aggregate_registry";

  /// Stops the aggregate `n` holds. Messages sent to it earlier
  /// precede the passivate message in its mailbox, so none is lost; later
  /// ones wait in `stopping` until it has stopped.
  template <class Self>
  void passivate(Self* self, node* n) {
    self->send(n->second.handle, passivate_atom_v);
    stopping.try_emplace(n->first);
    unlink(n);
    live.erase(live.find(n->first));
  }

  /// Forgets the live aggregate `n` points at, which stopped on its own.
  void forget(node* n) {
    unlink(n);
    live.erase(live.find(n->first));
  }

  /// Adds the live aggregate `k` as the most recently used.
  node* add(const key& k, aggregate_actor<A> handle) {
    auto i = live.emplace(k, registry_entry<A>{std::move(handle),
                                                std::chrono::steady_clock::now()})
               .first;
    push_front(&*i);
    return &*i;
  }

  /// Marks `n` as the most recently used.
  void touch(node* n) {
    n->second.last_used = std::chrono::steady_clock::now();
    if (n != newest) {
      unlink(n);
      push_front(n);
    }
  }

private:
  void push_front(node* n) {
    n->second.newer = nullptr;
    n->second.older = newest;
    if (newest)
      newest->second.newer = n;
    newest = n;
    if (!oldest)
      oldest = n;
  }

  void unlink(node* n) {
    auto& e = n->second;
    (e.newer ? e.newer->second.older : newest) = e.older;
    (e.older ? e.older->second.newer : oldest) = e.newer;
    e.newer = e.older = nullptr;
  }
};

/// Behavior of one registry shard. `max_live` is this shard's share.
template <class A>
typename registry_actor<A>::behavior_type
registry_shard(typename registry_actor<A>::template stateful_pointer<registry_state<A>> self,
               log_writer_actor writer, runtime_options opts, size_t max_live,
               std::vector<loader_actor<A>> loaders) {
  auto env = std::make_shared<const aggregate_env<A>>(aggregate_env<A>{
    writer, caf::actor_cast<registry_actor<A>>(self), opts, std::move(loaders)});
  // Idle aggregates are found by a periodic sweep from the cold end of the
  // recency list, so a live aggregate costs no timer of its own.
  auto sweep_every = std::max<std::chrono::milliseconds>(opts.idle_timeout / 4,
                                                         std::chrono::milliseconds{10});
  self->delayed_send(self, sweep_every, tick_atom_v);
  core::end_on_exception(self);
  // Aggregates are not linked to their shard: CAF unlinks by scanning a
  // list, which made passivating N aggregates O(N^2). A stopping shard stops
  // its aggregates itself.
  self->set_exit_handler([self](const caf::exit_msg& msg) {
    for (auto& [id, entry] : self->state.live)
      self->send_exit(entry.handle, msg.reason);
    self->quit(msg.reason);
  });
  // A new live aggregate `id`, the oldest ones stopped first to stay within
  // max_live.
  auto spawn_capped = [=](const typename A::key_type& k, const std::string& id,
                          bool creates) -> const aggregate_actor<A>& {
    auto& st = self->state;
    while (st.live.size() >= max_live && st.oldest)
      st.passivate(self, st.oldest);
    return st.add(k, self->spawn(aggregate<A>, id, env, creates))->second.handle;
  };
  // The live aggregate `id` (key `k`), spawned when needed; nullptr while
  // the previous instance is stopping (the caller queues the command).
  auto route = [=](const typename A::key_type& k, const std::string& id,
                   bool creates) -> const aggregate_actor<A>* {
    auto& st = self->state;
    if (st.stopping.count(k))
      return nullptr;
    if (auto i = st.live.find(k); i != st.live.end()) {
      st.touch(&*i);
      return &i->second.handle;
    }
    return &spawn_capped(k, id, creates);
  };
  auto invalid = [](const std::string& id) {
    return caf::make_error(core::runtime_errc::invalid_id, id);
  };
  return {
    [=](execute_atom, const std::string& id, typename A::command_type& cmd,
        write_conditions& cond, write_reply& reply) {
      auto k = A::key_of(id);
      if (!k)
        return reply(invalid(id));
      if (auto handle = route(*k, id, A::creates(cmd)))
        return self->send(*handle, execute_atom_v, std::move(cmd), std::move(cond),
                          std::move(reply));
      self->state.stopping[*k].push_back(
        queued_command<A>{std::move(cmd), std::move(cond), std::move(reply)});
    },
    [=](idle_atom, const std::string& id) {
      // The aggregate asked to stop (nothing to keep, stale, or recovery
      // failed); ignore the request of an instance that is already gone.
      auto& st = self->state;
      auto k = A::key_of(id);
      if (!k)
        return;
      auto i = st.live.find(*k);
      if (i != st.live.end()
          && caf::actor_cast<caf::strong_actor_ptr>(i->second.handle) == self->current_sender())
        st.passivate(self, &*i);
    },
    [=](stopped_atom, const std::string& id) {
      auto& st = self->state;
      auto k = A::key_of(id);
      if (!k)
        return;
      auto q = st.stopping.find(*k);
      if (q == st.stopping.end()) {
        // Not told to stop: it died (an exception in a handler, say). Every
        // stop the registry asks for goes through `stopping`, so the live
        // entry of this id is that dead actor: forget it, and the next
        // command activates a fresh one instead of going to a dead handle.
        if (auto i = st.live.find(*k); i != st.live.end())
          st.forget(&*i);
        return;
      }
      auto waiting = std::move(q->second);
      st.stopping.erase(q);
      if (waiting.empty())
        return;
      auto handle = spawn_capped(*k, id, false);
      for (auto& w : waiting)
        self->send(handle, execute_atom_v, std::move(w.cmd), std::move(w.cond),
                   std::move(w.reply));
    },
    [=](tick_atom) {
      auto& st = self->state;
      auto cutoff = std::chrono::steady_clock::now() - opts.idle_timeout;
      while (st.oldest && st.oldest->second.last_used <= cutoff)
        st.passivate(self, st.oldest);
      self->delayed_send(self, sweep_every, tick_atom_v);
    },
    [=](stats_atom) -> uint64_t { return self->state.live.size(); },
  };
}

/// The sharded registry of aggregates of definition `A`.
template <class A>
class registry {
public:
  registry(caf::actor_system& sys, storage::event_log* log, log_writer_actor writer,
           runtime_options opts) {
    for (size_t i = 0; i < loaders_per_registry; ++i)
      loaders_.push_back(sys.spawn<caf::detached>(loader<A>, log));
    // The shares add up to max_live exactly (no more shards than that).
    auto n = std::clamp<size_t>(opts.shards, 1, std::max<size_t>(1, opts.max_live));
    for (size_t i = 0; i < n; ++i) {
      auto share = opts.max_live / n + (i < opts.max_live % n ? 1 : 0);
      shards_.push_back(sys.spawn(registry_shard<A>, writer, opts,
                                  std::max<size_t>(1, share), loaders_));
    }
  }

  /// The shard responsible for aggregate `id`.
  const registry_actor<A>& shard_for(const std::string& id) const {
    return shards_[std::hash<std::string>{}(id) % shards_.size()];
  }

  const std::vector<registry_actor<A>>& shards() const { return shards_; }
  const std::vector<loader_actor<A>>& loaders() const { return loaders_; }

  /// Stops the shards (and with them their aggregates) and the loaders.
  void stop() {
    for (auto& shard : shards_)
      caf::anon_send_exit(shard, caf::exit_reason::user_shutdown);
    for (auto& l : loaders_)
      caf::anon_send_exit(l, caf::exit_reason::user_shutdown);
  }

private:
  std::vector<registry_actor<A>> shards_;
  /// Not linked to the shards: a loader that fails must not take every
  /// shard (and all writes) with it.
  std::vector<loader_actor<A>> loaders_;
};

} // namespace eventsd::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::actors::write_conditions)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::storage::snapshot_record)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::actors::write_reply)
