--[[
  segment_transition-n.lua: move profiles into or out of segments and record each
  transition, in one atomic step, exactly once.

  Two packings of the same decision (ARGV[1]):
  - "direct" (one Redis, apply-protocol batch): the call may name many profiles and
    also declares the keys of other slots: the event is appended to cdp:segment-events,
    the members zsets and the due index are written here, and the definitions version is
    compared here (all one transaction);
  - "outbox" (a Redis Cluster, or apply-protocol profile): each profile's keys only
    (one profile per call on a cluster; many on one Redis). Each transition is pushed to
    the profile's outbox with its members-zset change (lua/includes/outbox.lua), and
    the relay (cdp/segments/outbox.py) appends it to cdp:segment-events exactly once
    and applies the change; the caller writes the due index after the call and reads
    the definitions version again after it (cdp.segments.engine says why that is
    enough).
  Each profile is decided on its own, exactly as if it came alone.

  Per profile: for each segment of `wanted` (the caller sends those whose state it read
  differs from what it wants) whose wanted membership differs from the profile's current
  one: the membership changes (per-profile hash and per-segment members zset), the
  transition count n grows by one, and a seed-format TRACK event named
  "<segment> ENTER" / "<segment> EXIT" with the deterministic eventId
  "seg:<segment>:<cid>:<n>" is recorded. A segment that already has the wanted state
  records nothing, so a retry, a second evaluator or a crash between evaluation and
  this call can neither duplicate nor lose a transition. Memberships of segments that
  are no longer defined (`dropped`) are dropped silently (outbox: an entry with no
  stream, only the members-zset change). Direct: then the profile's next due time is
  written to (or removed from) the due index.

  Nothing is written for a profile (STALE) when its evaluation is not the newest one:
  the profile changed since it was read (version differs: whoever changed it has marked
  it due), another evaluation was accepted since the read (the profile's evaluations
  count differs: every accepted write bumps it, so two evaluations at the same time,
  which leave the same evaluatedMs, still differ), the definitions changed (direct: a
  deleted segment is never entered again), or the evaluation time is older than the
  last accepted one (evaluatedMs). The caller re-reads and evaluates at no earlier than
  the profile's evaluatedMs, so accepted evaluation times never go backwards, and each
  transition is a change from the state the evaluation read. A profile that no longer
  exists or was merged away is GONE (direct: it leaves the due index).

  KEYS, direct (M: the segments of ARGV[6]):
    KEYS[1]        cdp:segment-events
    KEYS[2]        cdp:segments:due
    KEYS[3]        cdp:segments:version
    KEYS[4..3+M]   cdp:segment:{<name>}:members of each segment of ARGV[6], in order
    then per profile of ARGV[5], in order: cdp:profile:{<cid>}, cdp:profile:{<cid>}:segments
  KEYS, outbox: per profile of ARGV[5], in order: cdp:profile:{<cid>},
    cdp:profile:{<cid>}:segments, cdp:profile:{<cid>}:outbox

  ARGV[1]  "direct" | "outbox"
  ARGV[2]  cdp:segments:version the definitions were loaded at, or ""
  ARGV[3]  approximate MAXLEN of cdp:segment-events
  ARGV[4]  the events stream's name (outbox: what the entries name; direct: KEYS[1]'s)
  ARGV[5]  JSON [profile...], each an object:
             cid          canonical id
             version      profile version the evaluation read
             at           evaluation time, ISO-8601 (the events' ts)
             atMs         evaluation time in ms (a string), kept as the profile's evaluatedMs
             due          next due time in ms (a string), or "" when time alone cannot
                          change anything (direct only; outbox: the caller writes it)
             wanted       {segment: wanted membership (true/false)}
             who          {"userId": ..} or {"anonymousId": ..} for the events' payload
             dropped      [segment...]: memberships to drop (segments no longer defined)
             evaluations  the profile's evaluations count the evaluation read, or ""
  ARGV[6]  direct: JSON [segment...], the segments whose members zsets KEYS[4..] are
           (every segment of the profiles' wanted and dropped); outbox: "[]"

  Returns, per profile in order, {"OK", eventId...} | {"STALE"} | {"GONE"}
]]
local rcall = redis.call
-- includes/segments for transition_fields; its helpers that reach keys by name
-- (members_key, emit_transition) are not called here (no `prefix` is defined: a call
-- would fail).
--@include segments
--@include outbox
local direct = ARGV[1] == "direct"
local maxlen = ARGV[3]
local stream = ARGV[4]
local profiles = cjson.decode(ARGV[5])
local member_names = cjson.decode(ARGV[6])
local members = {}  -- direct: segment -> its members zset
for i, name in ipairs(member_names) do members[name] = KEYS[3 + i] end
local first, group = 1, 3
local definitions_current = true
if direct then
  first, group = 4 + #member_names, 2
  definitions_current = (rcall("GET", KEYS[3]) or "") == ARGV[2]
end

-- The members-zset change of a transition: here (direct) or in the outbox entry.
local function record(okey, cid, name, want, event_id, fields)
  local score = tonumber(string.sub(cid, 2)) or 0
  if okey then
    outbox_push(okey, event_id, fields and stream or "", tonumber(maxlen), fields or {},
      {segment = name, cid = cid, op = want and "add" or "rem", score = score})
    return
  end
  if want then rcall("ZADD", members[name], score, cid) else rcall("ZREM", members[name], cid) end
  if fields then rcall("XADD", KEYS[1], "MAXLEN", "~", maxlen, "*", unpack(fields)) end
end

local function transition(p, pkey, skey, okey)
  local cid = p.cid
  local meta = rcall("HMGET", pkey, "version", "mergedInto", "evaluatedMs", "evaluations")
  if meta[2] or not meta[1] then
    if direct then rcall("ZREM", KEYS[2], cid) end
    return {"GONE"}
  end
  if meta[1] ~= p.version or (meta[4] or "") ~= p.evaluations or not definitions_current
      or tonumber(p.atMs) < (tonumber(meta[3]) or 0) then
    return {"STALE"}
  end
  local now_iso = p.at
  -- evaluations, the token, changes on every accepted write
  rcall("HSET", pkey, "evaluatedMs", p.atMs, "evaluations", (tonumber(meta[4]) or 0) + 1)

  local who_field, who_value = next(p.who)
  local names = {}
  for name in pairs(p.wanted) do names[#names + 1] = name end
  table.sort(names, bytes_lt)

  local out = {"OK"}
  for _, name in ipairs(names) do
    local want = p.wanted[name]
    local raw = rcall("HGET", skey, name)
    local state = raw and cjson.decode(raw) or {["in"] = false, n = 0}
    if state["in"] ~= want then
      local n = state.n + 1
      rcall("HSET", skey, name, cjson.encode({["in"] = want, n = n, since = now_iso}))
      local event_id, fields = transition_fields(name, cid, n, want and "ENTER" or "EXIT", now_iso,
        who_field, who_value)
      record(okey, cid, name, want, event_id, fields)
      out[#out + 1] = event_id
    end
  end
  for _, name in ipairs(p.dropped) do
    local raw = rcall("HGET", skey, name)
    local n = 0
    if raw then  -- n is kept, so a segment defined again never reuses an eventId
      local state = cjson.decode(raw)
      n = state.n
      rcall("HSET", skey, name, cjson.encode({["in"] = false, n = n, since = now_iso}))
    end
    record(okey, cid, name, false, "drop:" .. name .. ":" .. cid .. ":" .. n, nil)
  end
  if direct then
    if p.due == "" then rcall("ZREM", KEYS[2], cid) else rcall("ZADD", KEYS[2], p.due, cid) end
  end
  return out
end

local out = {}
for i, p in ipairs(profiles) do
  local base = first + (i - 1) * group
  out[i] = transition(p, KEYS[base], KEYS[base + 1], not direct and KEYS[base + 2] or nil)
end
return out
