--[=[
  apply_profile-n.lua: apply ordered events to ONE profile, every key declared, all in
  its slot (the profile protocol, docs/cluster.md; driven by
  cdp/pipeline/profile_apply.py, which resolves identifiers, claims new ones, merges
  and acknowledges: nothing here reaches a key by name).

  First, the profile itself (one HMGET):
    - merged away (`mergedInto`): nothing is applied; the answer is
      {"FORWARDED", survivor, mergeState} (mergeState "done" when the hash has none: a
      merge of before the journal). The caller finishes an unfinished merge and
      resolves the events again;
    - no profile hash (erased, or never created: a crash between the caller's INCR of
      cdp:seq:profile and this first apply): {"GONE"}, unless ARGV[5] is "1" (the
      caller holds a claim naming it): then it is created (createdAt, zero counts).
  Then per event, in order:
    1. dedup: an eventId in `seen` recorded in the current or previous dedup bucket,
       or applied earlier in this call, is a duplicate: nothing written, and the
       identifiers the caller asked to link that the profile does not hold are
       handed back (reason "") for the caller to release;
    2. links: the identifiers of ARGV[7] for the event that the profile does not hold
       yet (one SMISMEMBER for the call) are linked within the guard rails, in order:
       a userId past maxUsers ("userId limit"), an email past maxEmails ("email
       limit") is refused and handed back with its reason (the caller releases the
       claim and records the refusal in cdp:merges); a linked one joins the
       identifiers set, its type's count grows, a first userId becomes `user`;
    3. traits: Last-Write-Wins on (ts, eventId) per trait, tombstones included;
    4. counters (with the cutoff and the oldest-bucket bookkeeping), firstSeen /
       lastSeen / lastSeenMs, version bump, and the eventId recorded in `seen`
       (seenFrom / seenTo / PEXPIRE): exactly apply_batch's, through
       includes/apply.lua.
  Marking the profile due and acknowledging the stream entries are the caller's.

  Failures: as apply_batch's. An event that fails because of itself (a stored trait
  cell that is not JSON, WRONGTYPE on one of the profile's keys) stops the call with
  `CDP_POISON event <eventId>: <reason>`; the events before it are written and
  recorded (their retry is a duplicate). Anything else is raised as Redis reported it.

  KEYS[1]  profile hash                  cdp:profile:{C}
  KEYS[2]  traits                        cdp:profile:{C}:traits
  KEYS[3]  identifiers set               cdp:profile:{C}:identifiers
  KEYS[4]  counters hash                 cdp:profile:{C}:counters
  KEYS[5]  seen                          cdp:profile:{C}:seen
  KEYS[6]  segment memberships           cdp:profile:{C}:segments   (not written)
  KEYS[7]  outbox                        cdp:profile:{C}:outbox     (not written)
  KEYS[8]  merged set                    cdp:profile:{C}:merged     (not written)
  KEYS[9..] the counter zsets the events touch, cdp:profile:{C}:counter:<name> (a
           counter key not declared here is a bug of the caller: the call fails)

  ARGV[1]  the current dedup bucket, now // dedup-ttl
  ARGV[2]  ms to the end of the next dedup bucket (PEXPIRE of `seen`)
  ARGV[3]  counter cutoff: 13-digit bucket start; older buckets are pruned
  ARGV[4]  now, ISO-8601 (createdAt of a created profile)
  ARGV[5]  "1": create the profile hash if it does not exist; "0": answer GONE
  ARGV[6]  JSON array of events, each [eventId, ts ISO-8601 fixed width, event time
           13-digit epoch ms, 13-digit bucket start, type, [trait, raw JSON value, ...],
           event name or ""]
  ARGV[7]  JSON array, per event, of the typed identifiers to link ([] for none);
           entries past the last event are linked without an event (a profile
           created by a claim whose first apply never came)
  ARGV[8]  JSON limits {"maxEmails", "maxUsers"}

  Returns  {"OK", per event {1 (applied) or 0 (duplicate), identifier, reason, ...}}
           (the identifiers handed back: refused by a guard rail with its reason, or
           not linked because the event was a duplicate, reason "")
        or {"FORWARDED", survivor, mergeState} or {"GONE"}
        or the error CDP_POISON
]=]
local rcall = redis.call
local unpack, tonumber, pcall = unpack, tonumber, pcall

local pkey, tkey, ikey, skey = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local dedup_bucket, seen_expire_in, cutoff, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cutoff_ms = tonumber(cutoff)
local bucket_n = tonumber(dedup_bucket)
local honoured_from = bucket_n - 1  -- ids recorded in an older bucket are forgotten
local prefix = ""  -- includes/profile.lua's key builders are not used here
local EID, TS, MS, BUCKET, TYPE, TRAITS, NAME = 1, 2, 3, 4, 5, 6, 7

--@include bytes
--@include poison
--@include profile

-- The counter zsets declared in KEYS[9..]: a counter of another name is refused.
local declared = {}
for i = 9, #KEYS do declared[KEYS[i]] = true end
local function counter_key(key, name)
  local ckey = key .. ":counter:" .. name
  if not declared[ckey] then error("ERR apply_profile: counter key not declared: " .. ckey, 0) end
  return ckey
end

--@include apply

local events = cjson.decode(ARGV[6])
local links = cjson.decode(ARGV[7])
local limits = cjson.decode(ARGV[8])

-- The answer to a failure while applying `ev`: CDP_POISON when the event caused it
-- (every key this call touches is its profile's), else the error itself, raised
-- again as Redis reported it. The events applied before it are written and recorded.
local function refuse(ev, err)
  flush_profiles()
  local reason = poison_reason(err)
  if not reason then
    local message = type(err) == "table" and err.err or tostring(err)
    if not string.find(message, "WRONGTYPE", 1, true) then error(err, 0) end
    reason = "a key of its profile holds the wrong type: " .. message
  end
  return redis.error_reply(POISON_CODE .. " event " .. ev[EID] .. ": " .. reason)
end

-- Before any event: the profile's state, which identifiers to link it holds already
-- (one SMISMEMBER for the call) and which events its `seen` holds (one HMGET).
-- Returns a whole-call answer (FORWARDED, GONE) or nil to go on.
local held, seen_before = {}, {}
local function prepare()
  local head = rcall("HMGET", pkey, "mergedInto", "mergeState", "createdAt")
  if head[1] then return {"FORWARDED", head[1], head[2] or "done"} end
  if not head[3] then
    if ARGV[5] ~= "1" then return {"GONE"} end
    rcall("HSET", pkey, "createdAt", now_iso, "users", 0, "emails", 0, "anons", 0,
      "merges", 0, "version", 0)
  end
  local asked, listed = {}, {}
  for _, list in ipairs(links) do
    for _, id in ipairs(list) do
      if not listed[id] then listed[id] = true; asked[#asked + 1] = id end
    end
  end
  local found = chunked("SMISMEMBER", ikey, asked, CHUNK)
  for i, id in ipairs(asked) do held[id] = found[i] == 1 end
  local ids = {}
  for i, ev in ipairs(events) do ids[i] = ev[EID] end
  found = chunked("HMGET", skey, ids, CHUNK)
  for i, ev in ipairs(events) do
    local b = found[i]
    if b then
      local n = tonumber(b)
      if not n or n >= honoured_from then seen_before[ev[EID]] = true end
    end
  end
  return nil
end

do
  local ok, answer = pcall(prepare)
  if not ok then return refuse(events[1], answer) end
  if answer then return answer end
end

local identity  -- users, emails, anons, user: read on the first link
local function link(ids, out)
  local linked, fields = {}, {}
  for _, id in ipairs(ids) do
    if not held[id] then
      if not identity then
        local row = rcall("HMGET", pkey, "users", "emails", "anons", "user")
        identity = {users = tonumber(row[1]), emails = tonumber(row[2]),
          anons = tonumber(row[3]) or 0, user = row[4] or nil}
        if not identity.users or not identity.emails then
          error("ERR hash value is not an integer", 0)  -- as HINCRBY would answer
        end
      end
      local t = id_type(id)
      if t == "user" and identity.users >= limits.maxUsers then
        out[#out + 1] = id; out[#out + 1] = "userId limit"
      elseif t == "email" and identity.emails >= limits.maxEmails then
        out[#out + 1] = id; out[#out + 1] = "email limit"
      else
        local field = TYPE_FIELD[t]
        if field then
          identity[field] = identity[field] + 1
          fields[field] = true
        end
        if t == "user" and not identity.user then
          identity.user = id
          fields.user = true
        end
        held[id] = true
        linked[#linked + 1] = id
      end
    end
  end
  if #linked == 0 then return end
  rcall("SADD", ikey, unpack(linked))
  local writes = {}
  for _, field in ipairs({"users", "emails", "anons", "user"}) do
    if fields[field] then writes[#writes + 1] = field; writes[#writes + 1] = identity[field] end
  end
  rcall("HSET", pkey, unpack(writes))
end

-- Everything one event changes; `out` gets the identifiers refused. Its writes that
-- must happen in order (links, traits, a bucket's first increment) come first; what
-- the call folds is committed last, when nothing can fail.
local function apply_event(ev, ids, out)
  local meta = meta_of(pkey, pkey)
  link(ids, out)
  lww_traits(tkey, ev[TS], ev[EID], ev[TRAITS])
  local bucket = ev[BUCKET]
  local later = count_event(pkey, bucket, ev[TYPE], ev[NAME])
  commit_event(meta, later, bucket, ev[TS], ev[MS], ev[EID])
end

local answers, recorded = {}, {}
for i, ev in ipairs(events) do
  local ids, out = links[i] or {}, {}
  if recorded[ev[EID]] or seen_before[ev[EID]] then
    for _, id in ipairs(ids) do
      if not held[id] then out[#out + 1] = id; out[#out + 1] = "" end
    end
    table.insert(out, 1, 0)
  else
    local applied, err = pcall(apply_event, ev, ids, out)
    if not applied then return refuse(ev, err) end
    recorded[ev[EID]] = true
    table.insert(out, 1, 1)
  end
  answers[i] = out
end
-- Links past the events: linked without an event (the caller completes a profile
-- whose first apply never came: a claim named it, the process died before).
for i = #events + 1, #links do
  local out = {}
  link(links[i], out)
  table.insert(out, 1, 1)
  answers[i] = out
end
flush_profiles()
return {"OK", answers}
