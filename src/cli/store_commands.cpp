// Store operations without a server: `migrate` and `partitions` (PostgreSQL).
#include <iostream>

#include "cli/commands.hpp"
#include "server/config.hpp"
#include "store/postgres/postgres_store.hpp"

namespace pliers::cli {

namespace {

struct store_flags {
  std::string config_file, store;
};

void add_store_flags(CLI::App& app, store_flags& f) {
  app.add_option("--config", f.config_file, "TOML configuration file")->check(CLI::ExistingFile);
  app.add_option("--store", f.store, "store URL (default from the config / PLIERS_STORE)");
}

int report(const error& e) {
  std::cerr << "pliers-events: " << (e.field.empty() ? "" : e.field + ": ") << e.message << "\n";
  return 1;
}

result<server_config> load(const store_flags& f) {
  server_config cfg;
  if (!f.config_file.empty())
    if (auto r = apply_toml_file(cfg, f.config_file); !r) return std::move(r).error();
  if (auto r = apply_environment(cfg); !r) return std::move(r).error();
  if (!f.store.empty())
    if (auto r = cfg.set("store.url", f.store); !r) return std::move(r).error();
  return cfg;
}

bool is_postgres(const std::string& url) { return url.starts_with("postgres://") || url.starts_with("postgresql://"); }

}  // namespace

void add_store_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out) {
  {
    auto* sub = app.add_subcommand("migrate", "Apply the store's schema migrations and exit (idempotent)");
    auto f = std::make_shared<store_flags>();
    add_store_flags(*sub, *f);
    out.emplace_back(sub, [f]() -> int {
      auto cfg = load(*f);
      if (!cfg) return report(cfg.error());
      auto opts = cfg->to_store_options();
      opts.warn = [](const std::string& m) { std::cerr << "pliers-events: " << m << "\n"; };
      if (is_postgres(cfg->store)) {
        if (auto r = migrate_postgres(cfg->store, opts); !r) return report(r.error());
      } else {
        auto s = open_store(cfg->store, opts);  // sqlite migrates when opened
        if (!s) return report(s.error());
      }
      std::cout << "migrations applied to " << cfg->store << "\n";
      return 0;
    });
  }
  {
    auto* sub = app.add_subcommand("partitions", "List, create ahead, or detach PostgreSQL event partitions");
    auto f = std::make_shared<store_flags>();
    auto action = std::make_shared<std::string>();
    auto name = std::make_shared<std::string>();
    auto drop = std::make_shared<bool>(false);
    auto ahead = std::make_shared<int>(3);
    add_store_flags(*sub, *f);
    sub->add_option("action", *action, "list | ensure | detach")->required()->check(CLI::IsMember({"list", "ensure", "detach"}));
    sub->add_option("name", *name, "partition to detach (events_pYYYYMMDD)");
    sub->add_flag("--drop", *drop, "with detach: drop the detached table too (its events are gone)");
    sub->add_option("--ahead", *ahead, "with ensure: periods to create beyond the current one")->capture_default_str();
    out.emplace_back(sub, [=]() -> int {
      auto cfg = load(*f);
      if (!cfg) return report(cfg.error());
      if (!is_postgres(cfg->store)) return report(error::invalid("--store", "partitions exist only on postgres:// stores"));
      auto opts = cfg->to_store_options();
      opts.read_connections = 1;
      auto s = postgres_store::open(cfg->store, opts);
      if (!s) return report(s.error());
      auto& store = **s;
      if (*action == "list") {
        auto parts = store.list_partitions();
        if (!parts) return report(parts.error());
        for (const auto& p : *parts)
          std::cout << "{\"name\":\"" << p.name << "\",\"from\":\"" << p.from << "\",\"to\":\"" << p.to
                    << "\",\"rowsEstimate\":" << p.rows << "}\n";
        return 0;
      }
      if (*action == "ensure") {
        if (auto r = store.ensure_partitions(default_clock().now(), *ahead); !r) return report(r.error());
        return 0;
      }
      if (name->empty()) return report(error::invalid("name", "detach needs a partition name"));
      if (auto r = store.detach_partition(*name, *drop); !r) return report(r.error());
      std::cout << (*drop ? "detached and dropped " : "detached (kept as a standalone table) ") << *name << "\n";
      return 0;
    });
  }
}

}  // namespace pliers::cli
