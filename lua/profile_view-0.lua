--[[
  profile_view-0.lua: read what segment rules need of several profiles, in one
  consistent snapshot.

  The traits and counters read are those the rules name (cdp.segments.rules.rule_reads):
  an HMGET of those traits and a ZRANGE of those counters per profile, instead of every
  trait and every counter; "*" reads them all.

  ARGV[1]  key prefix ("cdp")
  ARGV[2]  the traits to read: JSON [name...], or "*" for every trait
  ARGV[3]  the counters to read: JSON [name...], or "*" for every counter
  ARGV[4..] canonical ids

  Returns, per canonical id, an array:
    {version or false, mergedInto or false, user identifier or false,
     lastSeenMs or false, firstSeen (ISO) or false,
     {trait, cell JSON, ...} (the traits read that the profile has),
     {counter name, {bucket, count, ...}, ...} (the counters read that have a bucket),
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
local trait_names = ARGV[2] ~= "*" and cjson.decode(ARGV[2]) or nil
local counter_names = ARGV[3] ~= "*" and cjson.decode(ARGV[3]) or nil

local function traits_of(tkey)
  if not trait_names then return rcall("HGETALL", tkey) end
  local out = {}
  if #trait_names == 0 then return out end
  local cells = rcall("HMGET", tkey, unpack(trait_names))
  for i, name in ipairs(trait_names) do
    if cells[i] then
      out[#out + 1] = name
      out[#out + 1] = cells[i]
    end
  end
  return out
end

local function counters_of(pkey)
  local out = {}
  for _, name in ipairs(counter_names or rcall("HKEYS", pkey .. ":counters")) do
    local buckets = rcall("ZRANGE", pkey .. ":counter:" .. name, 0, -1, "WITHSCORES")
    if counter_names == nil or #buckets > 0 then
      out[#out + 1] = name
      out[#out + 1] = buckets
    end
  end
  return out
end

local out = {}
for i = 4, #ARGV do
  local cid = ARGV[i]
  local pkey = prefix .. ":profile:{" .. cid .. "}"
  local meta = rcall("HMGET", pkey, "version", "mergedInto", "user", "lastSeenMs", "firstSeen",
    "evaluatedMs", "evaluations")
  local anon = false
  if not meta[3] then
    local ids = rcall("SMEMBERS", pkey .. ":identifiers")
    table.sort(ids, bytes_lt)
    anon = ids[1] or false
  end
  out[#out + 1] = {
    meta[1], meta[2], meta[3], meta[4], meta[5],
    traits_of(pkey .. ":traits"),
    counters_of(pkey),
    rcall("HGETALL", pkey .. ":segments"),
    anon,
    rcall("ZSCORE", prefix .. ":segments:due", cid),
    meta[6],
    meta[7],
  }
end
return out
