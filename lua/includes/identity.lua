-- includes/identity.lua: resolve an event's identifiers to one profile, merging the
-- profiles they link, within the guard rails. Expects `rcall`, `prefix`, `now_iso`,
-- `limits` (maxEmails, maxAnons, maxUsers, maxMerges, mergeUsers, segmentEventsMaxlen),
-- the helpers of includes/profile.lua, the event field indexes (EID, TS, IDS),
-- `chunked` and `CHUNK`, `flush` (apply_batch: writes what the call holds of profiles
-- before a merge) and `seen_by_owner(ev, cids)` (apply_batch: true when a profile the
-- identifiers name already applied the event).
--@include segments
--@include merge

local function record(ev, fields)
  local args = {prefix .. ":merges", "MAXLEN", "~", "100000", "*"}
  for i = 1, #fields do args[#args + 1] = fields[i] end
  args[#args + 1] = "eventId"; args[#args + 1] = ev[EID]
  args[#args + 1] = "ts"; args[#args + 1] = ev[TS]
  rcall("XADD", unpack(args))
end

local function new_profile()
  local seq = rcall("INCR", prefix .. ":seq:profile")
  local cid = "p" .. seq
  rcall("HSET", profile_key(cid), "createdAt", now_iso, "users", 0, "emails", 0, "anons", 0,
    "merges", 0, "version", 0)
  rcall("ZADD", prefix .. ":profiles", seq, cid)
  return cid
end

-- The loser's memberships end with an EXIT each, as erase_profile's do
-- (includes/segments.lua merged_exits), XADDed here with the loser's ZREM from the
-- members. The merge runs once (afterwards every identifier of the loser resolves to
-- the survivor, and its memberships are deleted with it), so each EXIT is emitted
-- exactly once.
local function exit_merged(loser, survivor, user, ids)
  local memberships = rcall("HGETALL", profile_key(loser) .. ":segments")
  merged_exits(memberships, loser, survivor, user, ids, now_iso, function(name, _, fields)
    rcall("ZREM", members_key(name), loser)
    rcall("XADD", prefix .. ":segment-events", "MAXLEN", "~", limits.segmentEventsMaxlen, "*",
      unpack(fields))
  end)
end

-- Link identifiers `ids` to profile `cid`, whose counts and userId are `meta`
-- ({users, emails, anons, user}): each identifier key names it, its identifier set
-- holds them, its counts grow and its first userId becomes its `user`. Three calls
-- for all of them.
local function link_all(cid, ids, meta)
  if #ids == 0 then return end
  local pkey = profile_key(cid)
  local names, added = {}, {users = 0, emails = 0, anons = 0}
  local user = meta.user
  for _, id in ipairs(ids) do
    names[#names + 1] = identifier_key(id)
    names[#names + 1] = cid
    local field = TYPE_FIELD[id_type(id)]
    added[field] = added[field] + 1
    if not user and id_type(id) == "user" then user = id end
  end
  rcall("MSET", unpack(names))
  rcall("SADD", pkey .. ":identifiers", unpack(ids))
  local fields = {}
  for _, field in ipairs({"users", "emails", "anons"}) do
    if added[field] > 0 then
      fields[#fields + 1] = field
      fields[#fields + 1] = meta[field] + added[field]
    end
  end
  if user ~= meta.user then
    fields[#fields + 1] = "user"
    fields[#fields + 1] = user
  end
  rcall("HSET", pkey, unpack(fields))
end

-- Fold profile `loser` into `survivor`: traits by LWW (tombstones included), identifiers
-- by union, counters by sum per bucket, first/lastSeen by min/max, seen ids by union
-- (absorb_seen); the loser's segment memberships end with EXIT events (exit_merged).
-- The loser keeps only a forward pointer; every id that pointed to it now points to
-- the survivor (one hop).
local function merge(loser, survivor, ev)
  flush()  -- the call's folded writes first: the merge reads both profiles by name
  local lkey, skey = profile_key(loser), profile_key(survivor)
  absorb_traits(skey, rcall("HGETALL", lkey .. ":traits"))
  local lids = rcall("SMEMBERS", lkey .. ":identifiers")
  for _, id in ipairs(lids) do
    rcall("SET", identifier_key(id), survivor)
    rcall("SADD", skey .. ":identifiers", id)
  end
  local lcounters = rcall("HGETALL", lkey .. ":counters")
  for i = 1, #lcounters, 2 do
    local l_counter = lkey .. ":counter:" .. lcounters[i]
    absorb_counter(skey, lcounters[i], lcounters[i + 1],
      rcall("ZRANGE", l_counter, 0, -1, "WITHSCORES"))
    rcall("DEL", l_counter)
  end
  local lmeta = rcall("HMGET", lkey, unpack(MERGE_META_FIELDS))
  local lseen_key = lkey .. ":seen"
  absorb_seen(skey, rcall("HGETALL", lseen_key), rcall("PTTL", lseen_key), lmeta[8], lmeta[9])
  absorb_meta(skey, lmeta)
  -- The survivor is re-evaluated after this apply, with the merged state.
  exit_merged(loser, survivor, lmeta[7], lids)
  rcall("ZREM", prefix .. ":segments:due", loser)
  rcall("ZREM", prefix .. ":profiles", loser)
  local absorbed = rcall("SMEMBERS", lkey .. ":merged")
  absorbed[#absorbed + 1] = loser
  for _, old in ipairs(absorbed) do
    rcall("HSET", profile_key(old), "mergedInto", survivor)
    rcall("SADD", skey .. ":merged", old)
  end
  rcall("DEL", lkey .. ":traits", lkey .. ":identifiers", lkey .. ":counters", lkey .. ":merged",
    lkey .. ":segments", lkey .. ":seen")
  rcall("DEL", lkey)
  rcall("HSET", lkey, "mergedInto", survivor, "mergedAt", ev[TS], "mergeEventId", ev[EID])
  record(ev, {"status", "merged", "survivor", survivor, "merged", loser})
end

-- The profile `ev` applies to when its identifiers (`names`: their keys, `cids`: their
-- owners or false) are not all of one known profile. Owners of its identifiers are taken in the event's
-- identifier order (user, email, anon): an owner carrying a different userId than the
-- group is refused (unless mergeUsers), as is one reached only through an anonymousId
-- when it already holds more than maxAnons of them, or any past maxMerges. The rest
-- merge into the oldest of them; unknown identifiers are linked within the limits.
local function resolve_links(ev, names, cids)
  local ids = ev[IDS]
  local owners, reached, free, free_keys = {}, {}, {}, {}
  for i, id in ipairs(ids) do
    local cid = cids[i]
    if not cid then
      free[#free + 1] = id
      free_keys[#free_keys + 1] = names[i]
    elseif not reached[cid] then
      reached[cid] = {cid = cid, anon_only = id_type(id) == "anon"}
      owners[#owners + 1] = reached[cid]
    elseif id_type(id) ~= "anon" then
      reached[cid].anon_only = false
    end
  end
  -- MGET answers nil for a key of another type, where GET fails: such a key is the
  -- event's own WRONGTYPE (SET would overwrite it).
  if #free_keys > 0 and rcall("EXISTS", unpack(free_keys)) > 0 then
    poison("an identifier key holds the wrong type (WRONGTYPE)")
  end
  -- The event's own userId anchors the group; a new one counts as one userId already.
  local group_user, group_users, user_owner = nil, 0, nil
  if ids[1] and id_type(ids[1]) == "user" then
    group_user = ids[1]
    if free[1] == group_user then group_users = 1 else user_owner = owners[1].cid end
  end
  local group = {}
  for _, o in ipairs(owners) do
    local meta = rcall("HMGET", profile_key(o.cid), "user", "users", "anons")
    local reason
    if meta[1] and group_user and meta[1] ~= group_user then
      if not limits.mergeUsers then
        reason = "different userIds"
      elseif group_users + tonumber(meta[2]) > limits.maxUsers then
        reason = "userId limit"
      end
    elseif o.anon_only and #group > 0 and tonumber(meta[3]) > limits.maxAnons then
      reason = "anonymousId limit"
    end
    if reason then
      record(ev, {"status", "refused", "reason", reason, "profile", o.cid})
    else
      group[#group + 1] = o.cid
      if meta[1] then group_user = group_user or meta[1]; group_users = group_users + tonumber(meta[2]) end
    end
  end
  local cid, fresh = nil, false
  if #group == 0 then
    cid, fresh = new_profile(), true
  else
    table.sort(group, function(a, b) return seq_of(a) < seq_of(b) end)
    cid = group[1]
    local target = cid
    for i = 2, #group do
      if tonumber(rcall("HGET", profile_key(cid), "merges")) < limits.maxMerges then
        merge(group[i], cid, ev)
      else
        record(ev, {"status", "refused", "reason", "merge limit", "survivor", cid, "profile", group[i]})
        if group[i] == user_owner then target = user_owner end
      end
    end
    cid = target  -- the profile of the event's userId, even when its merge was refused
  end
  if #free == 0 then return cid end
  local meta = {users = 0, emails = 0, anons = 0}
  if not fresh then
    local counts = rcall("HMGET", profile_key(cid), "users", "emails", "anons", "user")
    meta = {users = tonumber(counts[1]), emails = tonumber(counts[2]),
      anons = tonumber(counts[3]) or 0, user = counts[4] or nil}
    if not meta.users or not meta.emails then
      error("ERR hash value is not an integer", 0)  -- as HINCRBY would answer
    end
  end
  local users, emails, linked = meta.users, meta.emails, {}
  for _, id in ipairs(free) do
    local t = id_type(id)
    if t == "user" and users >= limits.maxUsers then
      record(ev, {"status", "refused", "reason", "userId limit", "profile", cid, "identifier", id})
    elseif t == "email" and emails >= limits.maxEmails then
      record(ev, {"status", "refused", "reason", "email limit", "profile", cid, "identifier", id})
    else
      linked[#linked + 1] = id
      if t == "user" then users = users + 1 elseif t == "email" then emails = emails + 1 end
    end
  end
  link_all(cid, linked, meta)
  return cid
end

-- The profile `ev` applies to, its identifiers read in one MGET; nil when a profile
-- they name already applied it (seen_by_owner, before any link, merge or refusal
-- record). Fast path: every identifier is known and names one profile (no link, no
-- merge; the guard rails only decide between several owners or for new identifiers).
-- Otherwise resolve_links.
local function resolve(ev)
  local ids = ev[IDS]
  local names = {}
  for i = 1, #ids do names[i] = identifier_key(ids[i]) end
  local cids = rcall("MGET", unpack(names))
  if seen_by_owner(ev, cids) then return nil end  -- a duplicate: nothing written
  local first = cids[1]
  if first then
    local one = true
    for i = 2, #ids do
      if cids[i] ~= first then one = false; break end
    end
    if one then return first end
  end
  return resolve_links(ev, names, cids)
end
