// The sandboxed Lua runtime. Design notes (the contract is in the header):
//
// - PUC Lua is built as C: its errors are longjmp. Every frame that a Lua error may unwind
//   (code between a lua_pcall and any Lua API call that can raise) holds only trivially
//   destructible objects. Work that needs C++ objects (host functions, JSON encode/decode)
//   runs in a separate noexcept function that returns before anything is raised, and keeps
//   what must survive a raise in the sandbox's state (scratch values), not on the stack.
// - Every public operation runs inside one lua_pcall of a C "body", so that an allocation
//   failure or a metamethod never raises outside a protected call (which would abort).
// - Lua -> JSON conversion uses only API calls that never raise (raw access, lua_next,
//   lua_checkstack), so it can run outside protection with C++ objects alive.
// - Limits: the allocator refuses growth past the cap; a count hook every 1000 instructions
//   charges the budget and reads the clock; library functions that can run long in C charge
//   the same budget (charge()). Once a limit is hit the call is "aborted": the hook raises
//   again each time it fires and pcall/xpcall/coroutine.resume re-raise, so the script
//   cannot catch the failure and go on.
#include "process/lua_sandbox.hpp"

#include "core/time_format.hpp"

#include <lua.hpp>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <boost/json.hpp>

namespace pliers {

namespace json = boost::json;

const char* to_string(lua_failure kind) noexcept {
  switch (kind) {
    case lua_failure::compile_error: return "compile_error";
    case lua_failure::script_error: return "script_error";
    case lua_failure::timeout: return "timeout";
    case lua_failure::memory_limit: return "memory_limit";
    case lua_failure::bad_result: return "bad_result";
    case lua_failure::bad_argument: return "bad_argument";
  }
  return "script_error";
}

std::optional<lua_failure> lua_failure_of(const error& e) {
  const auto colon = e.message.find(": ");
  if (colon == std::string::npos) return std::nullopt;
  const std::string_view head(e.message.data(), colon);
  for (auto k : {lua_failure::compile_error, lua_failure::script_error, lua_failure::timeout, lua_failure::memory_limit,
                 lua_failure::bad_result, lua_failure::bad_argument})
    if (head == to_string(k)) return k;
  return std::nullopt;
}

std::string lua_error_type(const error& e) {
  const auto k = lua_failure_of(e);
  return k ? to_string(*k) : "lua_error";
}

namespace {

constexpr int hook_interval = 1000;        // VM instructions between limit checks
constexpr std::uint64_t check_every = 1024;  // budget units charged by C code between checks
constexpr int max_depth = 64;              // JSON nesting, both ways
constexpr std::size_t max_print = 4096;
constexpr std::size_t max_args = 10'000;             // arguments of one call

// pliers.null: a light userdata whose address is unique to this program.
char null_tag;
void* null_sentinel() { return &null_tag; }

struct host_entry {
  std::string name;
  lua_sandbox::host_function fn;
  bool installed = false;
};

enum class abort_reason : std::uint8_t { none, budget, time, memory };

error make_failure(errc code, lua_failure kind, const std::string& detail, std::string field = {}) {
  error e;
  e.code = code;
  e.message = std::string(to_string(kind)) + ": " + detail;
  e.field = std::move(field);
  return e;
}

}  // namespace

struct lua_sandbox::state {
  lua_State* L = nullptr;
  lua_limits limits;
  std::string chunk_name;

  // Memory (the allocator's view).
  std::size_t used = 0;
  bool memory_refused = false;  // the allocator refused a request during this operation

  // Per-operation budget.
  std::uint64_t charged = 0;
  std::uint64_t next_check = 0;
  std::chrono::steady_clock::time_point deadline{};
  abort_reason aborted = abort_reason::none;
  bool in_op = false;

  // Registry anchors.
  int array_mt_ref = LUA_NOREF;
  const void* array_mt = nullptr;
  int pliers_ref = LUA_NOREF;

  // Host functions; entries never move (the Lua closures point at them).
  std::vector<std::unique_ptr<host_entry>> hosts;
  bool hosts_pending = false;
  std::vector<json::value> host_args;
  std::optional<error> host_error;  // the last error a host function raised in this operation
  std::string host_error_msg;       // ... and the Lua error message it raised
  bool host_error_escaped = false;  // that error reached the top of the call

  // Values that must survive a Lua error raised while they are alive.
  json::value scratch;
  std::string scratch_text;
  std::string raise_msg;
  std::string print_line;
  std::function<void(std::string_view)> print_hook;

  state() = default;
  state(const state&) = delete;
  state& operator=(const state&) = delete;
  ~state() {
    if (L) lua_close(L);
  }
};

namespace {

using state = lua_sandbox::state;

state& st(lua_State* L) { return **static_cast<state**>(lua_getextraspace(L)); }

// ---------------------------------------------------------------------------------------
// Limits

void* sandbox_alloc(void* ud, void* ptr, std::size_t osize, std::size_t nsize) noexcept {
  auto* s = static_cast<state*>(ud);
  const std::size_t old = ptr ? osize : 0;  // with ptr == nullptr, osize is a type tag
  if (nsize == 0) {
    std::free(ptr);
    s->used -= old;
    return nullptr;
  }
  if (nsize > old && (nsize - old > s->limits.memory_bytes || s->used + (nsize - old) > s->limits.memory_bytes)) {
    s->memory_refused = true;
    return nullptr;
  }
  void* p = std::realloc(ptr, nsize);
  if (!p) return nullptr;
  s->used = s->used - old + nsize;
  return p;
}

// Raises if the operation is over a limit (or already aborted).
void check_limits(lua_State* L, state& s) {
  if (s.aborted == abort_reason::none) {
    if (s.charged > s.limits.instructions)
      s.aborted = abort_reason::budget;
    else if (std::chrono::steady_clock::now() >= s.deadline)
      s.aborted = abort_reason::time;
    else
      return;
  }
  lua_pushstring(L, s.aborted == abort_reason::memory ? "memory limit exceeded" : "timeout");
  lua_error(L);
}

void count_hook(lua_State* L, lua_Debug*) {
  auto& s = st(L);
  s.charged += hook_interval;
  check_limits(L, s);
}

// Charges `units` of work done in C to the instruction budget; may raise.
void charge(lua_State* L, std::uint64_t units) {
  auto& s = st(L);
  s.charged = units > std::numeric_limits<std::uint64_t>::max() - s.charged ? std::numeric_limits<std::uint64_t>::max()
                                                                              : s.charged + units;
  if (s.charged >= s.next_check) {
    s.next_check = s.charged + check_every;
    check_limits(L, s);
  }
}

bool is_memory_message(lua_State* L, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) return false;
  std::size_t n = 0;
  const char* m = lua_tolstring(L, idx, &n);
  return std::string_view(m, n) == "not enough memory";
}

// Whether an error caught inside the script (status, error object on top) must end the call.
bool is_fatal(lua_State* L, int status) {
  auto& s = st(L);
  if (s.aborted != abort_reason::none) return true;
  if (status == LUA_ERRMEM || (s.memory_refused && is_memory_message(L, -1))) {
    s.aborted = abort_reason::memory;
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// JSON -> Lua (may raise; only trivially destructible locals)

int clamp_int(std::size_t n) { return n > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(n); }

void push_object(lua_State* L, const state& s, const json::object& obj, int depth);

void push_json(lua_State* L, const state& s, const json::value& v, int depth, bool top) {
  switch (v.kind()) {
    case json::kind::null:
      if (top)
        lua_pushnil(L);
      else
        lua_pushlightuserdata(L, null_sentinel());
      return;
    case json::kind::bool_: lua_pushboolean(L, v.get_bool() ? 1 : 0); return;
    case json::kind::int64: lua_pushinteger(L, static_cast<lua_Integer>(v.get_int64())); return;
    case json::kind::uint64: {
      const std::uint64_t u = v.get_uint64();
      if (u <= static_cast<std::uint64_t>(std::numeric_limits<lua_Integer>::max()))
        lua_pushinteger(L, static_cast<lua_Integer>(u));
      else
        lua_pushnumber(L, static_cast<lua_Number>(u));
      return;
    }
    case json::kind::double_: lua_pushnumber(L, v.get_double()); return;
    case json::kind::string: {
      const json::string& str = v.get_string();
      lua_pushlstring(L, str.data(), str.size());
      return;
    }
    case json::kind::array: {
      if (depth >= max_depth) luaL_error(L, "JSON nested deeper than %d levels", max_depth);
      luaL_checkstack(L, 4, "JSON nested too deeply");
      const json::array& arr = v.get_array();
      lua_createtable(L, clamp_int(arr.size()), 0);
      lua_Integer i = 0;
      for (const json::value& e : arr) {
        push_json(L, s, e, depth + 1, false);
        lua_rawseti(L, -2, ++i);
      }
      lua_rawgeti(L, LUA_REGISTRYINDEX, s.array_mt_ref);
      lua_setmetatable(L, -2);
      return;
    }
    case json::kind::object: push_object(L, s, v.get_object(), depth); return;
  }
}

void push_object(lua_State* L, const state& s, const json::object& obj, int depth) {
  if (depth >= max_depth) luaL_error(L, "JSON nested deeper than %d levels", max_depth);
  luaL_checkstack(L, 4, "JSON nested too deeply");
  lua_createtable(L, 0, clamp_int(obj.size()));
  for (const json::key_value_pair& kv : obj) {
    lua_pushlstring(L, kv.key().data(), kv.key().size());
    push_json(L, s, kv.value(), depth + 1, false);
    lua_rawset(L, -3);
  }
}

void push_string_field(lua_State* L, const char* key, std::string_view v) {
  lua_pushlstring(L, v.data(), v.size());
  lua_setfield(L, -2, key);
}

void push_int_field(lua_State* L, const char* key, std::int64_t v) {
  lua_pushinteger(L, static_cast<lua_Integer>(v));
  lua_setfield(L, -2, key);
}

// Pushes an event as a table with the fields of write_event_json. `depth` is the table's
// nesting depth (metadata and payload are one deeper). May raise.
void push_event(lua_State* L, const state& s, const event& e, rfc3339_writer& tw, int depth) {
  luaL_checkstack(L, 8, "events");
  lua_createtable(L, 0, 12);
  push_string_field(L, "id", e.id);
  push_string_field(L, "type", e.type);
  push_int_field(L, "version", e.version);
  push_string_field(L, "timestamp", tw.write(e.time));
  push_string_field(L, "aggregateId", e.aggregate_id);
  push_string_field(L, "aggregateType", e.aggregate_type);
  push_int_field(L, "sequenceNumber", e.sequence.value);
  push_int_field(L, "position", e.position.value);
  if (e.causation_id) push_string_field(L, "causationId", *e.causation_id);
  if (e.correlation_id) push_string_field(L, "correlationId", *e.correlation_id);
  lua_pushliteral(L, "metadata");
  push_object(L, s, e.metadata, depth + 1);
  lua_rawset(L, -3);
  lua_pushliteral(L, "payload");
  push_object(L, s, e.payload, depth + 1);
  lua_rawset(L, -3);
}

// Pushes the events as an array of tables (the fields of write_event_json). May raise.
void push_events(lua_State* L, const state& s, std::span<const event> events) {
  if (events.size() > max_args) luaL_error(L, "more than %d events", static_cast<int>(max_args));
  luaL_checkstack(L, 8, "events");
  rfc3339_writer tw;
  lua_createtable(L, clamp_int(events.size()), 0);
  lua_Integer i = 0;
  for (const event& e : events) {
    push_event(L, s, e, tw, 1);
    lua_rawseti(L, -2, ++i);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, s.array_mt_ref);
  lua_setmetatable(L, -2);
}

// ---------------------------------------------------------------------------------------
// Lua -> JSON (never raises)

bool valid_utf8(const char* text, std::size_t n) {
  const auto* s = reinterpret_cast<const unsigned char*>(text);
  std::size_t i = 0;
  while (i < n) {
    if (n - i >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s + i, 8);
      if ((w & 0x8080808080808080ULL) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const unsigned cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return false;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return false;
    i += len;
  }
  return true;
}

struct to_json_ctx {
  explicit to_json_ctx(const state& st_) : s(st_) {}
  const state& s;
  const void* path[max_depth + 1] = {};
  std::string why;
  std::vector<std::string> where;  // path segments, innermost first

  bool fail(std::string reason) {
    why = std::move(reason);
    return false;
  }
  // "<root>.a[2]: <why>"
  std::string describe(std::string_view root) const {
    std::string out(root);
    for (auto it = where.rbegin(); it != where.rend(); ++it) out += *it;
    out += ": ";
    out += why;
    return out;
  }
};

constexpr const char* mixed_keys =
    "mixed keys (a table converts to an array when its keys are exactly 1..n, to an object when all keys are "
    "strings)";

bool has_array_mark(lua_State* L, int idx, const state& s) {
  if (!lua_getmetatable(L, idx)) return false;
  const bool marked = lua_topointer(L, -1) == s.array_mt;
  lua_pop(L, 1);
  return marked;
}

bool to_json(lua_State* L, int idx, json::value& out, to_json_ctx& cx, int depth);

bool table_to_json(lua_State* L, int idx, json::value& out, to_json_ctx& cx, int depth) {
  if (depth >= max_depth) return cx.fail("nested deeper than " + std::to_string(max_depth) + " levels");
  const void* self = lua_topointer(L, idx);
  for (int i = 0; i < depth; ++i)
    if (cx.path[i] == self) return cx.fail("cycle (the table contains itself)");
  cx.path[depth] = self;
  if (!lua_checkstack(L, 4)) return cx.fail("out of Lua stack");
  const bool marked = has_array_mark(L, idx, cx.s);
  const lua_Unsigned n = lua_rawlen(L, idx);
  if (marked || n > 0) {
    // An array: positive integer keys; its length is the largest key (not Lua's border,
    // which is ambiguous with holes). Holes are null in a marked table and an error in an
    // unmarked one. The length is bounded by what the state could hold.
    const lua_Unsigned max_len = cx.s.limits.memory_bytes / 16 + 1;
    json::array& arr = out.emplace_array();
    arr.resize(static_cast<std::size_t>(std::min(n, max_len)));
    lua_Unsigned count = 0;
    lua_Unsigned last = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1)
        return cx.fail(marked ? "array key that is not a positive integer" : mixed_keys);
      const auto k = static_cast<lua_Unsigned>(lua_tointeger(L, -2));
      if (k > max_len) return cx.fail("array too large or too sparse");
      if (k > arr.size()) arr.resize(static_cast<std::size_t>(k));
      if (!to_json(L, lua_gettop(L), arr[static_cast<std::size_t>(k - 1)], cx, depth + 1)) {
        cx.where.push_back("[" + std::to_string(k - 1) + "]");
        return false;
      }
      ++count;
      last = std::max(last, k);
      lua_pop(L, 1);
    }
    arr.resize(static_cast<std::size_t>(last));
    if (!marked && count != last) return cx.fail(mixed_keys);
    return true;
  }
  json::object& obj = out.emplace_object();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) return cx.fail(mixed_keys);
    std::size_t kn = 0;
    const char* kp = lua_tolstring(L, -2, &kn);
    if (!valid_utf8(kp, kn)) return cx.fail("key is not valid UTF-8");
    json::value& slot = obj[json::string_view(kp, kn)];
    if (!to_json(L, lua_gettop(L), slot, cx, depth + 1)) {
      cx.where.push_back("." + std::string(kp, kn));
      return false;
    }
    lua_pop(L, 1);
  }
  return true;
}

bool to_json(lua_State* L, int idx, json::value& out, to_json_ctx& cx, int depth) {
  const int t = lua_type(L, idx);
  switch (t) {
    case LUA_TNIL: out = nullptr; return true;
    case LUA_TBOOLEAN: out = lua_toboolean(L, idx) != 0; return true;
    case LUA_TNUMBER: {
      if (lua_isinteger(L, idx)) {
        out = static_cast<std::int64_t>(lua_tointeger(L, idx));
        return true;
      }
      const double d = static_cast<double>(lua_tonumber(L, idx));
      if (!std::isfinite(d)) return cx.fail("cannot convert NaN or infinity to JSON");
      out = d;
      return true;
    }
    case LUA_TSTRING: {
      std::size_t n = 0;
      const char* p = lua_tolstring(L, idx, &n);
      if (!valid_utf8(p, n)) return cx.fail("string is not valid UTF-8");
      out.emplace_string().assign(p, n);
      return true;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == null_sentinel()) {
        out = nullptr;
        return true;
      }
      return cx.fail("cannot convert a userdata to JSON");
    case LUA_TTABLE: return table_to_json(L, idx, out, cx, depth);
    default: return cx.fail(std::string("cannot convert a ") + lua_typename(L, t) + " to JSON");
  }
}

// ---------------------------------------------------------------------------------------
// Base library replacements

int finish_pcall(lua_State* L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (is_fatal(L, status)) return lua_error(L);  // re-raise: limits end the call
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - static_cast<int>(extra);
}

int sb_pcall(lua_State* L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  const int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
  return finish_pcall(L, status, 0);
}

int sb_xpcall(lua_State* L) {
  const int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  const int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
  return finish_pcall(L, status, 2);
}

// coroutine.resume (upvalue 1: the original), re-raising limit failures.
int sb_resume(lua_State* L) {
  lua_State* co = lua_tothread(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  if (co != nullptr && lua_gettop(L) >= 2 && !lua_toboolean(L, 1)) {
    auto& s = st(L);
    if (s.aborted == abort_reason::none && s.memory_refused &&
        (lua_status(co) == LUA_ERRMEM || is_memory_message(L, 2)))
      s.aborted = abort_reason::memory;
    if (s.aborted != abort_reason::none) {
      lua_settop(L, 2);
      return lua_error(L);
    }
  }
  return lua_gettop(L);
}

// setmetatable (upvalue 1: the original), refusing __gc: no finalizer may run script code.
int sb_setmetatable(lua_State* L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    const bool has_gc = lua_rawget(L, 2) != LUA_TNIL;
    lua_pop(L, 1);
    if (has_gc) return luaL_error(L, "__gc metamethods are not allowed in the sandbox");
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

[[gnu::noinline]] void deliver_print(state& s) noexcept {
  try {
    s.print_hook(s.print_line);
  } catch (...) {  // a logging hook must not fail the script
  }
}

int sb_print(lua_State* L) {
  auto& s = st(L);
  if (!s.print_hook) return 0;
  s.print_line.clear();  // capacity max_print reserved: appends below never allocate
  const int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) {
    std::size_t len = 0;
    const char* str = luaL_tolstring(L, i, &len);
    if (i > 1 && s.print_line.size() < max_print) s.print_line.push_back('\t');
    const std::size_t room = max_print - s.print_line.size();
    s.print_line.append(str, std::min(len, room));
    lua_pop(L, 1);
  }
  deliver_print(s);
  return 0;
}

// ---------------------------------------------------------------------------------------
// string: budgeted pattern matching. The semantics are those of Lua 5.4's lstrlib (patterns,
// captures, %b, %f, anchors, gmatch's init and empty-match rule, gsub's replacements); the
// difference is that every matching step is charged to the instruction budget.

namespace pattern {

constexpr int max_captures = 32;
constexpr std::ptrdiff_t cap_unfinished = -1;
constexpr std::ptrdiff_t cap_position = -2;
constexpr int max_recursion = 200;
constexpr std::uint64_t account_every = 4096;
constexpr char esc = '%';
constexpr const char* specials = "^$*+?.([%-";

unsigned char uc(char c) { return static_cast<unsigned char>(c); }

struct match_state {
  const char* src_init;
  const char* src_end;
  const char* p_end;
  lua_State* L;
  int depth_left;
  int level;
  std::uint64_t steps;
  struct {
    const char* init;
    std::ptrdiff_t len;
  } capture[max_captures];
};

void tick(match_state& ms, std::uint64_t n) {
  ms.steps += n;
  if (ms.steps >= account_every) {
    const std::uint64_t t = ms.steps;
    ms.steps = 0;
    charge(ms.L, t);
  }
}

void flush(match_state& ms) {
  if (ms.steps != 0) {
    const std::uint64_t t = ms.steps;
    ms.steps = 0;
    charge(ms.L, t);
  }
}

void prepare(match_state& ms, lua_State* L, const char* s, std::size_t ls, const char* p, std::size_t lp) {
  ms.L = L;
  ms.depth_left = max_recursion;
  ms.src_init = s;
  ms.src_end = s + ls;
  ms.p_end = p + lp;
  ms.level = 0;
  ms.steps = 0;
}

// Cost of matching one character against the class [p, ep): brackets cost by their length.
std::uint64_t item_cost(const char* p, const char* ep) { return 1 + (static_cast<std::uint64_t>(ep - p) >> 4); }

const char* do_match(match_state& ms, const char* s, const char* p);

int check_capture(match_state& ms, int l) {
  l -= '1';
  if (l < 0 || l >= ms.level || ms.capture[l].len == cap_unfinished)
    return luaL_error(ms.L, "invalid capture index %%%d", l + 1);
  return l;
}

int capture_to_close(match_state& ms) {
  for (int level = ms.level - 1; level >= 0; --level)
    if (ms.capture[level].len == cap_unfinished) return level;
  return luaL_error(ms.L, "invalid pattern capture");
}

const char* class_end(match_state& ms, const char* p) {
  switch (*p++) {
    case esc:
      if (p == ms.p_end) luaL_error(ms.L, "malformed pattern (ends with '%%')");
      return p + 1;
    case '[':
      if (*p == '^') p++;
      do {
        if (p == ms.p_end) luaL_error(ms.L, "malformed pattern (missing ']')");
        if (*(p++) == esc && p < ms.p_end) p++;
      } while (*p != ']');
      return p + 1;
    default: return p;
  }
}

bool match_class(int c, int cl) {
  int res = 0;
  switch (std::tolower(cl)) {
    case 'a': res = std::isalpha(c); break;
    case 'c': res = std::iscntrl(c); break;
    case 'd': res = std::isdigit(c); break;
    case 'g': res = std::isgraph(c); break;
    case 'l': res = std::islower(c); break;
    case 'p': res = std::ispunct(c); break;
    case 's': res = std::isspace(c); break;
    case 'u': res = std::isupper(c); break;
    case 'w': res = std::isalnum(c); break;
    case 'x': res = std::isxdigit(c); break;
    default: return cl == c;
  }
  return std::islower(cl) ? res != 0 : res == 0;
}

// p at '[', ec at the closing ']'.
bool match_bracket_class(int c, const char* p, const char* ec) {
  bool sig = true;
  if (*(p + 1) == '^') {
    sig = false;
    p++;
  }
  while (++p < ec) {
    if (*p == esc) {
      p++;
      if (match_class(c, uc(*p))) return sig;
    } else if (*(p + 1) == '-' && p + 2 < ec) {
      p += 2;
      if (uc(*(p - 2)) <= c && c <= uc(*p)) return sig;
    } else if (uc(*p) == c) {
      return sig;
    }
  }
  return !sig;
}

bool single_match(const match_state& ms, const char* s, const char* p, const char* ep) {
  if (s >= ms.src_end) return false;
  const int c = uc(*s);
  switch (*p) {
    case '.': return true;
    case esc: return match_class(c, uc(*(p + 1)));
    case '[': return match_bracket_class(c, p, ep - 1);
    default: return uc(*p) == c;
  }
}

const char* match_balance(match_state& ms, const char* s, const char* p) {
  if (p >= ms.p_end - 1) luaL_error(ms.L, "malformed pattern (missing arguments to '%%b')");
  if (*s != *p) return nullptr;  // s may be src_end: Lua strings end with '\0'
  const char open = *p;
  const char close = *(p + 1);
  const char* start = s;
  int depth = 1;
  while (++s < ms.src_end) {
    if (*s == close) {
      if (--depth == 0) {
        tick(ms, static_cast<std::uint64_t>(s - start));
        return s + 1;
      }
    } else if (*s == open) {
      depth++;
    }
  }
  tick(ms, static_cast<std::uint64_t>(s - start));
  return nullptr;
}

const char* max_expand(match_state& ms, const char* s, const char* p, const char* ep, std::uint64_t cost) {
  std::ptrdiff_t i = 0;
  while (single_match(ms, s + i, p, ep)) i++;
  tick(ms, static_cast<std::uint64_t>(i) * cost);
  for (; i >= 0; --i) {
    const char* res = do_match(ms, s + i, ep + 1);
    if (res) return res;
  }
  return nullptr;
}

const char* min_expand(match_state& ms, const char* s, const char* p, const char* ep, std::uint64_t cost) {
  for (;;) {
    const char* res = do_match(ms, s, ep + 1);
    if (res) return res;
    if (!single_match(ms, s, p, ep)) return nullptr;
    s++;
    tick(ms, cost);
  }
}

const char* start_capture(match_state& ms, const char* s, const char* p, std::ptrdiff_t what) {
  if (ms.level >= max_captures) luaL_error(ms.L, "too many captures");
  ms.capture[ms.level].init = s;
  ms.capture[ms.level].len = what;
  ms.level++;
  const char* res = do_match(ms, s, p);
  if (!res) ms.level--;
  return res;
}

const char* end_capture(match_state& ms, const char* s, const char* p) {
  const int l = capture_to_close(ms);
  ms.capture[l].len = s - ms.capture[l].init;
  const char* res = do_match(ms, s, p);
  if (!res) ms.capture[l].len = cap_unfinished;
  return res;
}

const char* match_capture(match_state& ms, const char* s, int l) {
  l = check_capture(ms, l);
  if (ms.capture[l].len < 0) return nullptr;  // a position capture matches no text
  const auto len = static_cast<std::size_t>(ms.capture[l].len);
  tick(ms, 1 + len / 16);
  if (static_cast<std::size_t>(ms.src_end - s) >= len && std::memcmp(ms.capture[l].init, s, len) == 0) return s + len;
  return nullptr;
}

const char* do_match(match_state& ms, const char* s, const char* p) {
  if (ms.depth_left-- == 0) luaL_error(ms.L, "pattern too complex");
  for (;;) {
    tick(ms, 1);
    if (p == ms.p_end) break;
    switch (*p) {
      case '(':
        if (*(p + 1) == ')')
          s = start_capture(ms, s, p + 2, cap_position);
        else
          s = start_capture(ms, s, p + 1, cap_unfinished);
        goto done;
      case ')': s = end_capture(ms, s, p + 1); goto done;
      case '$':
        if (p + 1 != ms.p_end) goto single;
        s = (s == ms.src_end) ? s : nullptr;
        goto done;
      case esc:
        switch (*(p + 1)) {
          case 'b':
            s = match_balance(ms, s, p + 2);
            if (s) {
              p += 4;
              continue;
            }
            goto done;
          case 'f': {
            p += 2;
            if (*p != '[') luaL_error(ms.L, "missing '[' after '%%f' in pattern");
            const char* ep = class_end(ms, p);
            tick(ms, item_cost(p, ep));
            const char previous = (s == ms.src_init) ? '\0' : *(s - 1);
            if (!match_bracket_class(uc(previous), p, ep - 1) && match_bracket_class(uc(*s), p, ep - 1)) {
              p = ep;
              continue;
            }
            s = nullptr;
            goto done;
          }
          case '0':
          case '1':
          case '2':
          case '3':
          case '4':
          case '5':
          case '6':
          case '7':
          case '8':
          case '9':
            s = match_capture(ms, s, uc(*(p + 1)));
            if (s) {
              p += 2;
              continue;
            }
            goto done;
          default: goto single;
        }
      default:
        goto single;
    }
  single: {
    const char* ep = class_end(ms, p);
    const std::uint64_t cost = item_cost(p, ep);
    tick(ms, cost);
    if (!single_match(ms, s, p, ep)) {
      if (*ep == '*' || *ep == '?' || *ep == '-') {  // accepts empty
        p = ep + 1;
        continue;
      }
      s = nullptr;
      goto done;
    }
    switch (*ep) {
      case '?': {
        const char* res = do_match(ms, s + 1, ep + 1);
        if (res) {
          s = res;
          goto done;
        }
        p = ep + 1;
        continue;
      }
      case '+': s = max_expand(ms, s + 1, p, ep, cost); goto done;
      case '*': s = max_expand(ms, s, p, ep, cost); goto done;
      case '-': s = min_expand(ms, s, p, ep, cost); goto done;
      default:
        s++;
        p = ep;
        continue;
    }
  }
  }
done:
  ms.depth_left++;
  return s;
}

std::ptrdiff_t get_onecapture(match_state& ms, int i, const char* s, const char* e, const char** cap) {
  if (i >= ms.level) {
    if (i != 0) luaL_error(ms.L, "invalid capture index %%%d", i + 1);
    *cap = s;
    return e - s;
  }
  const std::ptrdiff_t capl = ms.capture[i].len;
  *cap = ms.capture[i].init;
  if (capl == cap_unfinished)
    luaL_error(ms.L, "unfinished capture");
  else if (capl == cap_position)
    lua_pushinteger(ms.L, (ms.capture[i].init - ms.src_init) + 1);
  return capl;
}

void push_onecapture(match_state& ms, int i, const char* s, const char* e) {
  const char* cap = nullptr;
  const std::ptrdiff_t l = get_onecapture(ms, i, s, e, &cap);
  if (l != cap_position) lua_pushlstring(ms.L, cap, static_cast<std::size_t>(l));
}

int push_captures(match_state& ms, const char* s, const char* e) {
  const int n = (ms.level == 0 && s) ? 1 : ms.level;
  luaL_checkstack(ms.L, n, "too many captures");
  for (int i = 0; i < n; i++) push_onecapture(ms, i, s, e);
  return n;
}

// Lua's string positions: negative counts from the end; clipped to [1, inf).
std::size_t start_position(lua_Integer pos, std::size_t len) {
  if (pos > 0) return static_cast<std::size_t>(pos);
  if (pos == 0) return 1;
  if (pos < -static_cast<lua_Integer>(len)) return 1;
  return len + static_cast<std::size_t>(pos) + 1;
}

bool no_specials(const char* p, std::size_t lp) {
  return std::string_view(p, lp).find_first_of(std::string_view(specials)) == std::string_view::npos;
}

// Plain substring search, charged per candidate position.
const char* plain_find(lua_State* L, const char* s1, std::size_t l1, const char* s2, std::size_t l2) {
  if (l2 == 0) return s1;
  if (l2 > l1) return nullptr;
  const std::uint64_t cost = 1 + l2 / 16;
  std::uint64_t pending = 0;
  const char* cur = s1;
  const char* last = s1 + (l1 - l2);
  while (cur <= last) {
    const void* hit = std::memchr(cur, *s2, static_cast<std::size_t>(last - cur) + 1);
    if (!hit) break;
    const char* c = static_cast<const char*>(hit);
    pending += cost;
    if (pending >= account_every) {
      charge(L, pending);
      pending = 0;
    }
    if (std::memcmp(c + 1, s2 + 1, l2 - 1) == 0) {
      charge(L, pending);
      return c;
    }
    cur = c + 1;
  }
  charge(L, pending);
  return nullptr;
}

int find_aux(lua_State* L, bool find) {
  std::size_t ls = 0;
  std::size_t lp = 0;
  const char* s = luaL_checklstring(L, 1, &ls);
  const char* p = luaL_checklstring(L, 2, &lp);
  const std::size_t init = start_position(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    lua_pushnil(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
    const char* s2 = plain_find(L, s + init, ls - init, p, lp);
    if (s2) {
      lua_pushinteger(L, (s2 - s) + 1);
      lua_pushinteger(L, static_cast<lua_Integer>(s2 - s) + static_cast<lua_Integer>(lp));
      return 2;
    }
  } else {
    match_state ms;
    const char* s1 = s + init;
    const bool anchor = (*p == '^');
    if (anchor) {
      p++;
      lp--;
    }
    prepare(ms, L, s, ls, p, lp);
    do {
      ms.level = 0;
      const char* res = do_match(ms, s1, p);
      if (res) {
        flush(ms);
        if (find) {
          lua_pushinteger(L, (s1 - s) + 1);
          lua_pushinteger(L, res - s);
          return push_captures(ms, nullptr, nullptr) + 2;
        }
        return push_captures(ms, s1, res);
      }
    } while (s1++ < ms.src_end && !anchor);
    flush(ms);
  }
  lua_pushnil(L);
  return 1;
}

int str_find(lua_State* L) { return find_aux(L, true); }
int str_match(lua_State* L) { return find_aux(L, false); }

// Upvalues: subject, pattern, next start offset, end offset of the last match (-1: none).
int gmatch_step(lua_State* L) {
  std::size_t ls = 0;
  std::size_t lp = 0;
  const char* s = lua_tolstring(L, lua_upvalueindex(1), &ls);
  const char* p = lua_tolstring(L, lua_upvalueindex(2), &lp);
  const lua_Integer pos = lua_tointeger(L, lua_upvalueindex(3));
  const lua_Integer last = lua_tointeger(L, lua_upvalueindex(4));
  match_state ms;
  prepare(ms, L, s, ls, p, lp);
  for (const char* src = s + pos; src <= ms.src_end; src++) {
    ms.level = 0;
    const char* e = do_match(ms, src, p);
    if (e && (last < 0 || e != s + last)) {
      flush(ms);
      lua_pushinteger(L, e - s);
      lua_replace(L, lua_upvalueindex(3));
      lua_pushinteger(L, e - s);
      lua_replace(L, lua_upvalueindex(4));
      return push_captures(ms, src, e);
    }
  }
  flush(ms);
  lua_pushinteger(L, static_cast<lua_Integer>(ls) + 1);  // exhausted: later calls return at once
  lua_replace(L, lua_upvalueindex(3));
  return 0;
}

int str_gmatch(lua_State* L) {
  std::size_t ls = 0;
  std::size_t lp = 0;
  luaL_checklstring(L, 1, &ls);
  luaL_checklstring(L, 2, &lp);
  std::size_t init = start_position(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) init = ls + 1;
  lua_settop(L, 2);
  lua_pushinteger(L, static_cast<lua_Integer>(init));
  lua_pushinteger(L, -1);
  lua_pushcclosure(L, gmatch_step, 4);
  return 1;
}

void add_s(match_state& ms, luaL_Buffer* b, const char* s, const char* e) {
  lua_State* L = ms.L;
  std::size_t l = 0;
  const char* news = lua_tolstring(L, 3, &l);
  const char* p = nullptr;
  while ((p = static_cast<const char*>(std::memchr(news, esc, l))) != nullptr) {
    luaL_addlstring(b, news, static_cast<std::size_t>(p - news));
    p++;
    if (*p == esc) {
      luaL_addchar(b, *p);
    } else if (*p == '0') {
      luaL_addlstring(b, s, static_cast<std::size_t>(e - s));
    } else if (std::isdigit(uc(*p))) {
      const char* cap = nullptr;
      const std::ptrdiff_t resl = get_onecapture(ms, *p - '1', s, e, &cap);
      if (resl == cap_position)
        luaL_addvalue(b);
      else
        luaL_addlstring(b, cap, static_cast<std::size_t>(resl));
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", esc);
    }
    l -= static_cast<std::size_t>(p + 1 - news);
    news = p + 1;
  }
  luaL_addlstring(b, news, l);
}

bool add_value(match_state& ms, luaL_Buffer* b, const char* s, const char* e, int tr) {
  lua_State* L = ms.L;
  switch (tr) {
    case LUA_TFUNCTION: {
      lua_pushvalue(L, 3);
      const int n = push_captures(ms, s, e);
      lua_call(L, n, 1);
      break;
    }
    case LUA_TTABLE:
      push_onecapture(ms, 0, s, e);
      lua_gettable(L, 3);
      break;
    default:
      add_s(ms, b, s, e);
      return true;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, static_cast<std::size_t>(e - s));
    return false;
  }
  if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    return false;
  }
  luaL_addvalue(b);
  return true;
}

int str_gsub(lua_State* L) {
  std::size_t srcl = 0;
  std::size_t lp = 0;
  const char* src = luaL_checklstring(L, 1, &srcl);
  const char* p = luaL_checklstring(L, 2, &lp);
  const char* lastmatch = nullptr;
  const int tr = lua_type(L, 3);
  const lua_Integer max_s = luaL_optinteger(L, 4, static_cast<lua_Integer>(srcl) + 1);
  const bool anchor = (*p == '^');
  lua_Integer n = 0;
  bool changed = false;
  match_state ms;
  luaL_Buffer b;
  luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                   "string/function/table");
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--;
  }
  prepare(ms, L, src, srcl, p, lp);
  while (n < max_s) {
    ms.level = 0;
    const char* e = do_match(ms, src, p);
    if (e && e != lastmatch) {
      n++;
      changed = add_value(ms, &b, src, e, tr) || changed;
      src = lastmatch = e;
    } else if (src < ms.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  flush(ms);
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, static_cast<std::size_t>(ms.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

}  // namespace pattern

// string.rep (upvalue 1: the original): "" at once for empty pieces, refused past the cap.
int sb_rep(lua_State* L) {
  std::size_t l = 0;
  std::size_t lsep = 0;
  luaL_checklstring(L, 1, &l);
  const lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || l + lsep == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  const auto count = static_cast<std::uint64_t>(n);
  const std::uint64_t cap = st(L).limits.memory_bytes;
  if (l > cap || lsep > cap || count > cap / (l + lsep) + 1 || count * l + (count - 1) * lsep > cap)
    return luaL_error(L, "resulting string too large");
  charge(L, count / 16);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// ---------------------------------------------------------------------------------------
// table: element shifts charged to the budget (their count may come from a __len).

int sb_insert(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const lua_Integer e = static_cast<lua_Integer>(static_cast<lua_Unsigned>(luaL_len(L, 1)) + 1u);  // first empty
  lua_Integer pos = e;
  switch (lua_gettop(L)) {
    case 2: break;
    case 3: {
      pos = luaL_checkinteger(L, 2);
      luaL_argcheck(L, static_cast<lua_Unsigned>(pos) - 1u < static_cast<lua_Unsigned>(e), 2, "position out of bounds");
      charge(L, static_cast<lua_Unsigned>(e) - static_cast<lua_Unsigned>(pos));
      for (lua_Integer i = e; i > pos; i--) {
        lua_geti(L, 1, i - 1);
        lua_seti(L, 1, i);
      }
      break;
    }
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
  }
  lua_seti(L, 1, pos);
  return 0;
}

int sb_remove(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const lua_Integer size = luaL_len(L, 1);
  lua_Integer pos = luaL_optinteger(L, 2, size);
  if (pos != size)
    luaL_argcheck(L, static_cast<lua_Unsigned>(pos) - 1u <= static_cast<lua_Unsigned>(size), 2,
                  "position out of bounds");
  if (pos < size) charge(L, static_cast<lua_Unsigned>(size) - static_cast<lua_Unsigned>(pos));
  lua_geti(L, 1, pos);
  for (; pos < size; pos++) {
    lua_geti(L, 1, pos + 1);
    lua_seti(L, 1, pos);
  }
  lua_pushnil(L);
  lua_seti(L, 1, pos);
  return 1;
}

// table.move (upvalue 1: the original): the element count is charged up front.
int sb_move(lua_State* L) {
  const lua_Integer f = luaL_checkinteger(L, 2);
  const lua_Integer e = luaL_checkinteger(L, 3);
  luaL_checkinteger(L, 4);
  if (e >= f) charge(L, static_cast<lua_Unsigned>(e) - static_cast<lua_Unsigned>(f) + 1u);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// The default order of table.sort, charged per comparison (strings by length).
int budget_less(lua_State* L) {
  std::uint64_t cost = 1;
  for (int i = 1; i <= 2; ++i)
    if (lua_type(L, i) == LUA_TSTRING) cost += lua_rawlen(L, i) / 64;
  charge(L, cost);
  lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
  return 1;
}

// table.sort (upvalue 1: the original).
int sb_sort(lua_State* L) {
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    lua_pushcfunction(L, budget_less);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

// ---------------------------------------------------------------------------------------
// The pliers table

int pl_array(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  auto& s = st(L);
  if (lua_getmetatable(L, 1)) {
    if (lua_topointer(L, -1) != s.array_mt) return luaL_error(L, "pliers.array: the table already has a metatable");
    lua_pop(L, 1);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s.array_mt_ref);
    lua_setmetatable(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}

int pl_is_array(lua_State* L) {
  lua_pushboolean(L, lua_type(L, 1) == LUA_TTABLE && has_array_mark(L, 1, st(L)));
  return 1;
}

[[gnu::noinline]] bool encode_into_scratch(lua_State* L, state& s) noexcept {
  try {
    json::value v;
    to_json_ctx cx(s);
    if (!to_json(L, 1, v, cx, 0)) {
      s.raise_msg = "pliers.json_encode: " + cx.describe("value");
      return false;
    }
    s.scratch_text = json::serialize(v);
    return true;
  } catch (const std::exception& e) {
    s.raise_msg = std::string("pliers.json_encode: ") + e.what();
    return false;
  }
}

int pl_json_encode(lua_State* L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  auto& s = st(L);
  if (!encode_into_scratch(L, s)) {
    lua_pushlstring(L, s.raise_msg.data(), s.raise_msg.size());
    return lua_error(L);
  }
  lua_pushlstring(L, s.scratch_text.data(), s.scratch_text.size());
  return 1;
}

[[gnu::noinline]] bool decode_into_scratch(state& s, std::string_view text) noexcept {
  try {
    json::parse_options opt;
    opt.max_depth = max_depth;
    boost::system::error_code ec;
    s.scratch = json::parse(text, ec, json::storage_ptr(), opt);
    if (ec) {
      s.raise_msg = "pliers.json_decode: " + ec.message();
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    s.raise_msg = std::string("pliers.json_decode: ") + e.what();
    return false;
  }
}

int pl_json_decode(lua_State* L) {
  std::size_t n = 0;
  const char* p = luaL_checklstring(L, 1, &n);
  auto& s = st(L);
  if (!decode_into_scratch(s, std::string_view(p, n))) {
    lua_pushlstring(L, s.raise_msg.data(), s.raise_msg.size());
    return lua_error(L);
  }
  push_json(L, s, s.scratch, 0, true);
  return 1;
}

// Runs a host function with the Lua arguments; the result goes to s.scratch, an error
// message to s.raise_msg.
[[gnu::noinline]] bool invoke_host(lua_State* L, state& s, host_entry& h) noexcept {
  try {
    const int n = lua_gettop(L);
    s.host_args.clear();
    s.host_args.resize(static_cast<std::size_t>(n));
    for (int i = 1; i <= n; ++i) {
      to_json_ctx cx(s);
      if (!to_json(L, i, s.host_args[static_cast<std::size_t>(i - 1)], cx, 0)) {
        s.raise_msg = "pliers." + h.name + ": " + cx.describe("argument " + std::to_string(i));
        s.host_args.clear();
        return false;
      }
    }
    auto r = h.fn(std::span<const json::value>(s.host_args));
    s.host_args.clear();
    if (!r) {
      s.raise_msg = "pliers." + h.name + ": " + r.error().message;
      s.host_error = std::move(r).error();
      s.host_error_msg = s.raise_msg;
      return false;
    }
    s.scratch = std::move(*r);
    return true;
  } catch (const std::exception& e) {
    s.raise_msg = "pliers." + h.name + ": " + e.what();
  } catch (...) {
    s.raise_msg = "pliers." + h.name + ": unknown exception";
  }
  s.host_args.clear();
  return false;
}

int host_trampoline(lua_State* L) {
  auto& s = st(L);
  auto* h = static_cast<host_entry*>(lua_touserdata(L, lua_upvalueindex(1)));
  if (!invoke_host(L, s, *h)) {
    lua_pushlstring(L, s.raise_msg.data(), s.raise_msg.size());
    return lua_error(L);
  }
  push_json(L, s, s.scratch, 0, true);
  return 1;
}

void install_pending_hosts(lua_State* L, state& s) {
  if (!s.hosts_pending) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s.pliers_ref);
  for (auto& h : s.hosts) {
    if (h->installed) continue;
    lua_pushlstring(L, h->name.data(), h->name.size());
    lua_pushlightuserdata(L, h.get());
    lua_pushcclosure(L, host_trampoline, 1);
    lua_rawset(L, -3);
    h->installed = true;
  }
  lua_pop(L, 1);
  s.hosts_pending = false;
}

// ---------------------------------------------------------------------------------------
// Setup

void replace_field(lua_State* L, int table, const char* name, lua_CFunction fn, bool original_as_upvalue) {
  if (original_as_upvalue) {
    lua_getfield(L, table, name);
    lua_pushcclosure(L, fn, 1);
  } else {
    lua_pushcfunction(L, fn);
  }
  lua_setfield(L, table, name);
}

int setup_body(lua_State* L) {
  auto& s = st(L);
  static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},         {LUA_STRLIBNAME, luaopen_string},
                                  {LUA_TABLIBNAME, luaopen_table},   {LUA_MATHLIBNAME, luaopen_math},
                                  {LUA_UTF8LIBNAME, luaopen_utf8},   {LUA_COLIBNAME, luaopen_coroutine}};
  for (const auto& lib : libs) {
    luaL_requiref(L, lib.name, lib.func, 1);
    lua_pop(L, 1);
  }
  lua_pushglobaltable(L);
  const int g = lua_gettop(L);
  for (const char* name : {"dofile", "loadfile", "load", "loadstring", "require", "collectgarbage", "getfenv",
                           "setfenv", "module", "newproxy"}) {
    lua_pushnil(L);
    lua_setfield(L, g, name);
  }
  replace_field(L, g, "print", sb_print, false);
  replace_field(L, g, "pcall", sb_pcall, false);
  replace_field(L, g, "xpcall", sb_xpcall, false);
  replace_field(L, g, "setmetatable", sb_setmetatable, true);

  lua_getfield(L, g, LUA_STRLIBNAME);
  const int str = lua_gettop(L);
  lua_pushnil(L);
  lua_setfield(L, str, "dump");
  replace_field(L, str, "find", pattern::str_find, false);
  replace_field(L, str, "match", pattern::str_match, false);
  replace_field(L, str, "gmatch", pattern::str_gmatch, false);
  replace_field(L, str, "gsub", pattern::str_gsub, false);
  replace_field(L, str, "rep", sb_rep, true);

  lua_getfield(L, g, LUA_TABLIBNAME);
  const int tab = lua_gettop(L);
  replace_field(L, tab, "insert", sb_insert, false);
  replace_field(L, tab, "remove", sb_remove, false);
  replace_field(L, tab, "move", sb_move, true);
  replace_field(L, tab, "sort", sb_sort, true);

  lua_getfield(L, g, LUA_COLIBNAME);
  replace_field(L, lua_gettop(L), "resume", sb_resume, true);

  // The array marker; protected so scripts cannot change or unmark it.
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "pliers.array");
  lua_setfield(L, -2, "__metatable");
  s.array_mt = lua_topointer(L, -1);
  s.array_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_createtable(L, 0, 8);
  lua_pushlightuserdata(L, null_sentinel());
  lua_setfield(L, -2, "null");
  replace_field(L, lua_gettop(L), "array", pl_array, false);
  replace_field(L, lua_gettop(L), "is_array", pl_is_array, false);
  replace_field(L, lua_gettop(L), "json_encode", pl_json_encode, false);
  replace_field(L, lua_gettop(L), "json_decode", pl_json_decode, false);
  lua_pushvalue(L, -1);
  s.pliers_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_setfield(L, g, "pliers");
  return 0;
}

// The message handler of every operation: the error as a string plus a stack traceback.
int message_handler(lua_State* L) {
  auto& s = st(L);
  if (s.aborted != abort_reason::none) return 1;
  const char* msg = nullptr;
  const int t = lua_type(L, 1);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    std::size_t n = 0;
    msg = lua_tolstring(L, 1, &n);
    if (!s.host_error_msg.empty() && std::string_view(msg, n) == s.host_error_msg) s.host_error_escaped = true;
  } else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
  } else {
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

// ---------------------------------------------------------------------------------------
// Operations

// Runs body(ctx) protected, with fresh limits; results from stack index 2.
int run_protected(state& s, lua_CFunction body, void* ctx, int nresults) {
  lua_State* L = s.L;
  s.charged = 0;
  s.next_check = 0;
  s.aborted = abort_reason::none;
  s.memory_refused = false;
  s.host_error.reset();
  s.host_error_msg.clear();
  s.host_error_escaped = false;
  const auto now = std::chrono::steady_clock::now();
  s.deadline = s.limits.timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::time_point::max() - now)
                   ? std::chrono::steady_clock::time_point::max()
                   : now + s.limits.timeout;
  s.in_op = true;
  lua_settop(L, 0);
  lua_pushcfunction(L, message_handler);
  lua_pushcfunction(L, body);
  lua_pushlightuserdata(L, ctx);
  const int status = lua_pcall(L, 1, nresults, 1);
  s.in_op = false;
  return status;
}

bool failed_on_memory(const state& s, int status) {
  return s.aborted == abort_reason::memory || status == LUA_ERRMEM ||
         (s.aborted == abort_reason::none && s.memory_refused &&
          (status == LUA_ERRERR || is_memory_message(s.L, -1)));
}

// The error of a failed operation (status != LUA_OK, error object on top).
error op_error(const state& s, int status, std::string field = {}) {
  switch (s.aborted) {
    case abort_reason::budget:
      return make_failure(errc::timeout, lua_failure::timeout,
                          "instruction budget exhausted (" + std::to_string(s.limits.instructions) + " instructions)",
                          std::move(field));
    case abort_reason::time:
      return make_failure(errc::timeout, lua_failure::timeout,
                          "timed out after " + std::to_string(s.limits.timeout.count()) + " ms", std::move(field));
    case abort_reason::memory:
    case abort_reason::none: break;
  }
  if (failed_on_memory(s, status))
    return make_failure(errc::payload_too_large, lua_failure::memory_limit,
                        "memory limit of " + std::to_string(s.limits.memory_bytes) + " bytes exceeded", std::move(field));
  std::string msg = "(error object is not a string)";
  if (lua_type(s.L, -1) == LUA_TSTRING) {
    std::size_t n = 0;
    const char* m = lua_tolstring(s.L, -1, &n);
    msg.assign(m, n);
  }
  const errc code = s.host_error_escaped && s.host_error ? s.host_error->code : errc::invalid_argument;
  return make_failure(code, lua_failure::script_error, msg, std::move(field));
}

// Leaves the state clean after an operation; after a memory failure, collects the garbage
// the failed call left so the next one has its headroom back.
void end_op(state& s, bool memory_failure) {
  lua_settop(s.L, 0);
  if (memory_failure) lua_gc(s.L, LUA_GCCOLLECT, 0);
  if (!s.scratch.is_null()) s.scratch = nullptr;
  if (s.scratch_text.capacity() > (std::size_t{1} << 20)) std::string().swap(s.scratch_text);
}

error reentrant_error() {
  return make_failure(errc::internal, lua_failure::script_error,
                      "re-entrant use of a lua_sandbox (from one of its own host functions)");
}

std::string first_line(const error& e) {
  const auto nl = e.message.find('\n');
  return nl == std::string::npos ? e.message : e.message.substr(0, nl);
}

// The text after "<kind>: ".
std::string detail_of(const std::string& message) {
  const auto colon = message.find(": ");
  return colon == std::string::npos ? message : message.substr(colon + 2);
}

struct call_ctx {
  std::string_view name;  // by name when ref == 0
  int ref = 0;
  std::span<const json::value> args;
  const std::span<const event>* events = nullptr;  // call_with_events: the only argument
  const event* first = nullptr;                    // call_with_event: the first argument
  bool pushing_args = false;
  bool not_function = false;
};

int call_body(lua_State* L) {
  auto* c = static_cast<call_ctx*>(lua_touserdata(L, 1));
  auto& s = st(L);
  install_pending_hosts(L, s);
  if (c->ref > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushlstring(L, c->name.data(), c->name.size());
    lua_rawget(L, -2);
  }
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    c->not_function = true;
    return 0;
  }
  c->pushing_args = true;
  if (c->events) {
    push_events(L, s, *c->events);
    c->pushing_args = false;
    lua_call(L, 1, 1);
    return 1;
  }
  if (c->args.size() > max_args) luaL_error(L, "more than %d arguments", static_cast<int>(max_args));
  luaL_checkstack(L, static_cast<int>(c->args.size()) + 5, "too many arguments");
  if (c->first) {
    thread_local rfc3339_writer tw;  // keeps the day formatted last
    push_event(L, s, *c->first, tw, 0);
  }
  for (const json::value& a : c->args) push_json(L, s, a, 0, true);
  c->pushing_args = false;
  lua_call(L, clamp_int(c->args.size() + (c->first ? 1 : 0)), 1);
  return 1;
}

// Runs a call; on success the function's first result is at stack index 2.
result<void> run_call(state& s, call_ctx& c) {
  if (s.in_op) return reentrant_error();
  const int status = run_protected(s, call_body, &c, 1);
  if (status != LUA_OK) {
    auto e = op_error(s, status);
    const bool mem = lua_failure_of(e) == lua_failure::memory_limit;
    if (c.pushing_args && lua_failure_of(e) == lua_failure::script_error)
      e = make_failure(errc::invalid_argument, lua_failure::bad_argument, detail_of(first_line(e)), "args");
    end_op(s, mem);
    return e;
  }
  if (c.not_function) {
    end_op(s, false);
    if (c.ref > 0) return make_failure(errc::invalid_argument, lua_failure::script_error, "not a function");
    return make_failure(errc::not_found, lua_failure::script_error,
                        "no global function '" + std::string(c.name) + "'");
  }
  return {};
}

result<json::value> call_and_convert(state& s, call_ctx& c) {
  if (auto ok = run_call(s, c); !ok) return std::move(ok).error();
  json::value out;
  to_json_ctx cx(s);
  const bool converted = to_json(s.L, 2, out, cx, 0);
  end_op(s, false);
  if (!converted) return make_failure(errc::invalid_argument, lua_failure::bad_result, cx.describe("result"));
  return out;
}

struct load_ctx {
  std::string_view source;
  std::string chunk_name;  // with Lua's '=' prefix
  bool keep_function = false;  // compile only, and anchor the function (ref)
  int load_status = LUA_OK;
  int ref = 0;
};

int load_body(lua_State* L) {
  auto* c = static_cast<load_ctx*>(lua_touserdata(L, 1));
  install_pending_hosts(L, st(L));
  c->load_status = luaL_loadbufferx(L, c->source.data(), c->source.size(), c->chunk_name.c_str(), "t");
  if (c->load_status != LUA_OK) return 1;  // the message
  if (c->keep_function) {
    c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
  }
  lua_call(L, 0, 0);
  return 0;
}

// Loads (and runs, or keeps) a chunk; errors name `field`.
result<int> load_chunk(state& s, load_ctx& c, const std::string& field) {
  if (s.in_op) return reentrant_error();
  const int status = run_protected(s, load_body, &c, 1);
  if (status != LUA_OK) {
    auto e = op_error(s, status, field);
    end_op(s, lua_failure_of(e) == lua_failure::memory_limit);
    return e;
  }
  if (c.load_status != LUA_OK) {
    error e;
    if (c.load_status == LUA_ERRMEM || (s.memory_refused && is_memory_message(s.L, -1))) {
      e = make_failure(errc::payload_too_large, lua_failure::memory_limit,
                       "memory limit of " + std::to_string(s.limits.memory_bytes) + " bytes exceeded", field);
    } else {
      std::size_t n = 0;
      const char* m = lua_tolstring(s.L, -1, &n);
      e = make_failure(errc::invalid_argument, lua_failure::compile_error, m ? std::string(m, n) : "syntax error",
                       field);
    }
    end_op(s, lua_failure_of(e) == lua_failure::memory_limit);
    return e;
  }
  end_op(s, false);
  return c.ref;
}

struct global_ctx {
  std::string_view name;
  const json::value* value = nullptr;  // set_global
  bool pushing = false;
};

int get_global_body(lua_State* L) {
  auto* c = static_cast<global_ctx*>(lua_touserdata(L, 1));
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_pushlstring(L, c->name.data(), c->name.size());
  lua_rawget(L, -2);
  return 1;
}

int set_global_body(lua_State* L) {
  auto* c = static_cast<global_ctx*>(lua_touserdata(L, 1));
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_pushlstring(L, c->name.data(), c->name.size());
  c->pushing = true;
  push_json(L, st(L), *c->value, 0, true);
  c->pushing = false;
  lua_rawset(L, -3);
  return 0;
}

struct ref_ctx {
  std::string_view name;
  int ref = 0;
};

// Anchors the global function `name` in the registry (luaL_ref may allocate: protected).
int ref_global_body(lua_State* L) {
  auto* c = static_cast<ref_ctx*>(lua_touserdata(L, 1));
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_pushlstring(L, c->name.data(), c->name.size());
  lua_rawget(L, -2);
  if (lua_type(L, -1) == LUA_TFUNCTION) c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int unref_body(lua_State* L) {
  const auto ref = static_cast<int>(reinterpret_cast<std::intptr_t>(lua_touserdata(L, 1)));
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  return 0;
}

bool is_lua_identifier(const std::string& name) {
  static constexpr std::string_view keywords[] = {"and",   "break", "do",     "else", "elseif", "end",
                                                  "false", "for",   "function", "goto", "if",   "in",
                                                  "local", "nil",   "not",    "or",   "repeat", "return",
                                                  "then",  "true",  "until",  "while"};
  if (name.empty() || name.size() > 200) return false;
  if (!(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_')) return false;
  for (char ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_')) return false;
  return std::find(std::begin(keywords), std::end(keywords), name) == std::end(keywords);
}

}  // namespace

// -----------------------------------------------------------------------------------------
// lua_sandbox

lua_sandbox::lua_sandbox(std::unique_ptr<state> s) : s_(std::move(s)) {}
lua_sandbox::~lua_sandbox() = default;

result<std::unique_ptr<lua_sandbox>> lua_sandbox::create(std::string_view source, std::string_view chunk_name,
                                                         lua_limits limits,
                                                         std::vector<std::pair<std::string, host_function>> host_functions) {
  auto s = std::make_unique<state>();
  s->limits = limits;
  s->chunk_name = chunk_name.empty() ? "script" : std::string(chunk_name);
  s->print_line.reserve(max_print);
  s->L = lua_newstate(sandbox_alloc, s.get());
  if (!s->L)
    return make_failure(errc::payload_too_large, lua_failure::memory_limit,
                        "memory limit of " + std::to_string(limits.memory_bytes) + " bytes exceeded", "source");
  *static_cast<state**>(lua_getextraspace(s->L)) = s.get();
  lua_sethook(s->L, count_hook, LUA_MASKCOUNT, hook_interval);
  for (auto& [name, fn] : host_functions) {
    s->hosts.push_back(std::make_unique<host_entry>(host_entry{std::move(name), std::move(fn), false}));
    s->hosts_pending = true;
  }

  const int status = run_protected(*s, setup_body, nullptr, 0);
  if (status != LUA_OK) {
    auto e = op_error(*s, status, "source");
    end_op(*s, false);
    return e;
  }
  end_op(*s, false);

  load_ctx c;
  c.source = source;
  c.chunk_name = "=" + s->chunk_name;
  auto loaded = load_chunk(*s, c, "source");
  if (!loaded) return std::move(loaded).error();
  return std::unique_ptr<lua_sandbox>(new lua_sandbox(std::move(s)));
}

bool lua_sandbox::has_function(std::string_view global_name) const {
  state& s = *s_;
  if (s.in_op) return false;
  global_ctx c{global_name};
  const int status = run_protected(s, get_global_body, &c, 1);
  const bool found = status == LUA_OK && lua_type(s.L, 2) == LUA_TFUNCTION;
  end_op(s, status != LUA_OK && failed_on_memory(s, status));
  return found;
}

void lua_sandbox::set_function(std::string name, host_function fn) {
  for (auto& h : s_->hosts) {
    if (h->name == name) {
      h->fn = std::move(fn);
      return;
    }
  }
  s_->hosts.push_back(std::make_unique<host_entry>(host_entry{std::move(name), std::move(fn), false}));
  s_->hosts_pending = true;
}

void lua_sandbox::set_print(std::function<void(std::string_view)> hook) { s_->print_hook = std::move(hook); }

result<json::value> lua_sandbox::call(std::string_view name, std::span<const json::value> args) {
  call_ctx c;
  c.name = name;
  c.args = args;
  return call_and_convert(*s_, c);
}

result<json::value> lua_sandbox::call(const function_ref& fn, std::span<const json::value> args) {
  if (!fn.valid()) return make_failure(errc::invalid_argument, lua_failure::script_error, "invalid function_ref");
  call_ctx c;
  c.ref = fn.ref_;
  c.args = args;
  return call_and_convert(*s_, c);
}

result<json::value> lua_sandbox::call_with_events(const function_ref& fn, std::span<const event> events) {
  if (!fn.valid()) return make_failure(errc::invalid_argument, lua_failure::script_error, "invalid function_ref");
  call_ctx c;
  c.ref = fn.ref_;
  c.events = &events;
  return call_and_convert(*s_, c);
}

result<json::value> lua_sandbox::call_with_event(std::string_view name, const event& e,
                                                 std::span<const json::value> args) {
  call_ctx c;
  c.name = name;
  c.first = &e;
  c.args = args;
  return call_and_convert(*s_, c);
}

result<bool> lua_sandbox::test(const function_ref& fn, std::span<const json::value> args) {
  if (!fn.valid()) return make_failure(errc::invalid_argument, lua_failure::script_error, "invalid function_ref");
  call_ctx c;
  c.ref = fn.ref_;
  c.args = args;
  if (auto ok = run_call(*s_, c); !ok) return std::move(ok).error();
  const bool truthy = lua_toboolean(s_->L, 2) != 0;
  end_op(*s_, false);
  return truthy;
}

result<lua_sandbox::function_ref> lua_sandbox::function(std::string_view name) {
  state& s = *s_;
  if (s.in_op) return reentrant_error();
  ref_ctx c{name};
  const int status = run_protected(s, ref_global_body, &c, 0);
  if (status != LUA_OK) {
    auto e = op_error(s, status);
    end_op(s, lua_failure_of(e) == lua_failure::memory_limit);
    return e;
  }
  end_op(s, false);
  if (c.ref <= 0)
    return make_failure(errc::not_found, lua_failure::script_error, "no global function '" + std::string(name) + "'");
  return function_ref(c.ref);
}

result<lua_sandbox::function_ref> lua_sandbox::compile_expression(std::string_view expression,
                                                                  const std::vector<std::string>& parameters,
                                                                  std::string_view chunk_name) {
  std::string src;
  if (!parameters.empty()) {
    src = "local ";
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      if (!is_lua_identifier(parameters[i]))
        return make_failure(errc::invalid_argument, lua_failure::compile_error,
                            "parameter '" + parameters[i] + "' is not a Lua identifier", "parameters");
      if (i) src += ", ";
      src += parameters[i];
    }
    src += " = ...; ";
  }
  src += "return (";
  src += expression;
  src += "\n)";
  load_ctx c;
  c.source = src;
  c.chunk_name = "=" + std::string(chunk_name.empty() ? "expression" : chunk_name);
  c.keep_function = true;
  auto ref = load_chunk(*s_, c, "expression");
  if (!ref) return std::move(ref).error();
  return function_ref(*ref);
}

void lua_sandbox::release(function_ref& fn) {
  if (!fn.valid() || s_->in_op) return;
  const int status =
      run_protected(*s_, unref_body, reinterpret_cast<void*>(static_cast<std::intptr_t>(fn.ref_)), 0);
  end_op(*s_, status != LUA_OK && failed_on_memory(*s_, status));
  fn.ref_ = 0;
}

result<void> lua_sandbox::set_global(std::string_view name, const json::value& v) {
  state& s = *s_;
  if (s.in_op) return reentrant_error();
  global_ctx c{name, &v};
  const int status = run_protected(s, set_global_body, &c, 0);
  if (status != LUA_OK) {
    auto e = op_error(s, status, std::string(name));
    const bool mem = lua_failure_of(e) == lua_failure::memory_limit;
    if (c.pushing && lua_failure_of(e) == lua_failure::script_error)
      e = make_failure(errc::invalid_argument, lua_failure::bad_argument, detail_of(first_line(e)), std::string(name));
    end_op(s, mem);
    return e;
  }
  end_op(s, false);
  return {};
}

result<json::value> lua_sandbox::get_global(std::string_view name) {
  state& s = *s_;
  if (s.in_op) return reentrant_error();
  global_ctx c{name};
  const int status = run_protected(s, get_global_body, &c, 1);
  if (status != LUA_OK) {
    auto e = op_error(s, status);
    end_op(s, lua_failure_of(e) == lua_failure::memory_limit);
    return e;
  }
  json::value out;
  to_json_ctx cx(s);
  const bool converted = to_json(s.L, 2, out, cx, 0);
  end_op(s, false);
  if (!converted)
    return make_failure(errc::invalid_argument, lua_failure::bad_result, cx.describe(std::string(name)));
  return out;
}

std::size_t lua_sandbox::memory_used() const { return s_->used; }
const lua_limits& lua_sandbox::limits() const { return s_->limits; }

}  // namespace pliers
