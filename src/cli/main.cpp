// pliers-events: the server (`serve`) and its command-line client (append, read, get, query).
#include <iostream>

#include "cli/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"pliers-events: the Pliers event engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pliers-events 0.1.0");
  std::vector<std::pair<CLI::App*, pliers::cli::command>> commands;
  auto* serve = app.add_subcommand("serve", "Run the server");
  commands.emplace_back(serve, pliers::cli::add_serve(*serve));
  pliers::cli::add_client_commands(app, commands);
  pliers::cli::add_processing_commands(app, commands);
  pliers::cli::add_routing_commands(app, commands);
  pliers::cli::add_ops_commands(app, commands);
  pliers::cli::add_store_commands(app, commands);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return 2;
}
