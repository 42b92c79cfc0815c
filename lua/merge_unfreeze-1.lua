--[[
  merge_unfreeze-1.lua: a refused cross-slot merge (cdp/merge.py: the absorb's guard
  rails refused it, or the survivor is gone) gives loser L back its life: its journal
  fields are removed, only while L is still frozen towards that survivor (nothing of it
  absorbed anywhere). Applies to L work again at once.

  KEYS[1]  L's profile hash           cdp:profile:{L}
  ARGV[1]  S, the survivor L is frozen towards

  Returns  1 when unfrozen now, 0 otherwise (already, or the journal moved on)
]]
local rcall = redis.call
local head = rcall("HMGET", KEYS[1], "mergedInto", "mergeState")
if head[1] ~= ARGV[1] or head[2] ~= "frozen" then return 0 end
rcall("HDEL", KEYS[1], "mergedInto", "mergeState", "mergeEventId", "mergedAt")
return 1
