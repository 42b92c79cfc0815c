-- includes/bytes.lua: byte-wise string order, whatever the server's locale.
-- Lua's `<` on strings calls strcoll, and redis-server takes LC_COLLATE from its
-- environment: under en_US.UTF-8 "a" < "B", and strings that differ only in
-- punctuation may even compare equal. Every comparison of stored strings (times,
-- eventIds, identifiers, segment names) goes through bytes_lt, so the scripts order
-- them as Python does (code point order is UTF-8 byte order) on any host.
-- Fixed-width digit strings (13-digit ms, counter buckets) are compared with tonumber.

local str_byte = string.byte

-- True when `a` sorts before `b` byte by byte (a proper prefix sorts first).
local function bytes_lt(a, b)
  if a == b then return false end
  local la, lb = #a, #b
  local n = la < lb and la or lb
  local i = 1
  -- Eight bytes per string.byte call: the common prefix (a date, an id's stem) is
  -- skipped in a few calls instead of one per byte.
  while i + 7 <= n do
    local a1, a2, a3, a4, a5, a6, a7, a8 = str_byte(a, i, i + 7)
    local b1, b2, b3, b4, b5, b6, b7, b8 = str_byte(b, i, i + 7)
    if a1 ~= b1 then return a1 < b1 end
    if a2 ~= b2 then return a2 < b2 end
    if a3 ~= b3 then return a3 < b3 end
    if a4 ~= b4 then return a4 < b4 end
    if a5 ~= b5 then return a5 < b5 end
    if a6 ~= b6 then return a6 < b6 end
    if a7 ~= b7 then return a7 < b7 end
    if a8 ~= b8 then return a8 < b8 end
    i = i + 8
  end
  while i <= n do
    local x, y = str_byte(a, i), str_byte(b, i)
    if x ~= y then return x < y end
    i = i + 1
  end
  return la < lb
end
