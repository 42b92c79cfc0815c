--[=[
  merge_freeze-n.lua: step 1 of the cross-slot merge (cdp/merge.py): freeze profile L,
  the loser, with a forward pointer to its survivor S, and answer L's whole state.

  The journal of a merge lives in L's profile hash: mergedInto (S), mergeState
  (frozen -> absorbed -> repointed -> done), mergeEventId, mergedAt. From the moment
  it is frozen every apply to L answers FORWARDED, so L's state no longer changes: the
  state answered here is what merge_absorb folds into S, however often it is asked.

  Idempotent: L already frozen towards S answers its state again (a resumed merge),
  whatever step the journal is at. L merged or frozen towards another profile
  answers {"FROZEN", other, mergeState}; L not a profile (never created, erased)
  answers {"GONE"}.

  The counter zsets must be declared: the caller names those of the counter names it
  read (HKEYS of L's counters hash); the answer lists every name L's counters hash
  holds, and a call that missed one is made again with it (L frozen, the list is final).

  KEYS[1]  L's profile hash           cdp:profile:{L}
  KEYS[2]  L's traits                 cdp:profile:{L}:traits
  KEYS[3]  L's identifiers            cdp:profile:{L}:identifiers
  KEYS[4]  L's counters hash          cdp:profile:{L}:counters
  KEYS[5]  L's seen ids               cdp:profile:{L}:seen
  KEYS[6]  L's memberships            cdp:profile:{L}:segments
  KEYS[7]  L's merged set             cdp:profile:{L}:merged
  KEYS[8..]  L's counter zsets        cdp:profile:{L}:counter:<name> (variable count)

  ARGV[1]  S, the survivor
  ARGV[2]  eventId of the event that merges them (mergeEventId)
  ARGV[3]  its time, ISO-8601 (mergedAt)

  Returns  {"STATE", mergeState, state JSON, {counter names}, {identifiers}, {merged}}
           (state JSON: what merge_absorb-n.lua reads, see there)
        or {"FROZEN", other survivor, mergeState}
        or {"GONE"}
]=]
local rcall = redis.call
local pkey = KEYS[1]
local survivor, event_id, merged_at = ARGV[1], ARGV[2], ARGV[3]

local head = rcall("HMGET", pkey, "mergedInto", "mergeState", "createdAt")
if head[1] and head[1] ~= survivor then return {"FROZEN", head[1], head[2] or "done"} end
if not head[1] then
  if not head[3] then return {"GONE"} end
  rcall("HSET", pkey, "mergedInto", survivor, "mergeState", "frozen", "mergeEventId", event_id,
    "mergedAt", merged_at)
  head[2] = "frozen"
end
local state = head[2] or "done"

local counter_prefix = pkey .. ":counter:"
local zsets = {}
for i = 8, #KEYS do
  zsets[string.sub(KEYS[i], #counter_prefix + 1)] = rcall("ZRANGE", KEYS[i], 0, -1, "WITHSCORES")
end
local counters = rcall("HGETALL", KEYS[4])
local names = {}
for i = 1, #counters, 2 do names[#names + 1] = counters[i] end
local ids = rcall("SMEMBERS", KEYS[3])
local merged = rcall("SMEMBERS", KEYS[7])
local meta = rcall("HMGET", pkey, "firstSeen", "lastSeen", "users", "emails", "anons", "merges",
  "user", "seenFrom", "seenTo", "lastSeenMs")
-- The seen hash's time to live as an instant (TIME + PTTL): merge_absorb gives the
-- survivor what is left of it when it runs.
local ttl = rcall("PTTL", KEYS[5])
local expires_at = ""
if ttl > 0 then
  local now = rcall("TIME")
  expires_at = string.format("%d", tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl)
end
local blob = cjson.encode({
  traits = rcall("HGETALL", KEYS[2]), ids = ids, counters = counters, zsets = zsets,
  seen = rcall("HGETALL", KEYS[5]), seenExpiresAt = expires_at, merged = merged,
  segments = rcall("HGETALL", KEYS[6]), meta = meta,
})
return {"STATE", state, blob, names, ids, merged}
