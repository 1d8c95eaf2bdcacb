#include "support/server_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

#ifndef PLIERS_EVENTS_BINARY
#error "PLIERS_EVENTS_BINARY must name the server binary"
#endif

namespace pliers::testing {

temp_dir::temp_dir() {
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("pliers-it-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

server_process::server_process(std::string store, std::vector<std::string> extra, server_launch launch)
    : store_(std::move(store)), extra_(std::move(extra)), launch_(std::move(launch)) {}

server_process::~server_process() {
  if (pid_ > 0) stop(SIGKILL);
}

void server_process::start() {
  auto ready = dir_.path() / "ready";
  std::filesystem::remove(ready);
  const std::string binary = launch_.binary.empty() ? std::string(PLIERS_EVENTS_BINARY) : launch_.binary;
  std::vector<std::string> args = {binary,               "serve",        "--store",      store_,
                                   "--listen",           "127.0.0.1:0",  "--ready-file", ready.string(),
                                   "--log-level",        "warn"};
  args.insert(args.end(), extra_.begin(), extra_.end());
  auto err = (dir_.path() / "stderr.log").string();
  // Everything the child needs is built before fork (other threads may hold locks).
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto key = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const auto& [k, v] : launch_.env) overridden |= (k == key);
    if (!overridden) env_strings.push_back(std::move(kv));
  }
  for (const auto& [k, v] : launch_.env) env_strings.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) ::dup2(fd, 2);
    int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, 1);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::filesystem::exists(ready)) {
      std::ifstream in(ready);
      std::string addr;
      in >> addr;
      if (!addr.empty()) {
        url_ = "http://" + addr;
        return;
      }
    }
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("server exited during start: " + stderr_text());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("server did not start within 20 s: " + stderr_text());
}

std::unique_ptr<http_client> server_process::client() const {
  auto c = http_client::connect(url_);
  if (!c) throw std::runtime_error(c.error().message);
  return std::move(*c);
}

int server_process::stop(int signal, std::chrono::seconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, signal);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      return -2;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pid_ = -1;
  return status;
}

void server_process::pause() {
  if (pid_ > 0) ::kill(pid_, SIGSTOP);
}

void server_process::resume() {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

std::string server_process::stderr_text() const {
  std::ifstream in(dir_.path() / "stderr.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string run_command(const std::vector<std::string>& argv_in, const std::string& stdin_text, int& status) {
  int in_pipe[2], out_pipe[2];
  if (::pipe(in_pipe) != 0 || ::pipe(out_pipe) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    std::vector<std::string> args = argv_in;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  std::thread writer([&] {
    std::size_t off = 0;
    while (off < stdin_text.size()) {
      auto n = ::write(in_pipe[1], stdin_text.data() + off, stdin_text.size() - off);
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    ::close(in_pipe[1]);
  });
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(out_pipe[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(out_pipe[0]);
  writer.join();
  ::waitpid(pid, &status, 0);
  return out;
}

}  // namespace pliers::testing
