--[[
  profile_view-0.lua: read what segment rules need of several profiles, in one
  consistent snapshot.

  ARGV[1]  key prefix ("cdp")
  ARGV[2..] canonical ids

  Returns, per canonical id, an array:
    {version or false, mergedInto or false, user identifier or false,
     lastSeenMs or false, firstSeen (ISO) or false, {trait, cell JSON, ...},
     {counter name, {bucket, count, ...}, ...},
     {segment, state JSON, ...}, first identifier when
     there is no userId, due time in cdp:segments:due or false,
     evaluatedMs (the time of the last accepted evaluation) or false,
     evaluations (how many evaluations were accepted, the token segment_transition
     compares) or false}
  A profile that does not exist (or was merged away) has a false version.
]]
local rcall = redis.call
--@include bytes
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local cid = ARGV[i]
  local pkey = prefix .. ":profile:{" .. cid .. "}"
  local meta = rcall("HMGET", pkey, "version", "mergedInto", "user", "lastSeenMs", "firstSeen",
    "evaluatedMs", "evaluations")
  local counters = {}
  for _, name in ipairs(rcall("HKEYS", pkey .. ":counters")) do
    counters[#counters + 1] = name
    counters[#counters + 1] = rcall("ZRANGE", pkey .. ":counter:" .. name, 0, -1, "WITHSCORES")
  end
  local anon = false
  if not meta[3] then
    local ids = rcall("SMEMBERS", pkey .. ":identifiers")
    table.sort(ids, bytes_lt)
    anon = ids[1] or false
  end
  out[#out + 1] = {
    meta[1], meta[2], meta[3], meta[4], meta[5],
    rcall("HGETALL", pkey .. ":traits"),
    counters,
    rcall("HGETALL", pkey .. ":segments"),
    anon,
    rcall("ZSCORE", prefix .. ":segments:due", cid),
    meta[6],
    meta[7],
  }
end
return out
