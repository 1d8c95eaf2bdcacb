// Projectors and reducers written in Lua (sandboxed: process/lua_sandbox.hpp), for the HTTP
// API, the CLI, named projections and compaction. The script defines any of:
//
//   initial_state = {...}            -- or: function initial_state() return {...} end
//   handlers = { ["form.created"] = function(state, event) ... return state end,
//                ["*"] = function(state, event) ... end }   -- spec EventProjector
//   function reduce(state, event) ... return state end      -- spec EventReducer
//
// For each event, handlers[event.type] (else handlers["*"], else reduce) is called; its
// result becomes the state (nil: the handler changed `state` in place). Events are the
// JSON form of BaseEvent (camelCase, plus position), built as Lua tables straight from the
// events (lua_sandbox::call_with_events, no JSON in between). The state is kept inside Lua
// between events (never round-tripped through JSON per event); events are handed over in
// batches of up to 256 per sandbox call. The per-call limits apply to each batch.
//
// Not thread-safe (one sandbox): use one lua_projector per thread.
#pragma once

#include <memory>
#include <string_view>

#include "ops/replay.hpp"
#include "process/lua_sandbox.hpp"

namespace pliers {

class lua_projector final : public state_folder {
 public:
  // Errors: the sandbox's (compile_error etc., field "source"); invalid_argument when the
  // script defines neither handlers nor reduce.
  static result<std::unique_ptr<lua_projector>> create(std::string_view source, lua_limits limits = {});

  // start(null) uses the script's initial_state (or {} when it has none).
  result<void> start(boost::json::value initial) override;
  result<void> apply(std::span<const event> events) override;
  result<boost::json::value> state() override;
  lua_sandbox& sandbox() { return *sandbox_; }

 private:
  explicit lua_projector(std::unique_ptr<lua_sandbox> s) : sandbox_(std::move(s)) {}
  std::unique_ptr<lua_sandbox> sandbox_;
  lua_sandbox::function_ref init_, apply_, state_;
};

}  // namespace pliers
