#include "process/lua_sandbox.hpp"

#include <gtest/gtest.h>

#include "core/event_codec.hpp"

#include <boost/json.hpp>
#include <chrono>
#include <string>
#include <vector>

namespace pliers {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

std::unique_ptr<lua_sandbox> make(std::string_view source, lua_limits limits = {}) {
  auto sb = lua_sandbox::create(source, "test", limits);
  EXPECT_TRUE(sb) << (sb ? "" : sb.error().message);
  return sb ? std::move(*sb) : nullptr;
}

// Calls `f` with the arguments given as JSON texts.
result<json::value> call(lua_sandbox& sb, std::string_view f, std::vector<std::string> args = {}) {
  std::vector<json::value> values;
  for (const auto& a : args) values.push_back(json::parse(a));
  return sb.call(f, values);
}

std::string kind(const error& e) { return lua_error_type(e); }

// ---------------------------------------------------------------------------------------
// Loading

TEST(LuaSandbox, CompileErrorNamesChunkAndLine) {
  auto sb = lua_sandbox::create("x = 1\n\nlocal = 3\n", "plugin:p1");
  ASSERT_FALSE(sb);
  EXPECT_EQ(sb.error().code, errc::invalid_argument);
  EXPECT_EQ(sb.error().field, "source");
  EXPECT_EQ(kind(sb.error()), "compile_error");
  EXPECT_NE(sb.error().message.find("plugin:p1:3:"), std::string::npos) << sb.error().message;
}

TEST(LuaSandbox, RuntimeErrorWhileLoadingHasLineAndTraceback) {
  auto sb = lua_sandbox::create("local x = 1\nerror('boom')\n", "s");
  ASSERT_FALSE(sb);
  EXPECT_EQ(sb.error().code, errc::invalid_argument);
  EXPECT_EQ(sb.error().field, "source");
  EXPECT_EQ(kind(sb.error()), "script_error");
  EXPECT_NE(sb.error().message.find("s:2: boom"), std::string::npos) << sb.error().message;
  EXPECT_NE(sb.error().message.find("stack traceback"), std::string::npos);
}

TEST(LuaSandbox, BinaryChunksAreRefused) {
  auto sb = lua_sandbox::create(std::string("\x1bLua\x54\x00", 6), "bin");
  ASSERT_FALSE(sb);
  EXPECT_EQ(kind(sb.error()), "compile_error");
  EXPECT_NE(sb.error().message.find("binary"), std::string::npos) << sb.error().message;
}

TEST(LuaSandbox, TopLevelInfiniteLoopTimesOut) {
  lua_limits limits;
  limits.timeout = 50ms;
  auto sb = lua_sandbox::create("while true do end", "loop", limits);
  ASSERT_FALSE(sb);
  EXPECT_EQ(sb.error().code, errc::timeout);
  EXPECT_EQ(sb.error().field, "source");
}

TEST(LuaSandbox, HasFunction) {
  auto sb = make("function handle() end\nvalue = 3");
  EXPECT_TRUE(sb->has_function("handle"));
  EXPECT_FALSE(sb->has_function("value"));
  EXPECT_FALSE(sb->has_function("missing"));
}

TEST(LuaSandbox, CallingAMissingFunctionIsNotFound) {
  auto sb = make("x = 1");
  auto r = call(*sb, "nope");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::not_found);
  r = call(*sb, "x");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::not_found);
}

// ---------------------------------------------------------------------------------------
// The sandbox

struct escape_case {
  const char* name;
  const char* code;
};

class LuaSandboxEscape : public ::testing::TestWithParam<escape_case> {};

TEST_P(LuaSandboxEscape, IsRefused) {
  auto sb = make(std::string("function f() ") + GetParam().code + " end");
  auto r = call(*sb, "f");
  ASSERT_FALSE(r) << GetParam().code << " returned " << json::serialize(*r);
  EXPECT_EQ(kind(r.error()), "script_error") << r.error().message;
  // The state is still fine afterwards.
  EXPECT_TRUE(sb->has_function("f"));
}

INSTANTIATE_TEST_SUITE_P(
    All, LuaSandboxEscape,
    ::testing::Values(escape_case{"io_open", "return io.open('/etc/passwd')"},
                      escape_case{"io_popen", "return io.popen('id')"},
                      escape_case{"os_execute", "return os.execute('true')"},
                      escape_case{"os_exit", "os.exit(1)"},
                      escape_case{"os_getenv", "return os.getenv('HOME')"},
                      escape_case{"require", "return require('os')"},
                      escape_case{"load", "return load('return 1')()"},
                      escape_case{"loadstring", "return loadstring('return 1')()"},
                      escape_case{"dofile", "return dofile('/etc/passwd')"},
                      escape_case{"loadfile", "return loadfile('/etc/passwd')"},
                      escape_case{"debug_sethook", "debug.sethook()"},
                      escape_case{"debug_getregistry", "return debug.getregistry()"},
                      escape_case{"string_dump", "return string.dump(function() end)"},
                      escape_case{"string_dump_method", "return ('').dump(function() end)"},
                      escape_case{"package", "return package.loadlib('libc.so.6', 'system')"},
                      escape_case{"collectgarbage", "collectgarbage('stop')"},
                      escape_case{"getfenv", "return getfenv(1)"},
                      escape_case{"gc_metamethod", "setmetatable({}, {__gc = function() while true do end end})"}),
    [](const ::testing::TestParamInfo<escape_case>& c) { return std::string(c.param.name); });

TEST(LuaSandbox, OnlyTheAllowedGlobalsExist) {
  auto sb = make(R"(
    function globals()
      local names = {}
      for k in pairs(_G) do names[#names + 1] = k end
      table.sort(names)
      return table.concat(names, ",")
    end)");
  auto r = call(*sb, "globals");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->as_string(),
            "_G,_VERSION,assert,coroutine,error,getmetatable,globals,ipairs,math,next,pairs,pcall,pliers,print,"
            "rawequal,rawget,rawlen,rawset,select,setmetatable,string,table,tonumber,tostring,type,utf8,warn,xpcall");
}

TEST(LuaSandbox, PrintGoesToTheHook) {
  auto sb = make("function f() print('a', 1, nil, true) end");
  EXPECT_TRUE(call(*sb, "f"));  // no hook: discarded
  std::vector<std::string> lines;
  sb->set_print([&](std::string_view line) { lines.emplace_back(line); });
  ASSERT_TRUE(call(*sb, "f"));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "a\t1\tnil\ttrue");
}

// ---------------------------------------------------------------------------------------
// Limits

TEST(LuaSandbox, MemoryCapFailsTheCallAndTheStateRecovers) {
  lua_limits limits;
  limits.memory_bytes = 4 * 1024 * 1024;
  auto sb = make(R"(
    function hog() local t = {} while true do t[#t+1] = string.rep('x', 1000) .. #t end end
    function ok() return 42 end)",
                 limits);
  const auto before = sb->memory_used();
  auto r = call(*sb, "hog");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::payload_too_large);
  EXPECT_EQ(kind(r.error()), "memory_limit") << r.error().message;
  EXPECT_LE(sb->memory_used(), limits.memory_bytes);
  EXPECT_LT(sb->memory_used(), before + 256 * 1024);  // the garbage was collected
  auto again = call(*sb, "ok");
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(*again, json::value(42));
}

TEST(LuaSandbox, MemoryErrorsCannotBeCaughtByTheScript) {
  lua_limits limits;
  limits.memory_bytes = 4 * 1024 * 1024;
  auto sb = make(R"(
    function hog()
      local n = 0
      while true do
        pcall(function() local t = {} while true do t[#t+1] = {} end end)
        n = n + 1
      end
    end)",
                 limits);
  auto r = call(*sb, "hog");
  ASSERT_FALSE(r);
  EXPECT_EQ(kind(r.error()), "memory_limit") << r.error().message;
}

TEST(LuaSandbox, HugeStringRepIsRefusedWithoutAllocating) {
  auto sb = make("function f() return #string.rep('x', 1 << 40) end\nfunction g() return string.rep('', 1 << 62) end");
  auto r = call(*sb, "f");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("too large"), std::string::npos) << r.error().message;
  const auto start = std::chrono::steady_clock::now();
  auto g = call(*sb, "g");
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(*g, json::value(""));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
}

TEST(LuaSandbox, InstructionBudgetStopsALoop) {
  lua_limits limits;
  limits.instructions = 1'000'000;
  limits.timeout = 60s;
  auto sb = make("function spin() while true do end end\nfunction ok() return 1 end", limits);
  auto r = call(*sb, "spin");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::timeout);
  EXPECT_EQ(kind(r.error()), "timeout");
  EXPECT_NE(r.error().message.find("instruction budget exhausted"), std::string::npos) << r.error().message;
  EXPECT_TRUE(call(*sb, "ok"));  // the budget is per call
}

TEST(LuaSandbox, WallClockTimeoutStopsALoop) {
  lua_limits limits;
  limits.instructions = std::uint64_t{1} << 62;
  limits.timeout = 100ms;
  auto sb = make("function spin() while true do end end", limits);
  const auto start = std::chrono::steady_clock::now();
  auto r = call(*sb, "spin");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::timeout);
  EXPECT_NE(r.error().message.find("timed out after 100 ms"), std::string::npos) << r.error().message;
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 2s);
}

TEST(LuaSandbox, TimeoutsCannotBeSwallowed) {
  lua_limits limits;
  limits.instructions = 2'000'000;
  limits.timeout = 5s;
  for (const char* body : {
           "while true do pcall(function() while true do end end) end",
           "while true do xpcall(function() while true do end end, function(m) return m end) end",
           "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
           "while true do pcall(coroutine.wrap(function() while true do end end)) end",
           "while true do pcall(pcall, pcall, function() while true do end end) end",
       }) {
    auto sb = make(std::string("function spin() ") + body + " end", limits);
    const auto start = std::chrono::steady_clock::now();
    auto r = call(*sb, "spin");
    ASSERT_FALSE(r) << body;
    EXPECT_EQ(kind(r.error()), "timeout") << body << ": " << r.error().message;
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << body;
  }
}

TEST(LuaSandbox, CatastrophicPatternIsBounded) {
  lua_limits limits;
  limits.timeout = 200ms;
  auto sb = make(R"(
    function bad() return string.find(string.rep('a', 5000), string.rep('a*', 12) .. 'b') end
    function bad_match() return (string.rep('a', 30000)):match('.-.-.-b') end
    function bad_gsub() return string.gsub(string.rep('(', 20000), '%b()', '') end
    function bad_plain() return string.find(string.rep('a', 1 << 22), string.rep('a', 1 << 20) .. 'b', 1, true) end)",
                 limits);
  for (const char* f : {"bad", "bad_match", "bad_gsub", "bad_plain"}) {
    const auto start = std::chrono::steady_clock::now();
    auto r = call(*sb, f);
    const auto took = std::chrono::steady_clock::now() - start;
    ASSERT_FALSE(r) << f;
    EXPECT_EQ(kind(r.error()), "timeout") << f << ": " << r.error().message;
    EXPECT_LT(took, 2s) << f;
  }
}

TEST(LuaSandbox, LongRunningTableFunctionsAreBounded) {
  lua_limits limits;
  limits.instructions = 10'000'000;
  limits.timeout = 5s;
  auto sb = make(R"(
    function move() table.move({}, 1, 1 << 50, 2) end
    function insert() table.insert(setmetatable({}, {__len = function() return 1 << 50 end}), 1, 'x') end
    function remove() table.remove(setmetatable({}, {__len = function() return 1 << 50 end}), 1) end
    function sort()
      local s = string.rep('x', 1 << 20)
      local t = {}
      for i = 1, 20000 do t[i] = s end
      table.sort(t)
    end)",
                 limits);
  for (const char* f : {"move", "insert", "remove", "sort"}) {
    const auto start = std::chrono::steady_clock::now();
    auto r = call(*sb, f);
    ASSERT_FALSE(r) << f;
    EXPECT_EQ(kind(r.error()), "timeout") << f << ": " << r.error().message;
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s) << f;
  }
}

TEST(LuaSandbox, CoroutinesAndPcallStillWork) {
  auto sb = make(R"(
    function f()
      local co = coroutine.wrap(function()
        local ok, v = pcall(function() return coroutine.yield(1) + 1 end)
        local ok2, msg = pcall(error, 'inner')
        return {ok, v, ok2, msg}
      end)
      local first = co()
      local rest = co(41)
      local ok, e = xpcall(function() error('x', 0) end, function(m) return 'handled ' .. m end)
      return {first, rest, ok, e, coroutine.resume(coroutine.create(function() error('y', 0) end))}
    end)");
  auto r = call(*sb, "f");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, json::parse(R"([1,[true,42,false,"inner"],false,"handled x",false,"y"])"));
}

TEST(LuaSandbox, DeepRecursionFailsCleanly) {
  auto sb = make("function f(n) return 1 + f(n + 1) end\nfunction ok() return 1 end");
  auto r = call(*sb, "f", {"1"});
  ASSERT_FALSE(r);
  const auto k = kind(r.error());
  EXPECT_TRUE(k == "script_error" || k == "memory_limit") << r.error().message;
  EXPECT_TRUE(call(*sb, "ok"));
}

TEST(LuaSandbox, TableFunctionsStillWork) {
  auto sb = make(R"(
    function f()
      local t = {3, 1, 2}
      table.insert(t, 4)
      table.insert(t, 1, 0)
      local removed = table.remove(t, 2)
      table.sort(t)
      local u = table.move(t, 1, 3, 2, {})
      table.sort(t, function(a, b) return a > b end)
      return {t = t, removed = removed, u2 = u[2], u4 = u[4], popped = table.remove(t)}
    end)");
  auto r = call(*sb, "f");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, json::parse(R"({"t":[4,2,1],"removed":3,"u2":0,"u4":2,"popped":0})"));  // as stock Lua
}

// The budgeted pattern functions keep Lua 5.4's semantics.
TEST(LuaSandbox, PatternFunctionsBehaveLikeLua) {
  auto sb = make(R"(
    function f()
      local out = {}
      local function add(...) local t = table.pack(...) for i = 1, t.n do out[#out + 1] = tostring(t[i]) end end
      add(string.find('hello world', 'o w'))
      add(string.find('hello world', 'l+'))
      add(string.find('hello', 'l', 1, true))
      add(string.find('a.b', '.', 1, true))
      add(string.find('hello', 'xyz'))
      add(string.find('hello', 'l', -2))
      add(string.find('hello', '', 10))
      add(string.find('key = value', '(%w+)%s*=%s*(%w+)'))
      add(string.match('  trim  ', '^%s*(.-)%s*$'))
      add(string.match('2024-01-15', '(%d+)-(%d+)-(%d+)'))
      add(string.match('hello', '()ll()'))
      add(string.match('f(a(b)c)d', '%b()'))
      add(string.match('THE (quick) fox', '%f[%a]%a+', 5))
      add(string.match('abcabc', '(a)(b)c%1%2'))
      add(string.match('x', '[%a_][%w_]*'))
      add(string.match('[]', '[]]'))
      add(string.match('a-b', '[a%-]+'))
      add(string.match('hello', '^(h)(e?)(x?)'))
      for k, v in string.gmatch('a=1, b=2', '(%w+)=(%w+)') do add(k, v) end
      for w in string.gmatch('one two', '%a+') do add(w) end
      local n = 0 for _ in string.gmatch('abc', '') do n = n + 1 end add(n)
      for w in string.gmatch('xay', 'a*') do add('[' .. w .. ']') end
      add(string.gsub('hello world', 'o', '0'))
      add(string.gsub('hello world', '(%w+)', '<%1>'))
      add(string.gsub('hello', '', '-'))
      add(string.gsub('abc', '%w', '%0%0', 2))
      add(string.gsub('$name is $age', '%$(%w+)', {name = 'bob', age = 7}))
      add(string.gsub('abc', '%w', function(c) return c:upper() end))
      add(string.gsub('abc', '%w', function(c) if c == 'b' then return false end return '.' end))
      add(string.gsub('hello world', '^h', 'H'))
      add(string.gsub('abc', 'b*', '-'))
      add(('x'):rep(3, ','))
      add(pcall(string.find, 'a', '%'))
      add(pcall(string.find, 'a', '[a'))
      add(pcall(string.gsub, 'a', 'a', '%2'))
      add(pcall(string.find, 'a', '(()'))
      for w in string.gmatch('one two three', '%a+', 5) do add(w) end
      for w in string.gmatch('^a^b', '^%a') do add(w) end
      add(string.find('abc', 'b', 10))
      add(string.find('abc', 'a', -10))
      add(string.match('abc', '()$'))
      add(string.gsub('100%', '%%', ' percent'))
      add(string.gsub('a.b', '%.', '%%'))
      add(string.match('THE (quick) fox', '%f[%W]%s*(%S+)$'))
      add(string.match('xx abcba yy', '[a-c]+'))
      add(string.match('<a><b>', '<(.-)>'))
      add(string.match('color colour', 'colou?r', 3))
      add(string.find('a\0b', '\0', 1, true))
      add(string.find('a\0b', '[\0]'))
      add(string.match('k1=v1;k2=v2', '(%w+)=(%w+);?', 7))
      add(string.gsub('hello', 'l+', {ll = 'LL'}))
      add(string.gsub('abc', '(b)', '%1%0'))
      add(string.find('abc', '[b-]'))
      return table.concat(out, '|')
    end)");
  auto r = call(*sb, "f");
  ASSERT_TRUE(r) << r.error().message;
  // Expected: the output of the same script under the stock Lua 5.4 library.
  EXPECT_EQ(r->as_string(),
            R"PAT(5|7|3|4|3|3|2|2|nil|4|4|nil|1|11|key|value|trim|2024|01|15|3|5|(a(b)c)|quick|a|b|x|]|a-|h|e||a|1|b|2)PAT"
            R"PAT(|one|two|4|[]|[a]|[]|hell0 w0rld|2|<hello> <world>|2|-h-e-l-l-o-|6|aabbc|2|bob is 7|2|ABC|3|.b.|3|He)PAT"
            R"PAT(llo world|1|-a-c-|3|x,x,x|false|malformed pattern (ends with '%')|false|malformed pattern (missing ')PAT"
            R"PAT(]')|false|invalid capture index %2|false|unfinished capture|two|three|^a|^b|nil|1|1|4|100 percent|1|)PAT"
            R"PAT(a%b|1|nil|abcba|a|colour|2|2|2|2|k2|v2|heLLo|1|abbc|1|2|2)PAT");
}

// ---------------------------------------------------------------------------------------
// JSON <-> Lua

TEST(LuaSandbox, JsonRoundTripsThroughLua) {
  auto sb = make("function id(...) return ... end");
  for (const char* text : {
           R"({"a":1,"b":[1,2,{"c":null}],"d":{"e":"f"},"g":true,"h":false})",
           R"([])",
           R"({})",
           R"({"empty_array":[],"empty_object":{},"nested":[[],[{}]]})",
           R"([null,null,3])",
           R"({"x":null})",
           R"({"int":1,"neg":-5,"big":9223372036854775807,"min":-9223372036854775808,"dbl":1.5,"whole":2.0,"tiny":1e-300})",
           R"({"s":"héllo wörld 😀 中文","esc":"a\"b\\c\n\t\u0000d"})",
           R"("just a string")",
           R"(42)",
           R"(1.25)",
           R"(true)",
       }) {
    const auto v = json::parse(text);
    auto r = sb->call("id", std::span(&v, 1));
    ASSERT_TRUE(r) << text << ": " << r.error().message;
    EXPECT_EQ(*r, v) << text << " came back as " << json::serialize(*r);
    EXPECT_EQ(r->kind(), v.kind()) << text;
  }
}

TEST(LuaSandbox, IntegersAndDoublesKeepTheirKind) {
  auto sb = make(R"(
    function kinds(v) return {math.type(v.i), math.type(v.d), math.type(v.w)} end
    function make() return {i = 3, d = 3.5, w = 3.0, div = 7 // 2, fdiv = 7 / 2} end)");
  auto r = call(*sb, "kinds", {R"({"i":3,"d":3.5,"w":3.0})"});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, json::parse(R"(["integer","float","float"])"));
  auto m = call(*sb, "make");
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_TRUE(m->at("i").is_int64());
  EXPECT_TRUE(m->at("d").is_double());
  EXPECT_TRUE(m->at("w").is_double());
  EXPECT_TRUE(m->at("div").is_int64());
  EXPECT_TRUE(m->at("fdiv").is_double());
  EXPECT_EQ(m->at("fdiv").as_double(), 3.5);
}

TEST(LuaSandbox, NullIsASentinelInsideStructuresAndNilAtTheTop) {
  auto sb = make(R"(
    function inspect(top, v)
      return {top_is_nil = top == nil, inner_is_null = v.x == pliers.null, len = #v.arr,
              second_is_null = v.arr[2] == pliers.null}
    end
    function nothing() end
    function null_in_array() return {1, pliers.null, 3} end)");
  auto r = call(*sb, "inspect", {"null", R"({"x":null,"arr":[1,null,3]})"});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, json::parse(R"({"top_is_nil":true,"inner_is_null":true,"len":3,"second_is_null":true})"));
  auto n = call(*sb, "nothing");
  ASSERT_TRUE(n);
  EXPECT_TRUE(n->is_null());
  auto a = call(*sb, "null_in_array");
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, json::parse("[1,null,3]"));
}

TEST(LuaSandbox, TableShapesConvertByTheirKeys) {
  auto sb = make(R"(
    function seq() return {10, 20, 30} end
    function obj() return {a = 1, b = {c = 2}} end
    function empty() return {} end
    function marked_empty() return pliers.array({}) end
    function decoded_empty() local t = pliers.json_decode('{"a":[]}') return t end
    function grown() local t = pliers.json_decode('[]') t[#t + 1] = 'x' return t end
    function holes_marked() local t = pliers.array({}) t[1] = 1 t[3] = 3 return t end
    function removed_tail() local t = pliers.json_decode('[1,2,3]') t[3] = nil return t end
    function bad_marked_key() local t = pliers.array({1}) t.x = 1 return t end
    function is_array() return {pliers.is_array(pliers.json_decode('[]')), pliers.is_array({})} end)");
  EXPECT_EQ(*call(*sb, "seq"), json::parse("[10,20,30]"));
  EXPECT_EQ(*call(*sb, "obj"), json::parse(R"({"a":1,"b":{"c":2}})"));
  EXPECT_EQ(*call(*sb, "empty"), json::parse("{}"));
  EXPECT_EQ(*call(*sb, "marked_empty"), json::parse("[]"));
  EXPECT_EQ(*call(*sb, "decoded_empty"), json::parse(R"({"a":[]})"));
  EXPECT_EQ(*call(*sb, "grown"), json::parse(R"(["x"])"));
  auto holes = call(*sb, "holes_marked");
  ASSERT_TRUE(holes) << holes.error().message;
  EXPECT_EQ(*holes, json::parse("[1,null,3]"));
  EXPECT_EQ(*call(*sb, "removed_tail"), json::parse("[1,2]"));
  auto bad = call(*sb, "bad_marked_key");
  ASSERT_FALSE(bad);
  EXPECT_EQ(kind(bad.error()), "bad_result");
  EXPECT_EQ(*call(*sb, "is_array"), json::parse("[true,false]"));
}

TEST(LuaSandbox, UnconvertibleResultsAreBadResults) {
  auto sb = make(R"(
    function fn() return {a = {b = function() end}} end
    function mixed() return {1, 2, x = 3} end
    function sparse() local t = {} t[1] = 1 t[5] = 5 return t end
    function numkey() return {[2.5] = 1} end
    function cycle() local t = {} t.self = t return t end
    function deep() local t = {} local c = t for i = 1, 70 do c.x = {} c = c.x end return t end
    function nan() return {v = 0/0} end
    function inf() return math.huge end
    function badutf8() return {s = '\xff\xfe'} end
    function co() return coroutine.create(function() end) end
    function ok_deep() local t = {} local c = t for i = 1, 62 do c.x = {} c = c.x end return t end)");
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"fn", "result.a.b: cannot convert a function"}, {"mixed", "result: mixed keys"},
      {"sparse", "result: mixed keys"},                 {"numkey", "result: mixed keys"},
      {"cycle", "result.self: cycle"},                  {"deep", "nested deeper than 64"},
      {"nan", "result.v: cannot convert NaN"},          {"inf", "result: cannot convert NaN or infinity"},
      {"badutf8", "result.s: string is not valid UTF-8"}, {"co", "cannot convert a thread"},
  };
  for (const auto& [f, why] : cases) {
    auto r = call(*sb, f);
    ASSERT_FALSE(r) << f;
    EXPECT_EQ(r.error().code, errc::invalid_argument) << f;
    EXPECT_EQ(kind(r.error()), "bad_result") << f;
    EXPECT_NE(r.error().message.find(why), std::string::npos) << f << ": " << r.error().message;
  }
  EXPECT_TRUE(call(*sb, "ok_deep"));
}

TEST(LuaSandbox, TooDeepArgumentsAreBadArguments) {
  auto sb = make("function id(x) return x end");
  json::value v = json::array{};
  for (int i = 0; i < 80; ++i) v = json::array{std::move(v)};
  auto r = sb->call("id", std::span(&v, 1));
  ASSERT_FALSE(r);
  EXPECT_EQ(kind(r.error()), "bad_argument") << r.error().message;
  EXPECT_TRUE(call(*sb, "id", {"1"}));
}

TEST(LuaSandbox, ScriptsEncodeAndDecodeJson) {
  auto sb = make(R"(
    function roundtrip(s) return pliers.json_encode(pliers.json_decode(s)) end
    function decode(s) return pliers.json_decode(s) end
    function encode_fn() return pliers.json_encode({f = print}) end)");
  for (const char* text : {R"({"a":[1,2.5,null,{}],"b":[],"c":"é"})", "[]", "{}", "null", "[1,[2,[3]]]"}) {
    auto r = call(*sb, "roundtrip", {json::serialize(json::value(text))});
    ASSERT_TRUE(r) << text << ": " << r.error().message;
    EXPECT_EQ(json::parse(r->as_string()), json::parse(text)) << text;
  }
  auto bad = call(*sb, "decode", {R"("{not json")"});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("pliers.json_decode"), std::string::npos) << bad.error().message;
  std::string deep(100, '[');
  deep += std::string(100, ']');
  EXPECT_FALSE(call(*sb, "decode", {json::serialize(json::value(deep))}));
  auto fn = call(*sb, "encode_fn");
  ASSERT_FALSE(fn);
  EXPECT_NE(fn.error().message.find("value.f: cannot convert a function"), std::string::npos) << fn.error().message;
}

// ---------------------------------------------------------------------------------------
// Host functions

TEST(LuaSandbox, HostFunctionsReceiveAndReturnJson) {
  auto sb = make(R"(
    function f()
      local sum = pliers.add(2, 3.5, {n = 4})
      local obj = pliers.info()
      local none = pliers.nothing()
      return {sum = sum, name = obj.name, list_len = #obj.list, none_is_nil = none == nil}
    end)");
  std::vector<json::value> seen;
  sb->set_function("add", [&](std::span<const json::value> args) -> result<json::value> {
    seen.assign(args.begin(), args.end());
    return json::value(args[0].to_number<double>() + args[1].to_number<double>() +
                       args[2].at("n").to_number<double>());
  });
  sb->set_function("info", [](std::span<const json::value>) -> result<json::value> {
    return json::parse(R"({"name":"x","list":[1,2,3]})");
  });
  sb->set_function("nothing", [](std::span<const json::value>) -> result<json::value> { return json::value(nullptr); });
  auto r = call(*sb, "f");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, json::parse(R"({"sum":9.5,"name":"x","list_len":3,"none_is_nil":true})"));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_TRUE(seen[0].is_int64());
  EXPECT_TRUE(seen[1].is_double());
  EXPECT_EQ(seen[2], json::parse(R"({"n":4})"));
}

TEST(LuaSandbox, HostFunctionErrorsPropagate) {
  auto sb = make(R"(
    function uncaught() pliers.fail('x') end
    function caught()
      local ok, msg = pcall(pliers.fail, 'x')
      return {ok = ok, msg = msg}
    end
    function throws() pliers.throws() end
    function bad_arg() pliers.fail(function() end) end)");
  sb->set_function("fail", [](std::span<const json::value>) -> result<json::value> {
    return error::make(errc::unavailable, "store is down");
  });
  sb->set_function("throws", [](std::span<const json::value>) -> result<json::value> {
    throw std::runtime_error("kaboom");
  });
  auto u = call(*sb, "uncaught");
  ASSERT_FALSE(u);
  EXPECT_EQ(u.error().code, errc::unavailable);  // the host's errc survives
  EXPECT_EQ(kind(u.error()), "script_error");
  EXPECT_NE(u.error().message.find("pliers.fail: store is down"), std::string::npos) << u.error().message;
  auto c = call(*sb, "caught");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(*c, json::parse(R"({"ok":false,"msg":"pliers.fail: store is down"})"));
  auto t = call(*sb, "throws");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, errc::invalid_argument);
  EXPECT_NE(t.error().message.find("pliers.throws: kaboom"), std::string::npos) << t.error().message;
  auto b = call(*sb, "bad_arg");
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("pliers.fail: argument 1: cannot convert a function"), std::string::npos)
      << b.error().message;
}

TEST(LuaSandbox, HostFunctionsGivenAtCreateAreUsableAtTopLevel) {
  std::vector<std::pair<std::string, lua_sandbox::host_function>> fns;
  fns.emplace_back("config", [](std::span<const json::value>) -> result<json::value> {
    return json::parse(R"({"threshold":5})");
  });
  auto sb = lua_sandbox::create("local threshold = pliers.config().threshold\nfunction f(x) return x > threshold end",
                                "t", {}, std::move(fns));
  ASSERT_TRUE(sb) << sb.error().message;
  EXPECT_EQ(*call(**sb, "f", {"7"}), json::value(true));
}

TEST(LuaSandbox, HostFunctionsCannotReenterTheSandbox) {
  auto sb = make("function f() return pliers.back() end\nfunction g() return 1 end");
  lua_sandbox* raw = sb.get();
  sb->set_function("back", [raw](std::span<const json::value>) -> result<json::value> {
    auto r = raw->call("g", {});
    if (!r) return r.error();
    return *r;
  });
  auto r = call(*sb, "f");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::internal);
  EXPECT_NE(r.error().message.find("re-entrant"), std::string::npos) << r.error().message;
  EXPECT_TRUE(call(*sb, "g"));
}

// ---------------------------------------------------------------------------------------
// Globals, expressions, state after failures

TEST(LuaSandbox, GlobalsPersistBetweenCalls) {
  auto sb = make(R"(
    function apply(e) state.count = state.count + 1; state.total = state.total + e.amount end)");
  ASSERT_TRUE(sb->set_global("state", json::parse(R"({"count":0,"total":0,"tags":[]})")));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(call(*sb, "apply", {R"({"amount":)" + std::to_string(i) + "}"}));
  auto s = sb->get_global("state");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(*s, json::parse(R"({"count":3,"total":6,"tags":[]})"));
  auto missing = sb->get_global("nope");
  ASSERT_TRUE(missing);
  EXPECT_TRUE(missing->is_null());
  ASSERT_TRUE(sb->set_global("state", nullptr));
  EXPECT_TRUE(sb->get_global("state")->is_null());
  auto fn = sb->get_global("apply");
  ASSERT_FALSE(fn);
  EXPECT_EQ(kind(fn.error()), "bad_result");
}

TEST(LuaSandbox, ExpressionsForConditions) {
  auto sb = make("");
  auto cond = sb->compile_expression("event.payload.total > 100 and event.type == 'order.placed'", {"event"});
  ASSERT_TRUE(cond) << cond.error().message;
  const auto big = json::parse(R"({"type":"order.placed","payload":{"total":150}})");
  const auto small = json::parse(R"({"type":"order.placed","payload":{"total":5}})");
  EXPECT_EQ(*sb->test(*cond, std::span(&big, 1)), true);
  EXPECT_EQ(*sb->test(*cond, std::span(&small, 1)), false);
  auto value = sb->compile_expression("a + b -- a comment", {"a", "b"});
  ASSERT_TRUE(value) << value.error().message;
  const std::vector<json::value> args = {json::value(2), json::value(3)};
  EXPECT_EQ(*sb->call(*value, args), json::value(5));

  auto bad = sb->compile_expression("event.x >", {"event"});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().field, "expression");
  EXPECT_EQ(kind(bad.error()), "compile_error");
  EXPECT_NE(bad.error().message.find("expression:"), std::string::npos) << bad.error().message;
  auto statement = sb->compile_expression("x = 1");
  EXPECT_FALSE(statement);
  auto bad_param = sb->compile_expression("1", {"end"});
  ASSERT_FALSE(bad_param);
  EXPECT_EQ(bad_param.error().field, "parameters");

  auto failing = sb->compile_expression("event.missing.field", {"event"});
  ASSERT_TRUE(failing);
  auto r = sb->test(*failing, std::span(&big, 1));
  ASSERT_FALSE(r);
  EXPECT_EQ(kind(r.error()), "script_error");
  sb->release(*cond);
  EXPECT_FALSE(cond->valid());
}

TEST(LuaSandbox, FunctionRefsSkipTheLookup) {
  auto sb = make("function f(x) return x * 2 end");
  auto f = sb->function("f");
  ASSERT_TRUE(f) << f.error().message;
  const auto v = json::value(21);
  EXPECT_EQ(*sb->call(*f, std::span(&v, 1)), json::value(42));
  EXPECT_FALSE(sb->function("g"));
}

TEST(LuaSandbox, StateIsUsableAfterEveryKindOfFailure) {
  lua_limits limits;
  limits.memory_bytes = 4 * 1024 * 1024;
  limits.instructions = 1'000'000;
  auto sb = make(R"(
    counter = 0
    function bump() counter = counter + 1 return counter end
    function boom() error({}) end
    function spin() while true do end end
    function hog() local t = {} while true do t[#t+1] = {} end end
    function bad() return print end)",
                 limits);
  int expected = 0;
  for (const char* f : {"boom", "spin", "hog", "bad", "boom"}) {
    auto r = call(*sb, f);
    ASSERT_FALSE(r) << f;
    auto b = call(*sb, "bump");
    ASSERT_TRUE(b) << f << ": " << b.error().message;
    EXPECT_EQ(*b, json::value(++expected));
  }
  auto boom = call(*sb, "boom");
  EXPECT_NE(boom.error().message.find("error object is a table value"), std::string::npos) << boom.error().message;
}

TEST(LuaSandbox, ErrorKindsAreReadableFromErrors) {
  EXPECT_EQ(lua_error_type(error::make(errc::timeout, "timeout: timed out after 5 ms")), "timeout");
  EXPECT_EQ(lua_failure_of(error::make(errc::internal, "memory_limit: x")), lua_failure::memory_limit);
  EXPECT_EQ(lua_error_type(error::make(errc::internal, "something else")), "lua_error");
  EXPECT_FALSE(lua_failure_of(error::make(errc::internal, "nope: x")));
}

// call_with_events builds the tables straight from the events: they must equal what the
// JSON form (event_to_json through call()) gives, timestamps included (own formatter).
TEST(LuaSandbox, CallWithEventsEqualsTheEventsJsonForm) {
  auto sb = make("function echo(events) return events end\nfunction count(events) return #events end");
  auto fn = sb->function("echo");
  ASSERT_TRUE(fn);
  std::vector<event> events;
  const std::int64_t micros[] = {0, 1'767'225'599'999'999, -1, 951'782'400'000'001, 253'402'300'799'999'999,
                                 1'700'000'000'123'456};
  for (std::size_t i = 0; i < std::size(micros); ++i) {
    event e;
    e.id = "0190f0a2-0000-7000-8000-00000000000" + std::to_string(i);
    e.type = "order.placed";
    e.version = 2;
    e.time = timestamp(std::chrono::microseconds(micros[i]));
    e.aggregate_id = "order-\xc3\xa9";
    e.aggregate_type = "order";
    e.sequence = sequence_number(static_cast<std::int64_t>(i + 1));
    e.position = log_position(static_cast<std::int64_t>(100 + i));
    if (i % 2) e.causation_id = "c-" + std::to_string(i);
    if (i % 3) e.correlation_id = "r-" + std::to_string(i);
    e.metadata = {{"sourceSystem", "t"}, {"sourceVersion", "1"}, {"tags", json::array{1, "x", nullptr}}};
    e.payload = {{"amount", 12.5}, {"nested", {{"deep", {{"n", -7}}}}}, {"none", nullptr}, {"empty", json::object()}};
    events.push_back(std::move(e));
  }
  auto got = sb->call_with_events(*fn, events);
  ASSERT_TRUE(got) << got.error().message;
  json::array expected;
  for (const auto& e : events) expected.emplace_back(event_to_json(e));
  EXPECT_EQ(*got, json::value(expected)) << json::serialize(*got);
  auto n = sb->call_with_events(*sb->function("count"), std::span<const event>(events).subspan(0, 0));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, json::value(0));
  auto e = sb->call_with_events(*sb->function("count"), std::vector<event>(10'001, events[0]));
  ASSERT_FALSE(e);
  EXPECT_EQ(kind(e.error()), "bad_argument");
}

// call_with_event (a Lua plugin's process(event, context)) gives the event as the same table
// as its JSON form, followed by the other arguments; a null among them stays nil.
TEST(LuaSandbox, CallWithEventPassesTheEventsJsonFormFirst) {
  auto sb = make("function process(event, context, extra) return {event = event, context = context, extra = extra} end");
  event e;
  e.id = "0190f0a2-0000-7000-8000-000000000001";
  e.type = "order.placed";
  e.time = timestamp(std::chrono::microseconds(1'700'000'000'123'456));
  e.aggregate_id = "order-1";
  e.aggregate_type = "order";
  e.sequence = sequence_number(3);
  e.position = log_position(42);
  e.correlation_id = "r-1";
  e.metadata = {{"sourceSystem", "t"}, {"sourceVersion", "1"}};
  e.payload = {{"lines", json::array{json::object{{"qty", 2}, {"price", 2.5}}}}, {"none", nullptr}};
  const json::value args[] = {json::object{{"attempt", 1}}, nullptr};
  auto got = sb->call_with_event("process", e, args);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->at("event"), json::value(event_to_json(e))) << json::serialize(*got);
  EXPECT_EQ(got->at("context"), args[0]);
  EXPECT_FALSE(got->as_object().contains("extra"));
  auto missing = sb->call_with_event("nope", e, {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, errc::not_found);
}

}  // namespace
}  // namespace pliers
