// Bulk seeding of an eventsd event log for scripts/bench, without HTTP: the
// events go straight through storage::event_log::append (WAL not fsynced,
// large batches), with the same stream names, event types and `data` JSON the
// server writes (the Todo codec of actors/), so a server opened on the
// directory afterwards cannot tell them from its own.
//
//   eventsd_seed_log --dir=DIR [--events=N] [--work=N] [--history=N]
//                    [--history-events=K] [--filler-events=K]
//                    [--long=L1,L2,...] [--long-count=N] [--long-raw-count=N]
//                    [--snapshot-every=N] [--out=PREFIX] [--seed=N]
//
// What it writes, shuffled together in `$all`:
//   work todos      --work (10000) todos with one `created` event each; ids in PREFIX.work
//   history todos   --history (1000) todos with --history-events (10) events; PREFIX.history
//   long todos      for each length L of --long: --long-count todos with snapshots every
//                   --snapshot-every events (as the server would have stored them) and
//                   --long-raw-count todos without any snapshot; their events are spread
//                   evenly over the whole log. Listed in PREFIX.long as "id L snap|raw".
//   filler todos    todos of --filler-events (10) events, as many as bring the log to
//                   --events in total (none when --events is below the rest).
// Status events cycle put-in-progress, done, change-description after `created`.
//
// Prints one line: events, todos, head position, seconds, events/s.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "actors/todo.hpp"
#include "actors/todo_codec.hpp"
#include "core/uuid.hpp"
#include "storage/event_log.hpp"

namespace {

using namespace eventsd;

struct options {
  std::string dir;
  std::string out;
  uint64_t events = 0;
  uint64_t work = 10'000;
  uint64_t history = 1'000;
  uint64_t history_events = 10;
  uint64_t filler_events = 10;
  std::vector<uint64_t> long_lengths;
  uint64_t long_count = 5;
  uint64_t long_raw_count = 0;
  uint64_t snapshot_every = 100;
  uint64_t seed = 42;
};

class uuid_source {
public:
  explicit uuid_source(uint64_t seed) : rng_(seed) {}

  /// A random (version 4) UUID in canonical lowercase form.
  std::string next() {
    uint64_t hi = rng_(), lo = rng_();
    hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;
    lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;
    char buf[37];
    std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx",
                  static_cast<unsigned>(hi >> 32), static_cast<unsigned>((hi >> 16) & 0xffff),
                  static_cast<unsigned>(hi & 0xffff), static_cast<unsigned>(lo >> 48),
                  static_cast<unsigned long long>(lo & 0xffffffffffffULL));
    return buf;
  }

private:
  std::mt19937_64 rng_;
};

enum class kind : uint8_t { work, history, filler };

/// A todo being written: its id, folded state and how many events it gets.
struct todo_plan {
  std::string id;
  uint64_t length = 0;
  bool snapshots = false;
  todo::state state;
  uint64_t snapshot_version = 0;
};

/// The event number `version` (1-based) of a seeded todo.
todo::event event_at(uint64_t version, uint64_t todo_no) {
  if (version == 1)
    return todo::created{"seeded todo " + std::to_string(todo_no)};
  switch ((version - 2) % 3) {
    case 0:
      return todo::status_changed_to_in_progress{};
    case 1:
      return todo::status_changed_to_done{};
    default:
      return todo::description_changed{"seeded todo " + std::to_string(todo_no) + " v"
                                        + std::to_string(version)};
  }
}

class seeder {
public:
  seeder(storage::event_log& log, const options& o) : log_(log), opts_(o), uuids_(o.seed) {}

  std::string new_id() { return uuids_.next(); }

  /// Adds to the pending batch `count` more events of `t` (one append request).
  void add(todo_plan& t, uint64_t count, uint64_t todo_no) {
    if (count == 0)
      return;
    storage::append_request req;
    req.stream = "todo-" + t.id;
    req.expected_version = t.state.version == 0 ? storage::no_stream : t.state.version;
    req.events.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      auto ev = event_at(t.state.version + 1, todo_no);
      // Event ids as the server makes them (time-ordered), so the event-id
      // index grows at its end as it does in production.
      req.events.push_back(storage::proposed_event{core::make_uuid(),
                                                   std::string{todo::type_name(ev)},
                                                   todo::encode_data(ev), now_ms_});
      t.state = todo::evolve(std::move(t.state), ev);
      if (t.snapshots && opts_.snapshot_every > 0 && t.state.version % opts_.snapshot_every == 0)
        snapshots_.emplace_back(req.stream, storage::snapshot_record{
                                              t.state.version, todo::encode_state(t.state)});
    }
    pending_events_ += count;
    batch_.push_back(std::move(req));
    if (pending_events_ >= 20'000)
      flush();
  }

  void flush() {
    if (batch_.empty())
      return;
    auto results = log_.append(batch_);
    for (auto& r : results)
      if (!r.ok()) {
        std::cerr << "eventsd_seed_log: append failed: " << r.error().detail << "\n";
        std::exit(1);
      }
    for (auto& [stream, snap] : snapshots_)
      if (auto r = log_.save_snapshot(stream, snap); !r.ok()) {
        std::cerr << "eventsd_seed_log: save_snapshot failed: " << r.error().detail << "\n";
        std::exit(1);
      }
    written_ += pending_events_;
    pending_events_ = 0;
    batch_.clear();
    snapshots_.clear();
  }

  uint64_t written() const { return written_; }

private:
  storage::event_log& log_;
  const options& opts_;
  uuid_source uuids_;
  int64_t now_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  std::vector<storage::append_request> batch_;
  std::vector<std::pair<std::string, storage::snapshot_record>> snapshots_;
  uint64_t pending_events_ = 0;
  uint64_t written_ = 0;
};

bool take(std::string_view arg, std::string_view name, std::string& value) {
  if (arg.substr(0, name.size()) != name)
    return false;
  value = std::string{arg.substr(name.size())};
  return true;
}

uint64_t number(const std::string& s, const char* what) {
  char* end = nullptr;
  auto v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0') {
    std::cerr << "eventsd_seed_log: " << what << " must be a number, not `" << s << "`\n";
    std::exit(2);
  }
  return v;
}

options parse(int argc, char** argv) {
  options o;
  std::string v;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (take(a, "--dir=", v))
      o.dir = v;
    else if (take(a, "--out=", v))
      o.out = v;
    else if (take(a, "--events=", v))
      o.events = number(v, "--events");
    else if (take(a, "--work=", v))
      o.work = number(v, "--work");
    else if (take(a, "--history=", v))
      o.history = number(v, "--history");
    else if (take(a, "--history-events=", v))
      o.history_events = std::max<uint64_t>(1, number(v, "--history-events"));
    else if (take(a, "--filler-events=", v))
      o.filler_events = std::max<uint64_t>(1, number(v, "--filler-events"));
    else if (take(a, "--long=", v)) {
      std::stringstream ss{v};
      std::string item;
      while (std::getline(ss, item, ','))
        if (!item.empty())
          o.long_lengths.push_back(std::max<uint64_t>(1, number(item, "--long")));
    } else if (take(a, "--long-count=", v))
      o.long_count = number(v, "--long-count");
    else if (take(a, "--long-raw-count=", v))
      o.long_raw_count = number(v, "--long-raw-count");
    else if (take(a, "--snapshot-every=", v))
      o.snapshot_every = number(v, "--snapshot-every");
    else if (take(a, "--seed=", v))
      o.seed = number(v, "--seed");
    else {
      std::cerr << "usage: eventsd_seed_log --dir=DIR [--events=N] [--work=N] [--history=N]\n"
                   "         [--history-events=K] [--filler-events=K] [--long=L1,L2,...]\n"
                   "         [--long-count=N] [--long-raw-count=N] [--snapshot-every=N]\n"
                   "         [--out=PREFIX] [--seed=N]\n";
      std::exit(2);
    }
  }
  if (o.dir.empty()) {
    std::cerr << "eventsd_seed_log: --dir is required\n";
    std::exit(2);
  }
  if (o.out.empty())
    o.out = o.dir + "/seed";
  return o;
}

} // namespace

int main(int argc, char** argv) {
  auto opts = parse(argc, argv);
  auto started = std::chrono::steady_clock::now();

  storage::log_options lopts;
  lopts.dir = opts.dir;
  lopts.sync = false; // seeding only: the directory is thrown away if we crash
  auto opened = storage::event_log::open(lopts);
  if (!opened.ok()) {
    std::cerr << "eventsd_seed_log: cannot open " << opts.dir << ": " << opened.error().detail
              << "\n";
    return 1;
  }
  auto& log = *opened.value();
  if (log.head() != 0) {
    std::cerr << "eventsd_seed_log: " << opts.dir << " is not empty (head " << log.head()
              << ")\n";
    return 1;
  }
  seeder s{log, opts};

  // The long todos, whose events are spread over the whole log.
  std::vector<todo_plan> longs;
  for (auto len : opts.long_lengths) {
    for (uint64_t i = 0; i < opts.long_count + opts.long_raw_count; ++i) {
      todo_plan t;
      t.id = s.new_id();
      t.length = len;
      t.snapshots = i < opts.long_count;
      t.state = todo::state{t.id, {}, todo::status::created, 0};
      longs.push_back(std::move(t));
    }
  }
  uint64_t long_events = 0;
  for (auto& t : longs)
    long_events += t.length;

  // The short todos, shuffled.
  uint64_t fixed = opts.work + opts.history * opts.history_events + long_events;
  uint64_t filler_total = opts.events > fixed ? opts.events - fixed : 0;
  uint64_t fillers = (filler_total + opts.filler_events - 1) / opts.filler_events;
  std::vector<kind> order;
  order.reserve(opts.work + opts.history + fillers);
  order.insert(order.end(), opts.work, kind::work);
  order.insert(order.end(), opts.history, kind::history);
  order.insert(order.end(), fillers, kind::filler);
  std::shuffle(order.begin(), order.end(), std::mt19937_64{opts.seed + 1});

  std::ofstream work_ids{opts.out + ".work"}, history_ids{opts.out + ".history"},
    long_list{opts.out + ".long"};
  if (!work_ids || !history_ids || !long_list) {
    std::cerr << "eventsd_seed_log: cannot write " << opts.out << ".{work,history,long}\n";
    return 1;
  }

  uint64_t filler_left = filler_total, todo_no = 0, done_short = 0;
  auto spread_longs = [&](bool all) {
    for (size_t i = 0; i < longs.size(); ++i) {
      auto& t = longs[i];
      uint64_t target = all || order.empty()
                          ? t.length
                          : static_cast<uint64_t>(static_cast<long double>(t.length) * done_short
                                                  / order.size());
      while (t.state.version < target)
        s.add(t, std::min<uint64_t>(target - t.state.version, 1000), i);
    }
  };
  for (auto k : order) {
    todo_plan t;
    t.id = s.new_id();
    t.state = todo::state{t.id, {}, todo::status::created, 0};
    switch (k) {
      case kind::work:
        t.length = 1;
        work_ids << t.id << '\n';
        break;
      case kind::history:
        t.length = opts.history_events;
        history_ids << t.id << '\n';
        break;
      case kind::filler:
        t.length = std::min(opts.filler_events, filler_left);
        filler_left -= t.length;
        break;
    }
    s.add(t, t.length, ++todo_no);
    ++done_short;
    if (done_short % 1000 == 0)
      spread_longs(false);
  }
  spread_longs(true);
  s.flush();
  for (auto& t : longs)
    long_list << t.id << ' ' << t.length << ' ' << (t.snapshots ? "snap" : "raw") << '\n';

  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << "seeded " << s.written() << " events in " << (order.size() + longs.size())
            << " todos, head " << log.head() << ", " << secs << " s, "
            << static_cast<uint64_t>(s.written() / std::max(secs, 1e-9)) << " events/s"
            << std::endl;
  return 0;
}
