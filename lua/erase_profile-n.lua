--[[
  erase_profile-n.lua: the erasure step in the profile's slot (GDPR erasure; the job
  around it is cdp/erasure.py). Every key it touches is declared, all in one slot.

  Each segment membership the profile is in ends with an EXIT event (reason "erased")
  pushed to the profile's outbox with its member change (includes/outbox.lua), for the
  job to relay; traits, counters and their zsets, memberships and the ids of the
  events applied to it (`seen`) are deleted; the profile hash becomes a marker of the
  erasure (erasedBy = the job, erasedIdentifiers, erasedExits: a retry of the same job
  reads its counts back). The identifiers set, the merged set and the outbox stay: the
  job reads them in its next steps (the identifiers linked since it suppressed the
  first ones, the forward pointers to delete, the EXITs to relay), then deletes them.

  KEYS[1]  profile hash         cdp:profile:{<cid>}
  KEYS[2]  traits               cdp:profile:{<cid>}:traits
  KEYS[3]  identifiers          cdp:profile:{<cid>}:identifiers
  KEYS[4]  counters             cdp:profile:{<cid>}:counters
  KEYS[5]  merged set           cdp:profile:{<cid>}:merged
  KEYS[6]  memberships          cdp:profile:{<cid>}:segments
  KEYS[7]  seen                 cdp:profile:{<cid>}:seen
  KEYS[8]  outbox               cdp:profile:{<cid>}:outbox
  KEYS[9..] counter zsets       cdp:profile:{<cid>}:counter:<name>, one per name the
                                caller read in the counters hash

  ARGV[1]  key prefix ("cdp": the stream the EXITs are owed to, cdp:segment-events)
  ARGV[2]  canonical id
  ARGV[3]  the job's time, ISO-8601 (the EXITs' ts)
  ARGV[4]  job id
  ARGV[5]  approximate MAXLEN of cdp:segment-events

  Returns {"ERASED", identifiers, exits} (now, or by an earlier call of this job),
  {"FORWARDED", survivor} (merged away: the job erases the survivor), {"GONE"} (no
  live profile, or erased by another job), or {"COUNTERS", name...} (counter names the
  call did not declare: call again with them).
]]
local rcall = redis.call
local prefix, cid, at, job, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--@include segments
--@include outbox
local pkey, traits_key, ids_key, counters_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local memberships_key, seen_key, outbox_key = KEYS[6], KEYS[7], KEYS[8]

local meta = rcall("HMGET", pkey, "createdAt", "mergedInto", "user", "erasedBy",
  "erasedIdentifiers", "erasedExits")
if meta[4] then
  if meta[4] ~= job then return {"GONE"} end
  return {"ERASED", tonumber(meta[5]), tonumber(meta[6])}
end
if meta[2] then return {"FORWARDED", meta[2]} end
if not meta[1] then return {"GONE"} end

local declared = {}
for i = 9, #KEYS do declared[KEYS[i]] = true end
local names = rcall("HKEYS", counters_key)
local missing = {"COUNTERS"}
for _, name in ipairs(names) do
  if not declared[pkey .. ":counter:" .. name] then missing[#missing + 1] = name end
end
if #missing > 1 then return missing end

-- The EXITs name the profile as segment_transition did: the userId, else the first identifier.
local ids = rcall("SMEMBERS", ids_key)
local who_field, who_value = who_of(meta[3], ids)
local exits = 0
local memberships = rcall("HGETALL", memberships_key)
for i = 1, #memberships, 2 do
  local name, state = memberships[i], cjson.decode(memberships[i + 1])
  if state["in"] then
    local event_id, fields = transition_fields(name, cid, state.n + 1, "EXIT", at, who_field,
      who_value, "erased")
    outbox_push(outbox_key, event_id, prefix .. ":segment-events", tonumber(maxlen), fields,
      {segment = name, cid = cid, op = "rem", score = tonumber(string.sub(cid, 2)) or 0})
    exits = exits + 1
  end
end

for i = 9, #KEYS do rcall("DEL", KEYS[i]) end
rcall("DEL", pkey, traits_key, counters_key, memberships_key, seen_key)
rcall("HSET", pkey, "erasedBy", job, "erasedIdentifiers", #ids, "erasedExits", exits)
return {"ERASED", #ids, exits}
