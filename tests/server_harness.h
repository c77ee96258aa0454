// The `edgeshard serve` process and raw HTTP helpers shared by the server tests.
#pragma once
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace es::test::srv {

using json = nlohmann::json;

// A server process on a free loopback port; stopped with SIGTERM (which must exit cleanly).
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    char tmpl[] = "/tmp/es_serve_errXXXXXX";
    const int fd = mkstemp(tmpl);
    err_path_ = tmpl;
    std::vector<std::string> argv = {
        es::test::BinaryPath(), "serve", "--host", "127.0.0.1", "--port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fd, STDERR_FILENO);
      std::vector<char*> cargs;
      for (auto& a : argv) cargs.push_back(a.data());
      cargs.push_back(nullptr);
      execv(cargs[0], cargs.data());
      _exit(127);
    }
    close(fd);
    // Bounded wait for the "listening on" line, which carries the port.
    const std::regex re("listening on http://127\\.0\\.0\\.1:(\\d+)");
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::smatch m;
      const std::string err = es::test::ReadFile(err_path_);
      if (std::regex_search(err, m, re)) port_ = std::stoi(m[1]);
      int st = 0;
      if (port_ == 0 && waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (port_ == 0) ADD_FAILURE() << "the server did not start:\n" << es::test::ReadFile(err_path_);
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      const int code = Stop();
      EXPECT_EQ(code, 0) << "the server did not exit cleanly on SIGTERM:\n" << stderr_text();
    }
    std::remove(err_path_.c_str());
  }
  // SIGTERM, then the exit code (SIGKILL and -1 if it does not exit within 30 s).
  int Stop() {
    kill(pid_, SIGTERM);
    int st = 0;
    for (int i = 0; i < 300; ++i) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return -1;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string stderr_text() const { return es::test::ReadFile(err_path_); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string err_path_;
};

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
};

// A connection to 127.0.0.1:port, from `source` (another loopback address such as 127.0.0.2
// plays a second client) when given.
inline int Connect(int port, const char* source = nullptr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{60, 0};  // never hang a test on a silent server
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (source) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    inet_pton(AF_INET, source, &src.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0)
      ADD_FAILURE() << "cannot bind a client socket to " << source;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    ADD_FAILURE() << "cannot connect to port " << port;
  return fd;
}

inline void SendAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;  // the server may close early (e.g. after a 413)
    off += static_cast<size_t>(n);
  }
}

inline HttpResponse Parse(const std::string& raw) {
  HttpResponse r;
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) {
    ADD_FAILURE() << "no HTTP response header in: " << raw.substr(0, 200);
    return r;
  }
  std::istringstream head(raw.substr(0, head_end));
  std::string line;
  std::getline(head, line);
  r.status = std::stoi(line.substr(9, 3));
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    r.headers[name] = line.substr(colon + 2);
  }
  std::string body = raw.substr(head_end + 4);
  if (r.headers["transfer-encoding"] == "chunked") {
    std::string out;
    size_t pos = 0;
    while (pos < body.size()) {
      const size_t eol = body.find("\r\n", pos);
      if (eol == std::string::npos) break;
      const size_t len = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
      if (len == 0) break;
      out += body.substr(eol + 2, len);
      pos = eol + 2 + len + 2;
    }
    body = out;
  } else if (r.headers.count("content-length")) {
    body = body.substr(0, std::stoul(r.headers["content-length"]));
  }
  r.body = body;
  return r;
}

// Sends raw bytes on a fresh connection and reads the whole response.
inline HttpResponse Raw(int port, const std::string& request) {
  const int fd = Connect(port);
  SendAll(fd, request);
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  return Parse(raw);
}

inline std::string Request(const std::string& method, const std::string& path,
                           const std::string& body, const std::string& key = "",
                           const std::string& extra_headers = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
  r += extra_headers;
  if (method == "POST")
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

inline HttpResponse Post(int port, const std::string& path, const std::string& body,
                         const std::string& key = "") {
  return Raw(port, Request("POST", path, body, key));
}

inline HttpResponse Get(int port, const std::string& path, const std::string& key = "") {
  return Raw(port, Request("GET", path, "", key));
}

// Checks OpenAI's error shape and returns the error object.
inline json ExpectError(const HttpResponse& r, int status, const std::string& param = "") {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "",
            "application/json");
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) {
    ADD_FAILURE() << "not an OpenAI error body: " << r.body;
    return json::object();
  }
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.body;
  EXPECT_TRUE(e["type"].is_string()) << r.body;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << r.body;
  if (!param.empty()) {
    EXPECT_EQ(e["param"], param) << r.body;
  }
  return e;
}

inline std::map<std::string, double> Metrics(int port, const std::string& key = "") {
  std::map<std::string, double> m;
  auto r = Get(port, "/metrics", key);
  std::istringstream in(r.body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return m;
}

// Polls the metrics until `pred` holds (at most 30 s); returns the last reading.
template <class Pred>
inline std::map<std::string, double> WaitMetrics(int port, const std::string& key, Pred pred) {
  std::map<std::string, double> m;
  for (int i = 0; i < 300; ++i) {
    m = Metrics(port, key);
    if (pred(m)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return m;
}

inline std::string Stories() {
  return es::test::ModelPath("stories260K.gguf");
}

// Runs a command, returning its exit code and combined output.
inline es::test::RunResult Shell(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128, out, ""};
}

}  // namespace es::test::srv
