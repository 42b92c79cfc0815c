--[=[
  merge_finish-n.lua: step 4 of the cross-slot merge (cdp/merge.py): once loser L is
  absorbed and its identifiers repointed, every key of L but its profile hash is
  deleted, and the hash keeps only the forward pointer: mergedInto, mergedAt,
  mergeEventId, mergeState=done. Only when the journal says repointed (or done: a
  second run deletes nothing more). L's outbox is left to the relay (its segment
  events of before the merge are still owed; an emptied list vanishes by itself).

  KEYS[1]  L's profile hash           cdp:profile:{L}
  KEYS[2]  L's traits                 cdp:profile:{L}:traits
  KEYS[3]  L's identifiers            cdp:profile:{L}:identifiers
  KEYS[4]  L's counters hash          cdp:profile:{L}:counters
  KEYS[5]  L's seen ids               cdp:profile:{L}:seen
  KEYS[6]  L's memberships            cdp:profile:{L}:segments
  KEYS[7]  L's merged set             cdp:profile:{L}:merged
  KEYS[8..]  L's counter zsets        cdp:profile:{L}:counter:<name> (variable count)

  Returns  {"DONE"}, {"COUNTERS", name...} (the counters hash names zsets not declared:
           nothing deleted, call again with them), or {"STATE", mergeState or ""}
           (not repointed yet: nothing done)
]=]
local rcall = redis.call
local pkey = KEYS[1]
local head = rcall("HMGET", pkey, "mergedInto", "mergeState", "mergedAt", "mergeEventId")
if head[2] == "done" then return {"DONE"} end
if not head[1] or head[2] ~= "repointed" then return {"STATE", head[2] or ""} end
local declared = {}
for i = 8, #KEYS do declared[KEYS[i]] = true end
local names, missing = rcall("HKEYS", KEYS[4]), false
for _, name in ipairs(names) do
  if not declared[pkey .. ":counter:" .. name] then missing = true end
end
if missing then return {"COUNTERS", unpack(names)} end
rcall("DEL", unpack(KEYS))
rcall("HSET", pkey, "mergedInto", head[1], "mergeState", "done", "mergedAt", head[3],
  "mergeEventId", head[4])
return {"DONE"}
