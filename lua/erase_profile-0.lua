--[[
  erase_profile-0.lua: forget a person (GDPR erasure), atomically.

  The profile's identifiers are suppressed (cdp:suppressed: later events naming any
  of them are discarded at apply, including those already buffered or pending) and
  removed from the index; every segment membership ends with an EXIT event (so
  downstream systems forget the person too); traits, identifiers, counters,
  memberships, the forward pointers of ids merged into it and the profile itself are
  deleted, and so are the ids of the events applied to it (its `seen` hash: a later
  redelivery names a suppressed identifier and is discarded). An audit record without
  personal data goes to cdp:audit.

  ARGV[1]  key prefix ("cdp")
  ARGV[2]  canonical id (live, already resolved)
  ARGV[3]  now, ISO-8601
  ARGV[4]  job id
  ARGV[5]  who asked (e.g. "admin")
  ARGV[6]  approximate MAXLEN of cdp:segment-events

  Returns {"OK", identifiers removed, EXIT events} or {"GONE"}
]]
local rcall = redis.call
local prefix, cid, now_iso, job, who, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
--@include segments
local pkey = prefix .. ":profile:{" .. cid .. "}"
local meta = rcall("HMGET", pkey, "createdAt", "mergedInto", "user")
if not meta[1] or meta[2] then return {"GONE"} end

local ids = rcall("SMEMBERS", pkey .. ":identifiers")
for _, id in ipairs(ids) do
  rcall("SADD", prefix .. ":suppressed", id)
  rcall("DEL", prefix .. ":identifier:{" .. id .. "}")
end

-- The EXITs name the profile as segment_transition did: the userId, else the first identifier.
local who_field, who_value = who_of(meta[3], ids)
local exits = 0
local memberships = rcall("HGETALL", pkey .. ":segments")
for i = 1, #memberships, 2 do
  local name, state = memberships[i], cjson.decode(memberships[i + 1])
  if state["in"] then
    rcall("ZREM", members_key(name), cid)
    emit_transition(name, cid, state.n + 1, "EXIT", now_iso, who_field, who_value, maxlen,
      "erased")
    exits = exits + 1
  end
end

for _, name in ipairs(rcall("HKEYS", pkey .. ":counters")) do
  rcall("DEL", pkey .. ":counter:" .. name)
end
for _, old in ipairs(rcall("SMEMBERS", pkey .. ":merged")) do
  rcall("DEL", prefix .. ":profile:{" .. old .. "}")
end
rcall("DEL", pkey, pkey .. ":traits", pkey .. ":identifiers", pkey .. ":counters",
  pkey .. ":merged", pkey .. ":segments", pkey .. ":seen")
rcall("ZREM", prefix .. ":profiles", cid)
rcall("ZREM", prefix .. ":segments:due", cid)
rcall("XADD", prefix .. ":audit", "MAXLEN", "~", "1000000", "*", "action", "erase",
  "canonicalId", cid, "job", job, "by", who, "at", now_iso,
  "identifiers", #ids, "exits", exits)
return {"OK", #ids, exits}
