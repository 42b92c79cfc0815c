--[[
  segment_transition-0.lua: move profiles into or out of segments and emit each
  transition, in one atomic step, exactly once.

  Takes any number of profiles (the engine sends a chunk of evaluated profiles per call);
  each is decided on its own, exactly as if it came alone, so a caller may send one
  profile per call (Redis Cluster: one slot's profiles per call) with the same script.

  Per profile: for each segment of `wanted` (the caller sends those whose state it read
  differs from what it wants) whose wanted membership differs from the profile's current
  one: the membership changes (per-profile hash and per-segment zset), the transition
  count n grows by one, and a seed-format TRACK event named "<segment> ENTER" /
  "<segment> EXIT" with the deterministic eventId "seg:<segment>:<cid>:<n>" is appended
  to cdp:segment-events. A segment that already has the wanted state emits nothing, so
  a retry, a second evaluator or a crash between evaluation and this call can neither
  duplicate nor lose a transition. Memberships of segments that are no longer defined
  (`dropped`) are dropped silently. Then the profile's next due time is written to (or
  removed from) the due index.

  Nothing is written for a profile (STALE) when its evaluation is not the newest one:
  the profile changed since it was read (version differs: whoever changed it has marked
  it due), another evaluation was accepted since the read (the profile's evaluations
  count differs: every accepted write bumps it, so two evaluations at the same time,
  which leave the same evaluatedMs, still differ), the definitions changed (a deleted
  segment is never entered again), or the evaluation time is older than the last
  accepted one (evaluatedMs). The caller re-reads and evaluates at no earlier than the
  profile's evaluatedMs, so accepted evaluation times never go backwards, and each
  transition is a change from the state the evaluation read. A profile that no longer
  exists or was merged away (GONE) leaves the due index.

  ARGV[1]  key prefix ("cdp")
  ARGV[2]  cdp:segments:version the definitions were loaded at, or ""
  ARGV[3]  approximate MAXLEN of cdp:segment-events
  ARGV[4]  JSON [profile...], each an object:
             cid          canonical id
             version      profile version the evaluation read
             at           evaluation time, ISO-8601 (the events' ts)
             atMs         evaluation time in ms (a string), kept as the profile's evaluatedMs
             due          next due time in ms (a string), or "" when time alone cannot
                          change anything
             wanted       {segment: wanted membership (true/false)}
             who          {"userId": ..} or {"anonymousId": ..} for the events' payload
             dropped      [segment...]: memberships to drop (segments no longer defined)
             evaluations  the profile's evaluations count the evaluation read, or ""

  Returns, per profile in order, {"OK", eventId...} | {"STALE"} | {"GONE"}
]]
local rcall = redis.call
local prefix = ARGV[1]
--@include segments
local maxlen = ARGV[3]
local due_key = prefix .. ":segments:due"
local definitions_current = (rcall("GET", prefix .. ":segments:version") or "") == ARGV[2]

local function transition(p)
  local cid = p.cid
  local pkey = prefix .. ":profile:{" .. cid .. "}"
  local meta = rcall("HMGET", pkey, "version", "mergedInto", "evaluatedMs", "evaluations")
  if meta[2] or not meta[1] then
    rcall("ZREM", due_key, cid)
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
  local skey = pkey .. ":segments"
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
      if want then
        rcall("ZADD", members_key(name), tonumber(string.sub(cid, 2)) or 0, cid)
      else
        rcall("ZREM", members_key(name), cid)
      end
      out[#out + 1] = emit_transition(name, cid, n, want and "ENTER" or "EXIT", now_iso,
        who_field, who_value, maxlen)
    end
  end
  for _, name in ipairs(p.dropped) do
    local raw = rcall("HGET", skey, name)
    if raw then  -- n is kept, so a segment defined again never reuses an eventId
      local state = cjson.decode(raw)
      rcall("HSET", skey, name, cjson.encode({["in"] = false, n = state.n, since = now_iso}))
    end
    rcall("ZREM", members_key(name), cid)
  end
  if p.due == "" then rcall("ZREM", due_key, cid) else rcall("ZADD", due_key, p.due, cid) end
  return out
end

local out = {}
for i, p in ipairs(cjson.decode(ARGV[4])) do out[i] = transition(p) end
return out
