--[[
  lease_release-1.lua: give a partition lease back, only if the caller holds it.

  KEYS[1]  lease key            cdp:lease:{pN}
  ARGV[1]  worker id

  Returns 1 when released, 0 when the lease was not the caller's.
]]
local lease_key, owner = KEYS[1], ARGV[1]
if redis.call("GET", lease_key) == owner then
  redis.call("DEL", lease_key)
  return 1
end
return 0
