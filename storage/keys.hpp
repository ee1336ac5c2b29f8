// Key layout and record codec of the event log (internal to storage/).
//
// Thread-safety: pure functions over values; safe from any thread.
// The layout is documented in docs/storage.md; change both together.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/event_log.hpp"

namespace eventsd::storage::keys {

// -- prefixes: one byte each; `a` keys in the `events` column family, `e` keys
// -- in `event_ids`, the others in the default one ----------------------------

inline constexpr char all_prefix = 'a';          ///< `$all`: be64(position) -> event record
inline constexpr char event_id_prefix = 'e';     ///< event id -> be64(position)
inline constexpr char head_prefix = 'h';         ///< stream -> stream head
inline constexpr char idempotency_prefix = 'i';  ///< idempotency key -> idempotency record
/// stream -> its latest snapshot record (also under `v`; stores written
/// before 28 November 2026 kept only this one)
inline constexpr char latest_snapshot_prefix = 'n';
inline constexpr char pending_prefix = 'p';      ///< name of accepted work not yet done -> empty
inline constexpr char recency_prefix = 'r';      ///< be64(last_position) + stream -> be64(version)
/// escaped stream + 0x00 + be64(version) -> be64(position), for streams whose head carries
/// no positions (more than `head_positions_max` events, or written before heads did)
inline constexpr char stream_prefix = 's';
/// escaped stream + 0x00 + be64(version) -> snapshot record: every snapshot kept
inline constexpr char snapshot_prefix = 'v';

/// Format byte that starts every variable-length record.
inline constexpr uint8_t record_format_v1 = 1;

// -- fixed-width integers ----------------------------------------------------

/// Appends `v` as 8 big-endian bytes (so byte order == numeric order).
void put_be64(std::string& out, uint64_t v);

/// Reads exactly 8 big-endian bytes; nullopt when `in` is not 8 bytes long.
std::optional<uint64_t> get_be64(std::string_view in);

/// `v` as an 8-byte big-endian string.
std::string be64(uint64_t v);

// -- keys --------------------------------------------------------------------

/// The single byte `prefix + 1`: exclusive upper bound of all keys under `prefix`.
std::string prefix_end(char prefix);

/// `a` + be64(position).
std::string all_key(uint64_t position);

/// Position encoded in an `$all` key; nullopt when `key` is not one.
std::optional<uint64_t> position_of_all_key(std::string_view key);

/// `stream` with 0x01 -> 0x01 0x02 and 0x00 -> 0x01 0x01, so the result holds
/// no 0x00 and is unambiguous; identity for names without those two bytes.
std::string escape_stream(std::string_view stream);

/// `s` + escape_stream(stream) + 0x00 + be64(version).
std::string stream_index_key(std::string_view stream, uint64_t version);

/// Exclusive upper bound of every stream index key of `stream`
/// (`s` + escape_stream(stream) + 0x01).
std::string stream_index_end(std::string_view stream);

/// `h` + stream.
std::string head_key(std::string_view stream);

/// `e` + event id.
std::string event_id_key(std::string_view event_id);

/// `r` + be64(last_position) + stream.
std::string recency_key(uint64_t last_position, std::string_view stream);

/// `i` + idempotency key.
std::string idempotency_key(std::string_view key);

/// `n` + stream.
std::string latest_snapshot_key(std::string_view stream);

/// `v` + escape_stream(stream) + 0x00 + be64(version).
std::string snapshot_key(std::string_view stream, uint64_t version);

/// `p` + name.
std::string pending_key(std::string_view name);

// -- values ------------------------------------------------------------------

/// Longest stream whose positions its head carries (see `stream_head::positions`).
inline constexpr size_t head_positions_max = 16;

/// Value of a head key: the stream's version, the position of its newest
/// event, and, while the stream is short, the positions of all its events.
struct stream_head {
  uint64_t version = 0;
  uint64_t last_position = 0;
  /// Either the positions of versions 1 … version (a stream of at most
  /// `head_positions_max` events; it has no stream index entries, so it is
  /// read with one point lookup instead of an index scan), or empty (every
  /// version is in the stream index: longer streams, and streams written
  /// before heads carried positions).
  std::vector<uint64_t> positions;

  friend bool operator==(const stream_head&, const stream_head&) = default;
};

/// be64(version) + be64(last_position) + be64 of each of `positions`.
std::string encode_head(const stream_head& head);
/// Fails unless the value is 16 + 8·k bytes with k = 0 or k = version.
std::optional<stream_head> decode_head(std::string_view in);

/// Value of an idempotency key: what the first request with that key did.
struct idempotency_record {
  std::string fingerprint;
  std::string stream;
  uint64_t version = 0;
  uint64_t first_position = 0;
  uint64_t last_position = 0;
  int64_t created_ms = 0;
  /// The status code of the first answer when it was recorded (unit-of-work
  /// mode: 201, or 202 when the read model lagged); 0: none recorded.
  uint64_t answered = 0;

  friend bool operator==(const idempotency_record&, const idempotency_record&) = default;
};

/// u8 format + str fingerprint + str stream + be64 version + be64 first_position
/// + be64 last_position + be64 created_ms [+ be64 answered, when not 0].
std::string encode_idempotency(const idempotency_record& rec);
std::optional<idempotency_record> decode_idempotency(std::string_view in);

/// u8 format + be64 version + be64 occurred_at_ms + str id + str stream + str type
/// + str data. The position is not stored: it is the `$all` key.
std::string encode_event(const recorded_event& ev);

/// Decodes an `$all` value; `position` comes from its key.
std::optional<recorded_event> decode_event(std::string_view in, uint64_t position);

/// u8 format + be64 version + str state.
std::string encode_snapshot(const snapshot_record& snap);
std::optional<snapshot_record> decode_snapshot(std::string_view in);

} // namespace eventsd::storage::keys
