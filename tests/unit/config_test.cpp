#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "server/config.hpp"

namespace pliers {

TEST(Config, TomlThenEnvironmentOverride) {
  auto path = std::filesystem::temp_directory_path() / ("pliers-config-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << "[server]\nlisten = \"127.0.0.1:9000\"\nmax_json_depth = 10\n[store]\nurl = \"memory:\"\n";
  server_config cfg;
  ASSERT_TRUE(apply_toml_file(cfg, path.string()));
  EXPECT_EQ(cfg.listen, "127.0.0.1:9000");
  EXPECT_EQ(cfg.max_json_depth, 10u);
  EXPECT_EQ(cfg.store, "memory:");
  ::setenv("PLIERS_LISTEN", "127.0.0.1:9001", 1);
  ASSERT_TRUE(apply_environment(cfg));
  ::unsetenv("PLIERS_LISTEN");
  EXPECT_EQ(cfg.listen, "127.0.0.1:9001");
  EXPECT_EQ(cfg.max_json_depth, 10u);
  std::filesystem::remove(path);
}

TEST(Config, ErrorsNameTheSetting) {
  server_config cfg;
  auto r = cfg.set("server.max_body_bytes", "lots");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().field, "server.max_body_bytes");
  EXPECT_FALSE(cfg.set("server.nope", "1"));
  EXPECT_FALSE(cfg.set("log.level", "loud"));
  ::setenv("PLIERS_IO_THREADS", "0", 1);
  auto env = apply_environment(cfg);
  ::unsetenv("PLIERS_IO_THREADS");
  ASSERT_FALSE(env);
  EXPECT_EQ(env.error().field, "PLIERS_IO_THREADS");
  auto path = std::filesystem::temp_directory_path() / ("pliers-bad-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << "[server\nlisten=";
  EXPECT_FALSE(apply_toml_file(cfg, path.string()));
  std::ofstream(path) << "[server]\nlisten = 1.5\n";
  EXPECT_FALSE(apply_toml_file(cfg, path.string()));
  std::filesystem::remove(path);
}

}  // namespace pliers

namespace pliers {

TEST(Config, TheDocumentedExampleFileLoadsAndMatchesTheDefaults) {
  server_config defaults;
  server_config cfg;
  auto r = apply_toml_file(cfg, std::string(PLIERS_SOURCE_DIR) + "/docs/pliers-events.example.toml");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(cfg.listen, defaults.listen);
  EXPECT_EQ(cfg.store, defaults.store);
  EXPECT_EQ(cfg.max_body_bytes, defaults.max_body_bytes);
  EXPECT_EQ(cfg.max_json_depth, defaults.max_json_depth);
  EXPECT_EQ(cfg.max_pending_appends, defaults.max_pending_appends);
  EXPECT_EQ(cfg.shutdown_grace, defaults.shutdown_grace);
}

}  // namespace pliers
