// A simulated page cache for power-loss tests, loaded into the server with LD_PRELOAD.
//
// For every regular file under $PLIERS_POWERLOSS_DIR (except SQLite's -shm, which is
// rebuilt on open), each write and truncate first appends an undo record (the bytes about to
// be overwritten or cut, and the size before) to $PLIERS_POWERLOSS_JOURNAL/<name>.undo;
// fsync/fdatasync of the file, once it returns, deletes that undo log. So at any moment the
// undo logs hold exactly the changes the program has not made durable.
//
// A "power loss" is then: kill -9 the server, and apply every undo log backwards
// (tests/support/power_loss.hpp), which leaves each file as it was at its last fsync, as
// if the machine had lost power before the kernel wrote back any dirty page. (Real disks may
// keep some unsynced writes or tear them; dropping all of them is one of the outcomes a
// durable store must survive, and the one that exposes a missing fsync most surely.)
//
// A record is written completely before the operation it undoes is performed, so a record
// cut short by kill -9 belongs to an operation that never happened and is ignored.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

using pwrite_fn = ssize_t (*)(int, const void*, size_t, off_t);
using write_fn = ssize_t (*)(int, const void*, size_t);
using truncate_fn = int (*)(int, off_t);
using sync_fn = int (*)(int);

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

struct shim {
  pwrite_fn pwrite64_ = real<pwrite_fn>("pwrite64");
  pwrite_fn pwrite_ = real<pwrite_fn>("pwrite");
  write_fn write_ = real<write_fn>("write");
  truncate_fn ftruncate64_ = real<truncate_fn>("ftruncate64");
  truncate_fn ftruncate_ = real<truncate_fn>("ftruncate");
  sync_fn fsync_ = real<sync_fn>("fsync");
  sync_fn fdatasync_ = real<sync_fn>("fdatasync");
  std::string dir, journal;
  std::recursive_mutex m;

  shim() {
    const char* d = std::getenv("PLIERS_POWERLOSS_DIR");
    const char* j = std::getenv("PLIERS_POWERLOSS_JOURNAL");
    if (d && j) {
      char buf[4096];
      if (::realpath(d, buf)) dir = std::string(buf) + "/";
      journal = j;
    }
  }

  // The journal file for fd, or "" when fd is not tracked.
  std::string undo_path(int fd) {
    if (dir.empty()) return {};
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return {};
    char link[64], target[4096];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    auto n = ::readlink(link, target, sizeof target - 1);
    if (n <= 0) return {};
    std::string path(target, static_cast<std::size_t>(n));
    if (path.compare(0, dir.size(), dir) != 0) return {};
    std::string name = path.substr(dir.size());
    if (name.find('/') != std::string::npos) return {};
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "-shm") == 0) return {};
    return journal + "/" + name + ".undo";
  }

  static void put64(std::vector<char>& out, std::uint64_t v) {
    out.insert(out.end(), reinterpret_cast<const char*>(&v), reinterpret_cast<const char*>(&v) + 8);
  }

  // Record layout: 'W' or 'T', u64 total record length, u64 offset, u64 size before,
  // u64 saved length, saved bytes. Offset is where the saved bytes go back.
  void record(const std::string& undo, int fd, char kind, std::uint64_t off, std::uint64_t len) {
    struct stat st {};
    ::fstat(fd, &st);
    const auto size_before = static_cast<std::uint64_t>(st.st_size);
    std::uint64_t saved = 0;
    if (kind == 'W') saved = off < size_before ? std::min<std::uint64_t>(len, size_before - off) : 0;
    else saved = off < size_before ? size_before - off : 0;  // truncate to `off`: the cut tail
    std::vector<char> rec;
    rec.push_back(kind);
    put64(rec, 0);
    put64(rec, off);
    put64(rec, size_before);
    put64(rec, saved);
    const auto head = rec.size();
    rec.resize(head + saved);
    std::uint64_t got = 0;
    while (got < saved) {
      auto n = ::pread(fd, rec.data() + head + got, saved - got, static_cast<off_t>(off + got));
      if (n <= 0) break;
      got += static_cast<std::uint64_t>(n);
    }
    std::uint64_t total = rec.size();
    std::memcpy(rec.data() + 1, &total, 8);
    int j = ::open(undo.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (j < 0) std::abort();  // a silent gap would make the simulation lie
    std::size_t done = 0;
    while (done < rec.size()) {
      auto n = write_(j, rec.data() + done, rec.size() - done);
      if (n <= 0) std::abort();
      done += static_cast<std::size_t>(n);
    }
    ::close(j);
  }

  ssize_t do_pwrite(pwrite_fn f, int fd, const void* buf, size_t n, off_t off) {
    auto undo = undo_path(fd);
    if (undo.empty()) return f(fd, buf, n, off);
    std::lock_guard lock(m);
    record(undo, fd, 'W', static_cast<std::uint64_t>(off), n);
    return f(fd, buf, n, off);
  }
  ssize_t do_write(int fd, const void* buf, size_t n) {
    auto undo = undo_path(fd);
    if (undo.empty()) return write_(fd, buf, n);
    std::lock_guard lock(m);
    auto off = ::lseek(fd, 0, SEEK_CUR);
    if ((::fcntl(fd, F_GETFL) & O_APPEND) != 0) {
      struct stat st {};
      ::fstat(fd, &st);
      off = st.st_size;
    }
    record(undo, fd, 'W', static_cast<std::uint64_t>(off), n);
    return write_(fd, buf, n);
  }
  int do_truncate(truncate_fn f, int fd, off_t len) {
    auto undo = undo_path(fd);
    if (undo.empty()) return f(fd, len);
    std::lock_guard lock(m);
    record(undo, fd, 'T', static_cast<std::uint64_t>(len), 0);
    return f(fd, len);
  }
  int do_sync(sync_fn f, int fd) {
    auto undo = undo_path(fd);
    if (undo.empty()) return f(fd);
    std::lock_guard lock(m);
    int rc = f(fd);
    if (rc == 0) ::unlink(undo.c_str());  // durable now: nothing to undo
    return rc;
  }
};

shim& the_shim() {
  static shim s;
  return s;
}

}  // namespace

extern "C" {

ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  return the_shim().do_pwrite(the_shim().pwrite64_, fd, buf, n, off);
}
ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  return the_shim().do_pwrite(the_shim().pwrite_, fd, buf, n, off);
}
ssize_t write(int fd, const void* buf, size_t n) { return the_shim().do_write(fd, buf, n); }
int ftruncate64(int fd, off_t len) { return the_shim().do_truncate(the_shim().ftruncate64_, fd, len); }
int ftruncate(int fd, off_t len) { return the_shim().do_truncate(the_shim().ftruncate_, fd, len); }
int fsync(int fd) { return the_shim().do_sync(the_shim().fsync_, fd); }
int fdatasync(int fd) { return the_shim().do_sync(the_shim().fdatasync_, fd); }

}  // extern "C"
