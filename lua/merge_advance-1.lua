--[[
  merge_advance-1.lua: the journal of a cross-slot merge (cdp/merge.py), in loser L's
  profile hash, moves one step forward: mergeState `from` -> `to` (frozen -> absorbed
  -> repointed), only while L is merged towards S. Never backwards: a journal already
  at `to` or later is left as it is (two processes resuming the same merge).

  KEYS[1]  L's profile hash           cdp:profile:{L}
  ARGV[1]  S, the survivor
  ARGV[2]  from: the state the caller has done the step of
  ARGV[3]  to: the next state

  Returns  the journal's state now ("" when L is not merged towards S)
]]
local rcall = redis.call
local head = rcall("HMGET", KEYS[1], "mergedInto", "mergeState")
if head[1] ~= ARGV[1] then return "" end
if head[2] == ARGV[2] then
  rcall("HSET", KEYS[1], "mergeState", ARGV[3])
  return ARGV[3]
end
return head[2] or "done"
