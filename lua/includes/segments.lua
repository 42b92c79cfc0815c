-- includes/segments.lua: segment memberships and their ENTER/EXIT events, built in one
-- place for segment_transition, erase_profile, segment_forget and the merge of
-- includes/identity.lua. Expects the locals `rcall` and `prefix` ("cdp").
--@include bytes

-- The members of segment `name`: a zset of canonical ids, scored by profile sequence.
local function members_key(name) return prefix .. ":segment:{" .. name .. "}:members" end

local WHO_FIELD = {user = "userId", anon = "anonymousId", email = "email"}

-- Whom a profile's segment events name: its userId (`user`, "user:<id>"), else its first
-- identifier of `ids` in byte order. Returns the payload field and its value, or nil.
local function who_of(user, ids)
  local first = user
  if not first then
    for _, id in ipairs(ids) do
      if not first or bytes_lt(id, first) then first = id end
    end
  end
  if not first then return nil, nil end
  local kind, value = string.match(first, "^(%a+):(.*)$")
  return WHO_FIELD[kind], value
end

-- The n-th transition of profile `cid` in segment `name` as the fields of its
-- cdp:segment-events entry: a seed-format TRACK event "<name> ENTER" or "<name> EXIT"
-- stamped `at`, with the deterministic eventId "seg:<name>:<cid>:<n>", naming the
-- profile by `who_field` = `who_value` (when not nil). An EXIT that did not come from
-- the rules says why (`reason`: "erased", "merged") and, when merged, into which
-- profile (`merged_into`). Returns the eventId and the fields. One builder for every
-- writer: XADD here (emit_transition), a profile's outbox on a cluster (merge_absorb).
local function transition_fields(name, cid, n, transition, at, who_field, who_value,
                                 reason, merged_into)
  local event_id = "seg:" .. name .. ":" .. cid .. ":" .. n
  local properties = {canonicalId = cid, segment = name, transition = transition,
    reason = reason, mergedInto = merged_into}
  local payload = {type = "TRACK", name = name .. " " .. transition, properties = properties}
  if who_field then payload[who_field] = who_value end
  return event_id, {"eventId", event_id, "segment", name, "transition", transition,
    "canonicalId", cid, "e", cjson.encode({eventId = event_id, ts = at, payload = payload})}
end

-- Append the n-th transition of profile `cid` in segment `name` (transition_fields) to
-- cdp:segment-events (approximate MAXLEN `maxlen`). Returns the eventId.
local function emit_transition(name, cid, n, transition, at, who_field, who_value, maxlen,
                               reason, merged_into)
  local event_id, fields = transition_fields(name, cid, n, transition, at, who_field,
    who_value, reason, merged_into)
  rcall("XADD", prefix .. ":segment-events", "MAXLEN", "~", maxlen, "*", unpack(fields))
  return event_id
end

-- The EXITs owed when profile `loser` (userId `user`, identifiers `ids`) is merged away:
-- one per membership of `memberships` (HGETALL of its segments hash) that is "in",
-- numbered after its last transition, stamped `now_iso` but no earlier than its
-- `since`, naming the profile as its ENTER did. Calls `exit(name, event_id, fields)`
-- for each, with transition_fields' reason "merged" and mergedInto `survivor`.
local function merged_exits(memberships, loser, survivor, user, ids, now_iso, exit)
  if #memberships == 0 then return end
  local who_field, who_value = who_of(user, ids)
  for i = 1, #memberships, 2 do
    local name, state = memberships[i], cjson.decode(memberships[i + 1])
    if state["in"] then
      local at = now_iso
      if type(state.since) == "string" and bytes_lt(at, state.since) then at = state.since end
      local event_id, fields = transition_fields(name, loser, state.n + 1, "EXIT", at,
        who_field, who_value, "merged", survivor)
      exit(name, event_id, fields)
    end
  end
end
