#include "bench_server.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

extern char** environ;

namespace pliers::bench {

namespace fs = std::filesystem;

double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

std::optional<double> process_cpu_seconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 2));
  // Fields after "(comm)": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
  // cmajflt utime(14) stime(15).
  std::string f;
  for (int i = 3; i <= 13; ++i) fields >> f;
  long long utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

long status_kb(const std::string& pid, const std::string& name) {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + ":", 0) == 0) {
      std::istringstream v(line.substr(name.size() + 1));
      long kb = -1;
      v >> kb;
      return kb;
    }
  }
  return -1;
}

server_process::server_process(const fs::path& binary, const fs::path& dir, const std::string& store_url) : dir_(dir) {
    const std::string store = store_url.empty() ? "sqlite:" + (dir / "events.db").string() : store_url;
    const std::string ready = (dir / "ready").string();
    const std::string log = (dir / "server.log").string();
    std::vector<std::string> args = {binary.string(), "serve",        "--store",      store,
                                     "--listen",      "127.0.0.1:0", "--ready-file", ready};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid = 0;
    int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw failure("cannot start " + binary.string() + ": " + std::strerror(rc));
    pid_ = pid;

    const auto deadline = steady::now() + std::chrono::seconds(20);
    while (true) {
      if (fs::exists(ready)) {
        std::ifstream in(ready);
        std::string where;
        in >> where;
        if (!where.empty()) {
          hostport_ = where;
          break;
        }
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw failure("the server exited before it was ready:\n" + log_text());
      }
      if (steady::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        pid_ = -1;
        throw failure("the server did not become ready in 20 s:\n" + log_text());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

server_process::~server_process() {
  try {
    stop();
  } catch (...) {
  }
}

boost::asio::ip::tcp::endpoint server_process::endpoint() const {
  auto colon = hostport_.rfind(':');
  return {boost::asio::ip::make_address(hostport_.substr(0, colon)),
          static_cast<unsigned short>(std::stoi(hostport_.substr(colon + 1)))};
}

long server_process::rss_kb() const { return status_kb(std::to_string(pid_), "VmRSS"); }
long server_process::hwm_kb() const { return status_kb(std::to_string(pid_), "VmHWM"); }

long server_process::threads() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::stol(line.substr(8));
  return -1;
}

void server_process::stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    const auto deadline = steady::now() + std::chrono::seconds(15);
    int status = 0;
    while (true) {
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (steady::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        pid_ = -1;
        throw failure("the server did not stop within 15 s of SIGTERM");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw failure("the server ended abnormally (status " + std::to_string(status) + "):\n" + log_text());
  }

std::string server_process::log_text() const {
    std::ifstream in(dir_ / "server.log");
    std::stringstream ss;
    ss << in.rdbuf();
    auto s = ss.str();
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

}  // namespace pliers::bench
