--[[
  profile_view-n.lua: read what segment rules need of profiles, in one consistent
  snapshot.

  Every key read is declared, one group of keys per profile, so the script runs on a
  Redis Cluster with one profile per call (one slot), and on one Redis with many per
  call (one snapshot of all of them). The due index (another slot) is not read here:
  the engine reads it with ZMSCORE in the same round trip.

  The traits and counters read are those the rules name (cdp.segments.rules.rule_reads):
  an HMGET of those traits and a ZRANGE of those counters per profile, instead of every
  trait and every counter; "*" reads every trait. The counters are always named: their
  zsets are keys of their own, declared like the others.

  KEYS, per profile, a group of 5 + C keys (C: the number of counter names of ARGV[2]):
    profile hash            cdp:profile:{<cid>}
    traits                  cdp:profile:{<cid>}:traits
    identifiers             cdp:profile:{<cid>}:identifiers
    segments                cdp:profile:{<cid>}:segments
    outbox                  cdp:profile:{<cid>}:outbox
    counter zsets           cdp:profile:{<cid>}:counter:<name>, one per name of ARGV[2]

  ARGV[1]  the traits to read: JSON [name...], or "*" for every trait
  ARGV[2]  the counters to read: JSON [name...]

  Returns, per profile in the order of its group, an array:
    {version or false, mergedInto or false, user identifier or false,
     lastSeenMs or false, firstSeen (ISO) or false,
     {trait, cell JSON, ...} (the traits read that the profile has),
     {counter name, {bucket, count, ...}, ...} (the counters read that have a bucket),
     {segment, state JSON, ...}, first identifier when there is no userId,
     evaluatedMs (the time of the last accepted evaluation) or false,
     evaluations (how many evaluations were accepted, the token segment_transition
     compares) or false,
     the outbox's length (segment events not relayed yet)}
  A profile that does not exist (or was merged away) has a false version.
]]
local rcall = redis.call
--@include bytes
local trait_names = ARGV[1] ~= "*" and cjson.decode(ARGV[1]) or nil
local counter_names = cjson.decode(ARGV[2])
local group = 5 + #counter_names

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

local function counters_of(first)
  local out = {}
  for i, name in ipairs(counter_names) do
    local buckets = rcall("ZRANGE", KEYS[first + i - 1], 0, -1, "WITHSCORES")
    if #buckets > 0 then
      out[#out + 1] = name
      out[#out + 1] = buckets
    end
  end
  return out
end

local out = {}
for base = 0, #KEYS - group, group do
  local pkey, tkey, ikey, skey, okey = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3],
    KEYS[base + 4], KEYS[base + 5]
  local meta = rcall("HMGET", pkey, "version", "mergedInto", "user", "lastSeenMs", "firstSeen",
    "evaluatedMs", "evaluations")
  local anon = false
  if not meta[3] then
    local ids = rcall("SMEMBERS", ikey)
    table.sort(ids, bytes_lt)
    anon = ids[1] or false
  end
  out[#out + 1] = {
    meta[1], meta[2], meta[3], meta[4], meta[5],
    traits_of(tkey),
    counters_of(base + 6),
    rcall("HGETALL", skey),
    anon,
    meta[6],
    meta[7],
    rcall("LLEN", okey),
  }
end
return out
