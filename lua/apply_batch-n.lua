--[=[
  apply_batch-n.lua: apply an ordered batch of events of one partition, atomically
  per event, and acknowledge them.

  The caller has sorted the batch by (ts, eventId) and normalised every identifier
  (user:, anon:, email:). For each event, in order:
    1. an event naming an erased (suppressed) identifier is discarded and counted;
    2. identity (includes/identity.lua): its identifiers are read in one MGET;
       dedup: an eventId that a profile they name (or this call) already applied, in
       the current or previous dedup bucket, is skipped (counted as a dedup hit, no
       write at all); so is one found in the partition's dedup hashes of before this
       layout (read only). Otherwise, once applied, the event is recorded in the
       `seen` hash of the profile it was applied to (eventId -> current dedup bucket).
       When its identifiers all name one profile, that is it. Otherwise, when they
       belong to several profiles, those the guard rails allow are merged into the
       oldest (a record goes to cdp:merges, as does every refusal; each segment
       membership of a merged-away profile ends with an EXIT event, reason "merged",
       in cdp:segment-events);
       unknown identifiers are linked to the event's profile, new if none is known;
    3. traits: per trait, Last-Write-Wins on (ts, eventId); a JSON null value is a
       tombstone that keeps its ts (one HMGET, one HSET of the winners);
    4. firstSeen / lastSeen: min / max of the event time; lastSeenMs: max; the
       profile's version is bumped and, unless imported, it is marked due for segment
       evaluation (cdp:segments:due);
    5. counters: every event's bucket in $seen (activity); a TRACK's also in the
       counter of its name and in the all-TRACK counter ($track); PAGE and SCREEN
       in $page and $screen; buckets older than the cutoff are
       pruned (when the counter's oldest bucket has passed it) and late events that
       fall before it are not counted.
  Finally the batch's stream entries are XACKed: an entry is acknowledged only
  by the call that applied it (or found it a duplicate); an event with sid "" (not
  the last of its stream entry) acknowledges nothing.

  Dedup lives in the profile (docs/cluster.md, "Dedup moves into the profile"):
  cdp:profile:{cid}:seen, eventId -> the dedup bucket (now // dedup-ttl) it was
  recorded in, is honoured through the end of the next bucket (at least dedup-ttl, at
  most twice). The profile hash keeps `seenFrom` (the oldest bucket the hash may hold)
  and `seenTo` (the bucket its time to live was last set for: the end of seenTo + 1);
  when a record finds seenFrom older than the previous bucket, the expired ids are
  deleted (one HGETALL, one HDEL), and the hash's time to live is moved only when the
  bucket advances, so neither costs a call per event. A merge moves the loser's ids
  into the survivor (identity.lua); an erasure deletes them with the profile.

  Cost: about 11 redis.call per event (18 before this layout; +1.2 to +1.6 since dedup
  moved into the profiles: one HGET of seen per event, one HSET per profile per call,
  against the partition hashes' HMGETs, HSET and PEXPIRE per call; +8 to +12% Redis
  instructions per event, callgrind on the bench workload), each ~1k instructions
  of Lua-to-Redis overhead besides the command itself; the rest is the commands'
  own work on the profile's keys and the Lua code (valgrind, issue 10). The call
  works per batch where it can: one EXISTS of the legacy dedup hashes for all its
  events (HMGETs only while they live); one HGET of `seen` per event and known
  owner; per profile, the 4 fields of step 4 (+ seenFrom, seenTo) read on its first
  touch and written once (version + the number of events: it is only compared for
  equality), and the ids it applied recorded with one HSET; a counter bucket's later
  increments in the call folded into one ZINCRBY; one ZADD of every due profile.
  These folded writes are flushed at the end, before a merge (which reads profiles
  by name) and when an event is refused; an event adds to them only once nothing of
  its own can fail any more. The state a call leaves is the state one call per
  event would leave (tests/lua/test_folded_apply.py).

  Failures: an event that fails because of itself (includes/poison.lua: a stored
  trait cell of its profile that is not JSON, WRONGTYPE on a key it names) stops the
  call with the error `CDP_POISON event <eventId>: <reason>`; the worker applies the
  batch again event by event and parks that one. Any other failure (OOM, READONLY,
  ...) is raised as Redis reported it and the worker retries the batch. Events
  applied before a failure stay applied, written and recorded, and are not
  acknowledged: their retry is a duplicate. A refused (poison) event is never
  recorded: its replay is applied. A `seen` hash gets its time to live together with
  its first ids, so a failed call never leaves an id that is remembered forever.

  Strings are compared byte-wise (includes/bytes.lua), never with the locale's `<`.

  Fencing: when ARGV[2] is not empty, nothing is applied unless the partition's
  lease (KEYS[2]) still names that worker.

  KEYS[1]  partition stream                       cdp:events:{pN}
  KEYS[2]  partition lease                        cdp:lease:{pN}
  KEYS[3]  the partition's metrics hash               cdp:metrics:{pN}
  The partition dedup hashes of before this layout, read (never written) while they
  exist, so ids recorded before an upgrade stay duplicates; they expire by themselves:
  KEYS[4]  legacy dedup hash, current bucket      cdp:dedup:{pN}:<b>    (read only)
  KEYS[5]  legacy dedup hash, previous bucket     cdp:dedup:{pN}:<b-1>  (read only)
  KEYS[4+2s], KEYS[5+2s]  for s = 1, 2... (the shards the batch uses, variable count)
           legacy dedup shard s, current and previous bucket (read only)
                                                       cdp:dedup:{pN}:<b>:<shard>
                                                       cdp:dedup:{pN}:<b-1>:<shard>

  ARGV[1]  consumer group
  ARGV[2]  worker id holding the lease, or "" to skip the check
  ARGV[3]  the current dedup bucket, now // dedup-ttl (an integer)
  ARGV[4]  ms from now to the end of the next dedup bucket (PEXPIRE of a `seen` hash
           that gets ids of a bucket later than its seenTo)
  ARGV[5]  counter cutoff: 13-digit bucket start; older buckets are pruned
  ARGV[6]  now, ISO-8601 (createdAt of new profiles)
  ARGV[7]  key prefix ("cdp")
  ARGV[8]  JSON array of events, each an array
             [eventId, stream entry id or "", ts ISO-8601 fixed width,
              event time 13-digit epoch ms, 13-digit bucket start, type,
              [typed identifiers], [trait, raw JSON value, trait, ...],
              event name or "", 1 for a historical import (its profile is not
              marked due) else 0, s: its legacy dedup shard's place in KEYS (above)]
  ARGV[9]  JSON limits: guard rails {"maxEmails", "maxAnons", "maxUsers", "maxMerges",
           "mergeUsers"}, "minReturnGap" (ms), "dirtyDue" (ms: when touched
           profiles fall due for the sweeper if nobody evaluates them first) and
           "segmentEventsMaxlen" (approximate MAXLEN of cdp:segment-events)

  Returns  {"OK", applied, duplicates, cid of each applied live (not imported) event...}
        or {"LEASE_LOST"}
        or the error CDP_POISON (see Failures)
]=]
local rcall = redis.call

local stream_key, lease_key, metrics_key = KEYS[1], KEYS[2], KEYS[3]
local legacy_cur, legacy_prev = KEYS[4], KEYS[5]
local consumer_group, owner = ARGV[1], ARGV[2]
local dedup_bucket, seen_expire_in = ARGV[3], ARGV[4]
local cutoff, now_iso, prefix = ARGV[5], ARGV[6], ARGV[7]
local cutoff_ms = tonumber(cutoff)
local bucket_n = tonumber(dedup_bucket)
local honoured_from = bucket_n - 1  -- ids recorded in an older bucket are forgotten

if owner ~= "" and rcall("GET", lease_key) ~= owner then
  return {"LEASE_LOST"}
end

local events = cjson.decode(ARGV[8])
local limits = cjson.decode(ARGV[9])
local unpack, tonumber, pcall = unpack, tonumber, pcall
local EID, SID, TS, MS, BUCKET, TYPE, IDS, TRAITS, NAME, IMPORT, SHARD = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
--@include bytes
--@include poison
--@include profile

-- One Redis: a profile's counter zsets are reached by name.
local function counter_key(pkey, name) return pkey .. ":counter:" .. name end

--@include apply

-- Profiles to mark due (cdp:segments:due), written by flush().
local due, due_order = {}, {}

-- Write what the call holds: the profiles' seen times, versions and seen ids, the
-- folded counter increments, the due marks. Called at the end, when an event is
-- refused, and before a merge (which reads and moves profiles' state by name).
local function flush()
  flush_profiles()
  if #due_order > 0 then
    local args = {}
    for _, cid in ipairs(due_order) do args[#args + 1] = limits.dirtyDue; args[#args + 1] = cid end
    for i = 1, #args, CHUNK do
      rcall("ZADD", prefix .. ":segments:due", "LT", unpack(args, i, math.min(i + CHUNK - 1, #args)))
    end
  end
  due_order = {}
end

-- True when a known owner of the event's identifiers (`cids`, from their MGET: a
-- canonical id or false each) holds its eventId in its seen hash, recorded in the
-- current or previous bucket. Checked before anything of the event is written (no
-- link, merge or refusal record: includes/identity.lua calls it before
-- resolve_links). Why the owners are enough: an applied event always left at least
-- one of its identifiers linked to the profile it was applied to (that profile was
-- an owner of one of them already, or it was new and got the event's first
-- identifier it could link: a guard rail allows at least one of each type);
-- identifiers move only by merges, to the survivor, which absorbs the loser's seen
-- ids, or by erasure, after which the event names a suppressed identifier and is
-- discarded. So a redelivered applied event always finds its record here.
local function seen_in(cid, id) return seen_at(profile_key(cid) .. ":seen", id) end
local function seen_by_owner(ev, cids)
  local id, first, asked = ev[EID], cids[1], nil
  if first and seen_in(first, id) then return true end
  for i = 2, #cids do  -- usually every identifier names the first one's profile
    local cid = cids[i]
    if cid and cid ~= first and not (asked and asked[cid]) then
      asked = asked or {}
      asked[cid] = true
      if seen_in(cid, id) then return true end
    end
  end
  return false
end

--@include identity

-- Erased people: an event naming a suppressed identifier is discarded (acknowledged,
-- counted, never applied). The set is usually empty, so it is checked once per call.
local suppressing = rcall("SCARD", prefix .. ":suppressed") > 0
local function suppressed(ev)
  local ids = ev[IDS]
  if not suppressing or #ids == 0 then return false end
  for _, hit in ipairs(rcall("SMISMEMBER", prefix .. ":suppressed", unpack(ids))) do
    if hit == 1 then return true end
  end
  return false
end

-- Everything one event changes: its profile, identity and counters, and its record in
-- the profile's seen ids; nil (and nothing written) when a profile its identifiers
-- name already applied it. Its reads (and the writes that must happen in order:
-- links, merges, traits, a bucket's first increment) come first; what the call folds
-- is committed last, when nothing can fail.
local function apply_event(ev)
  local cid = resolve(ev)
  if not cid then return nil end
  local pkey = profile_key(cid)
  local meta = meta_of(cid, pkey)
  lww_traits(pkey .. ":traits", ev[TS], ev[EID], ev[TRAITS])
  local bucket = ev[BUCKET]
  local later = count_event(pkey, bucket, ev[TYPE], ev[NAME])
  -- Commit: nothing below calls Redis.
  commit_event(meta, later, bucket, ev[TS], ev[MS], ev[EID])
  -- Touched profiles fall due for segment evaluation: the worker evaluates them
  -- right after this call and reschedules them; if it dies first, the sweeper does.
  if ev[IMPORT] == 0 and not due[cid] then
    due[cid] = true
    due_order[#due_order + 1] = cid
  end
  return cid
end

-- --------------------------------------------------------------------- legacy dedup
-- Which events the partition dedup hashes of before this layout hold (an upgrade in
-- place: they are read, never written, and expire within two dedup-ttl): one EXISTS
-- for the call, then, only while some live, one HMGET per hash (shard s of the current
-- bucket is KEYS[4 + 2s], of the previous one KEYS[5 + 2s]; the unsharded ones
-- KEYS[4] and KEYS[5]).
local stored = {}
if #events > 0 and rcall("EXISTS", unpack(KEYS, 4)) > 0 then
  local by_shard, shards = {}, {}
  for i, ev in ipairs(events) do
    local s = ev[SHARD]
    local list = by_shard[s]
    if not list then
      list = {positions = {}, ids = {}}
      by_shard[s] = list
      shards[#shards + 1] = s
    end
    list.positions[#list.positions + 1] = i
    list.ids[#list.ids + 1] = ev[EID]
  end
  local function look(key, list)
    local found = chunked("HMGET", key, list.ids, CHUNK)
    for j, pos in ipairs(list.positions) do
      if found[j] then stored[pos] = true end
    end
  end
  local legacy = rcall("EXISTS", legacy_cur, legacy_prev) > 0
  for _, s in ipairs(shards) do
    local list = by_shard[s]
    look(KEYS[4 + 2 * s], list)
    look(KEYS[5 + 2 * s], list)
    if legacy then
      look(legacy_cur, list)
      look(legacy_prev, list)
    end
  end
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
local recorded = {}  -- eventIds this call applied (recorded in their profiles by flush)

local function count_metrics()
  if applied > 0 then rcall("HINCRBY", metrics_key, "processed", applied) end
  if dups > 0 then rcall("HINCRBY", metrics_key, "dedup_hits", dups) end
  if discarded > 0 then rcall("HINCRBY", metrics_key, "suppressed", discarded) end
end

-- The answer to a failure while applying `ev`: CDP_POISON when the event caused it,
-- else the error itself, raised again as Redis reported it. Either way the events
-- applied (or discarded) before it are written, recorded and counted now: their retry
-- finds them duplicates.
local function refuse(ev, err)
  local reason = poison_reason(err)
  if not reason then
    local message = type(err) == "table" and err.err or tostring(err)
    if string.find(message, "WRONGTYPE", 1, true) and shared_keys_sound() then
      reason = "a key of its profile or identity holds the wrong type: " .. message
    end
  end
  flush()
  if applied > 0 then
    -- The retry counts the duplicates, and discards the suppressed events again (they
    -- are not recorded): only the applied ones are counted now.
    dups, discarded = 0, 0
    count_metrics()
  end
  if not reason then error(err, 0) end
  return redis.error_reply(POISON_CODE .. " event " .. ev[EID] .. ": " .. reason)
end

local result = {"OK", 0, 0}
local acks = {}
for i, ev in ipairs(events) do
  if ev[SID] ~= "" then acks[#acks + 1] = ev[SID] end
  if stored[i] or recorded[ev[EID]] then
    dups = dups + 1
  elseif suppressed(ev) then
    -- Not recorded: its profile is gone, and a redelivery is discarded again.
    discarded = discarded + 1
  elseif #ev[IDS] > 0 then
    -- The id is recorded (in the profile, by flush) only once the event is applied:
    -- if the script fails on it, its retry is not mistaken for a duplicate (Redis
    -- keeps a failed script's earlier writes; the failing event is parked, not lost).
    local ok, cid = pcall(apply_event, ev)
    if not ok then return refuse(ev, cid) end
    if cid then
      recorded[ev[EID]] = true
      applied = applied + 1
      if ev[IMPORT] == 0 then result[#result + 1] = cid end
    else
      dups = dups + 1
    end
  end
  -- An event with no identifier changes nothing: nothing to protect, no record.
end

flush()
count_metrics()
for i = 1, #acks, CHUNK do
  rcall("XACK", stream_key, consumer_group, unpack(acks, i, math.min(i + CHUNK - 1, #acks)))
end
result[2], result[3] = applied, dups
return result
