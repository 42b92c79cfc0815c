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

  The key count varies (hence -n): one stream key per entry.

  KEYS[1]       metrics hash                              cdp:metrics
  KEYS[1 + i]   partition stream of the i-th entry        cdp:events:{pN}
  ARGV[1]       the number of events (what `accepted` grows by)
  ARGV[2i]      the i-th entry's field: "e" or "b"
  ARGV[2i + 1]  the i-th entry's value

  Returns the stream entry ids, in the order of the entries; a WRONGTYPE error, with
  nothing written, when a key holds another type than the one it should.
]]
local rcall = redis.call
local metrics = KEYS[1]
local checked = {}
local function expect(key, wanted)
  if checked[key] then return nil end
  checked[key] = true
  local kind = rcall("TYPE", key)["ok"]
  if kind ~= wanted and kind ~= "none" then
    return "WRONGTYPE " .. key .. " holds a " .. kind .. ", not a " .. wanted
  end
end
local wrong = expect(metrics, "hash")
for i = 2, #KEYS do
  wrong = wrong or expect(KEYS[i], "stream")
end
if wrong then return redis.error_reply(wrong) end
local ids = {}
for i = 2, #KEYS do
  ids[i - 1] = rcall("XADD", KEYS[i], "*", ARGV[2 * (i - 1)], ARGV[2 * (i - 1) + 1])
end
rcall("HINCRBY", metrics, "accepted", ARGV[1])
return ids
