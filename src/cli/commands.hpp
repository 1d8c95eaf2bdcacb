// Subcommands of `pliers-events`. Each add_* registers its options on the app and returns
// the function that runs it (exit code).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace pliers::cli {

using command = std::function<int()>;

command add_serve(CLI::App& app);
// migrate, partitions: operations on a store without a server.
void add_store_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out);
void add_client_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out);
// dlq, plugins: operators' commands for processing, against a running server.
void add_processing_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out);
void add_routing_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out);
// replay, compact, projections (issue 7).
void add_ops_commands(CLI::App& app, std::vector<std::pair<CLI::App*, command>>& out);

}  // namespace pliers::cli
