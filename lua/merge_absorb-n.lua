--[=[
  merge_absorb-n.lua: step 2 of the cross-slot merge (cdp/merge.py): survivor S folds
  in the state of loser L that merge_freeze-n.lua answered, exactly as the merge inside
  apply_batch does (includes/merge.lua): traits by LWW on (ts, eventId), identifiers by
  union (+ their counts), counters summed per bucket (oldest: the older), first/lastSeen
  by min/max, lastSeenMs by max, seen ids by union, merges += L's + 1, L's userId when S
  has none, version + 1, S's merged set += L and L's merged set. Each membership of L
  that is "in" ends with an EXIT event pushed to S's outbox (includes/outbox.lua), the
  payload built as emit_transition builds it (reason "merged", mergedInto S, eventId
  seg:<segment>:<L>:<n+1>), its member op the removal of L; the relay moves it to
  cdp:segment-events exactly once.

  Exactly once: S's merged set holding L means absorbed already (answers ALREADY, writes
  nothing). The guard rails are checked again, on S as it is now: a userId of L other
  than S's (unless mergeUsers; with it, past maxUsers userIds together), or S at
  maxMerges merges, refuses the absorb (nothing written).

  KEYS[1]  S's profile hash           cdp:profile:{S}
  KEYS[2]  S's traits                 cdp:profile:{S}:traits
  KEYS[3]  S's identifiers            cdp:profile:{S}:identifiers
  KEYS[4]  S's counters hash          cdp:profile:{S}:counters
  KEYS[5]  S's seen ids               cdp:profile:{S}:seen
  KEYS[6]  S's merged set             cdp:profile:{S}:merged
  KEYS[7]  S's outbox                 cdp:profile:{S}:outbox
  KEYS[8..]  S's counter zsets of L's counter names (variable count, any order)
                                      cdp:profile:{S}:counter:<name>

  ARGV[1]  L, the loser
  ARGV[2]  L's state JSON, as merge_freeze answered it: {traits: [trait, cell, ...],
           ids: [...], counters: [name, oldest, ...], zsets: {name: [bucket, count,
           ...]}, seen: [eventId, bucket, ...], seenExpiresAt: ms or "", merged: [...],
           segments: [segment, state JSON, ...], meta: HMGET of firstSeen, lastSeen,
           users, emails, anons, merges, user, seenFrom, seenTo, lastSeenMs}
  ARGV[3]  JSON limits (cdp.pipeline.apply.script_limits): maxUsers, maxMerges,
           mergeUsers, segmentEventsMaxlen
  ARGV[4]  now, ISO-8601 (the EXITs' time)
  ARGV[5]  the segment events stream, cdp:segment-events (the outbox entries' target)
  ARGV[6]  S, the survivor

  Returns  {"OK"} absorbed now, {"ALREADY"}, {"FORWARDED", S's survivor},
           {"REFUSED", reason}, {"GONE"} (S is not a profile)
]=]
local rcall = redis.call
local skey = KEYS[1]
local loser, limits, now_iso, events_stream = ARGV[1], cjson.decode(ARGV[3]), ARGV[4], ARGV[5]
local survivor = ARGV[6]
local unpack, tonumber = unpack, tonumber
local CHUNK = 1000

local function chunked(command, key, list, step)
  local out = {}
  for i = 1, #list, step do
    local reply = rcall(command, key, unpack(list, i, math.min(i + step - 1, #list)))
    if type(reply) == "table" then
      for j = 1, #reply do out[#out + 1] = reply[j] end
    end
  end
  return out
end

--@include merge
--@include segments
--@include outbox

if rcall("SISMEMBER", KEYS[6], loser) == 1 then return {"ALREADY"} end
local head = rcall("HMGET", skey, "mergedInto", "createdAt", "user", "users", "merges")
if head[1] then return {"FORWARDED", head[1]} end
if not head[2] then return {"GONE"} end

local l = cjson.decode(ARGV[2])
local lmeta = l.meta
local l_user, s_user = lmeta[7], head[3]
if l_user and s_user and l_user ~= s_user then
  if not limits.mergeUsers then return {"REFUSED", "different userIds"} end
  if (tonumber(head[4]) or 0) + (tonumber(lmeta[3]) or 0) > limits.maxUsers then
    return {"REFUSED", "userId limit"}
  end
end
if (tonumber(head[5]) or 0) >= limits.maxMerges then return {"REFUSED", "merge limit"} end

absorb_traits(skey, l.traits)
if #l.ids > 0 then chunked("SADD", KEYS[3], l.ids, CHUNK) end
for i = 1, #l.counters, 2 do
  local name = l.counters[i]
  absorb_counter(skey, name, l.counters[i + 1], l.zsets[name] or {})
end
local l_ttl = 0
if l.seenExpiresAt ~= "" then
  local now = rcall("TIME")
  l_ttl = tonumber(l.seenExpiresAt) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
end
absorb_seen(skey, l.seen, l_ttl, lmeta[8], lmeta[9])
absorb_meta(skey, lmeta)
local seq = tonumber(string.sub(loser, 2)) or 0
merged_exits(l.segments, loser, survivor, l_user, l.ids, now_iso,
  function(name, event_id, fields)
    outbox_push(KEYS[7], event_id, events_stream, limits.segmentEventsMaxlen, fields,
      {segment = name, cid = loser, op = "rem", score = seq})
  end)
local merged = {loser}
for _, old in ipairs(l.merged) do merged[#merged + 1] = old end
chunked("SADD", KEYS[6], merged, CHUNK)
return {"OK"}
