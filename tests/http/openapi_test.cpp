// API.md §3: the OpenAPI document as the running server serves it validates
// (tests/http/validate_openapi.js: swagger-parser + every route of API.md), and
// /swagger is Swagger UI whose assets (swagger-ui-bundle.js ...) are served.
#include "http_support.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

namespace {

http_client& client() {
  static http_client c{shared_server().port()};
  return c;
}

/// `#/components/parameters/X` (or an inline parameter) resolved in `doc`.
json resolve(const json& doc, const json& node) {
  if (!node.contains("$ref"))
    return node;
  auto ref = node["$ref"].get<std::string>();
  REQUIRE(ref.rfind("#/", 0) == 0);
  return doc.at(json::json_pointer{ref.substr(1)});
}

} // namespace

TEST_CASE("GET /openapi.json: the served document is valid OpenAPI 3 listing every route",
          "[http][openapi]") {
  auto r = client().get("/openapi.json");
  REQUIRE(r.status == 200);
  CHECK(media_type(r) == "application/json");
  auto doc = r.json_body();
  REQUIRE(doc.is_object());

  // It is the project's document (http/assets/openapi.json).
  std::ifstream in{require_env("EVENTSD_SOURCE_DIR") + "/http/assets/openapi.json"};
  std::stringstream source;
  source << in.rdbuf();
  CHECK(doc == json::parse(source.str()));

  // The validator of tests/http/, run on the document fetched from the live server.
  temp_dir dir{"eventsd-http-openapi-"};
  auto file = write_temp_file(dir, "served-openapi.json", r.body);
  auto result = run_command({require_env("EVENTSD_NODE"), require_env("EVENTSD_OPENAPI_VALIDATOR"),
                             file});
  INFO("validate_openapi.js (exit " << result.exit_code() << "):\n" << result.output);
  CHECK(result.exit_code() == 0);
  CHECK(result.output.find("valid OpenAPI") != std::string::npos);

  // GET /streams (the /ui's list) is documented with before and limit.
  REQUIRE(doc["paths"].contains("/streams"));
  auto op = doc["paths"]["/streams"]["get"];
  std::set<std::string> params;
  for (auto& p : op.value("parameters", json::array())) {
    auto param = resolve(doc, p);
    if (param["in"] == "query")
      params.insert(param["name"].get<std::string>());
  }
  CHECK(params == std::set<std::string>{"before", "limit"});
  auto page = resolve(doc, op["responses"]["200"]["content"]["application/json"]["schema"]);
  CHECK(page["required"] == json::array({"items", "next"}));
  // The subscription is documented as an event stream with Last-Event-ID.
  auto sub = doc["paths"]["/subscribe/$all"]["get"];
  CHECK(sub["responses"]["200"]["content"].contains("text/event-stream"));
  std::set<std::string> sub_params;
  for (auto& p : sub.value("parameters", json::array()))
    sub_params.insert(resolve(doc, p)["name"].get<std::string>());
  CHECK(sub_params == std::set<std::string>{"from", "Last-Event-ID"});
  // Relative server URL: "Try it out" talks to whichever host and port served it.
  CHECK(doc["servers"] == json::array({{{"url", "/"}}}));
}

TEST_CASE("GET /openapi.json: every operation lists the answers any request may get, and every "
          "GET and HEAD (but the event stream's) its conditions and their 304 and 412",
          "[http][openapi]") {
  auto doc = client().get("/openapi.json").json_body();
  // Answers that depend on the request's framing, not on the route (the
  // server really sends each: tests/e2e/todo_api_test.cpp).
  const std::set<std::string> everywhere{"400", "408", "413", "414", "415",
                                         "417", "431", "501", "503", "505"};
  size_t operations = 0;
  for (auto& [path, ops] : doc["paths"].items()) {
    for (auto& [method, op] : ops.items()) {
      if (!op.is_object() || !op.contains("responses"))
        continue;
      ++operations;
      for (auto& status : everywhere) {
        INFO(method << " " << path << " lists " << status);
        CHECK(op["responses"].contains(status));
      }
    }
    if (!ops.contains("get") || path == "/subscribe/$all")
      continue;
    auto names = [&](const json& op) {
      std::set<std::string> out;
      for (auto& param : op.value("parameters", json::array()))
        out.insert(resolve(doc, param)["name"].get<std::string>());
      return out;
    };
    for (auto method : {"get", "head"}) {
      INFO(method << " " << path << ": If-Match, If-None-Match, 304, 412");
      REQUIRE(ops.contains(method));
      CHECK(names(ops[method]).count("If-Match") == 1);
      CHECK(names(ops[method]).count("If-None-Match") == 1);
      CHECK(ops[method]["responses"].contains("304"));
      CHECK(ops[method]["responses"].contains("412"));
    }
    INFO("HEAD " << path << " as its GET");
    CHECK(names(ops["head"]) == names(ops["get"]));
    // A HEAD answers the headers its GET would: each answer both list
    // declares the same header fields.
    auto header_names = [&](const json& response) {
      std::set<std::string> out;
      auto headers = resolve(doc, response).value("headers", json::object());
      for (auto& [name, header] : headers.items())
        out.insert(name);
      return out;
    };
    for (auto& [status, response] : ops["get"]["responses"].items()) {
      if (!ops["head"]["responses"].contains(status))
        continue;
      INFO("HEAD " << path << " " << status << " declares the headers of its GET");
      CHECK(header_names(ops["head"]["responses"][status]) == header_names(response));
    }
  }
  CHECK(operations > 40);
}

TEST_CASE("GET /openapi.json: no optional parameter carries an example, which Swagger UI's "
          "\"Try it out\" would fill in and send (an If-Match of \"3\" made every first try a 412), "
          "nor a path parameter naming a todo, event or stream (the first try would be a 404)",
          "[http][openapi][swagger]") {
  auto doc = client().get("/openapi.json").json_body();
  size_t optional = 0, in_path = 0;
  for (auto& [path, ops] : doc["paths"].items())
    for (auto& [method, op] : ops.items()) {
      if (!op.is_object())
        continue;
      for (auto& ref : op.value("parameters", json::array())) {
        auto param = resolve(doc, ref);
        // A projection's name has an example that every server has: todos.
        if (param.value("in", "") == "path" && param["name"] != "name")
          ++in_path;
        else if (!param.value("required", false))
          ++optional;
        else
          continue;
        INFO(method << " " << path << " parameter " << param["name"]);
        CHECK_FALSE(param.contains("example"));
        CHECK_FALSE(param.contains("examples"));
        auto schema = resolve(doc, param.value("schema", json::object()));
        CHECK_FALSE(schema.contains("example"));
      }
    }
  CHECK(optional > 50);
  CHECK(in_path > 20);
}

TEST_CASE("GET /openapi.json: an operation that takes no body declares none, so Swagger UI "
          "offers no body box (it sent \"string\" as JSON)",
          "[http][openapi][swagger]") {
  auto doc = client().get("/openapi.json").json_body();
  size_t bodyless = 0;
  for (auto& [path, ops] : doc["paths"].items())
    for (auto& [method, op] : ops.items()) {
      if (!op.is_object() || op.value("description", "").find("Takes no body") == std::string::npos)
        continue;
      ++bodyless;
      INFO(method << " " << path);
      CHECK_FALSE(op.contains("requestBody"));
    }
  CHECK(bodyless >= 4);
}

TEST_CASE("the validator fails a broken document (the check has teeth)", "[http][openapi]") {
  auto doc = client().get("/openapi.json").json_body();
  doc["paths"].erase("/subscribe/$all");
  doc["paths"]["/todo"]["post"]["responses"]["201"]["content"]["application/json"]["schema"] =
    {{"$ref", "#/components/schemas/NoSuchSchema"}};
  temp_dir dir{"eventsd-http-openapi-"};
  auto file = write_temp_file(dir, "broken.json", doc.dump());
  auto result = run_command({require_env("EVENTSD_NODE"), require_env("EVENTSD_OPENAPI_VALIDATOR"),
                             file});
  INFO(result.output);
  CHECK(result.exit_code() == 1);
  CHECK(result.output.find("missing path /subscribe/$all") != std::string::npos);
  CHECK(result.output.find("NoSuchSchema") != std::string::npos);
}

TEST_CASE("GET /swagger/ and /ui/ with a trailing slash serve the same pages", "[http][swagger]") {
  for (std::string page : {"/swagger", "/ui"}) {
    auto bare = client().get(page);
    auto slashed = client().get(page + "/");
    INFO("GET " << page << "/");
    REQUIRE(bare.status == 200);
    CHECK(slashed.status == 200);
    CHECK(media_type(slashed) == "text/html");
    CHECK(slashed.body == bare.body);
  }
  // Only those: a trailing slash is not a wildcard.
  CHECK(client().get("/openapi.json/").status == 404);
  CHECK(client().get("/swagger//").status == 404);
}

TEST_CASE("static files carry an entity tag with Cache-Control: no-cache, so a browser "
          "revalidates its copy and gets a 304 instead of the file again",
          "[http][swagger]") {
  std::set<std::string> tags;
  for (std::string path : {"/swagger/swagger-ui-bundle.js", "/ui/app.js", "/ui", "/openapi.json"}) {
    INFO("GET " << path);
    auto r = client().get(path);
    REQUIRE(r.status == 200);
    CHECK(r.header("Cache-Control") == "no-cache");
    auto tag = r.header("ETag").value_or("");
    REQUIRE(tag.size() > 2);
    CHECK(tags.insert(tag).second); // each file its own tag
    CHECK(client().get(path).header("ETag") == tag); // the same while the file is
    auto again = client().get(path, {{"If-None-Match", tag}});
    CHECK(again.status == 304);
    CHECK(again.body.empty());
    CHECK(again.header("ETag") == tag);
    CHECK(again.header("Cache-Control") == "no-cache");
    CHECK(client().get(path, {{"If-None-Match", "\"1\""}}).status == 200);
    CHECK(client().get(path, {{"If-Match", "\"1\""}}).status == 412);
    CHECK(client().request("HEAD", path, std::nullopt, {{"If-None-Match", tag}}).status == 304);
  }
}

TEST_CASE("the pages and their files may not be framed by another site, nor their types "
          "sniffed: the event browser's buttons append events",
          "[http][swagger][ui]") {
  for (std::string path : {"/ui", "/ui/app.js", "/swagger", "/openapi.json"}) {
    INFO("GET " << path);
    auto r = client().get(path);
    REQUIRE(r.status == 200);
    CHECK(r.header("X-Frame-Options") == "DENY");
    CHECK(r.header("Content-Security-Policy").value_or("").ends_with("frame-ancestors 'none'"));
    CHECK(r.header("X-Content-Type-Options") == "nosniff");
  }
}

TEST_CASE("the pages load scripts, styles and images from this server only (Swagger UI's "
          "styles may be inline); the other files' policy only forbids framing",
          "[http][swagger][ui]") {
  const std::string ui = "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                         "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
  const std::string swagger = "default-src 'self'; img-src 'self' data:; "
                              "style-src 'self' 'unsafe-inline'; object-src 'none'; "
                              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
  const std::string file = "frame-ancestors 'none'";
  const std::vector<std::pair<std::string, std::string>> policies{
    {"/ui", ui},
    {"/ui/", ui},
    {"/ui/index.html", ui}, // the same page by its file name
    {"/swagger", swagger},
    {"/swagger/", swagger},
    {"/swagger/index.html", swagger},
    {"/ui/app.js", file},
    {"/ui/style.css", file},
    {"/swagger/swagger-init.js", file},
    {"/swagger/swagger-ui-bundle.js", file},
    {"/swagger/swagger-ui.css", file},
    {"/openapi.json", file}};
  for (auto& [path, policy] : policies) {
    INFO("GET " << path);
    auto r = client().get(path);
    REQUIRE(r.status == 200);
    CHECK(r.header("Content-Security-Policy") == policy);
    // A revalidated copy is used under the policy of the 304.
    auto again = client().get(path, {{"If-None-Match", r.header("ETag").value_or("")}});
    CHECK(again.status == 304);
    CHECK(again.header("Content-Security-Policy") == policy);
  }
}

TEST_CASE("GET /swagger: Swagger UI whose scripts and styles are all served", "[http][swagger]") {
  auto r = client().get("/swagger");
  REQUIRE(r.status == 200);
  CHECK(media_type(r) == "text/html");
  CHECK(r.body.find("<div id=\"swagger-ui\">") != std::string::npos);
  CHECK(r.body.find("src=\"/swagger/swagger-ui-bundle.js\"") != std::string::npos);

  // Every local asset the page references is served with a fitting type.
  static const std::regex ref{R"((?:src|href)=\"(/[^\"]*)\")"};
  std::set<std::string> assets;
  for (auto it = std::sregex_iterator(r.body.begin(), r.body.end(), ref); it != std::sregex_iterator();
       ++it)
    assets.insert((*it)[1].str());
  CHECK(assets.count("/swagger/swagger-ui-bundle.js") == 1);
  CHECK(assets.count("/swagger/swagger-ui.css") == 1);
  CHECK(assets.count("/swagger/swagger-init.js") == 1);
  for (auto& path : assets) {
    INFO("GET " << path);
    auto a = client().get(path);
    CHECK(a.status == 200);
    CHECK_FALSE(a.body.empty());
    auto type = media_type(a);
    if (path.size() > 3 && path.compare(path.size() - 3, 3, ".js") == 0)
      CHECK((type == "text/javascript" || type == "application/javascript"));
    else if (path.size() > 4 && path.compare(path.size() - 4, 4, ".css") == 0)
      CHECK(type == "text/css");
    else if (path.size() > 4 && path.compare(path.size() - 4, 4, ".png") == 0)
      CHECK(type == "image/png");
  }

  auto bundle = client().get("/swagger/swagger-ui-bundle.js");
  REQUIRE(bundle.status == 200);
  CHECK((media_type(bundle) == "text/javascript" || media_type(bundle) == "application/javascript"));
  CHECK(bundle.body.size() > 500 * 1024); // the real bundle, not a stub
  CHECK(bundle.body.find("SwaggerUIBundle") != std::string::npos);
  CHECK(std::stoul(bundle.header("Content-Length").value_or("0")) == bundle.body.size());

  // The page loads the server's own document.
  auto init = client().get("/swagger/swagger-init.js");
  CHECK(init.body.find("'/openapi.json'") != std::string::npos);

  // What the served files point to: the stylesheet's source map and the
  // bundles' licence files named in their header comments.
  static const std::regex pointer{R"((?:sourceMappingURL=|see )([A-Za-z0-9.-]+\.(?:map|txt)))"};
  std::set<std::string> pointed;
  for (auto file : {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}) {
    auto body = client().get(std::string{"/swagger/"} + file).body;
    auto head = body.substr(0, 2000) + body.substr(body.size() > 2000 ? body.size() - 2000 : 0);
    for (auto it = std::sregex_iterator(head.begin(), head.end(), pointer);
         it != std::sregex_iterator(); ++it)
      pointed.insert((*it)[1].str());
  }
  CHECK(pointed.count("swagger-ui.css.map") == 1);
  CHECK(pointed.count("swagger-ui-bundle.js.LICENSE.txt") == 1);
  for (auto& file : pointed) {
    INFO("GET /swagger/" << file);
    auto a = client().get("/swagger/" + file);
    CHECK(a.status == 200);
    CHECK_FALSE(a.body.empty());
  }

  check_problem(client().get("/swagger/no-such-file.js"), 404);
}
