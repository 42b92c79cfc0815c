-- includes/outbox.lua: records a script in a profile's slot owes to streams of other
-- slots (Redis Cluster). The script pushes them to the profile's outbox, a list in its
-- slot, atomically with the change they record; the relay (cdp/segments/outbox.py)
-- moves each, in order, to its stream exactly once (an XADD guarded by the record's id
-- in a marks zset of the stream's slot), applies its `member` change to the segment's
-- members zset, then pops it. Expects `rcall`.
--
-- An entry is JSON:
--   {"id": "<record id, unique: seg:<segment>:<cid>:<n> for a segment event>",
--    "stream": "<stream key, e.g. cdp:segment-events>",
--    "maxlen": <approximate MAXLEN of the stream>,
--    "fields": [field, value, ...],
--    "member": {"segment": name, "cid": cid, "op": "add" | "rem", "score": seq}  (optional)}

local function outbox_push(okey, id, stream, maxlen, fields, member)
  rcall("RPUSH", okey, cjson.encode({id = id, stream = stream, maxlen = maxlen,
    fields = fields, member = member}))
end
