#include "http_support.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <thread>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace eventsd::http_tests {

using namespace std::chrono_literals;
using eventsd::e2e::is_canonical_uuid;
using eventsd::e2e::is_rfc3339_ms_utc;
using eventsd::e2e::lower;

// -- checks -----------------------------------------------------------------------

std::string media_type(const response& r) {
  auto t = lower(r.header("Content-Type").value_or(""));
  t = t.substr(0, t.find(';'));
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t'))
    t.pop_back();
  return t;
}

void check_problem(const response& r, unsigned status) {
  INFO("answer " << r.status << ": " << r.body);
  CHECK(r.status == status);
  CHECK(media_type(r) == "application/problem+json");
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j.value("status", 0u) == status);
  CHECK(j.value("type", json{}).is_string());
  CHECK_FALSE(j.value("type", std::string{}).empty());
  CHECK_FALSE(j.value("title", std::string{}).empty());
  CHECK_FALSE(j.value("detail", std::string{}).empty());
}

void check_event_shape(const json& e) {
  INFO("event: " << e.dump());
  REQUIRE(e.is_object());
  CHECK(e.size() == 7);
  for (auto key : {"id", "stream", "type", "version", "position", "occurredAt", "data"})
    CHECK(e.contains(key));
  CHECK(e.value("id", json{}).is_string());
  CHECK(is_canonical_uuid(e.value("id", std::string{})));
  CHECK(e.value("stream", json{}).is_string());
  CHECK_FALSE(e.value("stream", std::string{}).empty());
  CHECK(e.value("type", json{}).is_string());
  CHECK_FALSE(e.value("type", std::string{}).empty());
  CHECK(e.value("version", json{}).is_number_unsigned());
  CHECK(e.value("version", 0u) >= 1);
  CHECK(e.value("position", json{}).is_number_unsigned());
  CHECK(e.value("position", 0u) >= 1);
  CHECK(is_rfc3339_ms_utc(e.value("occurredAt", std::string{})));
  CHECK(e.value("data", json{}).is_object());
}

// -- sse_client --------------------------------------------------------------------

sse_client::sse_client(uint16_t port, const std::string& target)
    : sse_client(port, target, options{}) {}

sse_client::sse_client(uint16_t port, const std::string& target, options opts)
    : fd_(eventsd::e2e::connect_loopback(port, opts.receive_buffer)) {
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port)
                    + "\r\nAccept: text/event-stream\r\n";
  for (auto& [k, v] : opts.headers)
    req += k + ": " + v + "\r\n";
  req += "\r\n";
  size_t sent = 0;
  while (sent < req.size()) {
    auto n = ::send(fd_, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      throw std::runtime_error(std::string{"cannot send the request: "} + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
}

sse_client::~sse_client() {
  if (fd_ >= 0)
    ::close(fd_);
}

void sse_client::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  ended_ = true;
}

void sse_client::reset() {
  if (fd_ >= 0) {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }
  ended_ = true;
}

/// Reads once (waiting until `deadline`); false when nothing was read.
bool sse_client::fill(std::chrono::steady_clock::time_point deadline) {
  if (fd_ < 0 || ended_)
    return false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    char buf[65536];
    auto r = ::recv(fd_, buf, sizeof buf, 0);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (r <= 0) {
      ended_ = true;
      parse();
      return false;
    }
    raw_.append(buf, static_cast<size_t>(r));
    parse();
    return true;
  }
}

void sse_client::parse() {
  if (!head_) {
    auto end = raw_.find("\r\n\r\n");
    if (end == std::string::npos)
      return;
    auto head_text = raw_.substr(0, end + 4);
    head_ = eventsd::e2e::parse_response(head_text);
    raw_.erase(0, end + 4);
    auto te = lower(head_->header("Transfer-Encoding").value_or(""));
    chunked_ = te.find("chunked") != std::string::npos;
    if (auto cl = head_->header("Content-Length"); cl && !chunked_) {
      has_length_ = true;
      content_length_ = std::stoul(*cl);
    }
    streaming_ = head_->status == 200
                 && lower(head_->header("Content-Type").value_or("")).rfind("text/event-stream", 0)
                      == 0;
  }
  // De-frame the body.
  if (chunked_) {
    for (;;) {
      auto eol = raw_.find("\r\n");
      if (eol == std::string::npos)
        break;
      size_t size = std::stoul(raw_.substr(0, eol), nullptr, 16);
      if (raw_.size() < eol + 2 + size + 2)
        break;
      body_.append(raw_, eol + 2, size);
      raw_.erase(0, eol + 2 + size + 2);
      if (size == 0) {
        ended_ = true;
        break;
      }
    }
  } else {
    body_ += raw_;
    raw_.clear();
  }
  if (!streaming_) {
    // A plain answer (e.g. a 400 problem): keep it as the head's body.
    if (has_length_ && body_.size() >= content_length_) {
      head_->body = body_.substr(0, content_length_);
    } else {
      head_->body = body_;
    }
    return;
  }
  parse_lines();
}

void sse_client::parse_lines() {
  for (;;) {
    auto eol = body_.find('\n');
    if (eol == std::string::npos)
      return;
    std::string line = body_.substr(0, eol);
    body_.erase(0, eol + 1);
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    if (line.empty()) {
      if (!cur_data_.empty()) {
        sse_message m;
        m.id = cur_id_;
        m.event = cur_event_;
        for (size_t i = 0; i < cur_data_.size(); ++i)
          m.data += (i ? "\n" : "") + cur_data_[i];
        ready_.push_back(std::move(m));
      }
      cur_id_.reset();
      cur_event_.clear();
      cur_data_.clear();
      continue;
    }
    if (line[0] == ':') {
      auto text = line.substr(1);
      if (!text.empty() && text[0] == ' ')
        text.erase(0, 1);
      comments_.push_back(text);
      continue;
    }
    auto colon = line.find(':');
    std::string field = line.substr(0, colon);
    std::string value = colon == std::string::npos ? std::string{} : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ')
      value.erase(0, 1);
    if (field == "data")
      cur_data_.push_back(value);
    else if (field == "id")
      cur_id_ = value;
    else if (field == "event")
      cur_event_ = value;
  }
}

const response& sse_client::head(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!head_ && !ended_ && std::chrono::steady_clock::now() < deadline)
    fill(deadline);
  if (!head_)
    throw std::runtime_error("no SSE response head within " + std::to_string(timeout.count())
                             + " ms; received: `" + raw_.substr(0, 300) + "`");
  // A plain answer: wait for its whole body.
  if (!streaming_ && has_length_)
    while (body_.size() < content_length_ && !ended_ && std::chrono::steady_clock::now() < deadline)
      fill(deadline);
  return *head_;
}

std::optional<sse_message> sse_client::next(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (ready_.empty() && !ended_ && std::chrono::steady_clock::now() < deadline)
    fill(deadline);
  if (ready_.empty())
    return std::nullopt;
  auto m = std::move(ready_.front());
  ready_.pop_front();
  return m;
}

void sse_client::pump(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ended_ && std::chrono::steady_clock::now() < deadline)
    fill(deadline);
}

// -- Prometheus --------------------------------------------------------------------

std::vector<prom_sample> prom_exposition::find(
  const std::string& name, const std::map<std::string, std::string>& labels) const {
  std::vector<prom_sample> out;
  for (auto& s : samples) {
    if (s.name != name)
      continue;
    bool ok = true;
    for (auto& [k, v] : labels) {
      auto i = s.labels.find(k);
      if (i == s.labels.end() || i->second != v) {
        ok = false;
        break;
      }
    }
    if (ok)
      out.push_back(s);
  }
  return out;
}

double prom_exposition::value(const std::string& name,
                              const std::map<std::string, std::string>& labels) const {
  auto found = find(name, labels);
  if (found.size() != 1)
    throw std::runtime_error("expected one sample " + name + " with the given labels, found "
                             + std::to_string(found.size()));
  return found.front().value;
}

prom_exposition parse_prometheus(const std::string& text) {
  prom_exposition out;
  size_t pos = 0;
  int lineno = 0;
  while (pos < text.size()) {
    auto eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol == std::string::npos ? text.size() : eol + 1;
    ++lineno;
    auto bad = [&](const std::string& why) {
      return std::runtime_error("metrics line " + std::to_string(lineno) + " (" + why + "): `"
                                + line + "`");
    };
    if (line.empty())
      continue;
    if (line[0] == '#') {
      // "# TYPE name type" / "# HELP name text"; other comments are allowed.
      if (line.rfind("# TYPE ", 0) == 0 || line.rfind("# HELP ", 0) == 0) {
        auto rest = line.substr(7);
        auto sp = rest.find(' ');
        if (sp == std::string::npos)
          throw bad("TYPE/HELP without a value");
        auto name = rest.substr(0, sp);
        auto value = rest.substr(sp + 1);
        if (line[2] == 'T')
          out.types[name] = value;
        else
          out.help[name] = value;
      }
      continue;
    }
    prom_sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ')
      ++i;
    s.name = line.substr(0, i);
    if (s.name.empty())
      throw bad("no metric name");
    if (i < line.size() && line[i] == '{') {
      ++i;
      for (;;) {
        if (i >= line.size())
          throw bad("unterminated labels");
        if (line[i] == '}') {
          ++i;
          break;
        }
        auto eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"')
          throw bad("label without =\"");
        auto key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        if (j >= line.size())
          throw bad("unterminated label value");
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',')
          ++i;
      }
    }
    if (i >= line.size() || line[i] != ' ')
      throw bad("no value");
    auto value = line.substr(i + 1);
    auto sp = value.find(' ');
    if (sp != std::string::npos)
      value = value.substr(0, sp); // a timestamp may follow
    if (value == "+Inf")
      s.value = std::numeric_limits<double>::infinity();
    else if (value == "-Inf")
      s.value = -std::numeric_limits<double>::infinity();
    else if (value == "NaN")
      s.value = std::numeric_limits<double>::quiet_NaN();
    else {
      char* end = nullptr;
      s.value = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0')
        throw bad("value is not a number");
    }
    out.samples.push_back(std::move(s));
  }
  return out;
}

// -- other helpers -------------------------------------------------------------------

std::string require_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0')
    throw std::runtime_error(std::string{name}
                             + " is not set: run this test through ctest (tests/http/CMakeLists.txt "
                               "sets it)");
  return v;
}

std::string write_temp_file(const eventsd::e2e::temp_dir& dir, const std::string& name,
                            const std::string& text) {
  auto path = dir.path() + "/" + name;
  std::ofstream out{path, std::ios::binary};
  out << text;
  if (!out)
    throw std::runtime_error("cannot write " + path);
  return path;
}

double quantile(std::vector<double> values, double q) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  auto idx = static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(idx, values.size() - 1)];
}

// -- writes -------------------------------------------------------------------------

write_batch parallel_writes(
  uint16_t port, size_t threads, size_t per_thread,
  const std::function<response(eventsd::e2e::http_client&, size_t, size_t)>& write) {
  std::vector<write_batch> parts(threads);
  std::vector<std::string> errors(threads);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      try {
        eventsd::e2e::http_client c{port};
        for (size_t i = 0; i < per_thread; ++i) {
          auto started = std::chrono::steady_clock::now();
          auto r = write(c, t, i);
          auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now()
                                                              - started)
                      .count();
          if (r.status != 200 && r.status != 201)
            throw std::runtime_error("write answered " + std::to_string(r.status) + ": " + r.body);
          parts[t].acks.push_back(eventsd::e2e::ack_of(r));
          parts[t].latency_ms.push_back(ms);
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  for (auto& th : pool)
    th.join();
  for (auto& e : errors)
    if (!e.empty())
      throw std::runtime_error("parallel_writes: " + e);
  write_batch out;
  for (auto& p : parts) {
    out.acks.insert(out.acks.end(), p.acks.begin(), p.acks.end());
    out.latency_ms.insert(out.latency_ms.end(), p.latency_ms.begin(), p.latency_ms.end());
  }
  return out;
}

write_batch create_todos(uint16_t port, size_t threads, size_t per_thread,
                         const std::string& prefix, size_t description_size,
                         const std::string& pad) {
  return parallel_writes(port, threads, per_thread,
                         [&](eventsd::e2e::http_client& c, size_t t, size_t i) {
                           auto d = prefix + " " + std::to_string(t) + "/" + std::to_string(i);
                           if (d.size() + 1 < description_size) {
                             auto missing = description_size - d.size() - 1;
                             d += " ";
                             for (size_t k = 0; k < missing; ++k)
                               d += pad;
                           }
                           return c.post_json("/todo", {{"description", d}});
                         });
}

} // namespace eventsd::http_tests
