#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/commands.hpp"
#include "server/config.hpp"
#include "server/log.hpp"
#include "server/server.hpp"

namespace pliers::cli {

namespace {

struct serve_flags {
  std::string config_file, store, listen, log_level, ready_file;
  std::size_t max_body_bytes = 0, max_json_depth = 0;
  unsigned io_threads = 0, worker_threads = 0;
};

int fail(const error& e) {
  log::error("cannot start", {{"error", e.field.empty() ? e.message : e.field + ": " + e.message}});
  std::cerr << "pliers-events: " << (e.field.empty() ? "" : e.field + ": ") << e.message << "\n";
  return 1;
}

// sqlite:PATH needs PATH's folder to exist; create it (./data for the default).
result<void> prepare_store_dir(const std::string& url) {
  for (std::string_view prefix : {"sqlite://", "sqlite:"}) {
    if (!url.starts_with(prefix)) continue;
    std::filesystem::path p(url.substr(prefix.size()));
    if (p.has_parent_path()) {
      std::error_code ec;
      std::filesystem::create_directories(p.parent_path(), ec);
      if (ec) return error::make(errc::unavailable, "cannot create " + p.parent_path().string() + ": " + ec.message());
    }
    break;
  }
  return {};
}

}  // namespace

command add_serve(CLI::App& app) {
  auto f = std::make_shared<serve_flags>();
  std::string env_help = "Settings come from defaults, then --config FILE (TOML), then environment, then flags:\n";
  for (const auto& k : config_keys())
    env_help += "  " + std::string(k.env_var) + " / [" + k.toml_key + "]: " + k.description + "\n";
  app.footer(env_help);
  app.add_option("--config", f->config_file, "TOML configuration file")->check(CLI::ExistingFile);
  auto* store = app.add_option("--store", f->store, "store URL: memory:, sqlite:PATH (default sqlite:./data/events.db)");
  auto* listen = app.add_option("--listen", f->listen, "HOST:PORT (default 127.0.0.1:8080; port 0 = any)");
  auto* level = app.add_option("--log-level", f->log_level, "trace, debug, info, warn, error");
  auto* ready = app.add_option("--ready-file", f->ready_file, "write the bound HOST:PORT to this file once listening");
  auto* body = app.add_option("--max-body-bytes", f->max_body_bytes, "largest request body (default 4 MiB)");
  auto* depth = app.add_option("--max-json-depth", f->max_json_depth, "deepest JSON nesting (default 64)");
  auto* io = app.add_option("--io-threads", f->io_threads, "network threads (default 2)");
  auto* workers = app.add_option("--worker-threads", f->worker_threads, "threads for blocking store work (default 4)");

  return [=]() -> int {
    server_config cfg;
    if (!f->config_file.empty())
      if (auto r = apply_toml_file(cfg, f->config_file); !r) return fail(r.error());
    if (auto r = apply_environment(cfg); !r) return fail(r.error());
    std::vector<std::pair<CLI::Option*, std::pair<const char*, std::string>>> flags = {
        {store, {"store.url", f->store}},
        {listen, {"server.listen", f->listen}},
        {level, {"log.level", f->log_level}},
        {body, {"server.max_body_bytes", std::to_string(f->max_body_bytes)}},
        {depth, {"server.max_json_depth", std::to_string(f->max_json_depth)}},
        {io, {"server.io_threads", std::to_string(f->io_threads)}},
        {workers, {"server.worker_threads", std::to_string(f->worker_threads)}},
    };
    for (auto& [opt, kv] : flags)
      if (opt->count() > 0)
        if (auto r = cfg.set(kv.first, kv.second); !r) {
          auto e = r.error();
          e.field = opt->get_name();
          return fail(e);
        }
    if (ready->count() > 0) cfg.ready_file = f->ready_file;
    log::init(cfg.log_level);

    if (auto r = prepare_store_dir(cfg.store); !r) return fail(r.error());
    store_options opts = cfg.to_store_options();
    opts.warn = [](const std::string& msg) { log::warn(msg); };
    auto opened = open_store(cfg.store, opts);
    if (!opened) return fail(opened.error());
    auto store_ptr = std::move(*opened);
    int code = 0;
    {
      http_server server(cfg, *store_ptr);
      auto where = server.start(true);
      if (!where) return fail(where.error());
      log::info("listening", {{"address", "http://" + *where}, {"store", cfg.store}});
      std::cout << "pliers-events listening on http://" << *where << " (store " << cfg.store << ")" << std::endl;
      if (!cfg.ready_file.empty()) {
        std::string tmp = cfg.ready_file + ".tmp";
        std::ofstream(tmp) << *where << "\n";
        std::filesystem::rename(tmp, cfg.ready_file);
      }
      server.run();
    }
    store_ptr.reset();  // commits what is queued, closes the files
    log::info("stopped");
    return code;
  };
}

}  // namespace pliers::cli
