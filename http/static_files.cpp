#include "http/static_files.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace eventsd::http {

namespace {

std::string content_type_of(const std::filesystem::path& p) {
  auto ext = p.extension().string();
  if (ext == ".html")
    return "text/html; charset=utf-8";
  if (ext == ".js")
    return "text/javascript; charset=utf-8";
  if (ext == ".css")
    return "text/css; charset=utf-8";
  if (ext == ".json")
    return "application/json; charset=utf-8";
  if (ext == ".png")
    return "image/png";
  if (ext == ".svg")
    return "image/svg+xml";
  if (ext == ".map")
    return "application/json";
  if (ext == ".txt" || p.filename() == "LICENSE")
    return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

} // namespace

static_files::static_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec))
    return;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file())
      continue;
    std::ifstream in{it->path(), std::ios::binary};
    std::ostringstream body;
    body << in.rdbuf();
    auto rel = fs::relative(it->path(), dir).generic_string();
    auto content = body.str();
    auto tag = std::hash<std::string>{}(content) >> 1;
    files_[rel] = static_file{content_type_of(it->path()), std::move(content), tag};
  }
}

const static_file* static_files::find(const std::string& relative) const {
  auto i = files_.find(relative);
  return i == files_.end() ? nullptr : &i->second;
}

} // namespace eventsd::http
