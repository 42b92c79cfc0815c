--[[
  outbox_add-2.lua: append outbox entries to their stream, each at most once (the relay's
  first step, in the stream's slot).

  An entry whose id is marked (KEYS[2]) was added before (by this relay before a crash,
  or by another relay of the same outbox): it is skipped. Otherwise it is appended
  (XADD, approximate MAXLEN) and its id marked with ARGV[1]. Marks older than ARGV[2] ms
  are forgotten: an entry is relayed within that time (the evaluation that pushed it
  relays it at once; one left behind by a crash is due for the sweeper within lease-ttl).

  KEYS[1]  the stream                  cdp:segment-events
  KEYS[2]  its marks (zset, id -> ms)  {cdp:segment-events}:recorded

  ARGV[1]  now, ms
  ARGV[2]  how long marks are kept, ms
  ARGV[3]  approximate MAXLEN of the stream
  ARGV[4]  JSON list of entries in outbox order, each a list: id, then the list of
           its fields (field, value, ...)

  Returns, per entry, 1 (appended) or 0 (marked already).
]]
local rcall = redis.call
local stream, marks = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local out = {}
for i, entry in ipairs(cjson.decode(ARGV[4])) do
  if rcall("ZSCORE", marks, entry[1]) then
    out[i] = 0
  else
    rcall("XADD", stream, "MAXLEN", "~", ARGV[3], "*", unpack(entry[2]))
    rcall("ZADD", marks, now, entry[1])
    out[i] = 1
  end
end
rcall("ZREMRANGEBYSCORE", marks, "-inf", now - tonumber(ARGV[2]))
return out
