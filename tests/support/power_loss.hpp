// Test support: simulated power loss for a store directory written through the
// LD_PRELOAD shim tests/reliability/power_loss_shim.cpp (see there for the model).
// Usage: run the server with power_loss::env(); kill -9 it; power_loss::apply(); restart.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pliers::testing {

class power_loss {
 public:
  // data: the store's directory; journal: a directory outside it for the undo logs.
  power_loss(std::filesystem::path data, std::filesystem::path journal)
      : data_(std::move(data)), journal_(std::move(journal)) {
    std::filesystem::create_directories(data_);
    std::filesystem::create_directories(journal_);
  }

  std::vector<std::pair<std::string, std::string>> env(const std::string& shim_library) const {
    return {{"LD_PRELOAD", shim_library},
            {"PLIERS_POWERLOSS_DIR", data_.string()},
            {"PLIERS_POWERLOSS_JOURNAL", journal_.string()}};
  }

  // Call only when the writer is dead: undoes every change not fsynced, drops -shm files.
  // Returns the number of bytes of unsynced changes undone (records applied).
  std::size_t apply() {
    std::size_t undone = 0;
    for (const auto& entry : std::filesystem::directory_iterator(journal_)) {
      const auto name = entry.path().filename().string();
      if (name.size() < 6 || name.substr(name.size() - 5) != ".undo") continue;
      const auto target = data_ / name.substr(0, name.size() - 5);
      undone += undo_file(entry.path(), target);
      std::filesystem::remove(entry.path());
    }
    for (const auto& entry : std::filesystem::directory_iterator(data_)) {
      const auto name = entry.path().filename().string();
      if (name.size() > 4 && name.substr(name.size() - 4) == "-shm") std::filesystem::remove(entry.path());
    }
    return undone;
  }

 private:
  struct record {
    char kind;
    std::uint64_t off, size_before;
    std::string saved;
  };

  static std::size_t undo_file(const std::filesystem::path& undo, const std::filesystem::path& target) {
    std::ifstream in(undo, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<record> records;
    std::size_t at = 0;
    auto get64 = [&](std::size_t pos) {
      std::uint64_t v;
      std::memcpy(&v, bytes.data() + pos, 8);
      return v;
    };
    while (at + 33 <= bytes.size()) {
      const auto total = get64(at + 1);
      if (total < 33 || at + total > bytes.size()) break;  // cut short by kill -9: never performed
      const auto saved = get64(at + 25);
      if (33 + saved != total) throw std::runtime_error("corrupt undo record in " + undo.string());
      records.push_back({bytes[at], get64(at + 9), get64(at + 17), bytes.substr(at + 33, saved)});
      at += total;
    }
    if (records.empty()) return 0;
    int fd = ::open(target.c_str(), O_RDWR);
    if (fd < 0) throw std::runtime_error("cannot open " + target.string());
    for (auto it = records.rbegin(); it != records.rend(); ++it) {
      if (!it->saved.empty() &&
          ::pwrite(fd, it->saved.data(), it->saved.size(), static_cast<off_t>(it->off)) !=
              static_cast<ssize_t>(it->saved.size()))
        throw std::runtime_error("cannot restore " + target.string());
      if (::ftruncate(fd, static_cast<off_t>(it->size_before)) != 0)
        throw std::runtime_error("cannot truncate " + target.string());
    }
    ::fsync(fd);
    ::close(fd);
    return records.size();
  }

  std::filesystem::path data_, journal_;
};

}  // namespace pliers::testing
