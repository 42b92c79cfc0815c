--[[
  merge_retarget-1.lua: the cross-slot merge (cdp/merge.py) of loser L towards S, whose
  absorb answered FORWARDED (S was merged into S2 meanwhile), goes to S2 instead: L's
  mergedInto moves from S to S2, only while L is still frozen (nothing absorbed).

  KEYS[1]  L's profile hash           cdp:profile:{L}
  ARGV[1]  S, the survivor L is frozen towards
  ARGV[2]  S2, S's survivor

  Returns  {"OK"} (L now frozen towards S2, or already was)
        or {"STATE", mergedInto or "", mergeState or ""}: L is elsewhere (the caller
           reads the journal again)
]]
local rcall = redis.call
local head = rcall("HMGET", KEYS[1], "mergedInto", "mergeState")
if head[1] == ARGV[2] then return {"OK"} end
if head[1] == ARGV[1] and head[2] == "frozen" then
  rcall("HSET", KEYS[1], "mergedInto", ARGV[2])
  return {"OK"}
end
return {"STATE", head[1] or "", head[2] or ""}
