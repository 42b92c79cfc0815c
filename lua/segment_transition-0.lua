--[[
  segment_transition-0.lua: move one profile into or out of segments and emit each
  transition, in one atomic step, exactly once.

  For each segment of ARGV[6] (the caller sends those whose state it read differs
  from what it wants) whose wanted membership differs from the profile's current one: the membership changes (per-profile hash and per-segment zset), the
  transition count n grows by one, and a seed-format TRACK event named
  "<segment> ENTER" / "<segment> EXIT" with the deterministic eventId
  "seg:<segment>:<cid>:<n>" is appended to cdp:segment-events. A segment that
  already has the wanted state emits nothing, so a retry, a second evaluator or a
  crash between evaluation and this call can neither duplicate nor lose a transition.
  Memberships of segments that are no longer defined (ARGV[9]) are dropped silently.
  Then the profile's next due time is written to (or removed from) the due index.

  Nothing is written (STALE) when the evaluation is not the newest one: the profile
  changed since it was read (version differs: whoever changed it has marked it due),
  another evaluation was accepted since the read (the profile's evaluations count
  differs: every accepted call bumps it, so two evaluations at the same time, which
  leave the same evaluatedMs, still differ), the definitions changed (a deleted
  segment is never entered again), or the evaluation time is older than the last
  accepted one (evaluatedMs). The caller re-reads and evaluates at no earlier than
  the profile's evaluatedMs, so accepted evaluation times never go backwards, and
  each transition is a change from the state the evaluation read.

  ARGV[1]  key prefix ("cdp")
  ARGV[2]  canonical id
  ARGV[3]  profile version the evaluation read
  ARGV[4]  now, ISO-8601 (the event's ts)
  ARGV[5]  next due time in ms, or "" when time alone cannot change anything
  ARGV[6]  JSON {segment: wanted membership (true/false)}
  ARGV[7]  JSON {"userId": ..} or {"anonymousId": ..} for the event's payload
  ARGV[8]  approximate MAXLEN of cdp:segment-events
  ARGV[9]  JSON [segment...]: memberships to drop (segments no longer defined)
  ARGV[10] evaluation time in ms (ARGV[4]), kept as the profile's evaluatedMs
  ARGV[11] the profile's evaluations count the evaluation read, or "" (none yet)
  ARGV[12] cdp:segments:version the definitions were loaded at, or ""

  Returns {"OK", eventId...} | {"STALE"} | {"GONE"}
]]
local rcall = redis.call
local prefix, cid, version, now_iso, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--@include segments
local wanted = cjson.decode(ARGV[6])
local who_field, who_value = next(cjson.decode(ARGV[7]))
local maxlen = ARGV[8]

local pkey = prefix .. ":profile:{" .. cid .. "}"
local due_key = prefix .. ":segments:due"
local meta = rcall("HMGET", pkey, "version", "mergedInto", "evaluatedMs", "evaluations")
if meta[2] or not meta[1] then
  rcall("ZREM", due_key, cid)
  return {"GONE"}
end
local at_ms = ARGV[10]
if meta[1] ~= version or (meta[4] or "") ~= ARGV[11]
    or (rcall("GET", prefix .. ":segments:version") or "") ~= ARGV[12]
    or tonumber(at_ms) < (tonumber(meta[3]) or 0) then
  return {"STALE"}
end
rcall("HSET", pkey, "evaluatedMs", at_ms)
rcall("HINCRBY", pkey, "evaluations", 1)  -- the token: changes on every accepted write

local skey = pkey .. ":segments"
local names = {}
for name in pairs(wanted) do names[#names + 1] = name end
table.sort(names, bytes_lt)

local out = {"OK"}
for _, name in ipairs(names) do
  local want = wanted[name]
  local raw = rcall("HGET", skey, name)
  local state = raw and cjson.decode(raw) or {["in"] = false, n = 0}
  if state["in"] ~= want then
    local n = state.n + 1
    rcall("HSET", skey, name, cjson.encode({["in"] = want, n = n, since = now_iso}))
    if want then
      rcall("ZADD", members_key(name), tonumber(string.sub(cid, 2)) or 0, cid)
    else
      rcall("ZREM", members_key(name), cid)
    end
    out[#out + 1] = emit_transition(name, cid, n, want and "ENTER" or "EXIT", now_iso,
      who_field, who_value, maxlen)
  end
end
for _, name in ipairs(cjson.decode(ARGV[9])) do
  local raw = rcall("HGET", skey, name)
  if raw then  -- n is kept, so a segment defined again never reuses an eventId
    local state = cjson.decode(raw)
    rcall("HSET", skey, name, cjson.encode({["in"] = false, n = state.n, since = now_iso}))
  end
  rcall("ZREM", members_key(name), cid)
end
if due == "" then rcall("ZREM", due_key, cid) else rcall("ZADD", due_key, due, cid) end
return out
