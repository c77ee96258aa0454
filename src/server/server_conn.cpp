#include "server/server_conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

namespace es::server {
namespace {

using Clock = std::chrono::steady_clock;

int MsLeft(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

// poll() for `events` until the deadline; EINTR retries with the time that is left.
short PollUntil(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, MsLeft(deadline));
    if (r > 0) return p.revents;
    if (r == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

void AddressOf(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  const int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                     : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ip.clear();
  port = -1;
  if (r != 0) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    port = ntohs(s->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    port = ntohs(s->sin6_port);
  }
  ip = buf;
}

// One connection's byte stream for httplib. Reads are buffered (httplib reads the head a byte at
// a time) and bounded by the deadline of the phase the request is in: the head must be complete
// by head_timeout after the request began, the body by body_timeout after the head ended. A read
// past its deadline fails, which ends the request and the connection.
class DeadlineStream : public httplib::Stream {
 public:
  DeadlineStream(int fd, const ConnLimits& l) : fd_(fd), limits_(l) {}

  // A new request starts: its head deadline begins now.
  void BeginRequest() {
    in_head_ = true;
    head_match_ = 0;
    deadline_ = Clock::now() + std::chrono::milliseconds(limits_.head_timeout_ms);
  }
  bool has_buffered() const { return pos_ < len_; }

  bool is_readable() const override {
    return has_buffered() || (PollUntil(fd_, POLLIN, deadline_) & (POLLIN | POLLHUP)) != 0;
  }
  // False once the client has gone: a stream that waits for tokens checks this between waits.
  bool is_writable() const override {
    const auto deadline = Clock::now() + std::chrono::milliseconds(limits_.write_timeout_ms);
    const short ev = PollUntil(fd_, POLLOUT, deadline);
    if (!(ev & POLLOUT) || (ev & (POLLERR | POLLHUP))) return false;
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return !(n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK));
  }
  ssize_t read(char* ptr, size_t size) override {
    if (!has_buffered() && !Fill()) return -1;
    const size_t n = std::min(size, len_ - pos_);
    std::copy(buf_ + pos_, buf_ + pos_ + n, ptr);
    pos_ += n;
    if (in_head_) TrackHead(ptr, n);
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    const auto deadline = Clock::now() + std::chrono::milliseconds(limits_.write_timeout_ms);
    if (!(PollUntil(fd_, POLLOUT, deadline) & POLLOUT)) return -1;
    const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  bool Fill() {
    for (;;) {
      const short ev = PollUntil(fd_, POLLIN, deadline_);
      if (!(ev & (POLLIN | POLLHUP | POLLERR))) return false;  // the phase's time is up
      const ssize_t n = ::recv(fd_, buf_, sizeof buf_, 0);
      if (n > 0) {
        pos_ = 0;
        len_ = static_cast<size_t>(n);
        return true;
      }
      if (n == 0 || (errno != EINTR && errno != EAGAIN)) return false;
    }
  }
  // Watches the bytes handed to httplib for the blank line that ends the head.
  void TrackHead(const char* p, size_t n) {
    static constexpr char kEnd[] = "\r\n\r\n";
    for (size_t i = 0; i < n && in_head_; ++i) {
      head_match_ = p[i] == kEnd[head_match_] ? head_match_ + 1 : (p[i] == '\r' ? 1 : 0);
      if (head_match_ == 4) {
        in_head_ = false;
        deadline_ = Clock::now() + std::chrono::milliseconds(limits_.body_timeout_ms);
      }
    }
  }

  const int fd_;
  const ConnLimits& limits_;
  char buf_[4096];
  size_t pos_ = 0, len_ = 0;
  bool in_head_ = true;
  int head_match_ = 0;
  Clock::time_point deadline_ = Clock::now();
};

// A refusal written before the request is read: the client learns why, and no thread waits on it.
void SendTooMany(int fd, int limit) {
  const std::string body =
      "{\"error\":{\"message\":\"this client address already holds " + std::to_string(limit) +
      " connections, the most the server allows; reuse or close one\",\"type\":"
      "\"invalid_request_error\",\"param\":null,\"code\":\"too_many_connections\"}}";
  const std::string msg =
      "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
      "Connection: close\r\nRetry-After: 1\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  (void)!::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace

ElasticPool::~ElasticPool() {
  shutdown();
}

void ElasticPool::enqueue(std::function<void()> fn) {
  std::unique_lock lock(mu_);
  if (stop_) return;
  tasks_.push_back(std::move(fn));
  if (idle_ < tasks_.size() && threads_.size() < max_threads_)
    threads_.emplace_back([this] { Work(); });
  else
    cv_.notify_one();
}

void ElasticPool::shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    threads.swap(threads_);
  }
  cv_.notify_all();
  for (auto& t : threads) t.join();
}

void ElasticPool::Work() {
  std::unique_lock lock(mu_);
  for (;;) {
    ++idle_;
    cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
    --idle_;
    if (tasks_.empty()) return;  // stopping, nothing left to run
    auto fn = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
}

GuardedServer::GuardedServer(const ConnLimits& limits) : limits_(limits) {
  const size_t threads = static_cast<size_t>(std::max(limits_.max_connections, 1));
  new_task_queue = [threads] { return new ElasticPool(threads); };
}

void GuardedServer::RaiseBacklog() {
  // listen() on a listening socket only updates its backlog (Linux).
  const socket_t s = svr_sock_;
  if (s != INVALID_SOCKET) ::listen(s, limits_.listen_backlog);
}

bool GuardedServer::Admit(const std::string& client) {
  std::lock_guard lock(mu_);
  int& n = per_client_[client];
  if (n >= limits_.max_per_client) return false;
  ++n;
  return true;
}

void GuardedServer::Leave(const std::string& client) {
  std::lock_guard lock(mu_);
  auto it = per_client_.find(client);
  if (it != per_client_.end() && --it->second <= 0) per_client_.erase(it);
}

namespace {
thread_local socket_t t_request_socket = INVALID_SOCKET;  // the connection this thread serves
}  // namespace

bool ClientGone() {
  if (t_request_socket == INVALID_SOCKET) return false;
  char c;
  const ssize_t n = ::recv(t_request_socket, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  t_request_socket = sock;
  std::string client;
  int client_port = 0;
  AddressOf(sock, true, client, client_port);
  bool ret = false;
  if (!Admit(client)) {
    SendTooMany(sock, limits_.max_per_client);
  } else {
    DeadlineStream strm(sock, limits_);
    // The first request has the head deadline from now; later ones wait up to the idle timeout
    // for their first byte, then get a head deadline of their own.
    strm.BeginRequest();
    for (int served = 0; served < limits_.keep_alive_requests && svr_sock_ != INVALID_SOCKET;
         ++served) {
      if (served > 0) {
        const auto idle = Clock::now() + std::chrono::milliseconds(limits_.idle_timeout_ms);
        if (!strm.has_buffered() && !(PollUntil(sock, POLLIN, idle) & (POLLIN | POLLHUP))) break;
        strm.BeginRequest();
      }
      bool closed = false;
      const bool last = served + 1 == limits_.keep_alive_requests;
      ret = process_request(strm, last, closed, nullptr);
      if (!ret || closed) break;
    }
    Leave(client);
  }
  t_request_socket = INVALID_SOCKET;
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ret;
}

}  // namespace es::server
