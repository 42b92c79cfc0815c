--[=[
  apply_batch-5.lua: apply an ordered batch of events of one partition, atomically
  per event, and acknowledge them.

  The caller has sorted the batch by (ts, eventId) and normalised every identifier
  (user:, anon:, email:). For each event, in order:
    1. dedup: an eventId seen in the current or previous dedup bucket is skipped
       (counted as a dedup hit); otherwise it is recorded in the current bucket once
       it has been applied;
       an event naming an erased (suppressed) identifier is discarded and counted;
    2. identity (includes/identity.lua): each identifier is looked up in the
       index; when they belong to several profiles, those the guard rails allow are
       merged into the oldest (a record goes to cdp:merges, as does every refusal;
       each segment membership of a merged-away profile ends with an EXIT event,
       reason "merged", in cdp:segment-events);
       unknown identifiers are linked to the event's profile, new if none is known;
    3. traits: per trait, Last-Write-Wins on (ts, eventId); a JSON null value is a
       tombstone that keeps its ts;
    4. firstSeen / lastSeen: min / max of the event time; the profile's version is
       bumped and, unless imported, it is marked due for segment evaluation
       (cdp:segments:due);
    5. counters: every event's bucket in $seen (activity); a TRACK's also in the
       counter of its name and in the all-TRACK counter ($track); PAGE and SCREEN
       in $page and $screen; buckets older than the cutoff are
       pruned (when the counter's oldest bucket has passed it) and late events that
       fall before it are not counted.
  Finally the batch's stream entries are XACKed: an entry is acknowledged only
  by the call that applied it (or found it a duplicate).

  Fencing: when ARGV[2] is not empty, nothing is applied unless the partition's
  lease (KEYS[2]) still names that worker.

  KEYS[1]  partition stream               cdp:events:{pN}
  KEYS[2]  partition lease                cdp:lease:{pN}
  KEYS[3]  dedup hash, current bucket     cdp:dedup:{pN}:<b>
  KEYS[4]  dedup hash, previous bucket    cdp:dedup:{pN}:<b-1>
  KEYS[5]  metrics hash                   cdp:metrics

  ARGV[1]  consumer group
  ARGV[2]  worker id holding the lease, or "" to skip the check
  ARGV[3]  dedup bucket time to live, ms (PEXPIRE of KEYS[3])
  ARGV[4]  counter cutoff: 13-digit bucket start; older buckets are pruned
  ARGV[5]  now, ISO-8601 (createdAt of new profiles)
  ARGV[6]  key prefix ("cdp")
  ARGV[7]  JSON array of events, each
             {"id": eventId, "sid": stream entry id, "ts": ISO-8601 fixed width,
              "m": event time, 13-digit epoch ms,
              "b": 13-digit bucket start, "t": type, "ids": [typed identifiers],
              "tr": [[trait, raw JSON value], ...], "n": event name or absent,
              "imp": true for a historical import (its profile is not marked due)}
  ARGV[8]  JSON limits: guard rails {"maxEmails", "maxAnons", "maxUsers", "maxMerges",
           "mergeUsers"}, "minReturnGap" (ms), "dirtyDue" (ms: when touched
           profiles fall due for the sweeper if nobody evaluates them first) and
           "segmentEventsMaxlen" (approximate MAXLEN of cdp:segment-events)

  Returns  {"OK", applied, duplicates, cid of each applied live (not imported) event...}
        or {"LEASE_LOST"}
]=]
local rcall = redis.call

local stream_key, lease_key = KEYS[1], KEYS[2]
local dedup_cur, dedup_prev, metrics_key = KEYS[3], KEYS[4], KEYS[5]
local consumer_group, owner, dedup_expire_in = ARGV[1], ARGV[2], ARGV[3]
local cutoff, now_iso, prefix = ARGV[4], ARGV[5], ARGV[6]
local events = cjson.decode(ARGV[7])
local limits = cjson.decode(ARGV[8])

if owner ~= "" and rcall("GET", lease_key) ~= owner then
  return {"LEASE_LOST"}
end

--@include profile
--@include identity

local function apply_traits(pkey, ev)
  local traits = ev.tr
  if traits == nil or #traits == 0 then return end
  local tkey = pkey .. ":traits"
  local names = {}
  for i, kv in ipairs(traits) do names[i] = kv[1] end
  local current = rcall("HMGET", tkey, unpack(names))
  local stamp = ',"ts":"' .. ev.ts .. '","eventId":' .. cjson.encode(ev.id) .. '}'
  for i, kv in ipairs(traits) do
    if cell_newer(ev.ts, ev.id, current[i]) then
      rcall("HSET", tkey, kv[1], '{"v":' .. kv[2] .. stamp)
    end
  end
end

-- Per counter, the oldest bucket it holds is kept in the profile's counters hash.
-- Only the first event of a bucket looks at it (ZINCRBY answered 1): that is when the
-- oldest may change, and when buckets past the cutoff are pruned, so a counter holds
-- at most the buckets of its window plus the one being opened.
local function count(pkey, name, bucket)
  local ckey = pkey .. ":counter:" .. name
  if tonumber(rcall("ZINCRBY", ckey, 1, bucket)) ~= 1 then return end
  local oldest = rcall("HGET", pkey .. ":counters", name)
  if oldest and oldest < cutoff then oldest = prune_counter(ckey, cutoff) end
  if not oldest or bucket < oldest then oldest = bucket end
  rcall("HSET", pkey .. ":counters", name, oldest)
end

-- lastSeen in milliseconds, for inactivity rules.
local function note_seen(pkey, ev)
  local last = rcall("HGET", pkey, "lastSeenMs")
  if not last or ev.m > last then rcall("HSET", pkey, "lastSeenMs", ev.m) end
end

-- Erased people: an event naming a suppressed identifier is discarded (acknowledged,
-- counted, never applied). The set is usually empty, so it is checked once per call.
local suppressing = rcall("SCARD", prefix .. ":suppressed") > 0
local function suppressed(ev)
  if not suppressing or #ev.ids == 0 then return false end
  for _, hit in ipairs(rcall("SMISMEMBER", prefix .. ":suppressed", unpack(ev.ids))) do
    if hit == 1 then return true end
  end
  return false
end

local applied, dups, recorded, discarded = 0, 0, false, 0
local marked = {}
local result = {"OK", 0, 0}
local acks = {}
for _, ev in ipairs(events) do
  acks[#acks + 1] = ev.sid
  -- The id is recorded only once the event is applied: if the script fails on an
  -- event, its retry is not mistaken for a duplicate (Redis keeps a failed
  -- script's earlier writes; the failing event is then parked, not lost).
  if rcall("HEXISTS", dedup_prev, ev.id) == 1 or rcall("HEXISTS", dedup_cur, ev.id) == 1 then
    dups = dups + 1
  elseif suppressed(ev) then
    recorded = true
    discarded = discarded + 1
    rcall("HSET", dedup_cur, ev.id, "1")
  elseif #ev.ids > 0 then
    recorded = true
    local cid = resolve(ev)
    local pkey = profile_key(cid)
    apply_traits(pkey, ev)
    note_seen(pkey, ev)
    widen_seen(pkey, ev.ts, ev.ts)
    rcall("HINCRBY", pkey, "version", 1)
    -- Touched profiles fall due for segment evaluation: the worker evaluates them
    -- right after this call and reschedules them; if it dies first, the sweeper does.
    if not ev.imp and not marked[cid] then
      marked[cid] = true
      rcall("ZADD", prefix .. ":segments:due", "LT", limits.dirtyDue, cid)
    end
    if ev.b >= cutoff then
      -- Every event is activity: "returned" rules read the gaps between these
      -- buckets, which, unlike a gap measured at apply time, any order agrees on.
      count(pkey, "$seen", ev.b)
      if ev.t == "TRACK" then
        count(pkey, ev.n, ev.b)
        count(pkey, "$track", ev.b)
      elseif ev.t == "PAGE" then
        count(pkey, "$page", ev.b)
      elseif ev.t == "SCREEN" then
        count(pkey, "$screen", ev.b)
      end
    end
    rcall("HSET", dedup_cur, ev.id, "1")
    applied = applied + 1
    if not ev.imp then result[#result + 1] = cid end
  else
    recorded = true
    rcall("HSET", dedup_cur, ev.id, "1")
  end
end

if recorded then rcall("PEXPIRE", dedup_cur, dedup_expire_in) end
if applied > 0 then rcall("HINCRBY", metrics_key, "processed", applied) end
if dups > 0 then rcall("HINCRBY", metrics_key, "dedup_hits", dups) end
if discarded > 0 then rcall("HINCRBY", metrics_key, "suppressed", discarded) end
for i = 1, #acks, 500 do
  rcall("XACK", stream_key, consumer_group, unpack(acks, i, math.min(i + 499, #acks)))
end
result[2], result[3] = applied, dups
return result
