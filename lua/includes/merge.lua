-- includes/merge.lua: folding a merged-away profile's state into its survivor, the same
-- for the merge inside one script (includes/identity.lua, which reads the loser by
-- name) and for the cross-slot merge (merge_absorb-n.lua, which gets the loser's state
-- from merge_freeze-n.lua). Every function takes the loser's state as values and
-- writes only the survivor's keys (`skey`: its profile hash key). Expects `rcall`,
-- `chunked` and `CHUNK`, and includes/profile.lua.
--@include profile

-- Traits by Last-Write-Wins on (ts, eventId), tombstones included. `ltraits`: the
-- loser's trait hash as HGETALL answers it (trait, cell JSON, ...).
local function absorb_traits(skey, ltraits)
  local stkey = skey .. ":traits"
  for i = 1, #ltraits, 2 do
    local cell = decode_cell(ltraits[i + 1])
    if cell_newer(cell.ts, cell.eventId, rcall("HGET", stkey, ltraits[i])) then
      rcall("HSET", stkey, ltraits[i], ltraits[i + 1])
    end
  end
end

-- Counter `name` summed per bucket (`buckets`: bucket, count, ... as ZRANGE WITHSCORES
-- answers), its oldest bucket the older of the two (`l_oldest`: the loser's).
local function absorb_counter(skey, name, l_oldest, buckets)
  local s_counter = skey .. ":counter:" .. name
  for i = 1, #buckets, 2 do rcall("ZINCRBY", s_counter, buckets[i + 1], buckets[i]) end
  local s_oldest = rcall("HGET", skey .. ":counters", name)
  if not s_oldest or tonumber(l_oldest) < tonumber(s_oldest) then
    rcall("HSET", skey .. ":counters", name, l_oldest)
  end
end

-- The survivor absorbs the loser's seen ids (`lseen`: eventId, bucket, ...; union, per
-- id the later bucket), its seenFrom (the older) and seenTo (the later), and its time
-- to live `l_ttl` (ms, as PTTL answers) when longer: an event applied to the loser and
-- redelivered after the merge (its identifiers now name the survivor) is still a
-- duplicate.
local function absorb_seen(skey, lseen, l_ttl, l_from, l_to)
  if #lseen == 0 then return end
  local sseen_key = skey .. ":seen"
  local ids = {}
  for i = 1, #lseen, 2 do ids[#ids + 1] = lseen[i] end
  local mine = chunked("HMGET", sseen_key, ids, CHUNK)
  local writes = {}
  for j, id in ipairs(ids) do
    local theirs = lseen[2 * j]
    if not mine[j] or (tonumber(mine[j]) or 0) < (tonumber(theirs) or 0) then
      writes[#writes + 1] = id
      writes[#writes + 1] = theirs
    end
  end
  local s_ttl = rcall("PTTL", sseen_key)
  chunked("HSET", sseen_key, writes, CHUNK)
  if l_ttl > 0 and (s_ttl == -2 or (s_ttl > 0 and l_ttl > s_ttl)) then
    rcall("PEXPIRE", sseen_key, l_ttl)
  end
  local smeta = rcall("HMGET", skey, "seenFrom", "seenTo")
  local from, to = tonumber(smeta[1]), tonumber(smeta[2])
  l_from, l_to = tonumber(l_from), tonumber(l_to)
  if l_from and (not from or l_from < from) then from = l_from end
  if l_to and (not to or l_to > to) then to = l_to end
  if from and to then rcall("HSET", skey, "seenFrom", from, "seenTo", to) end
end

-- The loser's meta (`lmeta`, HMGET of MERGE_META_FIELDS): first/lastSeen by min/max,
-- lastSeenMs by max, the identifier counts summed, merges += the loser's + 1, its
-- userId when the survivor has none; the survivor's version bumped.
local MERGE_META_FIELDS = {"firstSeen", "lastSeen", "users", "emails", "anons", "merges", "user",
  "seenFrom", "seenTo", "lastSeenMs"}
local function absorb_meta(skey, lmeta)
  widen_seen(skey, lmeta[1], lmeta[2])
  rcall("HINCRBY", skey, "users", tonumber(lmeta[3]) or 0)
  rcall("HINCRBY", skey, "emails", tonumber(lmeta[4]) or 0)
  rcall("HINCRBY", skey, "anons", tonumber(lmeta[5]) or 0)
  rcall("HINCRBY", skey, "merges", (tonumber(lmeta[6]) or 0) + 1)
  if lmeta[7] and not rcall("HGET", skey, "user") then rcall("HSET", skey, "user", lmeta[7]) end
  local l_last, s_last = lmeta[10], rcall("HGET", skey, "lastSeenMs")
  if l_last and (not s_last or tonumber(l_last) > tonumber(s_last)) then
    rcall("HSET", skey, "lastSeenMs", l_last)
  end
  rcall("HINCRBY", skey, "version", 1)
end
