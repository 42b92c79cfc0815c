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

  Failures: an event that fails because of itself (includes/poison.lua: a stored
  trait cell of its profile that is not JSON, WRONGTYPE on a key it names) stops the
  call with the error `CDP_POISON event <eventId>: <reason>`; the worker applies the
  batch again event by event and parks that one. Any other failure (OOM, READONLY,
  ...) is raised as Redis reported it and the worker retries the batch. Events
  applied before a failure stay applied and recorded, and are not acknowledged: their
  retry is a duplicate. The current dedup bucket gets its time to live together with
  its first id, so a failed call never leaves an id that is remembered forever.

  Strings are compared byte-wise (includes/bytes.lua), never with the locale's `<`.

  Fencing: when ARGV[2] is not empty, nothing is applied unless the partition's
  lease (KEYS[2]) still names that worker.

  KEYS[1]  partition stream               cdp:events:{pN}
  KEYS[2]  partition lease                cdp:lease:{pN}
  KEYS[3]  dedup hash, current bucket     cdp:dedup:{pN}:<b>
  KEYS[4]  dedup hash, previous bucket    cdp:dedup:{pN}:<b-1>
  KEYS[5]  metrics hash                   cdp:metrics

  ARGV[1]  consumer group
  ARGV[2]  worker id holding the lease, or "" to skip the check
  ARGV[3]  dedup bucket time to live, ms (PEXPIRE of KEYS[3], set with its first id)
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
        or the error CDP_POISON (see Failures)
]=]
local rcall = redis.call

local stream_key, lease_key = KEYS[1], KEYS[2]
local dedup_cur, dedup_prev, metrics_key = KEYS[3], KEYS[4], KEYS[5]
local consumer_group, owner, dedup_expire_in = ARGV[1], ARGV[2], ARGV[3]
local cutoff, now_iso, prefix = ARGV[4], ARGV[5], ARGV[6]
local cutoff_ms = tonumber(cutoff)
local events = cjson.decode(ARGV[7])
local limits = cjson.decode(ARGV[8])

if owner ~= "" and rcall("GET", lease_key) ~= owner then
  return {"LEASE_LOST"}
end

--@include bytes
--@include poison
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
-- Buckets are 13-digit ms strings, compared as numbers.
local function count(pkey, name, bucket)
  local ckey = pkey .. ":counter:" .. name
  if tonumber(rcall("ZINCRBY", ckey, 1, bucket)) ~= 1 then return end
  local oldest = rcall("HGET", pkey .. ":counters", name)
  if oldest and tonumber(oldest) < cutoff_ms then oldest = prune_counter(ckey, cutoff) end
  if not oldest or tonumber(bucket) < tonumber(oldest) then oldest = bucket end
  rcall("HSET", pkey .. ":counters", name, oldest)
end

-- lastSeen in milliseconds (13 digits), for inactivity rules.
local function note_seen(pkey, ev)
  local last = rcall("HGET", pkey, "lastSeenMs")
  if not last or tonumber(ev.m) > tonumber(last) then rcall("HSET", pkey, "lastSeenMs", ev.m) end
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

-- The id is recorded only once the event is applied: if the script fails on an
-- event, its retry is not mistaken for a duplicate (Redis keeps a failed script's
-- earlier writes; the failing event is then parked, not lost). The bucket's time to
-- live is set with the first id this call records, before anything else can fail.
local expiry_set = false
local function remember(id)
  rcall("HSET", dedup_cur, id, "1")
  if not expiry_set then
    rcall("PEXPIRE", dedup_cur, dedup_expire_in)
    expiry_set = true
  end
end

-- Everything one event changes: its profile, identity and counters.
local marked = {}
local function apply_event(ev)
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
  if tonumber(ev.b) >= cutoff_ms then
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
  return cid
end

-- The keys every event may write besides its own. WRONGTYPE while these hold their
-- types (or nothing) came from a key the event names: the event is refused. With one
-- of these broken every event would fail: the error goes to the worker, which retries.
local SHARED = {
  [prefix .. ":merges"] = "stream", [prefix .. ":segment-events"] = "stream",
  [prefix .. ":profiles"] = "zset", [prefix .. ":segments:due"] = "zset",
  [prefix .. ":seq:profile"] = "string",
}
local function shared_keys_sound()
  for key, kind in pairs(SHARED) do
    local found = rcall("TYPE", key).ok
    if found ~= "none" and found ~= kind then return false end
  end
  return true
end

local applied, dups, discarded = 0, 0, 0

local function count_metrics()
  if applied > 0 then rcall("HINCRBY", metrics_key, "processed", applied) end
  if dups > 0 then rcall("HINCRBY", metrics_key, "dedup_hits", dups) end
  if discarded > 0 then rcall("HINCRBY", metrics_key, "suppressed", discarded) end
end

-- The answer to a failure while applying `ev`: CDP_POISON when the event caused it,
-- else the error itself, raised again as Redis reported it. Either way the events
-- applied (or discarded) before it are counted now: their retry finds them duplicates.
local function refuse(ev, err)
  local reason = poison_reason(err)
  if not reason then
    local message = type(err) == "table" and err.err or tostring(err)
    if string.find(message, "WRONGTYPE", 1, true) and shared_keys_sound() then
      reason = "a key of its profile or identity holds the wrong type: " .. message
    end
  end
  if applied + discarded > 0 then
    dups = 0  -- counted by the retry
    count_metrics()
  end
  if not reason then error(err, 0) end
  return redis.error_reply(POISON_CODE .. " event " .. ev.id .. ": " .. reason)
end

local result = {"OK", 0, 0}
local acks = {}
for _, ev in ipairs(events) do
  acks[#acks + 1] = ev.sid
  if rcall("HEXISTS", dedup_prev, ev.id) == 1 or rcall("HEXISTS", dedup_cur, ev.id) == 1 then
    dups = dups + 1
  elseif suppressed(ev) then
    discarded = discarded + 1
    remember(ev.id)
  elseif #ev.ids > 0 then
    local ok, cid = pcall(apply_event, ev)
    if not ok then return refuse(ev, cid) end
    remember(ev.id)
    applied = applied + 1
    if not ev.imp then result[#result + 1] = cid end
  else
    remember(ev.id)
  end
end

count_metrics()
for i = 1, #acks, 500 do
  rcall("XACK", stream_key, consumer_group, unpack(acks, i, math.min(i + 499, #acks)))
end
result[2], result[3] = applied, dups
return result
