-- includes/profile.lua: key names and Last-Write-Wins helpers shared by the scripts.
-- Expects the locals `rcall` and `prefix` (the key prefix, "cdp") to be defined.

local function identifier_key(id) return prefix .. ":identifier:{" .. id .. "}" end
local function profile_key(cid) return prefix .. ":profile:{" .. cid .. "}" end
local function seq_of(cid) return tonumber(string.sub(cid, 2)) or 0 end
local function id_type(id) return string.match(id, "^(%a+):") end
local TYPE_FIELD = {user = "users", email = "emails", anon = "anons"}

-- True when trait cell `a` ({"v","ts","eventId"} as JSON) beats cell `b` on (ts, eventId).
local function cell_newer(a_ts, a_id, b_json)
  if not b_json then return true end
  local b = cjson.decode(b_json)
  return a_ts > b.ts or (a_ts == b.ts and a_id > b.eventId)
end

-- firstSeen = min, lastSeen = max over the given times (ISO-8601, fixed width).
local function widen_seen(pkey, first, last)
  local seen = rcall("HMGET", pkey, "firstSeen", "lastSeen")
  if first and (not seen[1] or first < seen[1]) then rcall("HSET", pkey, "firstSeen", first) end
  if last and (not seen[2] or last > seen[2]) then rcall("HSET", pkey, "lastSeen", last) end
end

-- Remove a counter's buckets older than `cutoff`; returns the oldest bucket left.
local function prune_counter(ckey, cutoff)
  local oldest
  for _, member in ipairs(rcall("ZRANGE", ckey, 0, -1)) do
    if member < cutoff then
      rcall("ZREM", ckey, member)
    elseif not oldest or member < oldest then
      oldest = member
    end
  end
  return oldest
end
