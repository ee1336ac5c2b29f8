// The bare-Beast baseline of scripts/bench: the least an HTTP/1.1 keep-alive
// server built like eventsd's gateway (Boost.Beast, async, one io_context run
// by N threads, a strand per connection) can do. Every request, GET or POST,
// is read whole (body included) and answered 200 with a small JSON body of the
// size eventsd answers a write with. No routing, no actors, no storage: the
// ratio of an eventsd route to this is what eventsd adds on top of HTTP.
//
//   eventsd_bare_beast [--port=N] [--threads=N] [--address=A]
//
// Prints "listening on http://A:PORT" once it accepts; stops on SIGINT/SIGTERM.
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// Same shape and size as eventsd's answer to a write.
constexpr std::string_view write_body =
  R"({"id":"0b6f8a44-64a4-4a27-9d4e-3c2b8e0b9a11","version":1,"position":1})";
constexpr std::string_view read_body =
  R"({"id":"0b6f8a44-64a4-4a27-9d4e-3c2b8e0b9a11","description":"benchmark todo","status":"Created","version":1})";

class session : public std::enable_shared_from_this<session> {
public:
  explicit session(tcp::socket&& socket) : stream_(std::move(socket)) {}

  void run() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&session::do_read, shared_from_this()));
  }

private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(64 * 1024);
    stream_.expires_after(std::chrono::seconds(30));
    bhttp::async_read(stream_, buffer_, *parser_,
                      beast::bind_front_handler(&session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec)
      return do_close();
    auto& req = parser_->get();
    bool post = req.method() != bhttp::verb::get && req.method() != bhttp::verb::head;
    res_.emplace(post && req.method() == bhttp::verb::post ? bhttp::status::created
                                                            : bhttp::status::ok,
                 11);
    res_->set(bhttp::field::server, "bare-beast");
    res_->set(bhttp::field::content_type, "application/json; charset=utf-8");
    res_->body() = std::string{post ? write_body : read_body};
    res_->keep_alive(req.keep_alive());
    res_->prepare_payload();
    bhttp::async_write(stream_, *res_,
                       beast::bind_front_handler(&session::on_write, shared_from_this(),
                                                 !res_->keep_alive()));
  }

  void on_write(bool close, beast::error_code ec, size_t) {
    if (ec || close)
      return do_close();
    do_read();
  }

  void do_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::string_body>> res_;
};

class listener : public std::enable_shared_from_this<listener> {
public:
  listener(net::io_context& ioc, const tcp::endpoint& ep)
    : ioc_(ioc), acceptor_(net::make_strand(ioc)) {
    acceptor_.open(ep.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen(net::socket_base::max_listen_connections);
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void run() { do_accept(); }

private:
  void do_accept() {
    acceptor_.async_accept(net::make_strand(ioc_),
                           beast::bind_front_handler(&listener::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (!ec) {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<session>(std::move(socket))->run();
    }
    do_accept();
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
};

bool option(std::string_view arg, std::string_view name, std::string& value) {
  if (arg.substr(0, name.size()) != name)
    return false;
  value = std::string{arg.substr(name.size())};
  return true;
}

} // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1", port = "0", threads = "2", value;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (option(a, "--port=", value))
      port = value;
    else if (option(a, "--threads=", value))
      threads = value;
    else if (option(a, "--address=", value))
      address = value;
    else {
      std::cerr << "usage: eventsd_bare_beast [--port=N] [--threads=N] [--address=A]\n";
      return 2;
    }
  }
  try {
    int n = std::max(1, std::atoi(threads.c_str()));
    net::io_context ioc{n};
    auto l = std::make_shared<listener>(
      ioc, tcp::endpoint{net::ip::make_address(address),
                         static_cast<uint16_t>(std::atoi(port.c_str()))});
    l->run();
    std::cout << "listening on http://" << address << ":" << l->port() << std::endl;
    net::signal_set signals{ioc, SIGINT, SIGTERM};
    signals.async_wait([&](beast::error_code, int) { ioc.stop(); });
    std::vector<std::thread> pool;
    for (int i = 1; i < n; ++i)
      pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool)
      t.join();
  } catch (const std::exception& e) {
    std::cerr << "eventsd_bare_beast: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
