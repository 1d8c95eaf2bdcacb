// A deliberately unsafe server for the negative control: `pliers-events serve` with the
// SQLite store opened with store_options::unsafe_no_fsync (PRAGMA synchronous=OFF), so an
// append is acknowledged before anything is fsynced. Built only for the tests; the real
// binary has no way to ask for this.
// Usage (the subset server_process passes): serve --store URL --listen HOST:PORT
//        --ready-file FILE [--log-level LEVEL]; other settings from PLIERS_* variables.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "server/config.hpp"
#include "server/log.hpp"
#include "server/server.hpp"
#include "store/event_store.hpp"

int main(int argc, char** argv) {
  using namespace pliers;
  server_config cfg;
  if (auto r = apply_environment(cfg); !r) {
    std::cerr << "unsafe-server: " << r.error().message << "\n";
    return 1;
  }
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    result<void> r;
    if (flag == "--store") r = cfg.set("store.url", value);
    else if (flag == "--listen") r = cfg.set("server.listen", value);
    else if (flag == "--log-level") r = cfg.set("log.level", value);
    else if (flag == "--ready-file") cfg.ready_file = value;
    else r = error::invalid(flag, "unknown flag");
    if (!r) {
      std::cerr << "unsafe-server: " << flag << ": " << r.error().message << "\n";
      return 1;
    }
  }
  log::init(cfg.log_level);
  store_options opts = cfg.to_store_options();
  opts.unsafe_no_fsync = true;
  auto store = open_store(cfg.store, opts);
  if (!store) {
    std::cerr << "unsafe-server: " << store.error().message << "\n";
    return 1;
  }
  {
    http_server server(cfg, **store);
    auto where = server.start(true);
    if (!where) {
      std::cerr << "unsafe-server: " << where.error().message << "\n";
      return 1;
    }
    if (!cfg.ready_file.empty()) {
      std::ofstream(cfg.ready_file + ".tmp") << *where << "\n";
      std::filesystem::rename(cfg.ready_file + ".tmp", cfg.ready_file);
    }
    server.run();
  }
  return 0;
}
