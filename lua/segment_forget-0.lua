--[[
  segment_forget-0.lua: end a deleted segment's memberships, silently, a chunk at a
  time, each chunk atomically.

  For up to ARGV[3] members of cdp:segment:{<name>}:members: the profile's state
  becomes {"in": false} with its transition count n kept (a segment defined again
  numbers its events after it, so no eventId is ever reused), and the member leaves
  the set. No event is emitted. Nothing is done once the segment is defined again:
  its memberships then carry over to the new definition, whose backfill re-evaluates
  them (so a transition written meanwhile is never overwritten).

  ARGV[1]  key prefix ("cdp")
  ARGV[2]  segment name
  ARGV[3]  most memberships ended by this call

  Returns the number of memberships ended: 0 when none is left (or the segment is
  defined again).
]]
local rcall = redis.call
local prefix, name, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
--@include segments
if rcall("HEXISTS", prefix .. ":segments", name) == 1 then return 0 end

local members = members_key(name)
local chunk = rcall("ZRANGE", members, 0, limit - 1)
for _, cid in ipairs(chunk) do
  local skey = prefix .. ":profile:{" .. cid .. "}:segments"
  local raw = rcall("HGET", skey, name)
  if raw then
    local state = cjson.decode(raw)
    if state["in"] then
      state["in"] = false
      rcall("HSET", skey, name, cjson.encode(state))
    end
  end
end
if #chunk > 0 then rcall("ZREM", members, unpack(chunk)) end
return #chunk
