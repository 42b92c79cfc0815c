-- includes/chunked.lua: one command over a long list of arguments, CHUNK at a time
-- (Lua's unpack has a stack limit). Expects the locals `rcall` and `unpack`.

local CHUNK = 1000  -- arguments per command, well below Lua's stack limit for unpack

-- `command key arg...` over `list`, `step` at a time; the replies concatenated.
local function chunked(command, key, list, step)
  local out = {}
  for i = 1, #list, step do
    local reply = rcall(command, key, unpack(list, i, math.min(i + step - 1, #list)))
    if type(reply) == "table" then
      for j = 1, #reply do out[#out + 1] = reply[j] end
    end
  end
  return out
end
