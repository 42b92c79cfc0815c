-- includes/segments.lua: segment memberships and their ENTER/EXIT events, built in one
-- place for segment_transition, erase_profile, segment_forget and the merge of
-- includes/identity.lua. Expects the locals `rcall` and `prefix` ("cdp").
--@include segment_events

-- The members of segment `name`: a zset of canonical ids, scored by profile sequence.
local function members_key(name) return prefix .. ":segment:{" .. name .. "}:members" end

-- Append that transition (transition_fields) to cdp:segment-events (approximate MAXLEN
-- `maxlen`), reached by name: one Redis only (a cluster pushes it to the profile's
-- outbox instead, includes/outbox.lua). Returns the eventId.
local function emit_transition(name, cid, n, transition, at, who_field, who_value, maxlen,
                               reason, merged_into)
  local event_id, fields = transition_fields(name, cid, n, transition, at, who_field,
    who_value, reason, merged_into)
  rcall("XADD", prefix .. ":segment-events", "MAXLEN", "~", maxlen, "*", unpack(fields))
  return event_id
end
