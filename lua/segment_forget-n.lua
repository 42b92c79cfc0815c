--[[
  segment_forget-n.lua: end a deleted segment's memberships, silently, for the profiles
  the caller read from its members zset (a chunk at a time), each call atomically.

  Per profile: its state becomes {"in": false} with its transition count n kept (a
  segment defined again numbers its events after it, so no eventId is ever reused), and
  it leaves the members zset. No event is emitted. Two packings (ARGV[1]):
  - "direct" (one Redis): the members zset and the definitions are declared too: the
    profiles leave the zset here, and nothing is done once the segment is defined again
    (its memberships then carry over to the new definition, whose backfill re-evaluates
    them, so a transition written meanwhile is never overwritten);
  - "outbox" (a Redis Cluster: one profile per call): the profile's keys only; the
    members-zset change is pushed to its outbox (an entry with no stream), after any
    entry of its own still to relay, and the relay applies it (the caller checks the
    definition before the call).

  KEYS, direct: KEYS[1] cdp:segments, KEYS[2] cdp:segment:{<name>}:members, then
    cdp:profile:{<cid>}:segments of each cid of ARGV[3..], in order
  KEYS, outbox: per cid of ARGV[3..], in order: cdp:profile:{<cid>}:segments,
    cdp:profile:{<cid>}:outbox

  ARGV[1]  "direct" | "outbox"
  ARGV[2]  segment name
  ARGV[3..] canonical ids

  Returns the number of memberships ended: 0 when the segment is defined again
  (direct).
]]
local rcall = redis.call
--@include outbox
local direct, name = ARGV[1] == "direct", ARGV[2]
local first, group = 1, 2
if direct then
  if rcall("HEXISTS", KEYS[1], name) == 1 then return 0 end
  first, group = 3, 1
end

local cids = {}
for i = 3, #ARGV do
  local cid = ARGV[i]
  local skey = KEYS[first + (i - 3) * group]
  local raw = rcall("HGET", skey, name)
  local n = 0
  if raw then
    local state = cjson.decode(raw)
    n = state.n
    if state["in"] then
      state["in"] = false
      rcall("HSET", skey, name, cjson.encode(state))
    end
  end
  if not direct then
    outbox_push(KEYS[first + (i - 3) * group + 1], "forget:" .. name .. ":" .. cid .. ":" .. n,
      "", 0, {}, {segment = name, cid = cid, op = "rem", score = 0})
  end
  cids[#cids + 1] = cid
end
if direct and #cids > 0 then rcall("ZREM", KEYS[2], unpack(cids)) end
return #cids
