--[[
  publish-n.lua: store the events of one ingest request in their partition streams
  and count them, all or nothing.

  Every event is XADDed (field "e" = its JSON) to its partition stream, then
  `accepted` of the metrics hash grows by their number, so `accepted` is exactly the
  number of events stored. Nothing is written when the request cannot be stored
  whole: under maxmemory (noeviction) Redis refuses a script's first write, never a
  later one, and a key of the wrong type is found before the first XADD.

  The key count varies (hence -n): one stream key per event.

  KEYS[1]       metrics hash                              cdp:metrics
  KEYS[1 + i]   partition stream of the i-th event        cdp:events:{pN}
  ARGV[i]       the i-th event's JSON

  Returns the stream entry ids, in the order of the events; a WRONGTYPE error, with
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
for i = 1, #ARGV do
  ids[i] = rcall("XADD", KEYS[1 + i], "*", "e", ARGV[i])
end
rcall("HINCRBY", metrics, "accepted", #ARGV)
return ids
