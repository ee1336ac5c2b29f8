// Key layout and record codec of the event log. Pure functions; thread-safe.
#include "storage/keys.hpp"

#include <limits>

namespace eventsd::storage::keys {

namespace {

// Strings are prefixed by their length as 4 big-endian bytes.
void put_be32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

void put_str(std::string& out, std::string_view s) {
  // Callers never store 4 GiB in one field (RocksDB itself limits values far
  // below that); clamp rather than write a length that lies.
  auto n = s.size() > std::numeric_limits<uint32_t>::max()
             ? std::numeric_limits<uint32_t>::max()
             : static_cast<uint32_t>(s.size());
  put_be32(out, n);
  out.append(s.data(), n);
}

/// Reads fields front to back; any short read makes every later read fail.
class reader {
public:
  explicit reader(std::string_view in) : in_(in) {}

  bool u8(uint8_t& x) {
    if (in_.empty())
      return false;
    x = static_cast<uint8_t>(in_.front());
    in_.remove_prefix(1);
    return true;
  }

  bool u64(uint64_t& x) {
    if (in_.size() < 8)
      return false;
    x = *get_be64(in_.substr(0, 8));
    in_.remove_prefix(8);
    return true;
  }

  bool i64(int64_t& x) {
    uint64_t u = 0;
    if (!u64(u))
      return false;
    x = static_cast<int64_t>(u);
    return true;
  }

  bool str(std::string& x) {
    if (in_.size() < 4)
      return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i)
      n = (n << 8) | static_cast<uint8_t>(in_[i]);
    in_.remove_prefix(4);
    if (in_.size() < n)
      return false;
    x.assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }

  bool format_v1() {
    uint8_t f = 0;
    return u8(f) && f == record_format_v1;
  }

  bool at_end() const { return in_.empty(); }

private:
  std::string_view in_;
};

std::string prefixed(char prefix, std::string_view rest) {
  std::string key;
  key.reserve(1 + rest.size());
  key.push_back(prefix);
  key.append(rest);
  return key;
}

} // namespace

void put_be64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

std::optional<uint64_t> get_be64(std::string_view in) {
  if (in.size() != 8)
    return std::nullopt;
  uint64_t v = 0;
  for (char c : in)
    v = (v << 8) | static_cast<uint8_t>(c);
  return v;
}

std::string be64(uint64_t v) {
  std::string out;
  out.reserve(8);
  put_be64(out, v);
  return out;
}

std::string prefix_end(char prefix) {
  return std::string(1, static_cast<char>(prefix + 1));
}

std::string all_key(uint64_t position) {
  std::string key;
  key.reserve(9);
  key.push_back(all_prefix);
  put_be64(key, position);
  return key;
}

std::optional<uint64_t> position_of_all_key(std::string_view key) {
  if (key.size() != 9 || key.front() != all_prefix)
    return std::nullopt;
  return get_be64(key.substr(1));
}

std::string escape_stream(std::string_view stream) {
  std::string out;
  out.reserve(stream.size());
  for (char c : stream) {
    if (c == '\x00') {
      out.push_back('\x01');
      out.push_back('\x01');
    } else if (c == '\x01') {
      out.push_back('\x01');
      out.push_back('\x02');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

namespace {

/// `prefix` + escape_stream(stream) + 0x00 + be64(version): a key per version of a stream.
std::string versioned_key(char prefix, std::string_view stream, uint64_t version) {
  std::string key;
  key.reserve(1 + stream.size() + 1 + 8);
  key.push_back(prefix);
  key.append(escape_stream(stream));
  key.push_back('\x00');
  put_be64(key, version);
  return key;
}

} // namespace

std::string stream_index_key(std::string_view stream, uint64_t version) {
  return versioned_key(stream_prefix, stream, version);
}

std::string stream_index_end(std::string_view stream) {
  std::string key;
  key.reserve(1 + stream.size() + 1);
  key.push_back(stream_prefix);
  key.append(escape_stream(stream));
  key.push_back('\x01');
  return key;
}

std::string head_key(std::string_view stream) {
  return prefixed(head_prefix, stream);
}

std::string event_id_key(std::string_view event_id) {
  return prefixed(event_id_prefix, event_id);
}

std::string recency_key(uint64_t last_position, std::string_view stream) {
  std::string key;
  key.reserve(1 + 8 + stream.size());
  key.push_back(recency_prefix);
  put_be64(key, last_position);
  key.append(stream);
  return key;
}

std::string idempotency_key(std::string_view key) {
  return prefixed(idempotency_prefix, key);
}

std::string latest_snapshot_key(std::string_view stream) {
  return prefixed(latest_snapshot_prefix, stream);
}

std::string snapshot_key(std::string_view stream, uint64_t version) {
  return versioned_key(snapshot_prefix, stream, version);
}

std::string pending_key(std::string_view name) {
  return prefixed(pending_prefix, name);
}

std::string encode_head(const stream_head& head) {
  std::string out;
  out.reserve(16 + 8 * head.positions.size());
  put_be64(out, head.version);
  put_be64(out, head.last_position);
  for (auto p : head.positions)
    put_be64(out, p);
  return out;
}

std::optional<stream_head> decode_head(std::string_view in) {
  if (in.size() < 16 || in.size() % 8 != 0)
    return std::nullopt;
  stream_head head{*get_be64(in.substr(0, 8)), *get_be64(in.substr(8, 8)), {}};
  const size_t count = in.size() / 8 - 2;
  if (count != 0 && count != head.version)
    return std::nullopt;
  head.positions.reserve(count);
  for (size_t i = 0; i < count; ++i)
    head.positions.push_back(*get_be64(in.substr(16 + 8 * i, 8)));
  return head;
}

std::string encode_idempotency(const idempotency_record& rec) {
  std::string out;
  out.reserve(1 + 8 + rec.fingerprint.size() + rec.stream.size() + 32);
  out.push_back(static_cast<char>(record_format_v1));
  put_str(out, rec.fingerprint);
  put_str(out, rec.stream);
  put_be64(out, rec.version);
  put_be64(out, rec.first_position);
  put_be64(out, rec.last_position);
  put_be64(out, static_cast<uint64_t>(rec.created_ms));
  if (rec.answered != 0)
    put_be64(out, rec.answered);
  return out;
}

std::optional<idempotency_record> decode_idempotency(std::string_view in) {
  reader r{in};
  idempotency_record rec;
  if (r.format_v1() && r.str(rec.fingerprint) && r.str(rec.stream) && r.u64(rec.version)
      && r.u64(rec.first_position) && r.u64(rec.last_position) && r.i64(rec.created_ms)
      && (r.at_end() || (r.u64(rec.answered) && rec.answered != 0 && r.at_end())))
    return rec;
  return std::nullopt;
}

std::string encode_event(const recorded_event& ev) {
  std::string out;
  out.reserve(1 + 16 + 16 + ev.id.size() + ev.stream.size() + ev.type.size()
              + ev.data.size());
  out.push_back(static_cast<char>(record_format_v1));
  put_be64(out, ev.version);
  put_be64(out, static_cast<uint64_t>(ev.occurred_at_ms));
  put_str(out, ev.id);
  put_str(out, ev.stream);
  put_str(out, ev.type);
  put_str(out, ev.data);
  return out;
}

std::optional<recorded_event> decode_event(std::string_view in, uint64_t position) {
  reader r{in};
  recorded_event ev;
  ev.position = position;
  if (r.format_v1() && r.u64(ev.version) && r.i64(ev.occurred_at_ms) && r.str(ev.id)
      && r.str(ev.stream) && r.str(ev.type) && r.str(ev.data) && r.at_end())
    return ev;
  return std::nullopt;
}

std::string encode_snapshot(const snapshot_record& snap) {
  std::string out;
  out.reserve(1 + 8 + 4 + snap.state.size());
  out.push_back(static_cast<char>(record_format_v1));
  put_be64(out, snap.version);
  put_str(out, snap.state);
  return out;
}

std::optional<snapshot_record> decode_snapshot(std::string_view in) {
  reader r{in};
  snapshot_record snap;
  if (r.format_v1() && r.u64(snap.version) && r.str(snap.state) && r.at_end())
    return snap;
  return std::nullopt;
}

} // namespace eventsd::storage::keys
