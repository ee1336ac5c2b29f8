#include "http/routes.hpp"

#include <algorithm>
#include <charconv>
#include <ctime>
#include <fstream>
#include <set>
#include <span>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <nlohmann/json.hpp>

#include "core/clock.hpp"
#include "core/failpoint.hpp"
#include "core/flat_json.hpp"
#include "core/metrics.hpp"
#include "core/uuid.hpp"
#include "http/event_json.hpp"
#include "http/static_files.hpp"

namespace eventsd::http {

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

/// A completion for an actor's answer: `on_value(const T&)` or
/// `on_error(caf::error&)`, run on the answering actor's thread.
template <class T, class OnValue, class OnError>
core::reply_to<T> answer_to(OnValue on_value, OnError on_error) {
  return core::reply_to<T>{[on_value, on_error](caf::expected<T> r) mutable {
    if (r)
      on_value(*r);
    else
      on_error(r.error());
  }};
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

reply json_reply(unsigned status, const json& j) {
  reply r;
  r.status = status;
  r.body = dump(j);
  return r;
}


std::optional<uint64_t> parse_uint(std::string_view s) {
  if (s.empty() || s.size() > 19)
    return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size())
    return std::nullopt;
  return v;
}

/// A numeric query parameter: absent -> fallback; above max -> max;
/// non-numeric or negative -> a 400 naming the parameter.
std::optional<reply> query_number(const incoming& req, const std::string& name,
                                  uint64_t fallback, uint64_t max, uint64_t min,
                                  uint64_t& out) {
  auto i = req.query.find(name);
  if (i == req.query.end()) {
    out = fallback;
    return std::nullopt;
  }
  auto v = parse_count(i->second); // huge but numeric: clamped below
  if (!v || *v < min) {
    // One wording for both, so that `limit=-1` does not suggest that 0 would do.
    auto want = "must be " + (min == 0 ? std::string{"a non-negative integer"}
                                       : "an integer of at least " + std::to_string(min));
    return problem(400, "query parameter `" + name + "` " + want, {{name, {want}}});
  }
  out = std::min(*v, max);
  return std::nullopt;
}

/// `{"id","description","status","version"}`: a todo as every route shows it, appended.
void append_todo_json(std::string& out, std::string_view id, std::string_view description,
                      std::string_view status, uint64_t version) {
  out += "{\"id\":";
  append_json_string(out, id);
  out += ",\"description\":";
  append_json_string(out, description);
  out += ",\"status\":";
  append_json_string(out, status);
  out += ",\"version\":";
  append_json_uint(out, version);
  out += '}';
}

void append_todo_json(std::string& out, const todo::state& s) {
  append_todo_json(out, s.id, s.description, todo::to_string(s.status), s.version);
}

void append_todo_json(std::string& out, const projections::todo_row& r) {
  append_todo_json(out, r.id, r.description, r.status, r.version);
}

/// FNV-1a 64 of `s`, as 16 hex digits: the idempotency fingerprint.
std::string fingerprint(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

/// The 400 of a body object naming one member twice: which one counts would
/// be a guess (RFC 8259 §4 leaves it to the reader).
reply duplicate_member(const std::string& name) {
  return problem(400, "member `" + name + "` appears more than once in the body",
                 {{name, {"is given more than once"}}});
}

/// Parses a body already known to be UTF-8; with `refuse_duplicates`, a
/// member named twice in the top-level object is refused.
std::optional<reply> parse_json_body(const std::string& body, json& out,
                                     bool refuse_duplicates = false) {
  // JSON text holds no raw NUL (in a string it is `\u0000`); nlohmann's
  // parser takes one for the end of the text and would accept what follows.
  if (body.find('\0') != std::string::npos)
    return problem(400, "body is not well-formed JSON: it holds a NUL byte");
  std::set<std::string> names;
  std::optional<std::string> duplicate;
  auto top_level_names = [&](int depth, json::parse_event_t event, json& parsed) {
    if (refuse_duplicates && depth == 1 && event == json::parse_event_t::key && !duplicate
        && !names.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    out = json::parse(body, top_level_names);
  } catch (const json::out_of_range&) {
    // Well-formed, but past what a 64-bit float holds (RFC 8259 §6 lets a
    // reader limit the range), even in a field eventsd would ignore.
    return problem(400, "body holds a number beyond the range of a 64-bit float (±1.8e308)");
  } catch (const json::exception&) {
    return problem(400, "body is not well-formed JSON");
  }
  if (duplicate)
    return duplicate_member(*duplicate);
  return std::nullopt;
}

/// The media type of a Content-Type value: what comes before its parameters.
std::string media_type(const std::string& content_type) {
  auto media = content_type.substr(0, content_type.find(';'));
  while (!media.empty() && (media.back() == ' ' || media.back() == '\t'))
    media.pop_back();
  return media;
}

/// The 415 of a body whose Content-Type is not JSON in UTF-8 (a 400 when
/// the field, which takes one value, is given twice: which would count is a
/// guess).
std::optional<reply> json_content_type_problem(const incoming& req) {
  if (req.repeated("content-type"))
    return problem(400, "Content-Type given more than once",
                   {{"Content-Type", {"must be given once"}}});
  auto type = lower(req.header("content-type"));
  if (media_type(type) != "application/json")
    return problem(415, "expected a body of type application/json");
  // JSON is UTF-8 (RFC 8259 §8.1): a body said to be in another charset
  // would be read as something it is not.
  for (auto at = type.find(';'); at != std::string::npos;) {
    auto next = type.find(';', at + 1);
    auto param = std::string_view{type}.substr(at + 1, next == std::string::npos
                                                         ? std::string::npos
                                                         : next - at - 1);
    at = next;
    while (!param.empty() && (param.front() == ' ' || param.front() == '\t'))
      param.remove_prefix(1);
    if (!param.starts_with("charset="))
      continue;
    auto charset = param.substr(8);
    while (!charset.empty() && (charset.back() == ' ' || charset.back() == '\t'))
      charset.remove_suffix(1);
    if (charset.size() >= 2 && charset.front() == '"' && charset.back() == '"')
      charset = charset.substr(1, charset.size() - 2);
    if (charset != "utf-8")
      return problem(415, "a JSON body is UTF-8; charset=" + std::string{charset}
                            + " is not accepted");
  }
  return std::nullopt;
}

/// Checks Content-Type and parses a JSON object body.
std::optional<reply> require_json_object(const incoming& req, json& out) {
  if (auto err = json_content_type_problem(req))
    return err;
  if (!todo::count_code_points(req.body))
    return problem(400, "body is not valid UTF-8");
  // The usual body, e.g. {"description":"…"}, without the parser: the same
  // object json::parse makes of it.
  out = json::object();
  std::optional<std::string> duplicate;
  if (core::scan_flat_strings(req.body, [&](std::string_view k, std::string_view v) {
        auto [it, added] = out.emplace(std::string{k}, std::string{v});
        if (!added && !duplicate)
          duplicate = it.key();
      }))
    return duplicate ? std::optional{duplicate_member(*duplicate)} : std::nullopt;
  if (auto err = parse_json_body(req.body, out, true))
    return err;
  if (!out.is_object())
    return problem(400, "body must be a JSON object");
  return std::nullopt;
}

/// For a route that takes no body: one sent anyway is ignored, as are the
/// fields eventsd does not read, unless it says it is JSON and is not (a
/// client that sends broken JSON should hear of it, not see it written past).
/// `curl -d '{}'` (a form type) or a browser's text/plain body are no error.
std::optional<reply> check_unused_body(const incoming& req) {
  if (req.body.empty() || media_type(lower(req.header("content-type"))) != "application/json")
    return std::nullopt;
  if (!todo::count_code_points(req.body))
    return problem(400, "body is not valid UTF-8");
  json ignored;
  return parse_json_body(req.body, ignored);
}

/// `description` of a body: present, a string, and valid for a todo.
std::optional<field_error> description_of(const json& body, std::string& out) {
  auto i = body.find("description");
  if (i == body.end())
    return field_error{"description", {"is required"}};
  if (!i->is_string())
    return field_error{"description", {"must be a string"}};
  out = i->get<std::string>();
  if (auto rej = todo::validate_description(out))
    return field_error{"description", {rej->message}};
  return std::nullopt;
}

/// Parses an `If-Match` / `If-None-Match` value (RFC 9110 §13.1): `*`, or a
/// list of entity tags, of which those spelling a version (`"3"`) are the
/// versions the client names. Weak tags (`W/"3"`) count only when
/// `weak_matches` (If-None-Match compares weakly, If-Match strongly); tags
/// that are no version in canonical form (`"03"`) never match, and a
/// malformed list matches nothing, so a write is refused rather than made
/// unconditional; so does an empty list. nullopt: `*` (any current version).
/// `malformed` (when given) tells a malformed list from one of no versions.
std::optional<std::vector<uint64_t>> entity_versions(std::string_view v, bool weak_matches,
                                                     bool* malformed = nullptr) {
  auto separator = [](char c) { return c == ' ' || c == '\t' || c == ','; };
  while (!v.empty() && separator(v.front()))
    v.remove_prefix(1);
  while (!v.empty() && separator(v.back()))
    v.remove_suffix(1);
  if (v == "*")
    return std::nullopt;
  std::vector<uint64_t> versions;
  while (!v.empty()) {
    const bool weak = v.substr(0, 2) == "W/";
    if (weak)
      v.remove_prefix(2);
    auto close = v.empty() || v.front() != '"' ? std::string_view::npos : v.find('"', 1);
    if (close == std::string_view::npos) {
      if (malformed)
        *malformed = true;
      return std::vector<uint64_t>{};
    }
    auto tag = v.substr(1, close - 1);
    v.remove_prefix(close + 1);
    if (!v.empty() && !separator(v.front())) { // something glued to the tag
      if (malformed)
        *malformed = true;
      return std::vector<uint64_t>{};
    }
    while (!v.empty() && separator(v.front()))
      v.remove_prefix(1);
    if (weak && !weak_matches)
      continue;
    if (auto n = parse_uint(tag); n && std::to_string(*n) == tag)
      versions.push_back(*n);
  }
  return versions;
}

/// The conditions of a request's `If-Match` (strong) and `If-None-Match`
/// (weak) headers; a header that is absent sets none. A malformed
/// If-None-Match refuses a write (like `*`) rather than letting it through;
/// on a read it is ignored.
actors::write_conditions conditions_of(const incoming& req, bool write = true) {
  actors::write_conditions cond;
  if (auto i = req.headers.find("if-match"); i != req.headers.end())
    cond.if_match = entity_versions(i->second, false);
  if (auto i = req.headers.find("if-none-match"); i != req.headers.end()) {
    bool malformed = false;
    auto versions = entity_versions(i->second, true, &malformed);
    if (malformed && !write)
      return cond;
    cond.if_none_match = versions ? std::move(*versions) : std::vector<uint64_t>{};
    cond.if_none_match_any = !versions || malformed;
  }
  return cond;
}

/// What a 412 adds when If-Match or If-None-Match is no list of entity tags
/// (`If-Match: 3`): If-Match then matches no version, If-None-Match is read
/// as `*` on a write and ignored on a `read` (see conditions_of). Empty when
/// both are well-formed or absent.
std::string malformed_tags_hint(const incoming& req, bool read = false) {
  std::string hint;
  for (auto [name, field, effect] :
       {std::tuple{"if-match", "If-Match", "so no version matches it"},
        std::tuple{"if-none-match", "If-None-Match",
                   read ? "so it is ignored" : "so it is read as `*`"}}) {
    bool malformed = false;
    if (auto i = req.headers.find(name); i != req.headers.end())
      entity_versions(i->second, true, &malformed);
    if (malformed)
      hint += std::string{"; "} + field + " is not a list of entity tags, " + effect
              + ": quote versions, as in " + field + ": \"3\"";
  }
  return hint;
}

/// A conditional GET (RFC 9110 §13.1) of a representation whose entity tag
/// is `version` (quoted, added to `r` as ETag): If-Match compares strongly,
/// If-None-Match weakly, and `*` holds for anything that exists. True when
/// `r` became the answer: a 412 (If-Match names another version) or a 304.
bool conditional_get(const actors::write_conditions& cond, uint64_t version, reply& r) {
  r.header("ETag", "\"" + std::to_string(version) + "\"");
  auto names_version = [&](const std::vector<uint64_t>& versions) {
    return std::ranges::find(versions, version) != versions.end();
  };
  if (cond.if_match && !names_version(*cond.if_match)) {
    auto p = problem(412, "If-Match does not match the entity tag \""
                            + std::to_string(version) + "\"");
    p.headers.insert(p.headers.begin(), r.headers.begin(), r.headers.end());
    r = std::move(p);
    return true;
  }
  if (cond.if_none_match_any || (cond.if_none_match && names_version(*cond.if_none_match))) {
    r.status = 304;
    r.content_type.clear();
    return true;
  }
  return false;
}

/// POST /todo's If-Match and If-None-Match, evaluated against its target, the
/// collection /todo, which exists and has no entity tag (RFC 9110 §13.1.1-2):
/// `If-Match: *` and `If-None-Match` with tags hold; `If-Match` with tags and
/// `If-None-Match: *` do not (a 412, nothing created).
std::optional<reply> collection_preconditions(const incoming& req) {
  auto cond = conditions_of(req);
  std::string why;
  if (cond.if_match) // anything but `*`
    why = "If-Match holds on POST /todo only as `*`: it creates a new todo, and /todo has no "
          "version to match";
  else if (cond.if_none_match_any)
    why = "If-None-Match: * holds only where nothing exists, and /todo does: every POST "
          "creates a new todo";
  if (why.empty())
    return std::nullopt;
  return problem(412, why + malformed_tags_hint(req)
                        + " (to make a create safe to retry, send an Idempotency-Key)");
}

/// `respond`, except that a 412 says so when the request's If-Match or
/// If-None-Match is malformed: else the client learns only that its version
/// did not match. `read`: a GET or HEAD (see malformed_tags_hint).
responder hinting_malformed_tags(const incoming& req, responder respond, bool read = false) {
  auto hint = malformed_tags_hint(req, read);
  if (hint.empty())
    return respond;
  return [respond = std::move(respond), hint](reply r) {
    if (r.status == 412)
      if (auto j = json::parse(r.body, nullptr, false); j.is_object()) {
        j["detail"] = j.value("detail", std::string{}) + hint;
        r.body = dump(j);
      }
    respond(std::move(r));
  };
}

/// `respond` for a GET or HEAD, evaluating If-Match and If-None-Match
/// (RFC 9110 §13.2.2) on answers that carry no entity tag of their own: the
/// resource exists but no tag can match it, so If-Match with tags is a 412
/// and `If-None-Match: *` a 304; `If-Match: *` and If-None-Match with tags
/// hold. Answers with an ETag were compared by their route (conditional_get).
responder preconditions_without_tag(const incoming& req, responder respond) {
  auto cond = conditions_of(req, false);
  if (!cond.if_match && !cond.if_none_match_any)
    return respond;
  return [respond = std::move(respond), cond](reply r) {
    bool tagged = std::ranges::any_of(r.headers, [](auto& h) { return h.first == "ETag"; });
    if (r.status / 100 == 2 && !tagged) {
      if (cond.if_match) {
        // Only the position the answer stood for carries over (not, say, a
        // static file's Cache-Control, which would let a cache keep the 412).
        auto p = problem(412, "If-Match holds here only as `*`: this answer has no entity tag "
                              "to match");
        for (auto& h : r.headers)
          if (h.first == "X-Read-Model-Position")
            p.headers.push_back(h);
        r = std::move(p);
      } else {
        r.status = 304;
        r.content_type.clear();
        r.body.clear();
        r.stream.reset();
      }
    }
    respond(std::move(r));
  };
}

/// problem_for(err), where a todo's stream that does not exist is the todo.
reply todo_problem(const caf::error& err) {
  if (err == storage::storage_errc::stream_not_found)
    return problem(404, "todo not found");
  return problem_for(err);
}

reply write_reply(const actors::write_outcome& o, unsigned status) {
  reply r;
  r.status = status;
  r.body = "{\"id\":";
  append_json_string(r.body, o.id);
  r.body += ",\"version\":";
  append_json_uint(r.body, o.version);
  r.body += ",\"position\":";
  append_json_uint(r.body, o.position);
  r.body += '}';
  r.header("ETag", "\"" + std::to_string(o.version) + "\"");
  if (status == 201 || (status == 202 && o.version == 1))
    r.header("Location", "/todo/" + o.id);
  return r;
}

} // namespace

std::string incoming::header(const std::string& lower_name) const {
  auto i = headers.find(lower_name);
  return i == headers.end() ? std::string{} : i->second;
}

bool incoming::repeated(std::string_view lower_name) const {
  return std::ranges::find(repeated_headers, lower_name) != repeated_headers.end();
}

std::optional<uint64_t> parse_count(std::string_view v) {
  if (v.empty() || v.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  auto significant = v.find_first_not_of('0');
  if (significant == std::string_view::npos)
    return 0;
  v.remove_prefix(significant);
  return v.size() > 19 ? UINT64_MAX : parse_uint(v);
}

std::string lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::optional<reply> parse_target(std::string_view target, std::string& path,
                                  std::map<std::string, std::string>& query) {
  // In the query `+` is a space; in the path an encoded `/` stays encoded.
  auto decode = [](std::string_view in, bool in_query, std::string& out) {
    out.clear();
    for (size_t i = 0; i < in.size(); ++i) {
      char c = in[i];
      if (c == '%') {
        auto hex = [](char h) -> int {
          if (h >= '0' && h <= '9')
            return h - '0';
          if (h >= 'a' && h <= 'f')
            return h - 'a' + 10;
          if (h >= 'A' && h <= 'F')
            return h - 'A' + 10;
          return -1;
        };
        if (i + 2 >= in.size())
          return false;
        int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
        if (hi < 0 || lo < 0)
          return false;
        char decoded = static_cast<char>(hi * 16 + lo);
        if (decoded == '/' && !in_query)
          out.append("%2F");
        else
          out += decoded;
        i += 2;
      } else if (c == '+' && in_query) {
        out += ' ';
      } else {
        out += c;
      }
    }
    return true;
  };
  const auto malformed = problem(400, "malformed percent escape in the request target");
  // Origin form; the absolute form was rewritten to it, `*` is not parsed.
  if (!target.starts_with('/'))
    return problem(400, "a request target begins with `/` (or is an absolute URI, or `*` "
                        "for OPTIONS)");
  // A fragment is the client's own business and never sent (RFC 9112 §3.2).
  if (target.find('#') != std::string_view::npos)
    return problem(400, "a request target has no fragment (`#`)");
  // Only ASCII is sent as it is (RFC 9112 §3.2, RFC 3986 §2): anything else
  // is percent-encoded UTF-8, so a raw byte above 0x7F is a client's mistake.
  if (std::ranges::any_of(target, [](char c) { return static_cast<unsigned char>(c) > 0x7E; }))
    return problem(400, "a request target is ASCII: percent-encode other characters "
                        "(their UTF-8 bytes)");
  auto q = target.find('?');
  if (!decode(target.substr(0, q), false, path))
    return malformed;
  query.clear();
  if (q == std::string_view::npos)
    return std::nullopt;
  auto rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    auto pair = rest.substr(0, amp);
    auto eq = pair.find('=');
    std::string key, value;
    if (!decode(pair.substr(0, eq), true, key))
      return malformed;
    if (eq != std::string_view::npos && !decode(pair.substr(eq + 1), true, value))
      return malformed;
    if (!key.empty() && !query.emplace(key, std::move(value)).second)
      return problem(400, "query parameter `" + key + "` given more than once",
                     {{key, {"is given more than once"}}});
    if (amp == std::string_view::npos)
      break;
    rest = rest.substr(amp + 1);
  }
  return std::nullopt;
}

namespace {

/// One page of a history as part of its JSON body: the array's opening for
/// the `first` page, its closing for the last (`!page.more`).
std::string history_part(const actors::todo_history_chunk& page, bool first) {
  std::string out;
  out.reserve(16 + page.items.size() * 320); // an event with its snapshot: ~300 bytes
  if (first)
    out = "{\"items\":[";
  for (auto& it : page.items) {
    if (!first)
      out += ',';
    first = false;
    out += "{\"id\":";
    append_json_string(out, it.event.id);
    out += ",\"type\":";
    append_json_string(out, it.event.type);
    out += ",\"version\":";
    append_json_uint(out, it.event.version);
    out += ",\"position\":";
    append_json_uint(out, it.event.position);
    out += ",\"occurredAt\":";
    append_json_time(out, it.event.occurred_at_ms);
    out += ",\"snapshot\":";
    append_todo_json(out, it.state);
    out += '}';
  }
  if (!page.more)
    out += "]}";
  return out;
}

/// The body of a history longer than one page, page by page: each part is
/// one page read by a log reader when the previous part has been written.
class history_stream : public body_stream,
                       public std::enable_shared_from_this<history_stream> {
public:
  history_stream(actors::log_reader_actor reader, std::string id, actors::todo_history_chunk first)
    : reader_(std::move(reader)), id_(std::move(id)), first_(std::move(first)) {}

  void next(std::function<void(std::optional<std::string>)> done) override {
    if (!opened_) {
      opened_ = true;
      auto part = render(first_, true);
      first_ = {}; // held only until rendered
      return done(std::move(part));
    }
    auto self = shared_from_this();
    caf::anon_send(reader_, history_atom_v, id_, next_version_, through_, state_,
                   answer_to<actors::todo_history_chunk>(
                     [self, done](actors::todo_history_chunk& page) {
                       done(self->render(page, false));
                     },
                     [done](caf::error&) { done(std::nullopt); }));
  }

  bool last() const override { return last_; }

private:
  std::string render(actors::todo_history_chunk& page, bool first) {
    auto out = history_part(page, first);
    through_ = page.through;
    next_version_ += page.items.size();
    if (!page.items.empty())
      state_ = std::move(page.items.back().state);
    last_ = !page.more;
    return out;
  }

  actors::log_reader_actor reader_;
  std::string id_;
  actors::todo_history_chunk first_;
  bool opened_ = false;
  bool last_ = false;
  uint64_t next_version_ = 1;
  uint64_t through_ = 0;
  todo::state state_;
};

/// The host of an authority (`[::1]:8000` → `::1`, `LocalHost:80` → `localhost`).
std::string host_of_authority(std::string_view authority) {
  if (authority.starts_with('[')) {
    auto end = authority.find(']');
    return lower(std::string{end == std::string_view::npos ? authority
                                                           : authority.substr(1, end - 1)});
  }
  return lower(std::string{authority.substr(0, authority.find(':'))});
}

/// What names another machine in `req`: a `Host` that is not a loopback
/// host, or an `Origin` whose host is not; nullopt when neither does.
std::optional<std::string> foreign_to_loopback(const incoming& req) {
  // HTTP/1.0 may leave Host out; a browser never does.
  if (auto host = req.header("host"); !host.empty() && !is_loopback_address(host_of_authority(host)))
    return "Host `" + host + "`";
  if (auto origin = req.header("origin"); !origin.empty()) {
    auto scheme_end = origin.find("://");
    if (scheme_end == std::string::npos
        || !is_loopback_address(host_of_authority(std::string_view{origin}.substr(scheme_end + 3))))
      return "Origin `" + origin + "`";
  }
  return std::nullopt;
}

} // namespace

router::router(services& svc) : svc_(svc) {
  auto& s = svc_;
  auto mode = s.mode;
  auto uow_timeout = s.options.uow_timeout;
  auto retention = s.options.idempotency_retention_ms;

  // Sends `cmd` to todo `id`; answers 200/201 (202 when the read model does
  // not catch up in time in unit-of-work mode) or a problem.
  auto drain_timeout = s.options.drain_timeout;
  auto execute = [&s, mode, uow_timeout, drain_timeout](
                   std::string id, todo::command cmd, actors::write_conditions cond,
                   unsigned success, responder respond) {
    // Not decided and taken by the log writer within the request timeout:
    // refused unwritten, so that the answer says what happened (the session
    // waits longer for a write; see arm_deadline). A route that read first
    // (undo-to) set it when the request came.
    if (cond.deadline == std::chrono::steady_clock::time_point{})
      cond.deadline = std::chrono::steady_clock::now() + s.options.request_timeout;
    auto shard = s.registry.shard_for(id);
    auto projection = s.projection;
    auto writer = s.writer;
    auto& jobs = s.jobs;
    auto& on_drain = s.on_drain;
    auto& answers = s.answers;
    std::optional<std::string> key;
    if (cond.idempotency)
      key = cond.idempotency->key;
    // An idempotent replay answers what the first answer said (API.md §6).
    // Modes other than unit-of-work always answer `success`; there the
    // first answer's status (201, or 202 when the read model lagged) is
    // recorded with the key before it is sent (so a crash of the process
    // right after the answer cannot make a replay answer otherwise). A replay that
    // finds none recorded yet (the first request is still waiting) answers
    // when the first does and as it does; should the first be gone (a
    // restart before it answered), it waits like it, and the first of them to
    // answer records its status.
    auto on_outcome = [=, &jobs, &on_drain, &answers](const actors::write_outcome& o) {
      if (o.replayed && o.first_answer != 0)
        return respond(write_reply(o, static_cast<unsigned>(o.first_answer)));
      if (mode != projections::projection_mode::unit_of_work)
        return respond(write_reply(o, success));
      // Answered once: by its own wait on the projection, by another
      // request for the same key, or when the server starts to drain — the
      // event is durable, so 202, never 503, even while the projection is
      // stuck in PostgreSQL.
      auto answered = std::make_shared<std::atomic<bool>>(false);
      // Its drain hook, forgotten once it is answered (0: none).
      auto hook = std::make_shared<std::atomic<uint64_t>>(0);
      auto answer = [=, &on_drain](unsigned status) {
        if (answered->exchange(true))
          return false;
        if (auto id = hook->exchange(0))
          on_drain.remove(id);
        respond(write_reply(o, status));
        return true;
      };
      // What this request decided. With a key, the first status recorded
      // with it in the log (before any answer) is what the first request for
      // the event and its replays answer, here and after a restart (each may
      // otherwise decide differently, a 202 on its timeout while another saw
      // the read model catch up); replays in this process learn it from
      // `answers`. At the drain (`now`) the 202 is recorded like any status,
      // so that it yields to one a request recorded just before (which its
      // requests then all answer, as after a restart); should the log writer
      // not answer within half the drain's time (a disk stuck in an fsync),
      // the 202 goes out unrecorded rather than letting the drain's deadline
      // make it an error for a durable event.
      // The fallback holds the settling weakly: CAF's clock keeps a delayed
      // message until the actor system ends, after the server (and the
      // session an answer would reach) is gone.
      auto decide = [=, &answers, &jobs](unsigned status, bool now) {
        if (!key)
          return void(answer(status));
        auto settle = std::make_shared<std::function<void(unsigned)>>(
          [=, &answers](unsigned recorded) { answer(answers.settle(o.position, recorded).status); });
        caf::anon_send(writer, answered_atom_v, *key, uint64_t{status},
                       core::reply_to<uint64_t>{[settle, status](caf::expected<uint64_t> r) {
                         (*settle)(r ? static_cast<unsigned>(*r) : status);
                       }});
        if (now)
          jobs.run([weak = std::weak_ptr{settle}, status, drain_timeout](caf::event_based_actor* self) {
            self->delayed_send(self, drain_timeout / 2, run_atom_v,
                               core::bridge_job{[weak, status](caf::event_based_actor*) {
                                 if (auto settle = weak.lock())
                                   (*settle)(status);
                               }});
          });
      };
      uint64_t following = 0;
      if (key && o.replayed) {
        auto f = answers.follow(o.position, [answer](unsigned status) { answer(status); });
        if (f.status)
          return void(answer(*f.status));
        following = f.id;
      }
      auto done = [=, &answers](unsigned status) {
        if (following != 0)
          answers.unfollow(o.position, following);
        decide(status, false);
      };
      // Registered until the request is answered, also while its status is
      // being recorded: a disk stuck then leaves it the drain's 202, not the
      // drain deadline's 503.
      hook->store(on_drain.add([=] { decide(202, true); }));
      if (answered->load()) // by a follow, before the hook was known
        if (auto id = hook->exchange(0))
          on_drain.remove(id);
      core::bridge_job wait = [=](caf::event_based_actor* self) {
        self
          ->request(projection, uow_timeout, wait_atom_v, o.position,
                    static_cast<uint64_t>(uow_timeout.count()))
          .then([=](uint64_t) { done(success); }, [=](caf::error&) { done(202); });
      };
      // Tests only. CAF's clock holds the delayed job until it fires (or the
      // actor system ends, after the server: a test must let it fire first).
      if (o.replayed && core::failpoint_armed("uow.replay-waits-late"))
        return jobs.run([wait](caf::event_based_actor* self) {
          self->delayed_send(self, std::chrono::seconds{3}, run_atom_v, wait);
        });
      jobs.run(std::move(wait));
    };
    caf::anon_send(shard, execute_atom_v, std::move(id), std::move(cmd), std::move(cond),
                   answer_to<actors::write_outcome>(
                     on_outcome, [=](caf::error& err) { respond(problem_for(err)); }));
  };

  // Resolves a path id: canonical lowercase UUID or a 404 answer.
  auto path_id = [](const std::string& raw, responder& respond) -> std::optional<std::string> {
    auto id = core::normalize_uuid(raw);
    if (!id)
      respond(problem(404, "no todo has the id `" + raw + "` (not a UUID)"));
    return id;
  };

  // -- writes ---------------------------------------------------------------

  add("POST", "/todo", [=, &s](incoming& req, auto&, responder& respond) {
    json body;
    if (auto err = require_json_object(req, body))
      return respond(*err);
    std::string description;
    if (auto err = description_of(body, description))
      return respond(problem(400, "validation failed", {std::move(*err)}));
    if (auto err = collection_preconditions(req))
      return respond(*err);
    actors::write_conditions cond;
    if (auto key = req.headers.find("idempotency-key"); key != req.headers.end()) {
      if (req.repeated("idempotency-key"))
        return respond(problem(400, "Idempotency-Key given more than once",
                               {{"Idempotency-Key", {"must be given once"}}}));
      // Characters, not bytes.
      auto chars = todo::count_code_points(key->second);
      if (!chars)
        return respond(problem(400, "Idempotency-Key is not valid UTF-8",
                               {{"Idempotency-Key", {"must be UTF-8 text"}}}));
      if (*chars == 0 || *chars > 128)
        return respond(problem(400, "Idempotency-Key must be 1..128 characters",
                               {{"Idempotency-Key", {"must be 1..128 characters"}}}));
      // The fingerprint is of what the request means, the object without the
      // fields eventsd ignores: a retry that differs only in those is the
      // same request (and a body of just `description` hashes as it always did).
      json meaning = {{"description", description}};
      cond.idempotency = storage::idempotency_claim{key->second, fingerprint(dump(meaning)),
                                                    core::unix_ms(), retention};
    }
    auto id = core::make_uuid();
    // Named in an answer that cannot tell whether it was written; with a key,
    // the key tells (a retry replays the first attempt, whose id differs).
    if (req.written_stream && !cond.idempotency)
      *req.written_stream = "todo-" + id;
    execute(std::move(id), todo::create{std::move(description)}, std::move(cond), 201, respond);
  }, true);

  add("PUT", "/todo/change-description", [=](incoming& req, auto&, responder& respond) {
    json body;
    if (auto err = require_json_object(req, body))
      return respond(*err);
    std::vector<field_error> errors;
    std::optional<std::string> id;
    auto idv = body.find("id");
    if (idv == body.end())
      errors.push_back({"id", {"is required"}});
    else if (!idv->is_string())
      errors.push_back({"id", {"must be a string"}});
    else if (!(id = core::normalize_uuid(idv->get<std::string>())))
      errors.push_back({"id", {"must be a UUID (8-4-4-4-12 hex digits)"}});
    std::string description;
    if (auto err = description_of(body, description))
      errors.push_back(std::move(*err));
    if (!errors.empty())
      return respond(problem(400, "validation failed", std::move(errors)));
    execute(*id, todo::change_description{std::move(description)},
            conditions_of(req), 200, hinting_malformed_tags(req, respond));
  }, true);

  // The status changes: no body, one event each.
  for (auto [pattern, command] :
       {std::pair{"/todo/{id}/put-in-progress", todo::command{todo::put_in_progress{}}},
        std::pair{"/todo/{id}/done", todo::command{todo::mark_done{}}}}) {
    add("PUT", pattern, [=, command = command](incoming& req, auto& p, responder& respond) {
      auto id = path_id(p[0], respond);
      if (!id)
        return;
      if (auto err = check_unused_body(req))
        return respond(*err);
      execute(*id, command, conditions_of(req), 200, hinting_malformed_tags(req, respond));
    });
  }

  add("PUT", "/todo/{id}/undo-to/{eventId}",
      [=, &s](incoming& req, auto& p, responder& respond) {
        auto id = path_id(p[0], respond);
        if (!id)
          return;
        auto event_id = core::normalize_uuid(p[1]);
        if (!event_id)
          return respond(problem(404, "no event has the id `" + p[1] + "` (not a UUID)"));
        if (auto err = check_unused_body(req))
          return respond(*err);
        auto reader = s.log_reader();
        auto cond = conditions_of(req);
        // The deadline counts from now, not from after the read below.
        cond.deadline = std::chrono::steady_clock::now() + s.options.request_timeout;
        auto execute_undo = execute;
        auto answer = hinting_malformed_tags(req, respond);
        caf::anon_send(reader, state_at_atom_v, *id, *event_id,
                       answer_to<todo::state>(
                         [=](const todo::state& target) {
                           execute_undo(*id, todo::undo_to{*event_id, target}, cond, 200, answer);
                         },
                         [=](caf::error& err) { respond(todo_problem(err)); }));
      });

  // -- reads from the read model ----------------------------------------------

  // Brings the read model where the request asks (minPosition, or the head in
  // on-demand mode), then runs `query`.
  // A read-model error, with the position the read model had reached when
  // the error carries it (a `minPosition` wait that timed out, a todo not
  // found); without it when PostgreSQL could not be asked.
  auto read_model_problem = [](const caf::error& err) {
    auto r = problem_for(err);
    auto& ctx = err.context();
    if (ctx.size() > 1 && ctx.match_element<uint64_t>(1))
      r.header("X-Read-Model-Position", std::to_string(ctx.get_as<uint64_t>(1)));
    return r;
  };

  static constexpr uint64_t default_wait_ms = 5000;
  auto read_model = [&s, mode, read_model_problem](incoming& req, responder& respond,
                                                   std::function<void()> query) {
    uint64_t min_position = 0;
    uint64_t wait_ms = 0;
    if (auto err = query_number(req, "minPosition", 0, UINT64_MAX, 0, min_position))
      return respond(*err);
    if (min_position > static_cast<uint64_t>(INT64_MAX)) // positions are int64 (OpenAPI)
      return respond(problem(400, "query parameter `minPosition` is out of range",
                             {{"minPosition", {"must be at most 9223372036854775807"}}}));
    if (auto err = query_number(req, "waitMs", default_wait_ms, 30000, 0, wait_ms))
      return respond(*err);
    auto projection = s.projection;
    bool has_min = req.query.count("minPosition") > 0;
    if (mode != projections::projection_mode::on_demand && !has_min)
      return query();
    s.jobs.run([=](caf::event_based_actor* self) {
      auto timeout = std::chrono::milliseconds{wait_ms} + 5s;
      if (mode == projections::projection_mode::on_demand) {
        // Bringing the read model up to the log's head is part of every read
        // in this mode, not a wait for `minPosition`: it gets the default
        // wait even when `waitMs` is shorter (a position the log holds is
        // never refused for a short `waitMs`); only a `minPosition` past the
        // head waits for the writes that reach it, for `waitMs`.
        auto catch_up_ms = std::max<uint64_t>(wait_ms, default_wait_ms);
        auto catch_up_timeout = std::chrono::milliseconds{catch_up_ms} + 5s;
        self->request(projection, catch_up_timeout, catch_up_atom_v, catch_up_ms)
          .then(
            [=](uint64_t pos) {
              if (pos >= min_position) {
                query();
                return;
              }
              self->request(projection, timeout, wait_atom_v, min_position, wait_ms)
                .then([=](uint64_t) { query(); },
                      [=](caf::error& err) { respond(read_model_problem(err)); });
            },
            [=](caf::error& err) { respond(read_model_problem(err)); });
      } else {
        self->request(projection, timeout, wait_atom_v, min_position, wait_ms)
          .then([=](uint64_t) { query(); },
                [=](caf::error& err) { respond(read_model_problem(err)); });
      }
    });
  };

  add("GET", "/todo", [=, &s](incoming& req, auto&, responder& respond) {
    projections::todo_query q;
    uint64_t limit = 0;
    if (auto err = query_number(req, "limit", 100, 1000, 1, limit))
      return respond(*err);
    q.limit = limit;
    if (auto a = req.query.find("after"); a != req.query.end()) {
      if (a->second.empty() || !parse_uint(a->second))
        return respond(problem(400, "malformed cursor", {{"after", {"is not a cursor from `next`"}}}));
      q.after = a->second;
    }
    if (auto st = req.query.find("status"); st != req.query.end()) {
      if (!todo::parse_status(st->second))
        return respond(problem(400, "unknown status filter",
                               {{"status", {"must be one of Created, InProgress, Done"}}}));
      q.status = st->second;
    }
    auto reader = s.read_model_reader();
    read_model(req, respond, [=] {
      caf::anon_send(
        reader, list_atom_v, q,
        answer_to<projections::todo_page>(
          [=](const projections::todo_page& page) {
            reply r;
            r.body = "{\"items\":[";
            for (auto& row : page.items) {
              if (&row != &page.items.front())
                r.body += ',';
              append_todo_json(r.body, row);
            }
            r.body += "],\"next\":";
            if (page.next)
              append_json_string(r.body, *page.next);
            else
              r.body += "null";
            r.body += '}';
            r.header("X-Read-Model-Position", std::to_string(page.position));
            respond(std::move(r));
          },
          [=](caf::error& err) { respond(read_model_problem(err)); }));
    });
  });

  add("GET", "/todo/{id}", [=, &s](incoming& req, auto& p, responder& respond) {
    auto id = path_id(p[0], respond);
    if (!id)
      return;
    auto reader = s.read_model_reader();
    auto key = *id;
    auto cond = conditions_of(req, false);
    read_model(req, respond, [=] {
      caf::anon_send(
        reader, fetch_atom_v, key,
        answer_to<projections::todo_answer>(
          [=](const projections::todo_answer& a) {
            reply r;
            r.header("X-Read-Model-Position", std::to_string(a.position));
            if (conditional_get(cond, a.row.version, r))
              return respond(std::move(r));
            append_todo_json(r.body, a.row);
            respond(std::move(r));
          },
          [=](caf::error& err) { respond(read_model_problem(err)); }));
    });
  });

  // -- reads from the log ---------------------------------------------------

  // A history's entity tag is the version it ends at (the todo's version
  // when it was read), as GET /todo/{id}'s is the read model's version.
  add("GET", "/todo/{id}/history", [=, &s](incoming& req, auto& p, responder& respond) {
    auto id = path_id(p[0], respond);
    if (!id)
      return;
    auto cond = conditions_of(req, false);
    // A history read before and not appended to since is folded here: no
    // hop to a log reader, nothing read from RocksDB.
    if (auto cached = actors::cached_todo_history(s.log, *id)) {
      if (!cached->ok())
        return respond(todo_problem(core::make_error(cached->error())));
      reply r;
      if (!conditional_get(cond, (*cached)->through, r))
        r.body = history_part(**cached, true);
      return respond(std::move(r));
    }
    auto reader = s.log_reader();
    auto key = *id;
    auto read = [=] {
      caf::anon_send(
        reader, history_atom_v, key, uint64_t{1}, uint64_t{0}, todo::state{},
        answer_to<actors::todo_history_chunk>(
          [=](actors::todo_history_chunk& first) {
            reply r;
            if (conditional_get(cond, first.through, r))
              return respond(std::move(r));
            if (first.more) {
              // Longer than a page: sent page by page (chunked), never whole.
              r.stream = std::make_shared<history_stream>(reader, key, std::move(first));
              return respond(std::move(r));
            }
            r.body = history_part(first, true);
            respond(std::move(r));
          },
          [=](caf::error& err) { respond(todo_problem(err)); }));
    };
    if (!cond.if_match && !cond.if_none_match && !cond.if_none_match_any)
      return read();
    // A conditional read is compared with the todo's version first: its 304
    // (or 412) reads no event, however long the history (a client polling
    // a long one with If-None-Match).
    caf::anon_send(reader, version_atom_v, key,
                   answer_to<uint64_t>(
                     [=](uint64_t version) {
                       reply r;
                       if (conditional_get(cond, version, r))
                         return respond(std::move(r));
                       read();
                     },
                     [=](caf::error& err) { respond(todo_problem(err)); }));
  });

  // The state right after an event never changes; its entity tag is the
  // event's version.
  add("GET", "/todo/{id}/snapshot/{eventId}", [=, &s](incoming& req, auto& p,
                                                      responder& respond) {
    auto id = path_id(p[0], respond);
    if (!id)
      return;
    auto cond = conditions_of(req, false);
    auto event_id = core::normalize_uuid(p[1]);
    if (!event_id)
      return respond(problem(404, "no event has the id `" + p[1] + "` (not a UUID)"));
    // As for the history: an event of a cached stream is folded here.
    if (auto cached = actors::cached_todo_state_at(s.log, *id, *event_id)) {
      if (!cached->ok())
        return respond(todo_problem(core::make_error(cached->error())));
      reply r;
      if (!conditional_get(cond, (*cached)->version, r))
        append_todo_json(r.body, **cached);
      return respond(std::move(r));
    }
    auto reader = s.log_reader();
    auto key = *id;
    auto ev = *event_id;
    caf::anon_send(reader, state_at_atom_v, key, ev,
                   answer_to<todo::state>(
                     [=](const todo::state& st) {
                       reply r;
                       if (!conditional_get(cond, st.version, r))
                         append_todo_json(r.body, st);
                       respond(std::move(r));
                     },
                     [=](caf::error& err) { respond(todo_problem(err)); }));
  });

  // One stream, or `$all` (its own route: so it is in the metrics too).
  auto read_stream = [=, &s](incoming& req, auto& p, responder& respond) {
    uint64_t from = 0, limit = 0;
    if (auto err = query_number(req, "from", 1, UINT64_MAX, 0, from))
      return respond(*err);
    if (auto err = query_number(req, "limit", 100, 1000, 1, limit))
      return respond(*err);
    from = std::max<uint64_t>(from, 1);
    auto reader = s.log_reader();
    auto stream = p.empty() ? std::string{"$all"} : p[0];
    // `<type>-<uuid>` in any letter case names the stream of that id (API §6).
    if (auto dash = stream.find('-'); dash != std::string::npos)
      if (auto id = core::normalize_uuid(stream.substr(dash + 1)))
        stream = stream.substr(0, dash + 1) + *id;
    bool all = stream == "$all";
    auto cond = conditions_of(req, false);
    // A page's entity tag is the last version (position, for `$all`) it was
    // read through, its look-ahead event included, or from - 1 when empty:
    // events are never changed or removed, so the page at this from and limit
    // changes exactly when that number does (a poll at the tail gets 304s
    // until something is appended).
    auto render = [=](std::span<const storage::recorded_event> events) {
      reply r;
      uint64_t through = events.empty() ? from - 1
                         : all          ? events.back().position
                                        : events.back().version;
      if (conditional_get(cond, through, r))
        return respond(std::move(r));
      r.body = "{\"items\":[";
      size_t n = std::min<size_t>(events.size(), limit);
      for (size_t i = 0; i < n; ++i) {
        if (i > 0)
          r.body += ',';
        append_event_json(r.body, events[i]);
      }
      r.body += "],\"next\":";
      if (events.size() > limit)
        append_json_uint(r.body, all ? events[limit].position : events[limit].version);
      else
        r.body += "null";
      r.body += '}';
      respond(std::move(r));
    };
    // As for a history: a stream read before and not appended to since is
    // answered here (the cache holds whole streams, version v at v - 1).
    if (!all)
      if (auto cached = s.log.cached_stream(stream)) {
        auto rest = std::span<const storage::recorded_event>{*cached}.subspan(
          std::min<uint64_t>(from - 1, cached->size()));
        return render(rest.first(std::min<uint64_t>(limit + 1, rest.size())));
      }
    auto on_error = [=](caf::error& err) { respond(problem_for(err)); };
    auto done = answer_to<actors::recorded_events>(render, on_error);
    if (all)
      caf::anon_send(reader, all_atom_v, from, limit + 1, done);
    else
      caf::anon_send(reader, stream_atom_v, stream, from, limit + 1, done);
  };
  add("GET", "/streams/$all", read_stream);
  add("GET", "/streams/{streamId}", read_stream);

  add("GET", "/streams", [=, &s](incoming& req, auto&, responder& respond) {
    uint64_t before = 0, limit = 0;
    if (auto err = query_number(req, "before", 0, UINT64_MAX, 0, before))
      return respond(*err);
    if (auto err = query_number(req, "limit", 50, 1000, 1, limit))
      return respond(*err);
    auto reader = s.log_reader();
    caf::anon_send(
      reader, streams_atom_v, before, limit + 1,
      answer_to<actors::stream_summaries>(
          [=](const actors::stream_summaries& list) {
            json items = json::array();
            size_t n = std::min<size_t>(list.size(), limit);
            for (size_t i = 0; i < n; ++i)
              items.push_back({{"stream", list[i].stream},
                               {"version", list[i].version},
                               {"lastPosition", list[i].last_position}});
            json next = nullptr;
            if (list.size() > limit)
              next = list[limit - 1].last_position;
            respond(json_reply(200, {{"items", std::move(items)}, {"next", next}}));
          },
          [=](caf::error& err) { respond(problem_for(err)); }));
  });

  // GET of the SSE route is served by the session (router::is_subscription);
  // registered here for 405 and for HEAD, which gets the stream's headers
  // (or the 400 a GET would get).
  add("GET", "/subscribe/$all", [](incoming& req, auto&, responder& respond) {
    uint64_t from = 0;
    if (auto bad = subscription_start(req, from))
      return respond(std::move(*bad));
    reply r;
    r.content_type = "text/event-stream";
    r.header("Cache-Control", "no-cache");
    r.header("X-Accel-Buffering", "no");
    respond(std::move(r));
  });

  // -- operations -------------------------------------------------------------

  add("GET", "/healthz", [](incoming&, auto&, responder& respond) {
    respond(json_reply(200, {{"status", "ok"}}));
  });

  add("GET", "/readyz", [=, &s](incoming&, auto&, responder& respond) {
    auto projection = s.projection;
    auto* log = &s.log;
    auto* svc = &s;
    s.jobs.run([=](caf::event_based_actor* self) {
      // The projection answers within 3 s, from what it knows when PostgreSQL
      // holds its worker in a statement.
      self->request(projection, 5s, stats_atom_v)
        .then(
          [=](const projections::projection_status& st) {
            // A write waiting this long means a disk that does not complete
            // them (an fsync takes milliseconds): not ready, before any fails.
            auto waiting = log->write_waiting();
            const bool stalled = waiting > 2s;
            // A store that recovers after each failed write and fails the next
            // (a full disk under load) is not ready either.
            auto failed = log->since_write_failure();
            const bool writable = log->writable() && !stalled && !(failed && *failed < 5s);
            const char* store = stalled ? "stalled" : writable ? "open" : "not writable";
            // Stuck: the projection is inside a statement or a connection
            // attempt that has had no answer for seconds (a lock, a stopped
            // server): not the same as a refused or failed connection.
            const char* postgres = st.stuck       ? "not answering"
                                   : st.connected ? "reachable"
                                                  : "unreachable";
            const char* read_model = st.diverged    ? "diverged"
                                     : st.connected ? "ok"
                                                    : "unknown";
            // Reads go to the readers that connect; none connecting is not ready.
            auto readers = svc->read_model_readers.size();
            auto failing = svc->failing_read_model_readers();
            const bool readers_ok = readers == 0 || failing < readers;
            // A reader learns that PostgreSQL is gone at its next read: "ok"
            // only while PostgreSQL is reachable and one has connected.
            std::string reader_check
              = failing > 0 ? std::to_string(failing) + " of " + std::to_string(readers)
                                + " cannot connect"
              : !st.connected || svc->no_read_model_reader_connected_yet() ? "unknown"
                                                                          : "ok";
            json checks{{"eventStore", store},
                        {"postgres", postgres},
                        {"readModel", read_model},
                        {"readModelReaders", reader_check}};
            if (writable && st.connected && !st.diverged && readers_ok) {
              // The checks also under `checks`, where a 503 has them.
              auto ready = checks;
              ready["status"] = "ready";
              ready["checks"] = std::move(checks);
              return respond(json_reply(200, ready));
            }
            std::string why;
            auto also = [&why](const std::string& reason) {
              why += (why.empty() ? "" : "; ") + reason;
            };
            if (stalled)
              why = "a write to the event store has been waiting " + std::to_string(waiting.count())
                    + " ms for the disk";
            else if (log->read_only())
              why = "the event store is open read-only: its disk was full when eventsd "
                    "started; free space and restart eventsd";
            else if (!writable)
              why = "the event store is not writable (a write failed "
                    + std::to_string(failed ? failed->count() : 0)
                    + " ms ago; ready again 5 s after the last failure once it recovers, "
                      "retried every second)";
            // PostgreSQL's words name hosts, ports and users: for the log and
            // the admin routes only.
            if (st.stuck || (st.connected && st.diverged))
              also(st.last_error);
            else if (!st.connected)
              also("PostgreSQL is not reachable (the reason is in eventsd's log and GET "
                   "/admin/projections)");
            if (!readers_ok)
              also("no read-model reader can connect to PostgreSQL (the reason is in eventsd's "
                   "log)");
            auto r = unavailable(why, "5"); // as often as a probe would ask
            auto j = json::parse(r.body);
            j["checks"] = std::move(checks);
            r.body = dump(j);
            respond(std::move(r));
          },
          [=](caf::error&) {
            respond(unavailable("the projection did not answer (busy with PostgreSQL)", "5"));
          });
    });
  });

  add("GET", "/metrics", [&s](incoming&, auto&, responder& respond) {
    reply r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = core::metrics::instance().render();
    auto cache = s.log.stream_cache_statistics();
    core::append_metric(r.body, "eventsd_stream_cache_hits_total", "counter",
                        "Stream reads (histories) answered from the stream cache.", cache.hits);
    core::append_metric(r.body, "eventsd_stream_cache_misses_total", "counter",
                        "Stream reads (histories) that went to RocksDB and filled the stream "
                        "cache.",
                        cache.misses);
    core::append_metric(r.body, "eventsd_stream_cache_streams", "gauge",
                        "Streams held by the stream cache.", cache.streams);
    core::append_metric(r.body, "eventsd_stream_cache_bytes", "gauge",
                        "Estimated size of the streams held by the stream cache.", cache.bytes);
    respond(std::move(r));
  });

  // -- admin ------------------------------------------------------------------

  auto authorized = [&s](incoming& req, responder& respond) {
    auto& token = s.options.admin_token;
    if (token.empty()) {
      if (!is_loopback_address(s.options.address)) {
        respond(problem(403, "admin routes are disabled: the server listens on a "
                             "non-loopback address without --http.admin-token"));
        return false;
      }
      // Open to this machine only: not to a web page of another origin in a
      // browser here (a blind POST needs no CORS preflight), nor to a DNS
      // name an attacker rebound to 127.0.0.1, nor to a proxy forwarding
      // another host's requests.
      if (auto foreign = foreign_to_loopback(req)) {
        respond(problem(403, "admin routes without --http.admin-token answer only requests to "
                             "a loopback host from no other origin; this one has "
                             + *foreign));
        return false;
      }
      return true;
    }
    auto h = req.header("authorization");
    // The scheme name is case-insensitive (RFC 9110 §11.1) and followed by
    // one or more spaces (§11.4).
    const std::string prefix = "bearer ";
    auto credentials = h.find_first_not_of(' ', prefix.size());
    bool ok = credentials != std::string::npos && lower(h.substr(0, prefix.size())) == prefix
              && constant_time_equal(h.substr(credentials), token);
    if (!ok) {
      auto r = problem(401, "admin routes need Authorization: Bearer <token>");
      r.header("WWW-Authenticate", "Bearer");
      respond(std::move(r));
    }
    return ok;
  };

  add("GET", "/admin/projections", [=, &s](incoming& req, auto&, responder& respond) {
    if (!authorized(req, respond))
      return;
    auto projection = s.projection;
    s.jobs.run([=](caf::event_based_actor* self) {
      self->request(projection, 5s, stats_atom_v)
        .then(
          [=](const projections::projection_status& st) {
            json item{{"name", st.name},
                      {"mode", st.mode},
                      {"state", st.state},
                      // Unknown (null) until PostgreSQL has been reached once.
                      {"position", st.position_known ? json(st.position) : json(nullptr)},
                      {"head", st.head},
                      {"lag", st.position_known
                                ? json(st.head > st.position ? st.head - st.position : 0)
                                : json(nullptr)},
                      {"lagMs", st.position_known ? json(st.lag_ms) : json(nullptr)},
                      {"connected", st.connected},
                      {"lastError", st.last_error.empty() ? json(nullptr) : json(st.last_error)},
                      {"rebuild",
                       {{"active", st.rebuilding},
                        {"position", st.rebuild_position},
                        {"head", st.rebuild_head},
                        {"completed", st.rebuilds_completed}}}};
            respond(json_reply(200, {{"items", json::array({item})}}));
          },
          [=](caf::error& err) {
            respond(unavailable("projection busy: " + caf::to_string(err)));
          });
    });
  });

  add("POST", "/admin/projections/{name}/rebuild",
      [=, &s](incoming& req, auto& p, responder& respond) {
        if (!authorized(req, respond))
          return;
        if (p[0] != "todos")
          return respond(problem(404, "no projection named `" + p[0] + "`"));
        if (auto err = check_unused_body(req))
          return respond(*err);
        auto projection = s.projection;
        s.jobs.run([=](caf::event_based_actor* self) {
          self->request(projection, 10s, rebuild_atom_v)
            .then(
              [=](bool started) {
                if (!started)
                  return respond(problem(409, "a rebuild of `todos` is already running"));
                auto r = json_reply(202, {{"name", "todos"}, {"status", "rebuilding"}});
                r.header("Location", "/admin/projections");
                respond(std::move(r));
              },
              [=](caf::error& err) { respond(problem_for(err)); });
        });
      });

  // -- documents and pages ----------------------------------------------------

  auto files = std::make_shared<static_files>(s.options.static_dir);
  // `no-cache` with an entity tag: a browser asks each time (a new binary
  // may serve new files) and is answered 304 while its copy is current. No
  // other site may frame the pages (the event browser's buttons append
  // events: a framing page could have them clicked), nor may a browser
  // take a file for another type than it is served as. The two pages load
  // scripts, styles and images from this server only (images also as
  // data: URLs), so that a text of the log, were it ever put in a page as
  // markup, could load nothing and send nothing elsewhere; Swagger UI sets
  // styles inline. Each page has its policy at its own path and as a file.
  static constexpr const char* ui_policy =
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'";
  static constexpr const char* swagger_policy =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
  auto serve = [files](const incoming& req, const std::string& path, responder& respond) {
    if (auto f = files->find(path)) {
      reply r;
      r.header("Cache-Control", "no-cache");
      r.header("X-Frame-Options", "DENY");
      auto policy = path == "ui/index.html"        ? ui_policy
                    : path == "swagger/index.html" ? swagger_policy
                                                   : "frame-ancestors 'none'";
      r.header("Content-Security-Policy", policy);
      r.header("X-Content-Type-Options", "nosniff");
      if (conditional_get(conditions_of(req, false), f->tag, r))
        return respond(std::move(r));
      r.content_type = f->content_type;
      r.body = f->body;
      return respond(std::move(r));
    }
    respond(problem(404, "no such file: " + path));
  };
  add("GET", "/openapi.json", [serve](incoming& req, auto&, responder& respond) {
    serve(req, "openapi.json", respond);
  });
  // The pages answer with and without a trailing slash, as a browser's user
  // would type them (their assets' paths are absolute).
  for (const char* page : {"/swagger", "/swagger/"})
    add("GET", page, [serve](incoming& req, auto&, responder& respond) {
      serve(req, "swagger/index.html", respond);
    });
  add("GET", "/swagger/{file}", [serve](incoming& req, auto& p, responder& respond) {
    serve(req, "swagger/" + p[0], respond);
  });
  for (const char* page : {"/ui", "/ui/"})
    add("GET", page, [serve](incoming& req, auto&, responder& respond) {
      serve(req, "ui/index.html", respond);
    });
  add("GET", "/ui/{file}", [serve](incoming& req, auto& p, responder& respond) {
    serve(req, "ui/" + p[0], respond);
  });
}

namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> out;
  if (path.empty() || path[0] != '/')
    return out;
  size_t start = 1;
  for (;;) {
    auto slash = path.find('/', start);
    out.push_back(path.substr(start, slash - start));
    if (slash == std::string::npos)
      break;
    start = slash + 1;
  }
  return out;
}

/// Matches `segments` against a route; literal segments must be equal,
/// `{x}` segments must be non-empty and are captured.
bool match(const std::vector<std::string>& pattern, const std::vector<std::string>& segments,
           std::vector<std::string>& params, int& literals) {
  if (pattern.size() != segments.size())
    return false;
  params.clear();
  literals = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    auto& p = pattern[i];
    if (!p.empty() && p.front() == '{') {
      if (segments[i].empty())
        return false;
      params.push_back(segments[i]);
    } else if (p != segments[i]) {
      return false;
    } else {
      ++literals;
    }
  }
  return true;
}

/// False when a segment in the place of `{id}` or `{eventId}` is no UUID:
/// that route is not one of the path's methods (for `Allow`).
bool ids_are_uuids(const std::vector<std::string>& pattern, const std::vector<std::string>& params) {
  size_t param = 0;
  for (auto& p : pattern) {
    if (p.empty() || p.front() != '{')
      continue;
    if ((p == "{id}" || p == "{eventId}") && !core::normalize_uuid(params[param]))
      return false;
    ++param;
  }
  return true;
}

} // namespace

void router::add(std::string method, std::string pattern, handler fn, bool json_body) {
  auto segments = split_path(pattern); // as the request's path is split
  routes_.push_back(route{std::move(method), std::move(pattern), std::move(segments),
                          std::move(fn), json_body});
}

bool router::is_subscription(const incoming& req) const {
  return req.method == "GET" && req.path == "/subscribe/$all";
}

const router::route* router::find(const std::string& method, const std::string& path,
                                  std::vector<std::string>& best_params,
                                  std::vector<std::string>& allowed) const {
  auto segments = split_path(path);
  const route* best = nullptr;
  int best_literals = -1;
  int allowed_literals = -1;
  std::vector<std::string> params;
  for (auto& r : routes_) {
    int literals = 0;
    if (!match(r.segments, segments, params, literals))
      continue;
    if (r.method == method || (method == "HEAD" && r.method == "GET")) {
      if (literals > best_literals) {
        best = &r;
        best_literals = literals;
        best_params = params;
      }
    } else if (ids_are_uuids(r.segments, params)) {
      allowed_literals = std::max(allowed_literals, literals);
      if (std::find(allowed.begin(), allowed.end(), r.method) == allowed.end())
        allowed.push_back(r.method);
    }
  }
  // `GET /todo/change-description` names the path of a PUT route, not a todo
  // whose id is malformed: a 405, as for any other method on that path.
  if (best && allowed_literals > best_literals && !ids_are_uuids(best->segments, best_params))
    return nullptr;
  return best;
}

std::string router::pattern_of(const std::string& method, std::string_view target) const {
  std::string path;
  std::map<std::string, std::string> query;
  if (parse_target(target, path, query))
    return "unmatched";
  std::vector<std::string> params, allowed;
  auto* r = find(method, path, params, allowed);
  return r ? r->pattern : "unmatched";
}

std::string router::handle(incoming req, responder respond) {
  std::vector<std::string> best_params, allowed;
  if (req.target == "*") {
    // `OPTIONS *` asks about the server itself (RFC 9110 §9.3.7): every
    // method it serves somewhere.
    if (req.method != "OPTIONS") {
      respond(problem(400, "the request target `*` is for OPTIONS only"));
      return "unmatched";
    }
    for (auto& r : routes_)
      if (std::find(allowed.begin(), allowed.end(), r.method) == allowed.end())
        allowed.push_back(r.method);
  } else if (const route* best = find(req.method, req.path, best_params, allowed)) {
    // (The event stream's GET is the session's; its HEAD answers as that GET.)
    if ((req.method == "GET" || req.method == "HEAD") && req.path != "/subscribe/$all")
      respond = hinting_malformed_tags(req, preconditions_without_tag(req, std::move(respond)),
                                       true);
    best->fn(req, best_params, respond);
    return best->pattern;
  }
  auto [r, pattern] = unrouted(req, std::move(allowed));
  respond(std::move(r));
  return pattern;
}

std::pair<reply, std::string> router::unrouted(const incoming& req,
                                               std::vector<std::string> allowed) const {
  if (allowed.empty())
    return {problem(404, "no route for " + req.method + " " + req.path), "unmatched"};
  if (std::find(allowed.begin(), allowed.end(), "GET") != allowed.end())
    allowed.push_back("HEAD");
  allowed.push_back("OPTIONS");
  std::string allow;
  for (auto& m : allowed)
    allow += (allow.empty() ? "" : ", ") + m;
  if (req.method == "OPTIONS") {
    reply r;
    r.status = 204;
    r.content_type.clear();
    r.header("Allow", allow);
    return {std::move(r), "options"};
  }
  auto r = problem(405, "method " + req.method + " is not allowed on " + req.path);
  r.header("Allow", allow);
  return {std::move(r), "method-not-allowed"};
}

std::optional<std::pair<reply, std::string>>
router::refusal_before_body(const incoming& req) const {
  if (req.target == "*")
    return std::nullopt; // OPTIONS' answer (or the 400 of another method)
  std::vector<std::string> params, allowed;
  if (auto* r = find(req.method, req.path, params, allowed)) {
    if (auto err = r->json_body ? json_content_type_problem(req) : std::nullopt)
      return std::pair{std::move(*err), r->pattern};
    return std::nullopt;
  }
  return unrouted(req, std::move(allowed));
}

bool is_loopback_address(const std::string& address) {
  if (address == "localhost")
    return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, address.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  auto unzoned = address.substr(0, address.find('%'));
  if (::inet_pton(AF_INET6, unzoned.c_str(), &v6) != 1)
    return false;
  return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
}

std::optional<reply> subscription_start(const incoming& req, uint64_t& from) {
  auto bad = [](const char* field) {
    return problem(400, std::string{"`"} + field + "` must be a non-negative integer",
                   {{field, {"must be a non-negative integer"}}});
  };
  from = 1;
  // As `from` of GET /streams/$all: a number past any position is no
  // error; it just selects no events (parse_count saturates).
  if (auto f = req.query.find("from"); f != req.query.end()) {
    auto n = parse_count(f->second);
    if (!n)
      return bad("from");
    from = std::max<uint64_t>(1, *n);
  }
  if (auto last = req.header("last-event-id"); !last.empty()) {
    auto n = parse_count(last);
    if (!n)
      return bad("Last-Event-ID");
    from = *n == UINT64_MAX ? *n : *n + 1;
  }
  return std::nullopt;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Compare every byte of the longer input so timing does not reveal where
  // (or whether early) the strings differ.
  size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

} // namespace eventsd::http
