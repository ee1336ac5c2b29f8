#include "actors/todo_codec.hpp"

#include <nlohmann/json.hpp>

#include "core/flat_json.hpp"

namespace eventsd::todo {

namespace {

using json = nlohmann::json;

template <class... Fs>
struct overload : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
overload(Fs...) -> overload<Fs...>;

std::optional<std::string> string_field(const json& j, const char* key) {
  auto i = j.find(key);
  if (i == j.end() || !i->is_string())
    return std::nullopt;
  return i->get<std::string>();
}

std::optional<status> status_field(const json& j, const char* key) {
  auto s = string_field(j, key);
  if (!s)
    return std::nullopt;
  return parse_status(*s);
}

/// The string between `head` and `tail` when `data` is exactly head + s +
/// tail and s needs no unescaping: the shapes encode_data writes, read
/// without a parse (history and recovery decode every event of a stream).
std::optional<std::string> plain_between(std::string_view data, std::string_view head,
                                         std::string_view tail) {
  if (data.size() < head.size() + tail.size() || !data.starts_with(head) || !data.ends_with(tail))
    return std::nullopt;
  auto body = data.substr(head.size(), data.size() - head.size() - tail.size());
  if (core::json_plain_prefix(body) != body.size())
    return std::nullopt;
  return std::string{body};
}

/// True when `s` is printable ASCII without '"' or '\\': JSON writes it as it is.
bool plain_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x7F || !core::json_plain(c))
      return false;
  return true;
}

/// encode_data for any event, through nlohmann::json.
std::string encode_data_json(const event& e) {
  json j = json::object();
  std::visit(overload{
               [&](const created& x) {
                 j["description"] = x.description;
                 j["status"] = to_string(status::created);
               },
               [&](const description_changed& x) { j["description"] = x.description; },
               [&](const status_changed_to_in_progress&) {
                 j["status"] = to_string(status::in_progress);
               },
               [&](const status_changed_to_done&) { j["status"] = to_string(status::done); },
               [&](const undone_to& x) {
                 j["eventId"] = x.event_id;
                 j["version"] = x.target_version;
                 j["description"] = x.description;
                 j["status"] = to_string(x.status);
               },
             },
             e);
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace

std::string encode_data(const event& e) {
  // The common events written directly, exactly as encode_data_json writes
  // them (keys in order, nothing to escape); the codec test checks that both
  // write what nlohmann writes.
  if (auto* c = std::get_if<created>(&e); c && plain_ascii(c->description))
    return R"({"description":")" + c->description + R"(","status":")"
           + std::string{to_string(status::created)} + R"("})";
  if (auto* d = std::get_if<description_changed>(&e); d && plain_ascii(d->description))
    return R"({"description":")" + d->description + R"("})";
  if (std::holds_alternative<status_changed_to_in_progress>(e))
    return R"({"status":")" + std::string{to_string(status::in_progress)} + R"("})";
  if (std::holds_alternative<status_changed_to_done>(e))
    return R"({"status":")" + std::string{to_string(status::done)} + R"("})";
  return encode_data_json(e);
}

std::optional<event> decode_event(std::string_view type, std::string_view data) {
  // Fast paths for the exact shapes encode_data writes; anything else is parsed.
  if (type == "status-changed-to-in-progress" && data == R"({"status":"InProgress"})")
    return status_changed_to_in_progress{};
  if (type == "status-changed-to-done" && data == R"({"status":"Done"})")
    return status_changed_to_done{};
  if (type == "description-changed")
    if (auto d = plain_between(data, R"({"description":")", R"("})"))
      return description_changed{std::move(*d)};
  if (type == "created")
    if (auto d = plain_between(data, R"({"description":")", R"(","status":"Created"})"))
      return created{std::move(*d)};
  auto j = json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return std::nullopt;
  if (type == "created") {
    if (auto d = string_field(j, "description"))
      return created{std::move(*d)};
  } else if (type == "description-changed") {
    if (auto d = string_field(j, "description"))
      return description_changed{std::move(*d)};
  } else if (type == "status-changed-to-in-progress") {
    return status_changed_to_in_progress{};
  } else if (type == "status-changed-to-done") {
    return status_changed_to_done{};
  } else if (type == "undo-to-some-history-state") {
    auto id = string_field(j, "eventId");
    auto d = string_field(j, "description");
    auto s = status_field(j, "status");
    auto v = j.find("version");
    if (id && d && s && v != j.end() && v->is_number_unsigned())
      return undone_to{std::move(*id), v->get<uint64_t>(), std::move(*d), *s};
  }
  return std::nullopt;
}

std::string encode_state(const state& s) {
  json j{{"id", s.id},
         {"description", s.description},
         {"status", to_string(s.status)},
         {"version", s.version}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<state> decode_state(std::string_view bytes) {
  auto j = json::parse(bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return std::nullopt;
  auto id = string_field(j, "id");
  auto d = string_field(j, "description");
  auto s = status_field(j, "status");
  auto v = j.find("version");
  if (!id || !d || !s || v == j.end() || !v->is_number_unsigned())
    return std::nullopt;
  return state{std::move(*id), std::move(*d), *s, v->get<uint64_t>()};
}

} // namespace eventsd::todo
