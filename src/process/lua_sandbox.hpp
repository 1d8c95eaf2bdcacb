// The sandboxed Lua 5.4 runtime used by Lua plugins, routing custom conditions, projections
// and compaction. One sandbox is one lua_State holding one script.
//
// Sandbox. Only the base, string, table, math, utf8 and coroutine libraries are opened.
// Removed: dofile, loadfile, load, collectgarbage, string.dump (and require, io, os, package,
// debug are never opened). Chunks are loaded as text only (no precompiled bytecode).
// `print` writes to the print hook (set_print), a no-op by default. `setmetatable` refuses
// metatables with `__gc`, so no finalizer ever runs script code outside a call.
//
// Limits (lua_limits), per call. Every operation (create's top-level run, call, test,
// set_global, get_global, ...) gets a fresh instruction budget and wall-clock deadline,
// checked by a count hook every 1000 VM instructions, also inside coroutines. Library code
// written in C does not run VM instructions, so the library functions whose running time is
// not linear in memory are replaced by budgeted versions:
//   - string.find/match/gmatch/gsub: a re-implementation of Lua 5.4 pattern matching with
//     the same semantics whose backtracking steps are charged to the instruction budget (a
//     catastrophic pattern ends with a timeout instead of hanging in C);
//   - string.rep: an empty string repeated 2^62 times is "" at once; results larger than the
//     memory cap are refused before any copying;
//   - table.insert/remove (tables only, no proxies)/move: the element shifts are charged;
//   - table.sort without a comparator: each comparison is charged (by string length).
// Anything else in C is linear in data that the memory cap bounds. Overrun past a limit is
// at most ~1000 instructions or one such linear step.
// The memory cap is enforced by the state's allocator: an allocation past it fails, Lua
// raises its memory error and the call fails with `memory_limit`.
// Timeouts and memory failures cannot be caught by the script: pcall, xpcall and
// coroutine.resume re-raise them and the hook keeps raising until the call has ended.
//
// Errors. Every error returned carries its kind as the first word of the message,
// "<kind>: <detail>"; lua_failure_of() and lua_error_type() read it back. Mapping:
//   kind          errc               when
//   compile_error invalid_argument   syntax error (field "source" or "expression"); message has the line
//   script_error  invalid_argument   a Lua error raised by the script (message + stack traceback);
//                 (or the host's)    a host function's error that the script did not catch keeps its errc;
//                 not_found          call() of a global that is not a function
//   timeout       timeout            "instruction budget exhausted (N instructions)" / "timed out after N ms"
//   memory_limit  payload_too_large  "memory limit of N bytes exceeded"
//   bad_result    invalid_argument   a value Lua hands back cannot be converted to JSON
//   bad_argument  invalid_argument   a JSON argument (field "args") or global (field: its name) cannot be
//                                    converted to Lua: nested deeper than 64, or over 10,000 arguments
// create() sets field "source" on every error it returns. Misuse by the host (calling into
// the sandbox from one of its own host functions) is errc::internal, kind script_error.
//
// After a failed call the state stays usable: the script's globals keep whatever the call
// had already changed (callers needing atomic updates, e.g. projections, snapshot or rebuild);
// after a memory failure a full collection runs before returning, so garbage left by the
// failed call is gone. A script that keeps its memory in globals stays near its cap.
//
// JSON <-> Lua (directly between boost::json and the Lua stack):
//   object -> table with string keys; array -> table 1..n marked with the array metatable
//   (getmetatable returns "pliers.array"; pliers.array(t) marks a table, pliers.is_array(t)
//   tests it); null inside an array or object -> pliers.null (a light userdata), top-level null
//   (an argument, a host function's result, a global, json_decode("null")) -> nil;
//   int64 -> integer, double -> float, uint64 above int64 -> float; string -> string.
//   Back: nil and pliers.null -> null; integer -> int64; float -> double (3.0 stays 3.0;
//   NaN/inf refused); strings must be valid UTF-8; a marked table -> array as long as its
//   largest integer key (holes -> null; a key that is not a positive integer is an error);
//   an unmarked table with keys exactly 1..n (n>0) -> array; all keys strings -> object (key
//   order unspecified); empty unmarked -> {};
//   anything else ("mixed keys"), functions, userdata, threads, cycles and nesting deeper than
//   64 are errors naming the path, e.g. "result.items[2]: cannot convert a function to JSON".
// Scripts also get pliers.json_encode(v) and pliers.json_decode(s) (same rules, depth 64).
//
// Lifecycle and threads. Not thread-safe: a sandbox is used by one thread at a time (keep one
// per worker thread, or pool them). Calls must not nest: a host function must not call back
// into its own sandbox. function_refs belong to the sandbox that made them.
#pragma once

#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/event.hpp"
#include "core/result.hpp"

namespace pliers {

struct lua_limits {
  std::size_t memory_bytes = 32 * 1024 * 1024;  // cap on the state's allocations
  std::uint64_t instructions = 50'000'000;       // per call (VM instructions + budgeted library steps)
  std::chrono::milliseconds timeout{1000};       // per call, wall clock
};

// Why a sandbox operation failed; the first word of the error's message.
enum class lua_failure : std::uint8_t { compile_error, script_error, timeout, memory_limit, bad_result, bad_argument };

// "compile_error", "script_error", "timeout", "memory_limit", "bad_result", "bad_argument".
const char* to_string(lua_failure kind) noexcept;
// The kind of an error returned by lua_sandbox (nullopt for other errors).
std::optional<lua_failure> lua_failure_of(const error& e);
// The ProcessingError `type` for an error returned by lua_sandbox: to_string(kind), or
// "lua_error" if the error did not come from a sandbox.
std::string lua_error_type(const error& e);

class lua_sandbox {
 public:
  using host_function = std::function<result<boost::json::value>(std::span<const boost::json::value> args)>;

  // A function held by the sandbox: a global looked up once (function()), or a compiled
  // expression (compile_expression()). Calling through it skips the global lookup. It keeps
  // the function it was made from even if the script later reassigns the global.
  class function_ref {
   public:
    function_ref() = default;
    bool valid() const noexcept { return ref_ > 0; }

   private:
    friend class lua_sandbox;
    explicit function_ref(int ref) : ref_(ref) {}
    int ref_ = 0;
  };

  // Compiles and runs `source` once (it defines globals and functions), under the limits.
  // `host_functions` are registered (as pliers.<name>) before the script runs, so its top
  // level may use them. Errors (field "source"): compile_error / script_error as
  // invalid_argument with Lua's "<chunk_name>:<line>:" in the message; timeout; memory_limit.
  static result<std::unique_ptr<lua_sandbox>> create(
      std::string_view source, std::string_view chunk_name, lua_limits limits = {},
      std::vector<std::pair<std::string, host_function>> host_functions = {});

  ~lua_sandbox();
  lua_sandbox(const lua_sandbox&) = delete;
  lua_sandbox& operator=(const lua_sandbox&) = delete;

  // Whether the global `global_name` is a function.
  bool has_function(std::string_view global_name) const;

  // Registers (or replaces) a host function as pliers.<name>. It is installed in the state
  // at the start of the next operation. Its arguments are the Lua arguments converted to JSON
  // (nil -> null); its value is converted back (null -> nil); an error result raises a Lua
  // error "pliers.<name>: <message>" (catchable by pcall; if uncaught, the call fails with the
  // host error's errc). Exceptions thrown by it are turned into Lua errors likewise.
  // Not to be called from inside a host function of this sandbox.
  void set_function(std::string name, host_function fn);

  // Receives each print(...) line (tab-separated, at most 4 KiB). Default: discarded.
  void set_print(std::function<void(std::string_view line)> hook);

  // Calls the global function `name` with the arguments; returns its first result
  // (nil or none -> null). See the error table above.
  result<boost::json::value> call(std::string_view name, std::span<const boost::json::value> args);
  result<boost::json::value> call(const function_ref& fn, std::span<const boost::json::value> args);
  // Calls `fn` with one argument, an array (marked as such) of the events as tables, each
  // with exactly the fields of the event's JSON form (core/event_codec.hpp write_event_json:
  // id, type, version, timestamp as RFC 3339, aggregateId, aggregateType, sequenceNumber,
  // position, causationId/correlationId when set, metadata, payload), built straight from
  // the event without an intermediate JSON value: for projections folding many events.
  // At most 10,000 events per call (bad_argument, field "args"). Result and errors as call().
  result<boost::json::value> call_with_events(const function_ref& fn, std::span<const event> events);
  // Calls the global function `name` with the event as a table (the fields call_with_events
  // gives each event, built straight from it) followed by `args`: a plugin's
  // process(event, context). Result and errors as call().
  result<boost::json::value> call_with_event(std::string_view name, const event& e,
                                             std::span<const boost::json::value> args);
  // Calls `fn` and returns the truthiness of its first result (no JSON conversion): for
  // conditions.
  result<bool> test(const function_ref& fn, std::span<const boost::json::value> args);

  // A reference to the current value of the global function `name` (not_found otherwise).
  result<function_ref> function(std::string_view name);
  // Compiles the Lua expression `expression` as a function of `parameters` (Lua identifiers),
  // e.g. compile_expression("event.payload.total > 100", {"event"}); call it with call()/test().
  // A syntax error is compile_error (field "expression", line numbers count from 1 in the
  // expression); so is a parameter that is not an identifier (field "parameters").
  result<function_ref> compile_expression(std::string_view expression, const std::vector<std::string>& parameters = {},
                                          std::string_view chunk_name = "expression");
  // Frees what a function_ref holds; it becomes invalid.
  void release(function_ref& fn);

  // Globals kept inside Lua between calls (projection state), read and written raw (no
  // metamethods). set_global(name, null) removes the global; get_global of an absent global
  // is null.
  result<void> set_global(std::string_view name, const boost::json::value& v);
  result<boost::json::value> get_global(std::string_view name);

  // Bytes currently allocated by the state (never above limits().memory_bytes).
  std::size_t memory_used() const;
  const lua_limits& limits() const;

  struct state;  // implementation; public only so that the C callbacks in the .cpp can name it

 private:
  explicit lua_sandbox(std::unique_ptr<state> s);
  std::unique_ptr<state> s_;
};

}  // namespace pliers
