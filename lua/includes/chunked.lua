-- includes/chunked.lua: commands over long argument lists, CHUNK arguments at a time,
-- well below Lua's stack limit for unpack. Expects `rcall` and `unpack`.

local CHUNK = 1000

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
