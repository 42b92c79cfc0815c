--[[
  publish-n.lua: store the events of one ingest request in their partition streams
  and count them, all or nothing.

  The request's events are grouped by partition (cdp/api/publisher.py): one stream
  entry per partition the request touches, field "e" = the event's JSON when the
  partition gets one event, field "b" = a JSON array of its events (in the request's
  order) when it gets several. Then `accepted` of the metrics hash grows by the number
  of events, so `accepted` is exactly the number of events stored. Nothing is written
  when the request cannot be stored whole: under maxmemory (noeviction) Redis refuses
  a script's first write, never a later one, and a key of the wrong type is found
  before the first XADD.

  The key count varies (hence -n): two keys per entry, both in its partition's slot, so
  a request touching one partition is a one-slot call (Redis Cluster; docs/cluster.md).

  KEYS[2i - 1]  partition stream of the i-th entry        cdp:events:{pN}
  KEYS[2i]      that partition's metrics hash             cdp:metrics:{pN}
  ARGV[3i - 2]  the i-th entry's field: "e" or "b"
  ARGV[3i - 1]  the i-th entry's value
  ARGV[3i]      the number of events in it (what `accepted` grows by)

  Returns the stream entry ids, in the order of the entries; a WRONGTYPE error, with
  nothing written, when a key holds another type than the one it should.
]]
local rcall = redis.call
local checked = {}
local function expect(key, wanted)
  if checked[key] then return nil end
  checked[key] = true
  local kind = rcall("TYPE", key)["ok"]
  if kind ~= wanted and kind ~= "none" then
    return "WRONGTYPE " .. key .. " holds a " .. kind .. ", not a " .. wanted
  end
end
local wrong
for i = 1, #KEYS, 2 do
  wrong = wrong or expect(KEYS[i], "stream") or expect(KEYS[i + 1], "hash")
end
if wrong then return redis.error_reply(wrong) end
local ids = {}
for i = 1, #KEYS / 2 do
  ids[i] = rcall("XADD", KEYS[2 * i - 1], "*", ARGV[3 * i - 2], ARGV[3 * i - 1])
end
for i = 1, #KEYS / 2 do
  rcall("HINCRBY", KEYS[2 * i], "accepted", ARGV[3 * i])
end
return ids
