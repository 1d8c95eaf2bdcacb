#include "ops/lua_projector.hpp"

#include <boost/json.hpp>

#include "core/event_codec.hpp"

namespace pliers {

namespace {

// Appended to the user's script: the fold loop runs in Lua, the state lives in a local of
// this chunk's closure (not a global the script could clobber by accident).
constexpr std::string_view prelude = R"lua(
do
  local st = nil
  local H, R = handlers, reduce
  if type(H) ~= "table" then H = nil end
  if type(R) ~= "function" then R = nil end
  function __pliers_ok() return H ~= nil or R ~= nil end
  -- initial_state is copied: handlers change the state in place, and a second start must
  -- begin from the script's initial state again.
  local function copy(v)
    if type(v) ~= "table" then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = copy(x) end
    return setmetatable(out, getmetatable(v))
  end
  function __pliers_init(s)
    if s ~= nil then st = s
    elseif type(initial_state) == "function" then st = initial_state()
    elseif initial_state ~= nil then st = copy(initial_state)
    else st = {} end
  end
  function __pliers_apply(events)
    local any = H and H["*"]
    for i = 1, #events do
      local e = events[i]
      local h = (H and (H[e.type] or any)) or R
      if h then
        local r = h(st, e)
        if r ~= nil then st = r end
      end
    end
  end
  function __pliers_state() return st end
end
)lua";

constexpr std::size_t batch = 256;

}  // namespace

result<std::unique_ptr<lua_projector>> lua_projector::create(std::string_view source, lua_limits limits) {
  std::string code(source);
  code += "\n";
  code += prelude;
  auto sb = lua_sandbox::create(code, "projector", limits);
  if (!sb) {
    // A syntax error may be reported inside the prelude (an unclosed block of the script
    // ends there): compiled alone, the script gets the error at its own line.
    if (lua_failure_of(sb.error()) == lua_failure::compile_error) {
      auto alone = lua_sandbox::create(source, "projector", limits);
      if (!alone) return std::move(alone).error();
    }
    return std::move(sb).error();
  }
  std::unique_ptr<lua_projector> p(new lua_projector(std::move(*sb)));
  auto ok = p->sandbox_->call("__pliers_ok", {});
  if (!ok) return std::move(ok).error();
  if (!ok->is_bool() || !ok->get_bool())
    return error::invalid("source", "the script must define `handlers` (a table) or `reduce` (a function)");
  auto i = p->sandbox_->function("__pliers_init");
  auto a = p->sandbox_->function("__pliers_apply");
  auto s = p->sandbox_->function("__pliers_state");
  if (!i || !a || !s) return error::make(errc::internal, "projector prelude missing");
  p->init_ = *i;
  p->apply_ = *a;
  p->state_ = *s;
  return p;
}

result<void> lua_projector::start(boost::json::value initial) {
  auto r = sandbox_->call(init_, std::span<const boost::json::value>(&initial, 1));
  if (!r) return std::move(r).error();
  return {};
}

result<void> lua_projector::apply(std::span<const event> events) {
  for (std::size_t i = 0; i < events.size(); i += batch) {
    auto r = sandbox_->call_with_events(apply_, events.subspan(i, std::min(batch, events.size() - i)));
    if (!r) return std::move(r).error();
  }
  return {};
}

result<boost::json::value> lua_projector::state() { return sandbox_->call(state_, {}); }

}  // namespace pliers
