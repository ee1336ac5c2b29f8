#include "actors/todo.hpp"

namespace eventsd::todo {

namespace {

template <class... Fs>
struct overload : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
overload(Fs...) -> overload<Fs...>;

rejection not_found() {
  return {todo_errc::not_found, "", "todo not found"};
}

} // namespace

std::string_view to_string(status x) {
  switch (x) {
    case status::created:
      return "Created";
    case status::in_progress:
      return "InProgress";
    case status::done:
      return "Done";
  }
  return "Created";
}

std::optional<status> parse_status(std::string_view name) {
  if (name == "Created")
    return status::created;
  if (name == "InProgress")
    return status::in_progress;
  if (name == "Done")
    return status::done;
  return std::nullopt;
}

std::string_view type_name(const event& e) {
  return std::visit(overload{
                      [](const created&) { return std::string_view{"created"}; },
                      [](const description_changed&) {
                        return std::string_view{"description-changed"};
                      },
                      [](const status_changed_to_in_progress&) {
                        return std::string_view{"status-changed-to-in-progress"};
                      },
                      [](const status_changed_to_done&) {
                        return std::string_view{"status-changed-to-done"};
                      },
                      [](const undone_to&) {
                        return std::string_view{"undo-to-some-history-state"};
                      },
                    },
                    e);
}

const char* to_string(todo_errc x) {
  switch (x) {
    case todo_errc::invalid_description:
      return "invalid_description";
    case todo_errc::not_found:
      return "not_found";
    case todo_errc::already_exists:
      return "already_exists";
    case todo_errc::unknown_event:
      return "unknown_event";
  }
  return "unknown";
}

std::optional<size_t> count_code_points(std::string_view s) {
  size_t count = 0;
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return std::nullopt;
    }
    if (i + len > s.size())
      return std::nullopt;
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80)
        return std::nullopt;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
        || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return std::nullopt;
    i += len;
    ++count;
  }
  return count;
}

std::optional<rejection> validate_description(std::string_view description) {
  auto n = count_code_points(description);
  if (!n)
    return rejection{todo_errc::invalid_description, "description",
                     "must be valid UTF-8"};
  if (description.find('\0') != std::string_view::npos)
    return rejection{todo_errc::invalid_description, "description",
                     "must not contain U+0000"};
  if (*n < min_description || *n > max_description)
    return rejection{todo_errc::invalid_description, "description",
                     "must be between 2 and 255 characters long (got "
                       + std::to_string(*n) + ")"};
  return std::nullopt;
}

decision decide(const state& current, const command& cmd) {
  return std::visit(
    overload{
      [&](const create& c) -> decision {
        if (current.exists())
          return rejection{todo_errc::already_exists, "id", "todo already exists"};
        if (auto r = validate_description(c.description))
          return *r;
        return created{c.description};
      },
      [&](const change_description& c) -> decision {
        if (!current.exists())
          return not_found();
        if (auto r = validate_description(c.description))
          return *r;
        return description_changed{c.description};
      },
      [&](const put_in_progress&) -> decision {
        if (!current.exists())
          return not_found();
        return status_changed_to_in_progress{};
      },
      [&](const mark_done&) -> decision {
        if (!current.exists())
          return not_found();
        return status_changed_to_done{};
      },
      [&](const undo_to& c) -> decision {
        if (!current.exists())
          return not_found();
        if (c.target.id != current.id || !c.target.exists()
            || c.target.version > current.version)
          return rejection{todo_errc::unknown_event, "eventId",
                           "event does not belong to this todo"};
        return undone_to{c.event_id, c.target.version, c.target.description,
                         c.target.status};
      },
    },
    cmd);
}

state evolve(state current, const event& e) {
  std::visit(overload{
               [&](const created& x) {
                 current.description = x.description;
                 current.status = status::created;
               },
               [&](const description_changed& x) { current.description = x.description; },
               [&](const status_changed_to_in_progress&) {
                 current.status = status::in_progress;
               },
               [&](const status_changed_to_done&) { current.status = status::done; },
               [&](const undone_to& x) {
                 current.description = x.description;
                 current.status = x.status;
               },
             },
             e);
  ++current.version;
  return current;
}

} // namespace eventsd::todo
