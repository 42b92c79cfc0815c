--[[
  replay_record-3.lua: publish one parked or dropped event back into its partition
  stream and mark its record replayed, atomically: a record is replayed at most once,
  whatever crashes or concurrent replays happen around the call.

  KEYS[1]  partition stream            cdp:events:{pN}
  KEYS[2]  replayed marks of the source cdp:replayed:<dropped|dead>:{pN}
  KEYS[3]  its partition's metrics hash cdp:metrics:{pN}

  ARGV[1]  record id (in cdp:events:dropped or cdp:events:dead)
  ARGV[2]  the record's time, ms (the mark's score: marks older than the source
           stream's oldest record are forgotten)
  ARGV[3]  the event as stored on a partition stream (JSON, mode "import")

  Returns  the new stream entry id, or false when the record was already replayed.
]]
local rcall = redis.call
local stream_key, marks_key, metrics_key = KEYS[1], KEYS[2], KEYS[3]
local record_id, record_ms, event = ARGV[1], ARGV[2], ARGV[3]

if rcall("ZSCORE", marks_key, record_id) then
  return false
end
local entry_id = rcall("XADD", stream_key, "*", "e", event)
rcall("ZADD", marks_key, record_ms, record_id)
rcall("HINCRBY", metrics_key, "replayed", 1)
return entry_id
