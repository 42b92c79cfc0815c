-- includes/apply.lua: what applying an event to a profile writes, shared by
-- apply_batch-n.lua (one Redis, a partition batch per call) and apply_profile-n.lua
-- (the profile protocol: one profile per call, every key declared): the `seen`
-- check and record (prune, seenFrom / seenTo, PEXPIRE), Last-Write-Wins of trait
-- cells, the counters (cutoff, oldest-bucket bookkeeping, a bucket's later increments
-- of a call folded) and the per-profile meta written once per call.
--
-- Expects the locals `rcall`, `unpack`, `tonumber`, `dedup_bucket` (ARGV string),
-- `bucket_n` (its number), `honoured_from` (bucket_n - 1), `seen_expire_in`,
-- `cutoff` (13-digit bucket start) and `cutoff_ms`, and the function
-- `counter_key(pkey, name)` (the counter zset of a profile: built by name on one
-- Redis, looked up among the declared KEYS by apply_profile). Includes bytes and
-- profile first.

local CHUNK = 1000  -- arguments per command, well below Lua's stack limit for unpack

-- `command key arg...` over `list` (from..to), CHUNK at a time; the replies concatenated.
local function chunked(command, key, list, step)
  local out = {}
  for i = 1, #list, step do
    local reply = rcall(command, key, unpack(list, i, math.min(i + step - 1, #list)))
    if type(reply) == "table" then
      for j = 1, #reply do out[#out + 1] = reply[j] end
    end
  end
  return out
end

-- ----------------------------------------------------------------- the call's caches
-- Per profile touched by the call: firstSeen, lastSeen, lastSeenMs, version, seenFrom
-- and seenTo, read on its first touch and written once by flush_profiles(), with the
-- ids of the events applied to it (`recs`: eventId, bucket, ...); counter increments
-- of a bucket this call has already counted (its first increment was written, so the
-- key is known to be a zset). Everything here is committed by an event only once
-- nothing of it can fail any more, so a refused event leaves none of it behind (and
-- is not recorded: its replay is applied).
local metas, meta_order = {}, {}
local extra, extra_order, counted = {}, {}, {}

local function meta_of(cid, pkey)
  local meta = metas[cid]
  if meta then return meta end
  local row = rcall("HMGET", pkey, "firstSeen", "lastSeen", "lastSeenMs", "version",
    "seenFrom", "seenTo")
  local version = tonumber(row[4] or 0)
  if not version then error("ERR hash value is not an integer", 0) end
  meta = {pkey = pkey, first = row[1], last = row[2], ms = row[3],
    ms_n = row[3] and tonumber(row[3]), version = version, bumps = 0,
    seen_from = row[5] and tonumber(row[5]), seen_to = row[6] and tonumber(row[6]), recs = {}}
  metas[cid] = meta
  meta_order[#meta_order + 1] = cid
  return meta
end

-- True when the seen hash `skey` holds `id`, recorded in the current or previous
-- dedup bucket (an id recorded earlier is forgotten).
local function seen_at(skey, id)
  local b = rcall("HGET", skey, id)
  if not b then return false end
  local n = tonumber(b)
  return not n or n >= honoured_from
end

-- Delete the ids of `skey` (a profile's seen hash) recorded before the previous
-- bucket; returns the oldest bucket left, or nil.
local function prune_seen(skey)
  local all, stale, oldest = rcall("HGETALL", skey), {}, nil
  for i = 1, #all, 2 do
    local b = tonumber(all[i + 1])
    if not b or b < honoured_from then
      stale[#stale + 1] = all[i]
    elseif not oldest or b < oldest then
      oldest = b
    end
  end
  chunked("HDEL", skey, stale, CHUNK)
  return oldest
end

-- Record the ids applied to profile `m` in its seen hash (pruned first when seenFrom
-- says it may hold expired ids; its time to live moved when the bucket advances past
-- seenTo); seenFrom and seenTo go to `fields` (written with the meta) when they change.
local function record_seen(m, fields)
  local skey = m.pkey .. ":seen"
  local from = m.seen_from
  if from and from < honoured_from then from = prune_seen(skey) end
  if not from or bucket_n < from then from = bucket_n end
  chunked("HSET", skey, m.recs, CHUNK)
  if from ~= m.seen_from then
    fields[#fields + 1] = "seenFrom"; fields[#fields + 1] = from
  end
  if not m.seen_to or m.seen_to < bucket_n then
    rcall("PEXPIRE", skey, seen_expire_in)
    fields[#fields + 1] = "seenTo"; fields[#fields + 1] = bucket_n
  end
end

-- Write what the call holds of profiles: their seen times, versions and seen ids, the
-- folded counter increments; then forget it.
local function flush_profiles()
  for _, cid in ipairs(meta_order) do
    local m = metas[cid]
    if m.bumps > 0 then
      local fields = {"firstSeen", m.first, "lastSeen", m.last, "lastSeenMs", m.ms,
        "version", m.version + m.bumps}
      if #m.recs > 0 then record_seen(m, fields) end
      rcall("HSET", m.pkey, unpack(fields))
    end
  end
  for _, at in ipairs(extra_order) do
    local e = extra[at]
    rcall("ZINCRBY", e[1], e[3], e[2])
  end
  metas, meta_order, extra, extra_order, counted = {}, {}, {}, {}, {}
end

-- Traits: per trait, Last-Write-Wins on (ts, eventId), compared byte-wise; a JSON null
-- is a tombstone that keeps its stamp. `traits`: {name, raw JSON value, ...}; one
-- HMGET and one HSET of the trait hash `tkey`.
local function lww_traits(tkey, ts, id, traits)
  if #traits == 0 then return end
  local names = {}
  for i = 1, #traits, 2 do names[#names + 1] = traits[i] end
  local current = rcall("HMGET", tkey, unpack(names))
  local stamp
  local writes = {}
  for j = 1, #names do
    if cell_newer(ts, id, current[j]) then
      stamp = stamp or (',"ts":"' .. ts .. '","eventId":' .. cjson.encode(id) .. '}')
      writes[#writes + 1] = names[j]
      writes[#writes + 1] = '{"v":' .. traits[2 * j] .. stamp
    end
  end
  if #writes > 0 then rcall("HSET", tkey, unpack(writes)) end
end

-- Per counter, the oldest bucket it holds is kept in the profile's counters hash.
-- Only the first event of a bucket looks at it (ZINCRBY answered 1): that is when the
-- oldest may change, and when buckets past the cutoff are pruned, so a counter holds
-- at most the buckets of its window plus the one being opened. The first increment of
-- a bucket in a call is written at once (it tells whether the bucket is new, and
-- fails here, for this event, if the key is not a zset); the later ones of the call
-- are added to `later` and folded into one ZINCRBY by flush_profiles(). The counters
-- an event opens a bucket of are added to `opened`, for keep_oldest.
-- Buckets are 13-digit ms strings, compared as numbers.
local function count(pkey, name, bucket, later, opened)
  local ckey = counter_key(pkey, name)
  local at = ckey .. "\0" .. bucket
  if counted[at] then
    later[#later + 1] = at
    return
  end
  counted[at] = true
  if tonumber(rcall("ZINCRBY", ckey, 1, bucket)) == 1 then opened[#opened + 1] = name end
end

-- The oldest bucket of each counter in `opened` (distinct names), one HMGET and one
-- HSET of the profile's counters hash for all of them.
local function keep_oldest(pkey, bucket, opened)
  if #opened == 0 then return end
  local ckeys = pkey .. ":counters"
  local stored = rcall("HMGET", ckeys, unpack(opened))
  local writes = {}
  for i, name in ipairs(opened) do
    local oldest = stored[i]
    if oldest and tonumber(oldest) < cutoff_ms then
      oldest = prune_counter(counter_key(pkey, name), cutoff)
    end
    if not oldest or tonumber(bucket) < tonumber(oldest) then oldest = bucket end
    writes[#writes + 1] = name
    writes[#writes + 1] = oldest
  end
  rcall("HSET", ckeys, unpack(writes))
end

local function commit_counts(later, bucket)
  for _, at in ipairs(later) do
    local e = extra[at]
    if e then
      e[3] = e[3] + 1
    else
      extra[at] = {string.sub(at, 1, -(#bucket + 2)), bucket, 1}
      extra_order[#extra_order + 1] = at
    end
  end
end

-- The counters of one event on profile `pkey` (every event in $seen; a TRACK in its
-- name and $track; PAGE and SCREEN in $page and $screen), unless its bucket is older
-- than the cutoff. Returns the later increments to commit (commit_counts).
local function count_event(pkey, bucket, kind, name)
  local later, opened = {}, {}
  if tonumber(bucket) >= cutoff_ms then
    -- Every event is activity: "returned" rules read the gaps between these
    -- buckets, which, unlike a gap measured at apply time, any order agrees on.
    count(pkey, "$seen", bucket, later, opened)
    if kind == "TRACK" then
      count(pkey, name, bucket, later, opened)
      count(pkey, "$track", bucket, later, opened)
    elseif kind == "PAGE" then
      count(pkey, "$page", bucket, later, opened)
    elseif kind == "SCREEN" then
      count(pkey, "$screen", bucket, later, opened)
    end
    keep_oldest(pkey, bucket, opened)
  end
  return later
end

-- Commit an applied event to its profile's meta (nothing here calls Redis): the
-- folded counter increments, first/lastSeen (min/max of ts, ISO-8601 fixed width,
-- byte-wise), lastSeenMs (max), one more version bump, the eventId to record.
local function commit_event(meta, later, bucket, ts, ms_text, id)
  commit_counts(later, bucket)
  local ms = tonumber(ms_text)
  if not meta.first or bytes_lt(ts, meta.first) then meta.first = ts end
  if not meta.last or bytes_lt(meta.last, ts) then meta.last = ts end
  if not meta.ms_n or ms > meta.ms_n then meta.ms, meta.ms_n = ms_text, ms end
  meta.bumps = meta.bumps + 1
  local recs = meta.recs
  recs[#recs + 1] = id
  recs[#recs + 1] = dedup_bucket
end
