// How the HTTP server takes connections: limits that keep one client (or a slow one) from
// holding every thread, and the connection loop that enforces them.
//
// httplib (Debian's 0.11) gives each connection a pool thread that waits up to 5 s per read, with
// a fixed pool and a listen backlog of 5: 200 half-sent requests made /health wait 17-19 s. Here
// threads grow on demand up to a cap, a client address may hold only so many connections, and the
// request head and body each have a deadline for the whole of it, not per read.
#pragma once
#include <httplib.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace es::server {

struct ConnLimits {
  int max_connections = 512;     // connections served at once (one thread each); more wait to start
  int max_per_client = 64;       // connections one client address may hold; more get 429
  int head_timeout_ms = 10000;   // the request line and headers must arrive within this
  int body_timeout_ms = 60000;   // the body must arrive within this after the headers
  int idle_timeout_ms = 5000;    // a kept-alive connection waits this long for its next request
  int write_timeout_ms = 10000;  // a client that takes no bytes for this long is dropped
  int keep_alive_requests = 100;  // requests on one connection before it is closed
  int listen_backlog = 1024;      // connections the kernel queues before accept
};

// A thread pool that starts a thread when a task finds none idle, up to `max_threads`; tasks wait
// beyond that. httplib's own pool has a fixed size chosen before any load is seen.
class ElasticPool : public httplib::TaskQueue {
 public:
  explicit ElasticPool(size_t max_threads) : max_threads_(max_threads) {}
  ~ElasticPool() override;
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

 private:
  void Work();
  const size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

// httplib::Server with the connection loop replaced: per-client admission, deadlines for the
// request head and body, bounded keep-alive. Routes, handlers and responses are httplib's.
class GuardedServer : public httplib::Server {
 public:
  explicit GuardedServer(const ConnLimits& limits);
  const ConnLimits& limits() const { return limits_; }
  // Raises the listen backlog of the bound socket (httplib binds with 5). Call after binding.
  void RaiseBacklog();

 private:
  // Overrides httplib's private virtual: every accepted socket is handed here on a pool thread.
  bool process_and_close_socket(socket_t sock) override;
  bool Admit(const std::string& client);
  void Leave(const std::string& client);

  ConnLimits limits_;
  std::mutex mu_;
  std::map<std::string, int> per_client_;
};

// From a request handler: true when its client has closed the connection (a handler that waits
// for a whole generation before answering checks this to cancel it).
bool ClientGone();

}  // namespace es::server
