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
-- the rules says why (`reason`: "erased", "merged") and, when merged, into which profile
-- (`merged_into`). Returns the eventId and the fields {field, value, ...}.
local function transition_fields(name, cid, n, transition, at, who_field, who_value, reason,
                                 merged_into)
  local event_id = "seg:" .. name .. ":" .. cid .. ":" .. n
  local properties = {canonicalId = cid, segment = name, transition = transition,
    reason = reason, mergedInto = merged_into}
  local payload = {type = "TRACK", name = name .. " " .. transition, properties = properties}
  if who_field then payload[who_field] = who_value end
  return event_id, {"eventId", event_id, "segment", name, "transition", transition,
    "canonicalId", cid, "e", cjson.encode({eventId = event_id, ts = at, payload = payload})}
end

-- Append that transition to cdp:segment-events (approximate MAXLEN `maxlen`); returns
-- its eventId.
local function emit_transition(name, cid, n, transition, at, who_field, who_value, maxlen,
                               reason, merged_into)
  local event_id, fields = transition_fields(name, cid, n, transition, at, who_field,
    who_value, reason, merged_into)
  rcall("XADD", prefix .. ":segment-events", "MAXLEN", "~", maxlen, "*", unpack(fields))
  return event_id
end
