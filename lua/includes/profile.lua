-- includes/profile.lua: key names and Last-Write-Wins helpers shared by the scripts.
-- Expects the locals `rcall` and `prefix` (the key prefix, "cdp") to be defined.
--@include bytes
--@include poison

local function identifier_key(id) return prefix .. ":identifier:{" .. id .. "}" end
local function profile_key(cid) return prefix .. ":profile:{" .. cid .. "}" end
local function seq_of(cid) return tonumber(string.sub(cid, 2)) or 0 end
local function id_type(id) return string.match(id, "^(%a+):") end
local TYPE_FIELD = {user = "users", email = "emails", anon = "anons"}

-- The identity counts of profile hash `pkey`, as the guard rails on links read them:
-- {users, emails, anons, user}.
local function identity_counts(pkey)
  local row = rcall("HMGET", pkey, "users", "emails", "anons", "user")
  local counts = {users = tonumber(row[1]), emails = tonumber(row[2]),
    anons = tonumber(row[3]) or 0, user = row[4] or nil}
  if not counts.users or not counts.emails then
    error("ERR hash value is not an integer", 0)  -- as HINCRBY would answer
  end
  return counts
end

-- The guard rail refusing to link identifier `id` to a profile whose counts are
-- `counts` ({users, emails}): "userId limit", "email limit", or nil when it may be
-- linked (then its type's count in `counts` grows). `limits`: {maxUsers, maxEmails}.
local function link_refused(id, counts, limits)
  local t = id_type(id)
  if t == "user" then
    if counts.users >= limits.maxUsers then return "userId limit" end
    counts.users = counts.users + 1
  elseif t == "email" then
    if counts.emails >= limits.maxEmails then return "email limit" end
    counts.emails = counts.emails + 1
  end
  return nil
end

-- A stored trait cell {"v","ts","eventId"}; one the event's write cannot be compared
-- with (not JSON, or without its stamp) refuses the event rather than the partition.
local function decode_cell(json)
  local ok, cell = pcall(cjson.decode, json)
  if not ok or type(cell) ~= "table" or type(cell.ts) ~= "string"
      or type(cell.eventId) ~= "string" then
    poison("a stored trait cell is not {\"v\",\"ts\",\"eventId\"} JSON: " .. string.sub(json, 1, 80))
  end
  return cell
end

-- True when trait cell `a` ({"v","ts","eventId"} as JSON) beats cell `b` on (ts, eventId),
-- compared byte-wise.
local function cell_newer(a_ts, a_id, b_json)
  if not b_json then return true end
  local b = decode_cell(b_json)
  return bytes_lt(b.ts, a_ts) or (a_ts == b.ts and bytes_lt(b.eventId, a_id))
end

-- firstSeen = min, lastSeen = max over the given times (ISO-8601, fixed width).
local function widen_seen(pkey, first, last)
  local seen = rcall("HMGET", pkey, "firstSeen", "lastSeen")
  if first and (not seen[1] or bytes_lt(first, seen[1])) then rcall("HSET", pkey, "firstSeen", first) end
  if last and (not seen[2] or bytes_lt(seen[2], last)) then rcall("HSET", pkey, "lastSeen", last) end
end

-- Remove a counter's buckets older than `cutoff`; returns the oldest bucket left.
-- Buckets are 13-digit ms strings: compared as numbers (exact below 2^53).
local function prune_counter(ckey, cutoff)
  local oldest, oldest_ms, cutoff_ms = nil, nil, tonumber(cutoff)
  for _, member in ipairs(rcall("ZRANGE", ckey, 0, -1)) do
    local member_ms = tonumber(member)
    if member_ms < cutoff_ms then
      rcall("ZREM", ckey, member)
    elseif not oldest or member_ms < oldest_ms then
      oldest, oldest_ms = member, member_ms
    end
  end
  return oldest
end
